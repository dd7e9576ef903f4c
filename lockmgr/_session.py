"""A node's session: one etcd lease, kept alive, that says when it is lost.

Modelled on etcd's ``client/v3/concurrency/session.go``: a session owns one
lease; everything the node holds in etcd (its registration, the owner keys of
its shards) is bound to that lease, so it all disappears together when the
node stops refreshing it. :attr:`EtcdSession.lost` plays the part of
``Session.Done()``.

The session counts itself lost at whichever comes first:

- etcd answers a keepalive with TTL <= 0, or refuses a write because the
  lease is not found: the lease is gone;
- its own **local deadline** passes: ``sent + TTL - margin``, where ``sent``
  is the monotonic time the last successful keepalive was *sent* (etcd
  restarted the lease's clock after that, so the lease outlives the
  deadline by at least ``margin``). A timer checks it; nothing waits for
  etcd to say so, because a node that was paused, or cut off from etcd,
  hears nothing.

A failed keepalive (a member down, a timeout) is retried quickly until the
deadline: losing one etcd member of three must not cost a node its shards.

Lost is final, as in etcd: the lease is not refreshed any more and a new
session (a new lease) is needed to take part again. Whoever runs shard duties
stops them on :attr:`~EtcdSession.lost`; fencing epochs make a late write
harmless anyway (:class:`~flashstock.lockmgr.ShardLease`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._client import is_lease_not_found, snapshots
from ._errors import LeaseLost, NodeIdTaken
from ._keys import ClusterKeys, check_id, tail

if TYPE_CHECKING:
    import aetcd

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """How a session keeps its lease."""

    ttl: int = 5
    """Lease time to live, whole seconds (etcd's unit): how long a node that
    stops refreshing keeps its shards. etcd raises a TTL below its floor
    (1.5 election timeouts) to the floor; the local deadline keeps using
    this value."""

    keepalive_interval: float | None = None
    """Seconds between keepalives; ``None``: a third of the TTL."""

    margin: float | None = None
    """Seconds before the TTL runs out that the session counts itself lost,
    so it stops before etcd frees its keys; ``None``: a fifth of the TTL."""

    def __post_init__(self) -> None:
        if isinstance(self.ttl, bool) or not isinstance(self.ttl, int) or self.ttl < 1:
            raise ValueError(f"ttl must be a whole number of seconds >= 1, not {self.ttl!r}")
        if not 0 <= self.margin_s < self.ttl:
            raise ValueError(f"margin must be >= 0 and below the ttl ({self.ttl} s), not {self.margin}")
        if not 0 < self.interval_s < self.ttl - self.margin_s:
            raise ValueError(
                f"keepalive_interval must be > 0 and below ttl - margin ({self.ttl - self.margin_s} s), "
                f"not {self.keepalive_interval}"
            )

    @property
    def interval_s(self) -> float:
        """The keepalive interval in effect, seconds."""
        return self.keepalive_interval if self.keepalive_interval is not None else self.ttl / 3

    @property
    def margin_s(self) -> float:
        """The margin in effect, seconds."""
        return self.margin if self.margin is not None else self.ttl / 5


DEFAULT_SESSION = SessionConfig()
"""A 5 s lease, refreshed every 1.7 s, counted lost 1 s early."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A live node, as registered in etcd."""

    node: str
    """The node id."""
    address: str
    """Where its gRPC service listens (``host:port``)."""
    started_ms: int
    """When it registered, unix ms on its own clock (for people, not for decisions)."""
    lease: int
    """The id of the etcd lease its registration is bound to."""
    metrics: str = ""
    """Where its Prometheus metrics are served (``host:port``); ``""``: nowhere, or a
    registration older than this field."""


def _node_info(node: str, value: bytes, lease: int) -> NodeInfo | None:
    try:
        data = json.loads(value)
        return NodeInfo(node, str(data["address"]), int(data["started_ms"]), lease, str(data.get("metrics", "")))
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed node registration %r: %r", node, value)
        return None


async def _read_nodes(client: aetcd.Client, keys: ClusterKeys) -> tuple[dict[str, NodeInfo], int]:
    result = await client.get_prefix(keys.nodes.encode())
    nodes = {}
    for kv in result:
        node = tail(kv.key, keys.nodes)
        info = _node_info(node, kv.value, kv.lease)
        if info is not None:
            nodes[node] = info
    return nodes, result.header.revision


async def live_nodes(client: aetcd.Client, cluster: str) -> dict[str, NodeInfo]:
    """The registered nodes of ``cluster`` (those whose sessions live), by id."""
    nodes, _ = await _read_nodes(client, ClusterKeys(cluster))
    return nodes


def watch_nodes(client: aetcd.Client, cluster: str) -> AsyncGenerator[dict[str, NodeInfo], None]:
    """The live nodes of ``cluster`` now, then again whenever a node joins or leaves.

    Snapshots, not events: each item is the whole map, ready for
    :func:`~flashstock.lockmgr.assign`. Stop iterating (``aclose()``) to end the watch.
    """
    keys = ClusterKeys(cluster)
    return snapshots(client, [keys.nodes], lambda: _read_nodes(client, keys))


class EtcdSession:
    """One node's etcd lease, kept alive on its own task, and the node's registration.

    ::

        async with EtcdSession(client, "prod", "node-a", SessionConfig(ttl=5)) as session:
            await session.register("10.0.0.7:50051")
            lease = await claim(session, shard)     # bound to this session's lease
            await session.lost.wait()               # stop the shard duties now

    Leaving the ``async with`` block (or :meth:`close`) revokes the lease, so
    the node's keys go at once instead of one TTL later.
    """

    def __init__(
        self, client: aetcd.Client, cluster: str, node_id: str, config: SessionConfig = DEFAULT_SESSION
    ) -> None:
        self.client = client
        """The etcd client the session talks through."""
        self.keys = ClusterKeys(cluster)
        """The cluster's key names."""
        self.node_id = check_id("node id", node_id)
        """This node's id: the value of its owner keys."""
        self.config = config
        """How the lease is kept."""
        self.lease_id = 0
        """The etcd lease id (0 until started)."""
        self.granted_ttl = 0
        """The TTL etcd granted (it may raise a short one to its floor)."""
        self.lost = asyncio.Event()
        """Set once the session is lost (or closed); never cleared."""
        self.lost_reason: str | None = None
        """Why the session was lost, for logs."""
        self._deadline = -math.inf
        self._tasks: list[asyncio.Task[None]] = []
        self._keepalive_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def cluster(self) -> str:
        """The cluster's name."""
        return self.keys.cluster

    @classmethod
    async def open(
        cls, client: aetcd.Client, cluster: str, node_id: str, config: SessionConfig = DEFAULT_SESSION
    ) -> EtcdSession:
        """A started session (``await EtcdSession.open(...)``); :meth:`close` it when done."""
        return await cls(client, cluster, node_id, config).start()

    async def start(self) -> EtcdSession:
        """Grant the lease and start keeping it alive (once; later calls do nothing)."""
        if self.lease_id:
            return self
        if self._closed:
            raise LeaseLost("the session was closed; open a new one")
        sent = time.monotonic()
        lease = await self.client.lease(self.config.ttl)
        self.lease_id = lease.id
        self.granted_ttl = lease.ttl
        self._renewed(sent, lease.ttl)
        self._keepalive_task = asyncio.create_task(self._keepalive(), name=f"etcd keepalive {self.node_id}")
        watchdog = asyncio.create_task(self._watchdog(), name=f"lease deadline {self.node_id}")
        self._tasks = [self._keepalive_task, watchdog]
        return self

    def deadline(self) -> float:
        """The local deadline (``time.monotonic()`` seconds): the session counts as lost from then on."""
        return self._deadline

    def alive(self) -> bool:
        """True while the session is not lost and its local deadline has not passed."""
        return not self.lost.is_set() and time.monotonic() < self._deadline

    def ensure_alive(self) -> None:
        """Raise :class:`LeaseLost` unless :meth:`alive`."""
        if not self.alive():
            raise LeaseLost(
                f"session of node {self.node_id!r} is lost ({self.lost_reason or 'its local deadline passed'}); "
                "open a new session"
            )

    def lease_gone(self) -> LeaseLost:
        """Record that etcd no longer knows the lease; returns the error to raise."""
        self._lose("etcd: the lease is not found (expired or revoked)")
        return LeaseLost(f"the lease of node {self.node_id!r} is gone in etcd; open a new session")

    async def register(self, address: str, *, wait: float | None = None, metrics: str = "") -> NodeInfo:
        """Register this node as live under the session's lease: ``nodes/<node id>``.

        ``address`` is its gRPC address, ``metrics`` where its metrics are
        served (``host:port``, or ``""``), both ``host:port``.

        A node id belongs to one process: if another live session holds it
        (an earlier run of this node whose lease has not expired yet), wait
        up to ``wait`` seconds for it to go (``None``: one lease TTL and a
        second), then raise :class:`NodeIdTaken`. Registering again updates
        the address.
        """
        key = self.keys.node(self.node_id).encode()
        tx = self.client.transactions
        give_up = time.monotonic() + (self.config.ttl + 1.0 if wait is None else wait)
        while True:
            self.ensure_alive()
            started_ms = int(time.time() * 1000)
            record: dict[str, object] = {"address": address, "started_ms": started_ms}
            if metrics:
                record["metrics"] = metrics
            value = json.dumps(record).encode()
            try:
                ok, responses = await self.client.transaction(
                    # Unregistered: take the id.
                    compare=[tx.create(key) == 0],
                    success=[tx.put(key, value, lease=self.lease_id)],
                    failure=[tx.get(key)],
                )
                if ok:
                    return NodeInfo(self.node_id, address, started_ms, self.lease_id, metrics)
                current = responses[0][0][1]
                if current.lease == self.lease_id:
                    ok, _ = await self.client.transaction(
                        # Still the registration just read, which is ours:
                        # nobody took the id in between.
                        compare=[tx.mod(key) == current.mod_revision],
                        success=[tx.put(key, value, lease=self.lease_id)],
                        failure=[],
                    )
                    if ok:
                        return NodeInfo(self.node_id, address, started_ms, self.lease_id, metrics)
                    continue
            except Exception as exc:
                if is_lease_not_found(exc):
                    raise self.lease_gone() from None
                raise
            if time.monotonic() >= give_up:
                raise NodeIdTaken(self.cluster, self.node_id)
            await asyncio.sleep(0.1)

    async def live_nodes(self) -> dict[str, NodeInfo]:
        """The registered nodes of this session's cluster, by id."""
        return await live_nodes(self.client, self.cluster)

    def watch_nodes(self) -> AsyncGenerator[dict[str, NodeInfo], None]:
        """The live nodes now and after every join or leave (see :func:`watch_nodes`)."""
        return watch_nodes(self.client, self.cluster)

    async def close(self) -> None:
        """Stop the keepalive and revoke the lease: the node's registration and owner keys go at once."""
        if self._closed:
            return
        self._closed = True
        # Lost first, so the duties stop before a successor can claim.
        self._lose("closed")
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self.lease_id:
            try:
                await asyncio.wait_for(self.client.revoke_lease(self.lease_id), timeout=self.config.ttl)
            except Exception as exc:
                if not is_lease_not_found(exc):
                    log.warning(
                        "could not revoke lease %x of node %s (it expires by itself): %r",
                        self.lease_id,
                        self.node_id,
                        exc,
                    )

    async def __aenter__(self) -> EtcdSession:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "lost" if self.lost.is_set() else "alive"
        return f"EtcdSession(cluster={self.cluster!r}, node={self.node_id!r}, lease={self.lease_id:x}, {state})"

    # -- the two tasks -----------------------------------------------------

    def _renewed(self, sent: float, ttl: int) -> None:
        # etcd restarted the lease's clock after `sent`; a TTL raised to
        # etcd's floor does not lengthen ours.
        deadline = sent + min(ttl, self.config.ttl) - self.config.margin_s
        self._deadline = max(self._deadline, deadline)

    def _lose(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        if reason != "closed":
            log.warning("etcd session of node %s lost: %s", self.node_id, reason)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def _keepalive(self) -> None:
        interval = self.config.interval_s
        retry = min(interval / 4, 0.25)
        next_at = time.monotonic() + interval
        while not self.lost.is_set():
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            sent = time.monotonic()
            left = self._deadline - sent
            if left <= 0:
                return  # the watchdog declares it
            try:
                # Never wait past the deadline: the watchdog declares the
                # session lost then anyway, and a hung member must not
                # keep us from trying another.
                reply: Any = await asyncio.wait_for(
                    self.client.refresh_lease(self.lease_id), timeout=min(interval, left)
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info(
                    "keepalive of lease %x failed after %.2f s (%.2f s to the deadline), retrying: %r",
                    self.lease_id,
                    time.monotonic() - sent,
                    self._deadline - time.monotonic(),
                    exc,
                )
                next_at = time.monotonic() + retry
                continue
            if reply is None:  # the stream ended without an answer (a member going away)
                log.info("keepalive of lease %x got no answer, retrying", self.lease_id)
                next_at = time.monotonic() + retry
                continue
            if reply.TTL <= 0:
                self._lose("etcd: the lease expired")
                return
            self._renewed(sent, reply.TTL)
            next_at = sent + interval

    async def _watchdog(self) -> None:
        while not self.lost.is_set():
            left = self._deadline - time.monotonic()
            if left <= 0:
                self._lose(
                    f"no keepalive succeeded in time: the local deadline (TTL {self.config.ttl} s - margin) passed"
                )
                return
            await asyncio.sleep(left)
