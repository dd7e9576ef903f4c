"""A Redis and one node of a test module's own, module-scoped.

A module that checks the ledger against Redis for every SKU (reconcile,
sales reports) imports these two fixtures to override the session's: then
no other test's Redis tampering or restarts can show up in its figures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flashstock.server.local.procs import NodeProcess, RedisServer


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
