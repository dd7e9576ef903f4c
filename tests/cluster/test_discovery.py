"""Clients find the nodes in etcd and follow them as they join and leave.

A client configured with ``etcd`` calls the live nodes of its cluster, the
ones registered under ``/flashstock/<cluster>/nodes/``. Here the nodes are
two real node processes on a Redis of this module's own; a standalone node
does not register itself, so each test registers them through sessions of
its own. Closing a session revokes its lease, and the registration goes with it,
as when the node dies.

Which nodes a client calls is checked two ways: the client's ``addresses``
(the set it routes over now), and the TCP connections this process holds
to each node's port. gRPC connects a channel only when a call is sent on it,
and closes the connection with the channel.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import psutil
import pytest
from typer.testing import CliRunner

from flashstock.client import (
    AdminClient,
    AsyncAdminClient,
    AsyncStockClient,
    ClientConfig,
    Outcome,
    StockClient,
    Unavailable,
)
from flashstock.server.cli.app import app
from flashstock.server.local.procs import NodeProcess, RedisServer, free_port
from tests.helpers import aeventually
from tests.helpers.processes import running_node

pytest_plugins = ["tests.helpers.etcd"]

DISCOVERY_PREFIX = "flashstock discovery"
"""How the discovery's task (asyncio) and thread (blocking) are named."""


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """Two standalone nodes on a Redis of this module's own, sharing one ledger.

    Nodes on one Redis drain the same shard logs, so they share a ledger.
    """
    with RedisServer() as redis_server, running_node(redis_server.url) as a:
        with running_node(redis_server.url, ledger=a.ledger_url) as b:
            yield a, b


@pytest.fixture
def defined_sku(nodes: tuple[NodeProcess, NodeProcess], sku: str) -> str:
    """A fresh SKU with 100 units, defined through the first node."""
    with AdminClient(addresses=nodes[0].address) as admin:
        admin.put_sku(sku, 100)
    return sku


def connections_to(node: NodeProcess) -> int:
    """Established TCP connections from this process to ``node``'s port."""
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == node.port and c.status == psutil.CONN_ESTABLISHED
    )


def discovery_tasks() -> list[asyncio.Task]:
    """The discovery tasks alive on this loop."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(DISCOVERY_PREFIX)]


def discovery_threads() -> list[threading.Thread]:
    """The discovery threads alive in this process."""
    return [t for t in threading.enumerate() if t.name.startswith(DISCOVERY_PREFIX)]


def etcd_config(etcd_server, cluster_name: str, **kw) -> ClientConfig:
    """Client settings that find the nodes of ``cluster_name`` in the session's etcd.

    One-second attempts, so a channel to a node that left is closed soon.
    """
    return ClientConfig(etcd=[etcd_server.endpoint], cluster=cluster_name, attempt_timeout_s=1.0, **kw)


async def test_a_client_finds_a_registered_node_and_deducts_through_it(
    etcd_server, cluster_name, open_session, nodes, sku
):
    a, _ = nodes
    session = await open_session("node-a", ttl=5)
    await session.register(a.address)
    config = etcd_config(etcd_server, cluster_name)
    async with AsyncAdminClient(config) as admin, AsyncStockClient(config) as stock:
        assert stock.addresses == admin.addresses == (a.address,)
        await admin.put_sku(sku, 3)
        result = await stock.deduct(sku, "u1", 2)
        assert result.outcome is Outcome.OK and result.stock_left == 1
        assert connections_to(a) >= 1


async def test_the_client_starts_on_its_first_call(etcd_server, cluster_name, open_session, nodes, defined_sku):
    a, _ = nodes
    session = await open_session("node-a", ttl=5)
    await session.register(a.address)
    stock = AsyncStockClient(etcd_config(etcd_server, cluster_name))
    try:
        assert stock.addresses == ()  # nothing read before the start
        assert (await stock.deduct(defined_sku, "u1")).outcome is Outcome.OK
        assert stock.addresses == (a.address,)
        assert len(discovery_tasks()) == 1
    finally:
        await stock.close()
    assert discovery_tasks() == []


async def test_calls_follow_the_nodes_as_they_join_and_leave(
    etcd_server, cluster_name, open_session, nodes, defined_sku
):
    a, b = nodes
    session_a = await open_session("node-a", ttl=5)
    await session_a.register(a.address)
    async with AsyncStockClient(etcd_config(etcd_server, cluster_name)) as stock:
        assert stock.addresses == (a.address,)
        assert (await stock.deduct(defined_sku, "u1")).outcome is Outcome.OK
        assert connections_to(b) == 0

        # b joins: the client opens a channel to it, and calls go to both.
        session_b = await open_session("node-b", ttl=5)
        await session_b.register(b.address)
        await aeventually(lambda: stock.addresses == tuple(sorted((a.address, b.address))))
        for _ in range(4):
            assert (await stock.deduct(defined_sku, "u1")).outcome is Outcome.OK
        assert connections_to(a) >= 1 and connections_to(b) >= 1

        # a leaves: its channel is closed once idle, and calls go to b alone.
        await session_a.close()
        await aeventually(lambda: stock.addresses == (b.address,))
        await aeventually(lambda: connections_to(a) == 0)
        for _ in range(4):
            assert (await stock.deduct(defined_sku, "u1")).outcome is Outcome.OK
        assert connections_to(a) == 0 and connections_to(b) >= 1
        assert (await stock.get_stock(defined_sku)).available == 91
    assert discovery_tasks() == []
    await aeventually(lambda: connections_to(b) == 0)


async def test_a_call_made_while_no_node_is_registered_waits_for_one(
    etcd_server, cluster_name, open_session, nodes, defined_sku
):
    a, _ = nodes
    first = await open_session("node-a", ttl=5)
    await first.register(a.address)
    async with AsyncStockClient(etcd_config(etcd_server, cluster_name, deadline_s=15)) as stock:
        await first.close()
        await aeventually(lambda: stock.addresses == ())
        call = asyncio.create_task(stock.deduct(defined_sku, "u1", request_id="order-1"))
        await asyncio.sleep(0)  # the call runs until it finds no node and backs off
        assert not call.done()
        again = await open_session("node-a", ttl=5)
        await again.register(a.address)
        result = await asyncio.wait_for(call, 15)
        assert result.outcome is Outcome.OK


async def test_a_call_fails_as_unavailable_when_no_node_comes_back(
    etcd_server, cluster_name, open_session, nodes, defined_sku
):
    a, _ = nodes
    session = await open_session("node-a", ttl=5)
    await session.register(a.address)
    async with AsyncStockClient(etcd_config(etcd_server, cluster_name, deadline_s=0.5)) as stock:
        await session.close()
        await aeventually(lambda: stock.addresses == ())
        with pytest.raises(Unavailable, match=f"no node of cluster '{cluster_name}'"):
            await stock.deduct(defined_sku, "u1")


async def test_the_blocking_client_follows_the_nodes_on_a_thread_of_its_own(
    etcd_server, cluster_name, open_session, nodes, defined_sku
):
    a, b = nodes
    session_a = await open_session("node-a", ttl=5)
    await session_a.register(a.address)
    # Blocking calls run on threads, so the test's loop keeps the sessions alive.
    stock = StockClient(etcd_config(etcd_server, cluster_name))
    try:
        await asyncio.to_thread(stock.start)
        assert stock.addresses == (a.address,)
        assert len(discovery_threads()) == 1
        assert (await asyncio.to_thread(stock.deduct, defined_sku, "u1")).outcome is Outcome.OK

        session_b = await open_session("node-b", ttl=5)
        await session_b.register(b.address)
        await aeventually(lambda: stock.addresses == tuple(sorted((a.address, b.address))))
        for _ in range(4):
            assert (await asyncio.to_thread(stock.deduct, defined_sku, "u1")).outcome is Outcome.OK
        assert connections_to(a) >= 1 and connections_to(b) >= 1

        await session_a.close()
        await aeventually(lambda: stock.addresses == (b.address,))
        await aeventually(lambda: connections_to(a) == 0)
        for _ in range(4):
            assert (await asyncio.to_thread(stock.deduct, defined_sku, "u1")).outcome is Outcome.OK
        assert connections_to(a) == 0 and connections_to(b) >= 1
    finally:
        await asyncio.to_thread(stock.close)
    assert discovery_threads() == []
    await aeventually(lambda: connections_to(b) == 0)


def test_an_unreachable_etcd_is_a_clear_error():
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = ClientConfig(etcd=endpoint, cluster="nowhere", discovery_timeout_s=1)
    with pytest.raises(Unavailable) as err:
        with StockClient(config):
            pass
    assert endpoint in str(err.value) and "'nowhere'" in str(err.value)
    assert discovery_threads() == []


async def test_an_unreachable_etcd_fails_the_async_clients_first_call():
    endpoint = f"127.0.0.1:{free_port()}"
    stock = AsyncStockClient(ClientConfig(etcd=endpoint, cluster="nowhere", discovery_timeout_s=1))
    try:
        with pytest.raises(Unavailable, match=endpoint):
            await stock.deduct("sku", "u1")
    finally:
        await stock.close()
    assert discovery_tasks() == []


async def test_a_cluster_with_no_node_registered_is_a_clear_error(etcd_server, cluster_name):
    config = etcd_config(etcd_server, cluster_name, discovery_timeout_s=1)
    with pytest.raises(Unavailable, match=f"no node of cluster '{cluster_name}' in etcd at {etcd_server.endpoint}"):
        async with AsyncStockClient(config):
            pass
    assert discovery_tasks() == []
    blocking = StockClient(config)
    try:
        with pytest.raises(Unavailable, match=f"no node of cluster '{cluster_name}'"):
            await asyncio.to_thread(blocking.start)
    finally:
        await asyncio.to_thread(blocking.close)
    assert discovery_threads() == []


def cli(*args: str):
    """Run a ``flashstock`` command in this process; returns the click result."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1"})


async def test_the_sku_commands_find_the_nodes_with_etcd(etcd_server, cluster_name, open_session, nodes, sku):
    a, _ = nodes
    session = await open_session("node-a", ttl=5)
    await session.register(a.address)
    where = ("--etcd", etcd_server.endpoint, "--cluster", cluster_name)
    result = await asyncio.to_thread(cli, "sku", "put", sku, "--stock", "5", *where)
    assert result.exit_code == 0, result.output
    result = await asyncio.to_thread(cli, "sku", "get", sku, *where)
    assert result.exit_code == 0 and sku in result.output, result.output
    assert discovery_threads() == []


def test_a_sku_command_says_when_etcd_cannot_be_reached():
    endpoint = f"127.0.0.1:{free_port()}"
    result = cli("sku", "ls", "--etcd", endpoint, "--cluster", "nowhere")
    assert result.exit_code == 1 and endpoint in result.output, result.output
    result = cli("sku", "ls", "--etcd", endpoint, "--addr", "127.0.0.1:1")
    assert result.exit_code == 2 and "not both" in result.output, result.output
