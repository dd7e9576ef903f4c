"""A sale's figures written into Redis exactly as the serving workers write them (``server/store/keys.py``, its end).

Until the nodes write them themselves (issue 11's serving side), the
board's tests write them here, per the agreed contract: per SKU the
``active`` zset, the ``sale_totals`` and ``sale_second`` hashes (``o:<outcome>``,
``units``, ``l:<i>``, ``lsum``) and the ``visitors`` / ``buyers`` HyperLogLogs.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

import redis as redis_py

from flashstock.lockmgr import shard_of
from flashstock.server.store.keys import LATENCY_BUCKETS_US, SALE_SECONDS_TTL_S, ShardKeys

__all__ = ["write_second"]


def write_second(
    redis: redis_py.Redis,
    sku: str,
    second: int,
    *,
    outcomes: Mapping[str, int],
    units: int,
    latency_us: int = 400,
    visitors: Iterable[str] = (),
    buyers: Iterable[str] = (),
    shards: int = 64,
) -> None:
    """Add one second's figures of ``sku``: attempts by outcome, units taken, each attempt at ``latency_us``."""
    keys = ShardKeys(shard_of(sku, shards))
    attempts = sum(outcomes.values())
    bucket = bisect.bisect_left(LATENCY_BUCKETS_US, latency_us)
    fields = {f"o:{outcome}": count for outcome, count in outcomes.items()}
    fields.update({"units": units, f"l:{bucket}": attempts, "lsum": attempts * latency_us})
    pipe = redis.pipeline(transaction=False)
    for key in (keys.sale_second(second, sku), keys.sale_totals(sku)):
        for name, value in fields.items():
            pipe.hincrby(key, name, value)
    pipe.expire(keys.sale_second(second, sku), SALE_SECONDS_TTL_S)
    if visitors := list(visitors):
        pipe.pfadd(keys.visitors(sku), *visitors)
    if buyers := list(buyers):
        pipe.pfadd(keys.buyers(sku), *buyers)
    pipe.zadd(keys.active, {sku: second})
    pipe.execute()
