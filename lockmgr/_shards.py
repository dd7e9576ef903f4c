"""Which shard a SKU lives in, and the Redis key names of a shard.

``shard = stable_hash(sku_id) mod S``: the first eight bytes of BLAKE2b over
the UTF-8 SKU id, read big-endian. BLAKE2b is in every language's standard
library, so a Go or Java service computes the same shard as this one; Python's
``hash()`` is salted per process and would not.

Every Redis key of a shard carries the hash tag ``{s<shard>}``, so in Redis
Cluster a shard is one slot and one Lua script can touch all of its keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

DEFAULT_SHARDS = 64
"""Logical shards of a cluster unless set otherwise at cluster init."""


def stable_hash(key: str) -> int:
    """A 64-bit hash of ``key`` that is the same in every process and language."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


@lru_cache(maxsize=65536)
def shard_of(sku_id: str, shards: int = DEFAULT_SHARDS) -> int:
    """The shard of ``sku_id`` among ``shards`` logical shards."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, not {shards}")
    return stable_hash(sku_id) % shards


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """The Redis key names of one shard; all share the hash tag ``{s<shard>}``."""

    shard: int
    """The shard number."""

    @property
    def prefix(self) -> str:
        """The common prefix, hash tag included: ``fs:{s7}:``."""
        return f"fs:{{s{self.shard}}}:"

    def sku(self, sku_id: str) -> str:
        """Hash of a SKU's definition and counters."""
        return f"{self.prefix}k:{sku_id}"

    def users(self, sku_id: str) -> str:
        """Hash of units handed out (held + confirmed) per user of a SKU."""
        return f"{self.prefix}u:{sku_id}"

    def record_bucket(self, generation: int, sku_id: str) -> str:
        """Hash of the first answers recorded for one SKU in one generation (request_id -> record).

        A request id's scope is its SKU. ``generation = floor(redis_now_ms /
        request_ttl_ms)``; a bucket expires at the end of the next generation,
        so a record lives ttl to 2 x ttl.
        """
        return f"{self.prefix}r:{generation}:{sku_id}"

    def admin_record(self, sku_id: str, request_id: str) -> str:
        """Marks an admin request as applied, for idempotent admin calls; an id's scope is its SKU.

        The SKU id's length comes first, so no other (sku_id, request_id) pair names the same key.
        """
        return f"{self.prefix}a:{len(sku_id.encode())}:{sku_id}:{request_id}"

    @property
    def log(self) -> str:
        """The shard's log stream: every change of units, in order (the outbox)."""
        return f"{self.prefix}log"

    @property
    def hold_expiries(self) -> str:
        """Sorted set of open holds (members ``<sku_id>\\n<hold_id>``), scored by expiry (ms, Redis clock)."""
        return f"{self.prefix}hx"

    @property
    def meta(self) -> str:
        """Hash of the shard's own state: ``gen`` (rebuild generation) and
        ``state`` (:data:`SHARD_READY` once whole; anything else is rebuilt)."""
        return f"{self.prefix}m"

    @property
    def persisted(self) -> str:
        """The last log entry id the ledger holds (set by the persister)."""
        return f"{self.prefix}pc"

    @property
    def rebuild_lock(self) -> str:
        """The name of the rebuild mutex (python-redis-lock keys it ``lock:<name>``)."""
        return f"rebuild:{{s{self.shard}}}"

    @property
    def sold_out(self) -> str:
        """Hash of the shard's sold-out SKUs, each with its stock version."""
        return f"{self.prefix}so"


SHARD_READY = b"ready:2"
"""A shard meta's ``state`` once the shard is whole in the current key layout
(per-SKU request records). A shard in any other state (missing, ``building``,
or ``ready`` of the layout before) is rebuilt from the ledger before it serves."""

SKU_INDEX_KEY = "fs:skus"
"""Sorted set of every SKU id (score 0, read by lexicographic range)."""

CONFIG_KEY = "fs:config"
"""Hash of the settings every node on this Redis must share (ledger_id, shards,
request_ttl_s, cluster), written by the first node, compared by the others."""

SOLD_OUT_CHANNEL = "fs:soldout"
"""Pub/sub channel on which sell-outs and restocks are announced."""

PERSISTED_CHANNEL = "fs:persisted"
"""Pub/sub channel on which persisters announce ``"<shard> <last entry id>"`` after a commit."""


def shard_ranges(shards: Iterable[int]) -> str:
    """Shard numbers as ranges: ``[0, 1, 2, 3, 7]`` -> ``"0-3,7"`` (``"-"`` for none)."""
    ordered = sorted(set(shards))
    if not ordered:
        return "-"
    parts = []
    start = prev = ordered[0]
    for shard in [*ordered[1:], None]:
        if shard is not None and shard == prev + 1:
            prev = shard
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if shard is not None:
            start = prev = shard
    return ",".join(parts)
