"""The reconciliation duty: a node compares Redis with the ledger for its shards, and says so in metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flashstock.client import AdminClient, ClientConfig, Outcome, StockClient
from flashstock.lockmgr import shard_of
from flashstock.server.local.procs import NodeProcess, RedisServer, free_port
from flashstock.server.store.keys import ShardKeys
from tests.helpers import eventually, metric


@pytest.fixture(scope="module")
def watched() -> Iterator[tuple[RedisServer, NodeProcess, int]]:
    port = free_port()
    with (
        RedisServer() as redis_server,
        NodeProcess(
            redis_server.url, extra_args=["--reconcile-interval-s", "0.2", "--metrics-port", str(port)]
        ) as node,
    ):
        yield redis_server, node, port


def test_a_node_finds_redis_and_the_ledger_agree_then_a_difference(watched):
    redis_server, node, port = watched
    config = ClientConfig(addresses=[node.address])
    with AdminClient(config) as admin, StockClient(config) as stock:
        admin.put_sku("watched", 10)
        assert stock.deduct("watched", "u1", 3).outcome is Outcome.OK
    passes = eventually(lambda: metric(port, "flashstock_reconcile_passes_total"), until=lambda n: n >= 2)
    eventually(lambda: metric(port, "flashstock_reconcile_passes_total") > passes + 1)
    assert metric(port, "flashstock_reconcile_differences") == 0

    # Redis loses track of a sale behind the scripts' back: the duty notices.
    import redis as redis_py

    with redis_py.Redis.from_url(redis_server.url) as r:
        r.hincrby(ShardKeys(shard_of("watched", 64)).sku("watched"), "conf", 1)
        eventually(lambda: metric(port, "flashstock_reconcile_differences") == 1)
        r.hincrby(ShardKeys(shard_of("watched", 64)).sku("watched"), "conf", -1)
    eventually(lambda: metric(port, "flashstock_reconcile_differences") == 0)
    assert "reconcile: Redis and the ledger disagree: watched: confirmed 4 in Redis, 3 in the ledger" in node.log()
