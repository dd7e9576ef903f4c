"""Every Redis key name of flashstock, beside the Lua scripts that use them.

Every key of a shard carries the hash tag ``{s<shard>}``, so in Redis Cluster
a shard is one slot and one Lua script can touch all of its keys. The field
layout of each hash is documented in ``lua/_lib.lua``.
"""

from __future__ import annotations

from dataclasses import dataclass


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
