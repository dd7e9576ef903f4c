"""Shared fixtures: a real ``redis-server`` and real flashstock nodes on free loopback ports.

Session fixtures start the processes once, wait until they answer, and stop
them at the end of the session, also when a test fails or the run is
interrupted. Function fixtures hand each test its own clients and a fresh
SKU id, so tests never see each other's stock.

- ``redis_server``: a :class:`RedisServer` (no persistence).
- ``node``: one node process (``workers=1``) on it.
- ``node_2w``: a second node on the same Redis with two worker processes
  sharing one port (started only by the tests that ask for it).
- ``stock`` / ``admin``: blocking clients of ``node``; ``astock`` /
  ``aadmin``: the asyncio ones.
- ``redis``: a plain ``redis.Redis`` on the session server, for inspection
  (INFO commandstats, TIME); never to fake the state a promise test checks.
- ``sku``: a fresh, unique SKU id.
- ``private_stack``: a Redis and a node of the test's own, for tests that
  kill or restart Redis.
- ``postgres``: the session's PostgreSQL server (a :class:`PostgresServer`:
  its own cluster in a temp folder, started on first use).
- ``engine_url``: a fresh, empty ledger URL per test, once per engine: a new
  SQLite file (``[sqlite]``) or a new database on the session's PostgreSQL
  (``[postgresql]``, dropped afterwards).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py

from flashstock.client import (
    AdminClient,
    AsyncAdminClient,
    AsyncStockClient,
    ClientConfig,
    StockClient,
)
from flashstock.server.local.procs import NodeProcess, PostgresServer, RedisServer
from tests.helpers.processes import QUIET, running_node
from tests.helpers.stacks import PrivateStack


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    # Keep each phase's report on the item, so fixtures can tell a failed test.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _print_log_if_failed(request: pytest.FixtureRequest, node: NodeProcess) -> None:
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- log of node {node.address} ---\n{node.log()}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's ``redis-server``."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def node(redis_server: RedisServer) -> Iterator[NodeProcess]:
    """A node with one worker process on the session's Redis."""
    with running_node(redis_server.url, workers=1, extra_args=QUIET) as n:
        yield n


@pytest.fixture(scope="session")
def node_2w(redis_server: RedisServer, node: NodeProcess) -> Iterator[NodeProcess]:
    """A second node on the same Redis: two worker processes sharing one port.

    It shares the first node's ledger: nodes on one Redis drain the same
    shard logs, so each must persist into the same ledger.
    """
    with running_node(redis_server.url, workers=2, ledger=node.ledger_url, extra_args=QUIET) as n:
        yield n


@pytest.fixture
def client_config(node: NodeProcess) -> ClientConfig:
    """Client settings that reach ``node``."""
    return ClientConfig(addresses=[node.address])


@pytest.fixture
def stock(request: pytest.FixtureRequest, node: NodeProcess, client_config: ClientConfig) -> Iterator[StockClient]:
    """A blocking StockService client of ``node``."""
    client = StockClient(client_config)
    try:
        yield client
    finally:
        client.close()
        _print_log_if_failed(request, node)


@pytest.fixture
def admin(client_config: ClientConfig) -> Iterator[AdminClient]:
    """A blocking AdminService client of ``node``."""
    client = AdminClient(client_config)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def astock(client_config: ClientConfig) -> AsyncStockClient:
    """An asyncio StockService client of ``node``."""
    client = AsyncStockClient(client_config)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def aadmin(client_config: ClientConfig) -> AsyncAdminClient:
    """An asyncio AdminService client of ``node``."""
    client = AsyncAdminClient(client_config)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[redis_py.Redis]:
    """A blocking Redis client of the session's server: for inspection only."""
    client = redis_py.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def sku(request: pytest.FixtureRequest) -> str:
    """A SKU id no other test uses: the test's name and a random suffix."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:60]
    return f"{name}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def private_stack(request: pytest.FixtureRequest) -> Iterator[PrivateStack]:
    """A Redis and a one-worker node on it, both the test's own."""
    server = RedisServer()
    stack: PrivateStack | None = None
    try:
        server.start()
        with running_node(server.url, workers=1) as n:
            stack = PrivateStack(server, n)
            try:
                yield stack
            finally:
                _print_log_if_failed(request, n)
    finally:
        if stack is not None:
            stack.stop()
        else:
            server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server, stopped (and its folder removed) at the end."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A ledger URL of an empty database of the test's own, on each engine.

    PostgreSQL is started only when a ``[postgresql]`` test runs; the
    database is created for the test and dropped after it (with any
    connection still open on it).
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = f"ledger_{uuid.uuid4().hex[:16]}"
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)
