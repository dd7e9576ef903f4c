"""Stacks of a test's own: a Redis and nodes that a test may break without disturbing the others.

- ``redis_server`` / ``node`` (module-scoped fixtures): a module that checks the
  ledger against Redis for every SKU (reconcile, sales reports) imports these
  two to override the session's: then no other test's Redis tampering or
  restarts can show up in its figures. With them, ``stranger`` (raw gRPC to
  that node, :class:`~tests.helpers.stranger.Stranger`) and ``ledger`` (a
  reader of its ledger).
- :class:`PrivateStack`: a Redis and a node of one test (the ``private_stack``
  fixture); Redis may be killed and started again.
- :class:`FaultStack`: one Redis and the nodes of one fault test, on one ledger
  (the ``fault_stack`` fixture of ``tests/fault``); the failpoints of
  :mod:`tests.helpers.failpoints` kill and replace them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from flashstock.client import ClientConfig, RetryPolicy
from flashstock.server.ledger import Ledger, sqlite_url
from flashstock.server.local.procs import NodeProcess, RedisServer
from tests.helpers.stranger import Stranger

__all__ = ["FaultStack", "PrivateStack", "ledger", "node", "redis_server", "stranger"]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """This module's own Redis."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def node(redis_server: RedisServer) -> Iterator[NodeProcess]:
    """The only node on this module's Redis, so its ledger gets every log entry."""
    with NodeProcess(redis_server.url, workers=1) as n:
        yield n


@pytest.fixture
async def stranger(node: NodeProcess) -> AsyncIterator[Stranger]:
    """A caller of ``node`` by raw gRPC built from its reflection (no client library)."""
    s = Stranger([node.address])
    yield s
    await s.close()


@pytest.fixture
def ledger(node: NodeProcess) -> Iterator[Ledger]:
    """A reader of ``node``'s ledger."""
    reader = Ledger(sqlite_url(node.data_dir))
    yield reader
    reader.close()


class PrivateStack:
    """A Redis and a node of one test's own: Redis may be killed and started again."""

    def __init__(self, redis_server: RedisServer, node: NodeProcess) -> None:
        self.redis_server = redis_server
        """The Redis in use now (replaced by :meth:`restart_redis`)."""
        self.node = node
        """The node, which outlives its Redis."""
        self._servers = [redis_server]

    def kill_redis(self) -> None:
        """SIGKILL the Redis: a crash."""
        self.redis_server.kill()

    def restart_redis(self, **kwargs) -> RedisServer:  # type: ignore[no-untyped-def]
        """Kill the Redis if it still runs, and start a new one on its port.

        ``kwargs`` go to :class:`RedisServer` (a folder, persistence flags).
        """
        self.kill_redis()  # else the new one cannot bind, and the old one answers its PING
        server = RedisServer(port=self.redis_server.port, **kwargs)
        self._servers.append(server)
        server.start()
        self.redis_server = server
        return server

    def stop(self) -> None:
        """Stop every Redis the stack started."""
        for server in self._servers:
            server.stop()


class FaultStack:
    """One Redis (replaced when killed) and the nodes of one test, on one ledger."""

    def __init__(self, folder: Path) -> None:
        self.data_dir = folder / "data"
        """The nodes' data folder: every node of the test shares its SQLite ledger."""
        self.redis: RedisServer | None = None
        """The Redis in use now (replaced by :meth:`start_redis`)."""
        self.node: NodeProcess | None = None
        """The node in use now (replaced by :meth:`start_node`)."""
        self._servers: list[RedisServer] = []
        self._nodes: list[NodeProcess] = []
        self._ledgers: list[Ledger] = []
        self._node_args: dict = {}

    @property
    def ledger_url(self) -> str:
        """The ledger every node of the stack writes."""
        return sqlite_url(self.data_dir)

    def ledger(self) -> Ledger:
        """A reader of the ledger (closed with the stack)."""
        ledger = Ledger(self.ledger_url)
        self._ledgers.append(ledger)
        return ledger

    def start_redis(self, port: int | None = None) -> RedisServer:
        """Start an empty Redis (on ``port``: where a killed one listened) and make it current."""
        server = RedisServer(port=port)
        self._servers.append(server)
        server.start()
        self.redis = server
        return server

    def start_node(self, *, port: int | None = None, workers: int = 1, extra_args: tuple[str, ...] = ()) -> NodeProcess:
        """Start a node on the current Redis and the stack's ledger, and make it current.

        ``port``: where a killed node listened (its clients keep their address).
        """
        assert self.redis is not None
        self._node_args = {"workers": workers, "extra_args": extra_args}
        node = NodeProcess(self.redis.url, workers=workers, extra_args=extra_args, data_dir=self.data_dir)
        if port is not None:
            node.port = port  # a node restarted in place: clients keep their address
        self._nodes.append(node)
        node.start()
        self.node = node
        return node

    def restart_node(self, port: int) -> NodeProcess:
        """Start a node like the last one, on ``port``, the current Redis and the same ledger."""
        return self.start_node(port=port, **self._node_args)

    def client_config(self, *, deadline_s: float = 15.0, connections: int = 1) -> ClientConfig:
        """Settings of a client of the current node that keeps retrying for ``deadline_s``
        (long enough to span a restart of Redis or of the node)."""
        assert self.node is not None
        return ClientConfig(
            addresses=[self.node.address],
            deadline_s=deadline_s,
            attempt_timeout_s=5.0,
            retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, max_attempts=1000),
            connections_per_address=connections,
        )

    def logs(self) -> str:
        """The logs of every node started, oldest first."""
        out = []
        for node in self._nodes:
            try:
                text = node.log()
            except OSError as exc:  # a node that failed to start removed its log
                text = f"(no log: {exc})"
            out.append(f"--- log of node {node.address} (pid {node.proc.pid if node.proc else '-'}) ---\n{text}")
        return "\n".join(out)

    def stop(self) -> None:
        """Stop every node (workers included) and every Redis the stack started."""
        for node in self._nodes:
            with contextlib.suppress(Exception):
                node.stop()  # its workers too, also those of a node killed by a failpoint
        for node in self._nodes:
            if node.log_path is not None:
                with contextlib.suppress(OSError):
                    node.log_path.unlink()
        for server in self._servers:
            server.stop()
        for ledger in self._ledgers:
            ledger.close()
