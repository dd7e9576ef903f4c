"""Rebuilding a shard's Redis state from the ledger (the "cache breakdown" plan).

When a script finds a shard's state missing (Redis restarted empty, flushed,
failed over), the node that noticed takes the shard's rebuild mutex
(python-redis-lock ``rebuild:{s<n>}``, short expiry, renewed while held),
checks again, counts a new generation in the ledger, loads the shard from
the ledger and installs it with ``rebuild.lua``, whose every step is fenced by
the mutex's token and the generation: a rebuilder paused past the mutex's
expiry cannot overwrite a newer rebuild. One rebuild per shard runs at a
time however many requests arrive: in a process, requests share one task;
across processes and nodes, the mutex. Requests wait for it for a bounded
time, then get UNAVAILABLE with a retry delay.

A shard can also be present and yet older than the ledger: Redis restarted
from an AOF or snapshot taken a moment before a crash, a restored backup, a
replica that lagged when it was promoted. Its state reads "ready", but the
ledger holds deductions it lacks, so serving it would hand their units out
again. :func:`stale_reason` tells such a shard from the ledger's cursor and
generation against what Redis holds; :meth:`ShardRebuilder.verify` checks
every shard so whenever a node meets a Redis it has not checked yet (see
``_incarnation.py``), and rebuilds those behind, under the same mutex and
fences as any rebuild.

python-redis-lock is blocking (and its timeouts are whole seconds), so the
rebuild runs in a thread with a blocking Redis client, off the event loop:
the node's blocking client (:func:`~flashstock.server.store.redis.blocking_client`),
with the scripts of the node's one registry registered on it.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis_lock  # type: ignore[import-untyped]  # python-redis-lock ships no annotations

from flashstock.client import Unavailable
from flashstock.server._logs import log_context
from flashstock.server._metrics import METRICS
from flashstock.server.duties.incidents import IncidentLog
from flashstock.server.ledger import Ledger, ShardSnapshot
from flashstock.server.store.durable import parse_id
from flashstock.server.store.keys import CONFIG_KEY, SHARD_READY, SKU_INDEX_KEY, ShardKeys
from flashstock.server.store.redis import BlockingRedis, BlockingScript, redis_errors
from flashstock.server.store.replies import RebuildStep
from flashstock.server.store.scripts import StockScripts

log = logging.getLogger(__name__)

_LETTER = {"held": "H", "confirmed": "C", "released": "R", "expired": "X"}


class RebuildResult(enum.StrEnum):
    """What became of a request to rebuild a shard; the value is its label in ``flashstock_rebuilds``."""

    REBUILT = "rebuilt"
    """This call rebuilt the shard from the ledger."""
    READY = "ready"
    """The shard was whole already (another rebuilder did it, or it was never lost)."""
    FRESH = "fresh"
    """Asked to rebuild a shard older than the ledger: it is not (:func:`stale_reason` found nothing)."""
    STALE = "stale"
    """A newer rebuild (generation, or the mutex's token) overtook this one: it stopped, writing nothing more."""
    BUSY = "busy"
    """The rebuild mutex was not free within the wait."""
    FENCED = "fenced"
    """The owner epoch given is older than the shard's stored one: a newer owner exists."""


@dataclass(frozen=True)
class RebuildPolicy:
    """Times of the rebuild."""

    lock_expire_s: int = 5
    """Expiry of the rebuild mutex (renewed every 2/3 of it while held)."""
    wait_s: float = 5.0
    """How long requests wait for a rebuild before they get UNAVAILABLE."""
    chunk: int = 2000
    """Records (or per-user counts) per install step."""


def install_steps(snap: ShardSnapshot, chunk: int) -> list[tuple[str, str]]:
    """The (step, JSON payload) calls that install ``snap``, after 'begin' and before 'commit'."""
    steps: list[tuple[str, str]] = []
    for s in snap.skus:
        users = snap.user_counts.get(s.sku_id, {})
        first = dict(list(users.items())[:chunk])
        steps.append(
            (
                "sku",
                json.dumps(
                    {
                        "sku": s.sku_id,
                        "total": s.total,
                        "held": s.held,
                        "conf": s.confirmed,
                        "lim": s.per_user_limit,
                        "maxq": s.max_per_request,
                        "start": s.sale_start_ms,
                        "end": s.sale_end_ms,
                        "paused": 1 if s.paused else 0,
                        "mode": s.mode,
                        "sale": s.sale,
                        "gu": s.goal_units,
                        "gs": s.goal_sellout_ms,
                        "gb": s.goal_buyers,
                        "pr": s.unit_price_minor,
                        "cur": s.currency,
                        "ur": s.user_rate_per_s,
                        "rt": 1 if s.require_token else 0,
                        "users": first or {},
                    }
                ),
            )
        )
        rest = list(users.items())[chunk:]
        for start in range(0, len(rest), chunk):
            steps.append(("users", json.dumps({"sku": s.sku_id, "users": dict(rest[start : start + chunk])})))
    rows = [
        [
            r.request_id,
            r.kind,
            _LETTER[r.state],
            r.qty,
            r.user_id,
            r.sku_id,
            r.taken_ms,
            r.expires_ms,
            r.closer_id,
            r.sale,
            r.batch_fp,
        ]
        for r in snap.records
    ]
    for start in range(0, len(rows), chunk):
        steps.append(("records", json.dumps(rows[start : start + chunk])))
    # The Confirm and Release calls that took effect, under their own ids: a
    # resend gets its first answer, the id used by another call is refused.
    settles = [
        [r.sku_id, r.closer_id, _LETTER[r.state], r.request_id, r.updated_ms]
        for r in snap.records
        if r.closer_id and r.state in ("confirmed", "released")
    ]
    for start in range(0, len(settles), chunk):
        steps.append(("settles", json.dumps(settles[start : start + chunk])))
    admin = [list(a) for a in snap.admin]
    for start in range(0, len(admin), chunk):
        steps.append(("admin", json.dumps(admin[start : start + chunk])))
    return steps


def rebuild_log_level(generation: int, skus: int) -> int:
    """How loud the line of one shard's rebuild is.

    WARNING when the shard held SKUs (their state was lost and read back);
    INFO for an empty shard rebuilt again (its Redis state was lost); DEBUG
    for a shard's first generation, installed into a Redis the ledger never
    filled: nothing was lost, and a cluster's first start does that for
    every shard (the warden sums those up in one line).
    """
    if skus:
        return logging.WARNING
    return logging.INFO if generation > 1 else logging.DEBUG


def stale_reason(
    cursor: tuple[int, str] | None,
    ledger_generation: int,
    redis_generation: int,
    persisted: str | None,
    holds_cursor_entry: bool,
) -> str | None:
    """Why a shard that Redis holds as ready is older than the ledger; None when it is not.

    ``cursor``: the ledger's (generation, last persisted log entry) of the
    shard; ``ledger_generation``: rebuilds the ledger has begun;
    ``redis_generation``: the generation in the shard's meta; ``persisted``:
    the cursor Redis was last told (its ``pc`` key); ``holds_cursor_entry``:
    the log still holds the cursor's entry (committed, not yet announced).

    Every write to the ledger comes from a Redis log, after it: a Redis that
    holds the ledger's cursor entry, or was told of it, holds everything the
    ledger does. Entries ids are only compared within one generation (one
    log); a later generation began with a rebuild that read the ledger.
    """
    if ledger_generation > redis_generation:
        return f"Redis holds generation {redis_generation}; the ledger began generation {ledger_generation}"
    if cursor is None:
        return None
    generation, last = cursor
    if generation < redis_generation:
        return None  # rebuilt since that commit: the rebuild read it
    if generation > redis_generation:
        return f"the ledger persisted generation {generation}; Redis holds generation {redis_generation}"
    if persisted is not None and parse_id(persisted) >= parse_id(last):
        return None
    if holds_cursor_entry:
        return None
    return (
        f"the ledger holds its log up to {last}; Redis has neither that entry nor word of it "
        f"(it was told {persisted or 'nothing'})"
    )


class ShardRebuilder:
    """Rebuilds shards from the ledger: one at a time per shard, fenced."""

    def __init__(
        self, redis: BlockingRedis, ledger: Ledger, record_ttl_ms: int, policy: RebuildPolicy = RebuildPolicy()
    ) -> None:
        """``redis``: a blocking client (its owner closes it) whose command timeout outlasts ``policy.wait_s``
        (the mutex is waited for inside one BLPOP)."""
        self._sync = redis
        self._script: BlockingScript = StockScripts.register(redis).rebuild
        self._ledger = ledger
        self._record_ttl_ms = record_ttl_ms
        self._policy = policy
        self._running: dict[int, asyncio.Task[RebuildResult]] = {}
        self.before_install: Callable[[int], None] | None = None
        """A test's failpoint: called in the rebuild thread after loading, before installing."""
        self.lock_factory: Callable[[BlockingRedis, str], redis_lock.Lock] = lambda client, name: redis_lock.Lock(
            client, name, expire=policy.lock_expire_s, auto_renewal=True
        )
        """Makes the rebuild mutex (a test may make one that is not renewed)."""
        self.incidents: IncidentLog | None = None
        """Where a rebuild that brought lost state back is recorded (None: nowhere)."""

    async def ensure(self, shard: int, epoch: int | None = None) -> RebuildResult:
        """Make sure ``shard`` is whole in Redis, rebuilding it if need be; returns what happened.

        ``epoch``: the shard owner's (the warden's rebuild is a duty write,
        fenced); None for a rebuild a request asked for (fenced by the mutex
        and the generation only). Raises :class:`Unavailable` when the
        rebuild did not finish within the wait.
        """
        task = self._running.get(shard)
        if task is None:
            task = asyncio.ensure_future(asyncio.to_thread(self.rebuild, shard, epoch))
            self._running[shard] = task
            task.add_done_callback(lambda _t: self._running.pop(shard, None))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self._policy.wait_s)
        except TimeoutError:
            raise Unavailable(f"shard {shard} is being rebuilt from the ledger", retry_after=0.5, shard=shard) from None

    def rebuild(self, shard: int, epoch: int | None = None, when_behind: bool = False) -> RebuildResult:
        """Rebuild ``shard`` (blocking): REBUILT, READY (someone else did), STALE, BUSY
        or FENCED (``epoch`` is older than the shard's stored one).

        ``when_behind``: also rebuild a ready shard that is older than the
        ledger (:func:`stale_reason`, decided under the mutex); FRESH when
        it is not. A Redis failure raises :class:`Unavailable`."""
        with redis_errors(shard):
            return self._rebuild(shard, epoch, when_behind)

    def _rebuild(self, shard: int, epoch: int | None, when_behind: bool) -> RebuildResult:
        k = ShardKeys(shard)
        lock = self.lock_factory(self._sync, k.rebuild_lock)
        if not lock.acquire(blocking=True, timeout=max(1, math.ceil(self._policy.wait_s))):
            METRICS.rebuilds.labels(RebuildResult.BUSY.value).inc()
            return RebuildResult.BUSY
        try:
            meta = cast("dict[bytes, bytes]", self._sync.hgetall(k.meta))  # the client does not decode
            if meta.get(b"state") == SHARD_READY:
                if not when_behind:
                    return RebuildResult.READY
                reason = self._stale([shard]).get(shard)
                if reason is None:
                    return RebuildResult.FRESH
                log.warning(
                    "shard %d: Redis is older than the ledger (%s); rebuilding it from the ledger",
                    shard,
                    reason,
                    extra=log_context(shard=shard, epoch=epoch),
                )
            expected = meta.get(b"gen", b"").decode()
            seconds, micros = self._sync.time()
            now_ms = seconds * 1000 + micros // 1000
            generation = self._ledger.bump_generation(shard, now_ms)
            since = (now_ms // self._record_ttl_ms - 1) * self._record_ttl_ms
            # The cursor first: the snapshot then holds at least everything up
            # to it, whatever a persister still commits in between.
            cursor = self._ledger.cursor(shard)
            snap = self._ledger.snapshot(shard, generation, since)
            if self.before_install is not None:
                self.before_install(shard)
            result = self._install(k, lock.id, snap, cursor[1] if cursor else "0-0", expected, epoch)
            METRICS.rebuilds.labels(result.value).inc()
            if result is RebuildResult.REBUILT:
                level = rebuild_log_level(generation, len(snap.skus))
                if self.incidents is not None and level > logging.DEBUG:  # Redis lost this shard's state
                    by = "this node, unfenced" if epoch is None else f"its owner under epoch {epoch}"
                    self.incidents.record(
                        "rebuild",
                        f"rebuilt from the ledger by {by}: generation {generation}, {len(snap.skus)} SKUs, "
                        f"{len(snap.records)} records",
                        shard,
                    )
                log.log(
                    level,
                    "shard %d rebuilt from the ledger: generation %d, %d SKUs, %d records",
                    shard,
                    generation,
                    len(snap.skus),
                    len(snap.records),
                    extra=log_context(shard=shard, epoch=epoch),
                )
            return result
        finally:
            try:
                lock.release()
            except redis_lock.NotAcquired:
                pass  # it expired (a paused rebuilder): another may hold it now

    def _install(
        self, k: ShardKeys, token: str, snap: ShardSnapshot, cursor: str, expected: str, epoch: int | None
    ) -> RebuildResult:
        keys = [k.meta, f"lock:{k.rebuild_lock}"]
        common: list[str | int] = [token, snap.generation, k.prefix, self._record_ttl_ms]
        begun = self._step(keys, ["begin", *common, expected, cursor, snap.epoch, "" if epoch is None else epoch])
        if begun is RebuildStep.FENCED:
            return RebuildResult.FENCED
        if begun is not RebuildStep.OK:
            return RebuildResult.STALE
        for step, payload in install_steps(snap, self._policy.chunk):
            if self._step(keys, [step, *common, payload]) is not RebuildStep.OK:
                return RebuildResult.STALE
        if self._step(keys, ["commit", *common]) is not RebuildStep.OK:
            return RebuildResult.STALE
        if snap.skus:  # the SKU index is global (not the shard's slot): written on its own
            self._sync.zadd(SKU_INDEX_KEY, {s.sku_id: 0 for s in snap.skus})
        return RebuildResult.REBUILT

    def _step(self, keys: list[str], args: list[Any]) -> RebuildStep:
        return RebuildStep.decode(self._script(keys=keys, args=args))

    def run_id(self) -> str:
        """The run id of the Redis this rebuilder talks to (new with every start of Redis)."""
        return str(self._sync.info("server")["run_id"])

    def verify(self, shards: int, ledger_id: str | None = None) -> tuple[str, list[int]]:
        """Check every ready shard against the ledger and rebuild those older than it (blocking).

        Returns the run id of the Redis checked (read first: whatever came
        before it was checked too) and the shards rebuilt. Raises
        :class:`Unavailable` when a rebuild could not be done now, or when
        the Redis is bound to a ledger other than ``ledger_id`` (this
        ledger must not overwrite another's state: the node's binding check
        stops it).
        """
        with redis_errors():
            return self._verify(shards, ledger_id)

    def _verify(self, shards: int, ledger_id: str | None) -> tuple[str, list[int]]:
        run_id = self.run_id()
        bound = cast("bytes | None", self._sync.hget(CONFIG_KEY, "ledger_id"))  # the client does not decode
        if ledger_id is not None and bound is not None and bound.decode() != ledger_id:
            raise Unavailable(f"this Redis is bound to ledger {bound.decode()}, not to this node's {ledger_id}")
        rebuilt = []
        for shard, reason in self._stale(range(shards)).items():
            if reason is None:
                continue
            result = self.rebuild(shard, when_behind=True)
            if result is RebuildResult.REBUILT:
                rebuilt.append(shard)
            elif result not in (RebuildResult.FRESH, RebuildResult.READY):
                raise Unavailable(
                    f"shard {shard} is older than the ledger and could not be rebuilt yet ({result})", shard=shard
                )
        return run_id, rebuilt

    def _stale(self, shards: range | list[int]) -> dict[int, str | None]:
        """For each ready shard of ``shards``, why it is older than the ledger (None: it is not)."""
        shards = list(shards)
        cursors = self._ledger.cursors()
        generations = self._ledger.generations()
        with self._sync.pipeline(transaction=False) as pipe:
            for shard in shards:
                k = ShardKeys(shard)
                pipe.hmget(k.meta, "state", "gen")
                pipe.get(k.persisted)
                cursor = cursors.get(shard)
                pipe.xrange(k.log, cursor[1], cursor[1], count=1) if cursor else pipe.echo("")
            replies = pipe.execute()
        out: dict[int, str | None] = {}
        for i, shard in enumerate(shards):
            (state, gen), persisted, entry = replies[3 * i : 3 * i + 3]
            if state != SHARD_READY:
                continue  # missing or being built: the ordinary rebuild's business
            out[shard] = stale_reason(
                cursors.get(shard),
                generations.get(shard, 0),
                int(gen or 0),
                persisted.decode() if persisted else None,
                bool(entry),
            )
        return out
