"""A worker's sale figures against a real Redis: what a flush writes, what a failed one keeps, what the duty moves."""

from __future__ import annotations

import pytest
import redis as redis_py
import redis.asyncio as aioredis

from flashstock.lockmgr import shard_of
from flashstock.server.duties.salefigures import FORGET_AFTER_S, MetricsPolicy, SaleFigures, SkuMetrics
from flashstock.server.ledger import Ledger, sqlite_url
from flashstock.server.local.procs import RedisServer, free_port
from flashstock.server.store.keys import FIRST_SOLD_FIELD, SALE_SECONDS_TTL_S, ShardKeys
from flashstock.server.store.salestats import KEEP_UNSENT_S, SaleStats
from tests.helpers import eventually

SHARDS = 8
SECOND = 1_800_000_000


class Clock:
    """A node clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def own_redis():
    """A Redis of these tests' own: no node's keys beside the figures they write."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def aredis(own_redis: RedisServer):
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def inspect(own_redis: RedisServer):
    with redis_py.Redis.from_url(own_redis.url) as client:
        yield client


def keys_of(sku: str) -> ShardKeys:
    return ShardKeys(shard_of(sku, SHARDS))


def as_ints(hash_: dict) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in hash_.items()}


async def test_a_flush_writes_every_figure_and_counts_distinct_users_within_2_percent(aredis, inspect, sku):
    clock = Clock(SECOND + 0.5)
    stats = SaleStats(aredis, SHARDS, clock=clock)
    for i in range(20_000):
        stats.record(sku, f"user-{i}", "ok" if i % 10 == 0 else "sold_out", 2 if i % 10 == 0 else 0, 0.0007)
    stats.record(sku, "user-0", "qty_max", 0, 0.003)  # a user seen before is one user
    assert await stats.flush()

    k = keys_of(sku)
    expected = {"o:ok": 2_000, "o:sold_out": 18_000, "o:qty_max": 1, "units": 4_000, "l:2": 20_000, "l:4": 1}
    expected["lsum"] = 20_000 * 700 + 3_000
    assert as_ints(inspect.hgetall(k.sale_second(SECOND, sku))) == expected
    assert as_ints(inspect.hgetall(k.sale_totals(sku))) == {**expected, FIRST_SOLD_FIELD: SECOND}
    assert abs(inspect.pfcount(k.visitors(sku)) - 20_000) <= 400
    assert abs(inspect.pfcount(k.visitors_second(SECOND, sku)) - 20_000) <= 400
    assert abs(inspect.pfcount(k.buyers(sku)) - 2_000) <= 40
    assert 0 < inspect.ttl(k.sale_second(SECOND, sku)) <= SALE_SECONDS_TTL_S
    assert 0 < inspect.ttl(k.visitors_second(SECOND, sku)) <= SALE_SECONDS_TTL_S
    assert inspect.zscore(k.sale_seconds, f"{sku}\n{SECOND}") == SECOND
    assert inspect.zscore(k.active, sku) == SECOND

    # The next second adds to the totals, and a second flush of nothing writes nothing.
    clock.now += 1
    stats.record(sku, "late", "error", 0, 2.0)
    assert await stats.flush() and await stats.flush()
    assert as_ints(inspect.hgetall(k.sale_totals(sku)))["o:error"] == 1
    assert as_ints(inspect.hgetall(k.sale_second(SECOND + 1, sku))) == {"o:error": 1, "l:12": 1, "lsum": 2_000_000}
    assert inspect.zscore(k.active, sku) == SECOND + 1


async def test_a_failed_flush_keeps_the_figures_for_a_while_then_drops_them(sku):
    clock = Clock(SECOND)
    down = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    stats = SaleStats(down, SHARDS, clock=clock)
    stats.record(sku, "u1", "ok", 1, 0.001)
    assert not await stats.flush()
    assert stats.dropped == 0
    clock.now += KEEP_UNSENT_S + 1
    stats.record(sku, "u2", "ok", 1, 0.001)
    assert not await stats.flush()
    assert stats.dropped == 1  # the first second's attempt; the second one is still kept
    await down.aclose()


async def test_a_failed_flush_is_sent_with_the_next_once_redis_is_back(sku):
    clock = Clock(SECOND)
    port = free_port()
    client = aioredis.Redis(port=port, socket_connect_timeout=0.5)
    stats = SaleStats(client, SHARDS, clock=clock)
    stats.record(sku, "u1", "ok", 1, 0.001)
    assert not await stats.flush()
    with RedisServer(port=port) as server, redis_py.Redis.from_url(server.url) as inspect:
        stats.record(sku, "u2", "ok", 1, 0.001)
        assert await stats.flush()
        assert as_ints(inspect.hgetall(keys_of(sku).sale_totals(sku)))["o:ok"] == 2
    await client.aclose()


async def test_the_duty_moves_settled_seconds_to_the_ledger_and_fills_the_metrics(aredis, inspect, sku, tmp_path):
    ledger = Ledger(sqlite_url(tmp_path))
    ledger.open()
    k = keys_of(sku)
    inspect.hset(k.sku(sku), mapping={"avail": 6, "held": 1, "start": 0, "end": 0, "sale": 3})
    clock = Clock(SECOND + 0.2)
    stats = SaleStats(aredis, SHARDS, clock=clock)
    for i in range(3):
        stats.record(sku, f"u{i}", "ok", 1, 0.0004)
    stats.record(sku, "u9", "limit", 0, 0.0004)
    assert await stats.flush()

    metrics = SkuMetrics()
    duty = SaleFigures(aredis, ledger, MetricsPolicy(window_s=60, cap=5), clock=clock, metrics=metrics)
    assert await duty.round([k.shard]) == 0  # the second is not settled yet
    clock.now += 3
    assert await duty.round([k.shard]) == 1
    [row] = ledger.sale_seconds(sku)
    assert (row["sale"], row["second"], row["attempts"], row["o_ok"], row["o_limit"], row["units"]) == (
        3,
        SECOND,
        4,
        3,
        1,
        3,
    )
    assert (row["users"], row["users_total"], row["buyers_total"]) == (4, 4, 3)
    assert row["latency_p50_us"] == 375
    [figures] = metrics.figures
    assert (figures.sku_id, figures.attempts["ok"], figures.units_taken, figures.units_left) == (sku, 3, 3, 6)
    assert (figures.units_held, figures.visitors, figures.buyers, figures.sold_out) == (1, 4, 3, False)

    # A late flush of the same second is upserted again; once old, the member is forgotten.
    clock.now = SECOND + 0.9
    stats.record(sku, "u3", "ok", 1, 0.0004)
    assert await stats.flush()
    clock.now = SECOND + FORGET_AFTER_S + 1
    assert await duty.round([k.shard]) == 1
    assert ledger.sale_seconds(sku, sale=3)[0]["o_ok"] == 4
    assert inspect.zscore(k.sale_seconds, f"{sku}\n{SECOND}") is None
    assert ledger.sale_seconds(sku, sale=2) == []
    ledger.close()


def test_a_new_sale_starts_its_figures_from_nothing(admin, stock, redis: redis_py.Redis, node, sku):
    admin.put_sku(sku, 5)
    assert stock.deduct(sku, "u1", 1).outcome.name == "OK"
    k = ShardKeys(shard_of(sku, node.shards))
    eventually(lambda: redis.exists(k.sale_totals(sku), k.visitors(sku), k.buyers(sku)) == 3)
    admin.put_sku(sku, 5)
    assert redis.exists(k.sale_totals(sku), k.visitors(sku), k.buyers(sku)) == 0
