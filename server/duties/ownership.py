"""A node in a cluster: its etcd session, and the shards it owns.

:class:`Ownership` runs in the process of a node that runs the duties. It
keeps one etcd session (a lease, kept alive) with the node registered under
it, watches the live nodes, the operator's pins and drains and the shard
owners, and keeps what the node owns equal to what :func:`assign` gives it:

- a shard assigned here and unowned is **claimed** (an etcd transaction on
  its owner key, bound to the lease; the key's create revision is the
  shard's epoch), then **fenced** (the epoch is raised in Redis and recorded
  in the ledger), and only then are its duties started;
- a shard assigned elsewhere is **given up**: its duties are stopped (and
  writes under way finished), then its owner key is deleted, so the next
  owner can claim it;
- a shard whose duty write was refused for its epoch is dropped at once.

When the session is lost (etcd said so, or the local deadline passed: see
:class:`~flashstock.lockmgr.EtcdSession`), every duty stops at once and a
new session is opened; the shards are claimed again under new epochs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from flashstock.lockmgr import (
    NO_ACCESS,
    CoordinationError,
    EtcdAccess,
    EtcdSession,
    LeaseLost,
    NodeIdTaken,
    NodeInfo,
    Overrides,
    SessionConfig,
    ShardCountMismatch,
    ShardLease,
    ShardOwner,
    assign,
    claim,
    etcd_client,
    init_cluster,
    release,
    shard_ranges,
    watch_overrides,
    watch_owners,
)
from flashstock.server._logs import log_context
from flashstock.server._metrics import METRICS
from flashstock.server.duties.audit import AuditCopier
from flashstock.server.duties.shard import ShardDuties, stop_task
from flashstock.server.ledger import Fenced, Ledger
from flashstock.server.store.keys import ShardKeys
from flashstock.server.store.redis import AsyncRedis
from flashstock.server.store.replies import FenceReply

if TYPE_CHECKING:
    import aetcd

log = logging.getLogger(__name__)

KEEP_DUTIES_ON_LOSS = "FLASHSTOCK_FAILPOINT_KEEP_DUTIES_ON_LOSS"
"""A test's failpoint (environment variable, "1"): on losing its session the
node keeps its duties running until the stores refuse them, as if the pause
had struck between its own deadline check and a write. Shows that the epoch
at the store, not the node's good behaviour, keeps a stale owner out."""


class Ownership:
    """Keeps the shards this node owns in step with the cluster map, and runs their duties."""

    def __init__(
        self,
        endpoints: list[str],
        cluster: str,
        node_id: str,
        address: str,
        shards: int,
        session: SessionConfig,
        redis: AsyncRedis,
        ledger: Ledger,
        duties: ShardDuties,
        metrics_address: str = "",
        *,
        access: EtcdAccess = NO_ACCESS,
    ) -> None:
        self.endpoints = endpoints
        self.access = access
        """TLS files and the etcd user of the node's etcd client."""
        self.cluster = cluster
        self.node_id = node_id
        self.address = address
        self.metrics_address = metrics_address
        """Where the node's metrics are served (``host:port``, or ``""``), registered beside its address."""
        self.shards = shards
        self._session_config = session
        self._redis = redis
        self._scripts = duties.scripts
        self._ledger = ledger
        self.duties = duties
        duties.on_fenced = self.on_fenced
        self.owned: dict[int, ShardLease] = {}
        """The shards this node owns, with their leases (epochs)."""
        self._client: aetcd.Client | None = None
        self._nodes: dict[str, NodeInfo] = {}
        self._overrides = Overrides()
        self._owners: dict[int, ShardOwner] = {}
        self._seen: set[str] = set()  # the watched maps read at least once in this session
        self._changed = asyncio.Event()
        self._fenced: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._audit_task: asyncio.Task[None] | None = None
        self._session: EtcdSession | None = None  # the current one, for abandon()
        self._keep_on_loss = os.environ.get(KEEP_DUTIES_ON_LOSS) == "1"

    async def start(self, timeout: float = 10.0) -> None:
        """Join the cluster's configuration (the shard count must match) and start following it.

        Raises :class:`CoordinationError` (:class:`ShardCountMismatch` for
        another shard count) when the node must not start.
        """
        self._client = etcd_client(self.endpoints, access=self.access)
        try:
            await asyncio.wait_for(init_cluster(self._client, self.cluster, self.shards), timeout)
        except ShardCountMismatch:
            await self._client.close()
            raise
        except (TimeoutError, Exception) as exc:
            await self._client.close()
            raise CoordinationError(
                f"etcd: cannot reach {','.join(self.endpoints)} within {timeout:.0f} s: {exc!r}"
            ) from None
        self._task = asyncio.create_task(self._run(), name="shard ownership")
        # Every node copies the shard changes' audit records (idempotently): no role to hand over.
        copier = AuditCopier(self._client, self.cluster, self._ledger)
        self._audit_task = asyncio.create_task(copier.run(), name="audit copier")

    def on_fenced(self, shard: int) -> None:
        """A duty write of ``shard`` was refused for its epoch (called by :class:`ShardDuties`)."""
        self._fenced.add(shard)
        self._changed.set()

    async def stop(self) -> None:
        """Stop the duties, then give every shard up (the session's lease is revoked)."""
        if self._audit_task is not None:
            await stop_task(self._audit_task)
        if self._task is not None:
            await stop_task(self._task)
        await self.duties.stop()
        if self._client is not None:
            await self._client.close()

    async def abandon(self) -> None:
        """The node is dying (its main process is gone): revoke the lease now, so its shards fail over at once.

        Unlike :meth:`stop`, the duties are not stopped first (there is no
        time for it); a duty write that races a successor's claim is refused
        by the epoch.
        """
        session = self._session
        if session is not None and session.lease_id and self._client is not None:
            await self._client.revoke_lease(session.lease_id)

    # -- the follower ------------------------------------------------------

    async def _run(self) -> None:
        assert self._client is not None
        delay = 0.2
        while True:
            session = EtcdSession(self._client, self.cluster, self.node_id, self._session_config)
            self._session = session
            try:
                await session.start()
                await session.register(self.address, metrics=self.metrics_address)
                log.info(
                    "node %s joined cluster %r at %s (lease %x)",
                    self.node_id,
                    self.cluster,
                    self.address,
                    session.lease_id,
                )
                delay = 0.2
                await self._follow(session)
            except asyncio.CancelledError:
                await self.duties.assign({})
                self.owned.clear()
                await asyncio.shield(session.close())
                raise
            except NodeIdTaken as exc:
                log.error("%s; trying again", exc)
            except (LeaseLost, CoordinationError) as exc:
                log.warning("etcd session: %s", exc)
            except Exception as exc:  # noqa: BLE001 - etcd unreachable and such: a new session later
                log.warning("etcd session failed: %r; a new one in %.1f s", exc, delay)
            await self._lost(session)
            await session.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _lost(self, session: EtcdSession) -> None:
        """Stop every duty now: the session's lease may be gone, and the shards with it."""
        if self.owned:
            METRICS.etcd_session_losses.inc()
            if self.duties.incidents is not None:
                self.duties.incidents.record(
                    "session_lost",
                    f"etcd session lost ({session.lost_reason or 'an etcd call failed'}): "
                    f"the duties of shards {shard_ranges(self.owned)} stopped",
                )
            log.warning(
                "node %s lost its etcd session (%s): stopping the duties of %d shards",
                self.node_id,
                session.lost_reason or "an etcd call failed",
                len(self.owned),
            )
        if self._keep_on_loss and self.owned:
            log.warning("failpoint %s: the duties run on until the stores refuse them", KEEP_DUTIES_ON_LOSS)
            deadline = time.monotonic() + 10 * self._session_config.ttl
            while self.duties.epochs and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        await self.duties.assign({})
        self.owned.clear()
        METRICS.owned_shards.set(0)

    async def _follow(self, session: EtcdSession) -> None:
        """Follow the cluster map until the session is lost."""
        assert self._client is not None
        self._seen.clear()
        self._fenced.clear()
        feeds = [
            asyncio.create_task(self._feed(session.watch_nodes(), "_nodes"), name="watch nodes"),
            asyncio.create_task(
                self._feed(watch_overrides(self._client, self.cluster), "_overrides"), name="watch overrides"
            ),
            asyncio.create_task(self._feed(watch_owners(self._client, self.cluster), "_owners"), name="watch owners"),
        ]
        lost = asyncio.create_task(session.lost.wait())
        # The loss ends the following at once, even while a claim waits on
        # etcd: the caller stops the duties then (_lost).
        following = asyncio.create_task(self._follow_changes(session, feeds), name="follow the cluster map")
        try:
            await asyncio.wait({following, lost}, return_when=asyncio.FIRST_COMPLETED)
            if following.done():
                following.result()  # a failure: raise, so a new session starts
        finally:
            lost.cancel()
            await stop_task(following)
            for feed in feeds:
                feed.cancel()
            await asyncio.gather(*feeds, return_exceptions=True)

    async def _follow_changes(self, session: EtcdSession, feeds: list[asyncio.Task[None]]) -> None:
        while True:
            changed = asyncio.create_task(self._changed.wait())
            # A second's tick: claims refused while an old owner's key lingered are tried again.
            await asyncio.wait({changed, *feeds}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            for feed in feeds:
                if feed.done():
                    feed.result()  # a failed first read: raise, so a new session starts
            self._changed.clear()
            if self._ready():
                await self._reconcile(session)

    async def _feed(self, snapshots: AsyncGenerator[object, None], attribute: str) -> None:
        try:
            async for value in snapshots:
                setattr(self, attribute, value)
                self._seen.add(attribute)
                self._changed.set()
        finally:
            with contextlib.suppress(Exception):
                await snapshots.aclose()

    def _ready(self) -> bool:
        return self._seen == {"_nodes", "_overrides", "_owners"}

    def desired(self) -> set[int]:
        """The shards the current map gives this node."""
        placement = assign(self.shards, self._nodes, self._overrides.pins, self._overrides.drains)
        return {shard for shard, node in placement.items() if node == self.node_id}

    async def _reconcile(self, session: EtcdSession) -> None:
        desired = self.desired() if self.node_id in self._nodes else set()
        fenced, self._fenced = self._fenced & set(self.owned), set()
        give_up = (set(self.owned) - desired) | fenced
        if give_up:
            await self._give_up(session, give_up, fenced)
        wanted = [
            shard
            for shard in sorted(desired - set(self.owned))
            if shard not in self._owners or self._owners[shard].lease == session.lease_id
        ]
        if wanted:
            await self._take(session, wanted)

    async def _give_up(self, session: EtcdSession, shards: set[int], fenced: set[int]) -> None:
        keep = {s: lease for s, lease in self.owned.items() if s not in shards}
        # Duties first (and their writes under way), then the keys: only then may another node claim.
        await self.duties.assign({s: lease.epoch for s, lease in keep.items()})
        for shard in sorted(shards):
            lease = self.owned.pop(shard)
            why = "fenced" if shard in fenced else "moved"
            with contextlib.suppress(Exception):
                await release(session, lease)
            METRICS.shard_releases.labels(why=why).inc()
        METRICS.owned_shards.set(len(self.owned))
        log.info("node %s gave up shards %s", self.node_id, shard_ranges(shards))

    async def _take(self, session: EtcdSession, shards: list[int]) -> None:
        leases = await asyncio.gather(*(claim(session, shard) for shard in shards))
        claimed = [lease for lease in leases if lease is not None]
        if not claimed:
            return
        fenced_ok = await self._fence(claimed)
        for lease in claimed:
            if lease.shard not in fenced_ok:
                with contextlib.suppress(Exception):
                    await release(session, lease)
        if not fenced_ok:
            return
        if not session.alive():
            raise LeaseLost("the session was lost while claiming")
        for lease in claimed:
            if lease.shard in fenced_ok:
                self.owned[lease.shard] = lease
        METRICS.shard_claims.inc(len(fenced_ok))
        METRICS.owned_shards.set(len(self.owned))
        await self.duties.assign({s: lease.epoch for s, lease in self.owned.items()})
        log.info(
            "node %s owns shards %s (epochs %d..%d)",
            self.node_id,
            shard_ranges(fenced_ok),
            min(c.epoch for c in claimed),
            max(c.epoch for c in claimed),
        )

    def _record_failover(self, before: str, shards: list[int], epochs: dict[int, int]) -> None:
        """This node took ``shards`` over from ``before``: one incident, a failover or a handoff."""
        if self.duties.incidents is None:
            return
        # Still registered: the map moved them (a node joined, a pin, a drain), a handoff; else its lease
        # ended, a failover.
        handoff = before in self._nodes
        why = "it is still in the cluster" if handoff else "it is gone from the cluster"
        self.duties.incidents.record(
            "handoff" if handoff else "failover",
            f"took shards {shard_ranges(shards)} over from {before} ({why}); "
            f"epochs {min(epochs[s] for s in shards)}..{max(epochs[s] for s in shards)}",
            shards[0] if len(shards) == 1 else -1,
        )

    async def _fence(self, leases: list[ShardLease]) -> set[int]:
        """Raise each claimed shard's epoch in Redis and record it in the ledger; the shards where both took it."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                k = ShardKeys(lease.shard)
                await self._scripts.fence(keys=[k.meta], args=[k.prefix, lease.epoch, self.node_id], client=pipe)
            replies = await pipe.execute()
        ok = set()
        for lease, fenced in zip(leases, map(FenceReply.decode, replies), strict=True):
            if not fenced.taken:
                METRICS.fenced_writes.labels(store="redis", duty="claim").inc()
                self.duties.fenced_write(lease.shard, "redis", "claim", lease.epoch)
                log.error(
                    "shard %d: claimed under epoch %d but Redis holds epoch %d (etcd was reset?): not taking it",
                    lease.shard,
                    lease.epoch,
                    fenced.stored_epoch,
                    extra=log_context(shard=lease.shard, epoch=lease.epoch),
                )
            else:
                ok.add(lease.shard)
        now_ms = int(time.time() * 1000)

        taken_from: dict[str, list[int]] = {}  # an earlier owner -> the shards this node took from it

        def record() -> set[int]:
            refused = set()
            for lease in leases:
                if lease.shard in ok:
                    try:
                        before = self._ledger.claim_epoch(lease.shard, lease.epoch, self.node_id, now_ms)
                    except Fenced:
                        refused.add(lease.shard)
                    else:
                        if before and before != self.node_id:
                            taken_from.setdefault(before, []).append(lease.shard)
            return refused

        refused = await asyncio.to_thread(record)
        epochs = {lease.shard: lease.epoch for lease in leases}
        for before, shards in taken_from.items():
            self._record_failover(before, shards, epochs)
        for shard in refused:
            METRICS.fenced_writes.labels(store="ledger", duty="claim").inc()
            self.duties.fenced_write(shard, "ledger", "claim", epochs[shard])
            log.error(
                "shard %d: the ledger holds a newer epoch (etcd was reset?): not taking it",
                shard,
                extra=log_context(shard=shard, epoch=epochs[shard]),
            )
        return ok - refused
