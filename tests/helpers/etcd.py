"""Fixtures with a real etcd: declare ``pytest_plugins = ["tests.helpers.etcd"]`` in a test module.

- ``etcd_server``: one etcd member for the whole session (:class:`EtcdServer`).
- ``etcd``: an asyncio etcd client of it (aetcd), for the whole session.
- ``etcd_cluster``: three members of the test's own (:class:`EtcdCluster`),
  for tests that lose a member.
- ``cluster_name``: a flashstock cluster name no other test uses, so tests
  sharing the etcd never see each other's keys.
- ``open_session``: opens :class:`EtcdSession` objects in ``cluster_name``
  (1 s leases unless told otherwise) and closes them after the test.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from flashstock.lockmgr import EtcdSession, SessionConfig, etcd_client
from flashstock.server.local.etcd import EtcdCluster, EtcdServer

OpenSession = Callable[..., Awaitable[EtcdSession]]


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """The session's one-member etcd."""
    with EtcdServer() as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[Any]:
    """An aetcd client of the session's etcd."""
    client = etcd_client([etcd_server.endpoint], timeout=5)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """Three etcd members of the test's own, stopped after it."""
    with EtcdCluster(size=3) as cluster:
        yield cluster


@pytest.fixture
def cluster_name(request: pytest.FixtureRequest) -> str:
    """A flashstock cluster name only this test uses."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:60]
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(loop_scope="session")
async def open_session(etcd: Any, cluster_name: str) -> AsyncIterator[OpenSession]:
    """``await open_session("node-a", ttl=1, client=etcd)``: a started session, closed after the test."""
    opened: list[EtcdSession] = []

    async def open_(node_id: str, ttl: int = 1, client: Any = None, **config: Any) -> EtcdSession:
        session = await EtcdSession.open(client or etcd, cluster_name, node_id, SessionConfig(ttl=ttl, **config))
        opened.append(session)
        return session

    try:
        yield open_
    finally:
        for session in opened:
            await session.close()
