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

    # A sale's figures (issue 11): written by every serving worker once a
    # second (server/store/salestats.py), read by the board and the per-SKU
    # metrics, moved to the ledger's ``sale_seconds`` by the shard's duties.
    # Fields of the two figure hashes: ``o:<outcome>`` attempts by outcome
    # (SALE_OUTCOMES), ``units`` units taken, ``l:<i>`` latency bucket counts
    # (LATENCY_BUCKETS_US[i]), ``lsum`` latency sum in us; the totals also
    # ``first`` (FIRST_SOLD_FIELD), the second units were first taken in.

    def sale_second(self, second: int, sku_id: str) -> str:
        """Hash of one SKU's figures in one unix second (node clock); expires after SALE_SECONDS_TTL_S."""
        return f"{self.prefix}st:{second}:{sku_id}"

    @property
    def sale_seconds(self) -> str:
        """Sorted set of the (SKU, second) figure hashes not yet in the ledger.

        Members ``<sku_id>\n<second>``, scored by the second."""
        return f"{self.prefix}sts"

    def user_attempts(self, second: int, sku_id: str) -> str:
        """Hash of one SKU's attempts per user in one second of Redis's clock (the per-user rate,
        ``user_rate_per_s``); named by the deduct and batch scripts themselves (``rate_wait`` in _lib.lua)."""
        return f"{self.prefix}rl:{second}:{sku_id}"

    def sale_totals(self, sku_id: str) -> str:
        """Hash of one SKU's figures over its current sale (deleted by a put, which starts a new sale)."""
        return f"{self.prefix}sa:{sku_id}"

    def visitors(self, sku_id: str) -> str:
        """HyperLogLog of the users who tried the SKU in its current sale (UV)."""
        return f"{self.prefix}uv:{sku_id}"

    def visitors_second(self, second: int, sku_id: str) -> str:
        """HyperLogLog of the users who tried the SKU in one second; expires after SALE_SECONDS_TTL_S."""
        return f"{self.prefix}uvs:{second}:{sku_id}"

    def buyers(self, sku_id: str) -> str:
        """HyperLogLog of the users who took units of the SKU in its current sale."""
        return f"{self.prefix}ub:{sku_id}"

    @property
    def active(self) -> str:
        """Sorted set of the shard's SKUs with attempts, scored by the last second one was seen."""
        return f"{self.prefix}act"


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

SALE_OUTCOMES = (
    "ok",
    "dup",
    "sold_out",
    "insufficient",
    "limit",
    "not_on_sale",
    "qty_max",
    "error",
    "rate_limited",
)
"""The outcomes a sale's figures count attempts by (``o:<outcome>`` fields; ledger columns ``o_<outcome>``).
``error``: every answer that is not an outcome of the sale (NOT_FOUND, MISMATCH, UNAVAILABLE, ...; an admission
token refused, PERMISSION_DENIED, too). ``rate_limited``: refused by the SKU's per-user attempt rate."""

LATENCY_BUCKETS_US = (250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000, 500_000, 1_000_000)
"""Upper bounds (us) of a sale's latency buckets; field ``l:<i>`` counts attempts at most
``LATENCY_BUCKETS_US[i]``, ``l:<len>`` the ones above the last (not cumulative)."""

SALE_SECONDS_TTL_S = 3600
"""How long a per-second figure hash stays in Redis (the duties move it to the ledger within seconds)."""

FIRST_SOLD_FIELD = "first"
"""A sale's totals field: the unix second (node clock) in which its units were first taken (set once)."""
