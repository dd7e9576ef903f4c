"""Fixtures of the fault tests: a Redis and nodes of each test's own, on a ledger in its tmp folder.

- ``fault_stack``: a :class:`FaultStack` with a ``redis-server`` started and
  no node yet; the test starts its nodes (:meth:`FaultStack.start_node`), and
  the failpoints of :mod:`failpoints` kill and replace them. Everything the
  stack started is stopped at the end, also when the test fails, and a failed
  test prints the logs of its nodes.
- ``fault_redis``: a bare ``redis-server`` of the test's own, for the
  in-process tests (no node).

Unlike the session fixtures of ``tests/conftest.py``, nothing here is shared
between tests: a fault test breaks what it is given.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from flashstock.client import ClientConfig, RetryPolicy  # noqa: E402
from flashstock.server.local.procs import NodeProcess, RedisServer  # noqa: E402
from flashstock.server.ledger import Ledger, sqlite_url  # noqa: E402


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
        self._children: list[psutil.Process] = []
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
        self._children += psutil.Process(node.pid).children(recursive=True)
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
                node.stop()
        for child in self._children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        for node in self._nodes:
            if node.log_path is not None:
                with contextlib.suppress(OSError):
                    node.log_path.unlink()
        for server in self._servers:
            server.stop()
        for ledger in self._ledgers:
            ledger.close()


@pytest.fixture
def fault_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FaultStack]:
    """A Redis of the test's own, a ledger in its tmp folder; the test starts the nodes."""
    stack = FaultStack(tmp_path)
    try:
        stack.start_redis()
        yield stack
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(stack.logs())
        stack.stop()


@pytest.fixture
def fault_redis() -> Iterator[RedisServer]:
    """A ``redis-server`` of the test's own (no node)."""
    with RedisServer() as server:
        yield server
