"""Fixtures of the fault tests: a Redis and nodes of each test's own, on a ledger in its tmp folder.

- ``fault_stack``: a :class:`FaultStack` with a ``redis-server`` started and
  no node yet; the test starts its nodes (:meth:`FaultStack.start_node`), and
  the failpoints of :mod:`tests.helpers.failpoints` kill and replace them. Everything the
  stack started is stopped at the end, also when the test fails, and a failed
  test prints the logs of its nodes.
- ``fault_redis``: a bare ``redis-server`` of the test's own, for the
  in-process tests (no node).

Unlike the session fixtures of ``tests/conftest.py``, nothing here is shared
between tests: a fault test breaks what it is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flashstock.server.local.procs import RedisServer
from tests.helpers.stacks import FaultStack


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
