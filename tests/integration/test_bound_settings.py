"""Operator mistakes are refused at start, naming the setting, this node's value and the value in force.

Nodes sharing a Redis (and a cluster) must share their ledger, shard count,
record TTL and cluster: the first node binds them in Redis (and etcd), and a
node that disagrees exits with status 2. Everything runs as real processes:
``redis-server``, etcd, and nodes started as ``flashstock serve``; SKUs are
put with raw gRPC stubs, and the binding is read with a plain Redis client.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis as redis_py

from flashstock.lockmgr import shard_of
from flashstock.server.ledger import Ledger, sqlite_url
from flashstock.server.local.procs import NodeProcess, ProcessError, RedisServer
from flashstock.server.store.keys import CONFIG_KEY
from flashstock.v1 import admin_pb2, admin_pb2_grpc
from tests.helpers import eventually

pytest_plugins = ["tests.helpers.etcd"]


class Nodes:
    """The node processes of one test, each stopped (with every process it forked) at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._started: list[NodeProcess] = []

    def ledger(self, name: str) -> str:
        """The URL of a SQLite ledger of this test's own, by name."""
        return sqlite_url(self.folder / name)

    def _node(self, redis_url: str, ledger: str, shards: int, args: tuple[str, ...]) -> NodeProcess:
        node = NodeProcess(redis_url, shards=shards, ledger=ledger, data_dir=self.folder / "data", extra_args=args)
        self._started.append(node)
        return node

    def start(self, redis_url: str, ledger: str, *args: str, shards: int = 64) -> NodeProcess:
        """A node that must start (its ready line printed)."""
        return self._node(redis_url, ledger, shards, args).start()

    def refusal(self, redis_url: str, ledger: str, *args: str, shards: int = 64) -> str:
        """Start a node that must refuse: asserts exit status 2 and returns what it wrote to stderr."""
        node = self._node(redis_url, ledger, shards, args)
        try:
            node.start()
        except ProcessError as exc:
            assert node.proc is not None and node.proc.returncode == 2, exc
            return str(exc)
        pytest.fail(f"the node started: {node.log()}")

    def stop(self) -> None:
        for node in self._started:
            node.close()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    started = Nodes(tmp_path)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis of the test's own: the binding is per Redis."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[redis_py.Redis]:
    with redis_py.Redis.from_url(redis_server.url, decode_responses=True) as client:
        yield client


def identity(url: str) -> str:
    """A ledger's identity, read as `flashstock ledger status` does."""
    ledger = Ledger(url)
    try:
        return ledger.identity()
    finally:
        ledger.close()


def put_skus(node: NodeProcess, sku_ids: list[str]) -> None:
    """Define SKUs through the node's AdminService, with a raw stub."""
    with grpc.insecure_channel(node.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        for sku_id in sku_ids:
            stub.PutSku(admin_pb2.PutSkuRequest(sku_id=sku_id, stock=10, request_id=f"put-{uuid.uuid4()}"), timeout=10)


def etcd_args(etcd_server, cluster_name: str) -> tuple[str, ...]:
    return ("--etcd", etcd_server.endpoint, "--cluster", cluster_name)


@pytest.mark.slow
def test_second_standalone_node_with_another_ledger_is_refused(nodes, redis_server, redis):
    first = nodes.start(redis_server.url, nodes.ledger("a"))

    stderr = nodes.refusal(redis_server.url, nodes.ledger("b"))

    mine, in_force = identity(nodes.ledger("b")), identity(first.ledger_url)
    assert f"ledger_id: this node has {mine}, Redis ({CONFIG_KEY}) has {in_force}" in stderr
    assert redis.hget(CONFIG_KEY, "ledger_id") == in_force  # the refused node changed nothing
    # A node on the same ledger (and settings) starts.
    nodes.start(redis_server.url, first.ledger_url)


@pytest.mark.slow
def test_node_with_other_shard_count_refused_on_redis_with_skus(nodes, redis_server, redis):
    sku_ids = [f"sku-{i}" for i in range(8)]
    assert any(shard_of(s, 8) != shard_of(s, 16) for s in sku_ids)  # some SKU lives elsewhere under 16
    ledger = nodes.ledger("a")
    first = nodes.start(redis_server.url, ledger, shards=8)
    put_skus(first, sku_ids)

    stderr = nodes.refusal(redis_server.url, ledger, shards=16)
    assert f"shards: this node has 16, Redis ({CONFIG_KEY}) has 8" in stderr

    # A Redis from before the binding: SKUs, no binding. Where its SKUs are tells the count.
    first.stop()
    redis.delete(CONFIG_KEY)
    stderr = nodes.refusal(redis_server.url, ledger, shards=16)
    assert "shards: this node has 16, Redis has 8 (where its SKUs are" in stderr
    assert not redis.exists(CONFIG_KEY)  # refused before binding anything

    nodes.start(redis_server.url, ledger, shards=8)  # the right count starts, and binds it
    assert redis.hget(CONFIG_KEY, "shards") == "8"


@pytest.mark.slow
def test_cluster_node_with_other_request_ttl_refused(nodes, redis_server, etcd_server, cluster_name):
    ledger = nodes.ledger("a")
    cluster = etcd_args(etcd_server, cluster_name)
    nodes.start(redis_server.url, ledger, *cluster, "--request-ttl-s", "86400")

    stderr = nodes.refusal(redis_server.url, ledger, *cluster, "--request-ttl-s", "600", "--default-hold-ms", "60000")

    assert f"request_ttl_s: this node has 600, cluster {cluster_name!r} in etcd has 86400" in stderr
    nodes.start(redis_server.url, ledger, *cluster, "--request-ttl-s", "86400")  # one that agrees joins


@pytest.mark.slow
def test_standalone_node_on_a_clusters_redis_refused_naming_cluster(nodes, redis_server, etcd_server, cluster_name):
    ledger = nodes.ledger("a")
    nodes.start(redis_server.url, ledger, *etcd_args(etcd_server, cluster_name))

    stderr = nodes.refusal(redis_server.url, ledger)

    assert f"cluster: this node has none (standalone), Redis ({CONFIG_KEY}) has {cluster_name!r}" in stderr


@pytest.mark.slow
def test_cluster_node_with_other_ledger_refused(nodes, redis_server, etcd_server, cluster_name):
    cluster = etcd_args(etcd_server, cluster_name)
    first = nodes.start(redis_server.url, nodes.ledger("a"), *cluster)
    in_force = identity(first.ledger_url)

    stderr = nodes.refusal(redis_server.url, nodes.ledger("b"), *cluster)
    mine = identity(nodes.ledger("b"))
    assert f"ledger_id: this node has {mine}, cluster {cluster_name!r} in etcd has {in_force}" in stderr

    # etcd keeps the binding when Redis loses everything: on an empty Redis the node is refused still.
    with RedisServer() as empty:
        stderr = nodes.refusal(empty.url, nodes.ledger("b"), *cluster)
        assert f"ledger_id: this node has {mine}, cluster {cluster_name!r} in etcd has {in_force}" in stderr
        with redis_py.Redis.from_url(empty.url) as client:
            assert not client.exists(CONFIG_KEY)


@pytest.mark.slow
def test_node_binds_again_after_redis_restarts_empty_and_refuses_another_ledger(nodes, tmp_path):
    server = RedisServer().start()
    try:
        first = nodes.start(server.url, nodes.ledger("a"))
        in_force = identity(first.ledger_url)
        port = server.port
        server.kill()  # Redis loses everything, its binding too
        server.stop()
        server = RedisServer(port=port).start()
        with redis_py.Redis.from_url(server.url, decode_responses=True) as client:
            # The running node binds its settings again once its feed is back.
            eventually(lambda: client.hget(CONFIG_KEY, "ledger_id") == in_force, timeout=20)

        stderr = nodes.refusal(server.url, nodes.ledger("b"))

        assert f"ledger_id: this node has {identity(nodes.ledger('b'))}, Redis ({CONFIG_KEY}) has {in_force}" in stderr
    finally:
        server.stop()


@pytest.mark.slow
def test_running_node_exits_when_another_ledger_was_bound_after_a_redis_loss(nodes, redis_server, redis):
    first = nodes.start(redis_server.url, nodes.ledger("a"))
    first.pause()  # paused: it cannot bind again before the other node does
    try:
        redis.flushall()  # the binding is gone
        other = nodes.start(redis_server.url, nodes.ledger("b"))  # ...so a node of another ledger binds its own
    finally:
        first.resume()

    assert first.proc is not None
    assert eventually(lambda: first.proc.poll(), timeout=30) == 2
    assert (
        f"ledger_id: this node has {identity(first.ledger_url)}, Redis ({CONFIG_KEY}) has {identity(other.ledger_url)}"
        in first.log()
    )
    assert "exits (status 2)" in first.log()
    assert other.proc is not None and other.proc.poll() is None  # the node whose binding is in force serves on
