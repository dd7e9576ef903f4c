"""The singleton duties of the shards a node owns: persister, reaper, warden.

:class:`ShardDuties` runs them for a set of shards, each under its owner
epoch; :meth:`ShardDuties.assign` changes the set (the ownership follower in
:mod:`.ownership` calls it as shards come and go; a standalone node gives it
every shard once, with no epoch). Every write a duty makes carries its
shard's epoch and is refused by the store when a newer owner's is stored: a
refused shard is dropped from the duties at once and reported to
``on_fenced``, and counted in ``flashstock_fenced_writes``.

- the **persister** drains the shards' logs into the ledger (:mod:`.persister`);
- the **reaper** returns the units of holds whose time ran out (``reap.lua``);
- the **warden** rebuilds, from the ledger, a shard whose Redis state is gone;
- **reconciliation** compares Redis with the ledger for the shards, and
  reports the differences as metrics and log lines (:mod:`.reconcile`); it
  only reads;
- **sale figures** move a sale's per-second figures from Redis to the
  ledger and refresh the per-SKU metrics (:mod:`.salefigures`).

Fenced writes and reconcile differences are also recorded as incidents in
the ledger (:mod:`.incidents`), for a sale's review. Reconciliation and the
sale figures' move into the ledger pause while the node sheds or is degraded
by hand (:attr:`ShardDuties.pause_reason`, :mod:`.pause`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flashstock.client import FlashstockError
from flashstock.lockmgr import shard_ranges
from flashstock.server._logs import log_context
from flashstock.server._metrics import METRICS
from flashstock.server.duties.incidents import IncidentLog
from flashstock.server.duties.persister import Persister, PersistPolicy
from flashstock.server.duties.rebuild import RebuildResult, ShardRebuilder
from flashstock.server.duties.reconcile import Difference, read_once, settled_differences
from flashstock.server.duties.salefigures import MetricsPolicy, SaleFigures
from flashstock.server.ledger import Ledger
from flashstock.server.store.keys import SHARD_READY, ShardKeys
from flashstock.server.store.redis import AsyncRedis, AsyncScript, BlockingRedis
from flashstock.server.store.scripts import StockScripts
from flashstock.server.store.stock import StockStore

log = logging.getLogger(__name__)


async def stop_task(task: asyncio.Task[Any], stop: Callable[[], None] | None = None) -> None:
    """Stop ``task`` and wait until it has ended.

    ``stop`` first (a flag the task checks between its rounds), then
    cancellation, sent again every second until the task is done: a library
    (or ``asyncio.wait_for`` in Python 3.11) can lose a cancellation that
    arrives just as an inner await completes, and a task that runs on would
    keep a shard's duties alive after the shard was given up.
    """
    if stop is not None:
        stop()
    sent = 0
    while not task.done():
        task.cancel()
        sent += 1
        await asyncio.wait({task}, timeout=1.0)
    if sent > 1:
        log.warning("%s took %d cancellations to stop", task.get_name(), sent)
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s ended with %r", task.get_name(), task.exception())


Epochs = Mapping[int, int | None]
"""shard -> its owner epoch (None: a standalone node, whose writes are not fenced)."""


@dataclass(frozen=True)
class DutyPolicy:
    """How often the duties run."""

    reap_interval_s: float = 0.2
    """Between looks for expired holds."""
    warden_interval_s: float = 1.0
    """Between looks for shards whose Redis state is gone."""
    reconcile_interval_s: float = 10.0
    """Between comparisons of Redis with the ledger; 0 = never."""
    persist: PersistPolicy = PersistPolicy()
    """How the persister batches."""
    sale_figures_interval_s: float = 2.0
    """Between moves of a sale's figures to the ledger (and refreshes of the per-SKU metrics); 0 = never."""
    sku_metrics: MetricsPolicy = MetricsPolicy()
    """Which SKUs get per-SKU metrics."""


DIFFERENCES_NAMED = 10
"""Most differences a ``reconcile_difference`` incident names (it says how many there were in all)."""


def difference_detail(differences: Sequence[Difference]) -> str:
    """A reconcile pass's differences for an incident row: how many, in which SKUs, the first few named."""
    skus = sorted({d.sku_id for d in differences})
    named = "; ".join(str(d) for d in differences[:DIFFERENCES_NAMED])
    more = f"; and {len(differences) - DIFFERENCES_NAMED} more" if len(differences) > DIFFERENCES_NAMED else ""
    return f"{len(differences)} differences in {len(skus)} SKUs: {named}{more}"


class ShardDuties:
    """Runs the persister, reaper and warden of the shards it is given."""

    def __init__(
        self,
        redis: AsyncRedis,
        ledger: Ledger,
        store: StockStore,
        rebuilder: ShardRebuilder,
        policy: DutyPolicy = DutyPolicy(),
        on_fenced: Callable[[int], None] | None = None,
        reconcile_redis: BlockingRedis | None = None,
        shard_count: int = 0,
        incidents: IncidentLog | None = None,
    ) -> None:
        """``reconcile_redis`` (a blocking client) and ``shard_count`` are for
        reconciliation, which runs when both are given. ``incidents``: where
        fenced writes and reconcile differences are recorded for the review."""
        self._redis = redis
        self._reconcile_redis = reconcile_redis
        self._shard_count = shard_count
        self._ledger = ledger
        self._store = store
        self._rebuilder = rebuilder
        self._policy = policy
        self.on_fenced = on_fenced
        """Called with a shard whose duty write was refused for its epoch (it was dropped already)."""
        self.pause_reason: str | None = None
        """Why the non-core duties (reconcile, sale figures into the ledger) wait now; None: they run. Set by
        the node (:func:`.pause.watch_pause`)."""
        self._epochs: dict[int, int | None] = {}
        self._persister_task: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._rounds = asyncio.Lock()  # held by a reaper or warden round while it writes
        self._assigning = asyncio.Lock()  # one change of the shard set at a time
        self._changes: set[asyncio.Future[None]] = set()
        self.persister: Persister | None = None
        """The running persister (None while no shard is owned)."""
        self.incidents = incidents
        """Where this node's incidents go (None: nowhere)."""
        self.sale_figures = SaleFigures(redis, ledger, policy.sku_metrics)
        """The sale figures duty (its rounds run every ``sale_figures_interval_s``)."""

    @property
    def scripts(self) -> StockScripts[AsyncScript]:
        """The node's scripts (the stock store's, loaded at start)."""
        return self._store.scripts

    @property
    def epochs(self) -> dict[int, int | None]:
        """The shards whose duties run, with their epochs (a copy)."""
        return dict(self._epochs)

    async def assign(self, epochs: Epochs) -> None:
        """Run the duties of exactly the shards of ``epochs`` from now on.

        When this returns, no duty of a shard outside ``epochs`` is running
        or has a write under way: the caller may give those shards up.
        Changes apply one at a time, in order; a caller cancelled while
        waiting does not cut one short (the next change waits for it).
        """
        change = asyncio.ensure_future(self._assign(dict(epochs)))
        self._changes.add(change)  # a strong reference while it runs
        change.add_done_callback(self._changes.discard)
        await asyncio.shield(change)

    async def _assign(self, epochs: dict[int, int | None]) -> None:
        async with self._assigning:
            await self._apply(epochs)

    async def _apply(self, epochs: dict[int, int | None]) -> None:
        if epochs == self._epochs and (self._persister_task is not None or not epochs):
            return
        await self._stop_persister()
        async with self._rounds:
            self._epochs = epochs
        if not self._loops:
            self._loops = [
                asyncio.create_task(self._reaper(), name="hold reaper"),
                asyncio.create_task(self._warden(), name="warden"),
            ]
            if self._reconcile_redis is not None and self._shard_count and self._policy.reconcile_interval_s > 0:
                self._loops.append(asyncio.create_task(self._reconciler(), name="reconciliation"))
            if self._policy.sale_figures_interval_s > 0:
                self._loops.append(asyncio.create_task(self._sale_figures(), name="sale figures"))
        if epochs:
            self.persister = Persister(
                self._redis, self._ledger, epochs, self._policy.persist, self._persister_fenced, self._store.scripts
            )
            self._persister_task = asyncio.create_task(self.persister.run(), name="persister")

    async def stop(self) -> None:
        """Stop every duty (and wait for writes under way)."""
        await self.assign({})
        for task in self._loops:
            await stop_task(task)
        self._loops = []

    async def _stop_persister(self) -> None:
        task, persister = self._persister_task, self.persister
        self._persister_task = self.persister = None
        if task is not None and persister is not None:
            await stop_task(task, persister.stop)

    def _fenced(self, shard: int) -> None:
        # Whatever refused it, the shard is another node's now: no more duties here.
        self._epochs.pop(shard, None)
        if self.on_fenced is not None:
            self.on_fenced(shard)

    def _persister_fenced(self, shard: int, store: str) -> None:
        self.fenced_write(shard, store, "persister", self._epochs.get(shard))
        self._fenced(shard)  # the persister counted it and dropped the shard itself

    def fenced_write(self, shard: int, store: str, duty: str, epoch: int | None) -> None:
        """Record that ``store`` refused ``duty``'s write to ``shard`` under ``epoch`` (repeats folded)."""
        if self.incidents is not None:
            self.incidents.record_repeated(
                "fenced_write", f"{store} refused the {duty}'s write under epoch {epoch}: a newer owner exists", shard
            )

    async def warden_pass(self) -> int:
        """Rebuild every owned shard whose state is missing in Redis; returns how many were.

        One pass at a time (the node's first, at start, and the warden's
        loop would otherwise both find the shards missing, share their
        rebuilds, and both report them).
        """
        async with self._rounds:
            return await self._warden_pass()

    async def _warden_pass(self) -> int:
        epochs = dict(self._epochs)
        if not epochs:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in epochs:
                pipe.hget(ShardKeys(shard).meta, "state")
            states = await pipe.execute()
        missing = [shard for shard, state in zip(epochs, states, strict=True) if state != SHARD_READY]
        started = time.monotonic()
        rebuilt = []
        for shard in missing:
            if shard not in self._epochs:
                continue  # given up meanwhile
            result = await self._rebuilder.ensure(shard, epochs[shard])
            if result is RebuildResult.REBUILT:
                rebuilt.append(shard)
            elif result is RebuildResult.FENCED:
                METRICS.fenced_writes.labels(store="redis", duty="warden").inc()
                self.fenced_write(shard, "redis", "warden", epochs[shard])
                log.warning(
                    "fenced: shard %d, epoch %s is stale in redis (warden): a newer owner exists",
                    shard,
                    epochs[shard],
                    extra=log_context(shard=shard, epoch=epochs[shard]),
                )
                self._fenced(shard)
        if rebuilt:
            # One line for them all: a first start installs every shard (each one's own line is DEBUG then).
            log.info(
                "rebuilt %d shards from the ledger (%s) in %.2f s",
                len(rebuilt),
                shard_ranges(rebuilt),
                time.monotonic() - started,
            )
        return len(missing)

    async def _warden(self) -> None:
        while True:
            try:
                await self.warden_pass()
            except asyncio.CancelledError:
                raise
            except FlashstockError as exc:
                log.warning("warden: %s (requests will rebuild what is missing)", exc.message)
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                log.warning("warden: %s", exc)
            await asyncio.sleep(self._policy.warden_interval_s)

    async def reconcile_pass(self) -> int:
        """Compare Redis with the ledger for the owned shards; returns the differences found (also in the metrics)."""
        shards = set(self._epochs)
        assert self._reconcile_redis is not None
        reading = await asyncio.to_thread(
            read_once, self._reconcile_redis, self._ledger, self._shard_count, None, shards
        )
        differences = settled_differences(reading)
        METRICS.reconcile_passes.inc()
        METRICS.reconcile_differences.set(len(differences))
        METRICS.reconcile_unsettled.set(len(reading.unsettled))
        for difference in differences:
            log.error("reconcile: Redis and the ledger disagree: %s", difference)
        if differences and self.incidents is not None:
            self.incidents.record("reconcile_difference", difference_detail(differences))
        return len(differences)

    async def _reconciler(self) -> None:
        while True:
            await asyncio.sleep(self._policy.reconcile_interval_s)
            if not self._epochs or self.pause_reason is not None:
                continue
            try:
                await self.reconcile_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                log.warning("reconcile: %s", exc)

    async def _sale_figures(self) -> None:
        while True:
            await asyncio.sleep(self._policy.sale_figures_interval_s)
            # While paused, the seconds wait in Redis (for an hour) and move at the first round after.
            await self.sale_figures.round(self._epochs, move=self.pause_reason is None)  # logs its own failures

    async def _reaper(self) -> None:
        while True:
            try:
                async with self._rounds:
                    expired, fenced = await self._store.reap_due(dict(self._epochs))
                if expired:
                    log.debug("expired %d holds", expired)
                for shard in fenced:
                    METRICS.fenced_writes.labels(store="redis", duty="reaper").inc()
                    self.fenced_write(shard, "redis", "reaper", self._epochs.get(shard))
                    log.warning(
                        "fenced: shard %d, epoch %s is stale in redis (reaper): a newer owner exists",
                        shard,
                        self._epochs.get(shard),
                        extra=log_context(shard=shard, epoch=self._epochs.get(shard)),
                    )
                    self._fenced(shard)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("reaper: %s", exc)
            await asyncio.sleep(self._policy.reap_interval_s)
