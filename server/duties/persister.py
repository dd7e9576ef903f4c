"""The persister: drains shard logs into the ledger, in batches, exactly once.

Each round reads new entries of every shard it persists (one XREAD over all
their logs, blocking until something arrives), waits up to ``max_wait`` for
more to gather a batch (a group commit), and per shard writes the batch and
its cursor in one ledger transaction. Only then does it announce the new
cursor (pub/sub and the shard's ``pc`` key, for durable replies) and trim the
log up to it. A crash anywhere re-reads from the ledger's cursor: entries
are applied again at most, and applying them again changes nothing (inserts
by request id, states only forward, admin changes as absolute values).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from flashstock.server._logs import log_context
from flashstock.server._metrics import METRICS
from flashstock.server.ledger import Fenced, Ledger
from flashstock.server.store.durable import parse_id
from flashstock.server.store.keys import PERSISTED_CHANNEL, ShardKeys
from flashstock.server.store.redis import AsyncRedis, AsyncScript, KeyT, NoScriptError, RedisError, StreamIdT
from flashstock.server.store.replies import announced
from flashstock.server.store.scripts import StockScripts

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class PersistPolicy:
    """How the persister batches."""

    batch_size: int = 500
    """Most entries per shard per commit."""
    max_wait_s: float = 0.005
    """After the first new entry, how long to wait for more before committing."""
    block_s: float = 0.5
    """How long one read blocks when every log is drained."""


def _next_id(entry_id: str) -> str:
    ms, seq = parse_id(entry_id)
    return f"{ms}-{seq + 1}"


async def _finish_on_cancel(work: Awaitable[T]) -> T:
    """Await ``work``; if cancelled meanwhile, let it finish first, then pass the cancellation on.

    A ledger commit runs in a thread, which cancelling does not stop: whoever
    stops the persister (to hand its shards over) must know that no commit
    of it is still under way.
    """
    future = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            # A second cancellation must not end the wait either.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(future)
        raise


class Persister:
    """Drains the logs of ``shards`` into ``ledger``."""

    def __init__(
        self,
        redis: AsyncRedis,
        ledger: Ledger,
        epochs: Mapping[int, int | None],
        policy: PersistPolicy = PersistPolicy(),
        on_fenced: Callable[[int, str], None] | None = None,
        scripts: StockScripts[AsyncScript] | None = None,
    ) -> None:
        """Persist the shards of ``epochs`` (shard -> owner epoch; None: a
        standalone node, recorded as epoch 0). ``on_fenced(shard, store)`` is
        called when a write of a shard is refused for its epoch. ``scripts``: the
        node's, loaded already (by default the persister loads its own)."""
        self._redis = redis
        self._ledger = ledger
        self._scripts = scripts or StockScripts.register(redis)
        self._epochs = dict(epochs)
        self._shards = list(self._epochs)
        self._policy = policy
        self._on_fenced = on_fenced
        self._scripts_loaded = scripts is not None  # a restart of the persister loads nothing again
        self.stopping = False
        """Set by :meth:`stop`."""
        self._positions: dict[int, str] = {}
        self._committed: dict[int, str] = {}
        self._announced: dict[int, str] = {}
        self._read_generations: dict[int, int] = {}
        self._index = {shard: i for i, shard in enumerate(self._shards)}
        self._state_read = 0.0
        self.persisted = 0
        """Entries persisted by this persister."""

    def stop(self) -> None:
        """Ask :meth:`run` to return after the round under way (a cancellation may be lost in a library)."""
        self.stopping = True

    async def run(self) -> None:
        """Persist until stopped or cancelled; a failed round is tried again after a pause."""
        for shard in self._shards:
            cursor = await asyncio.to_thread(self._ledger.cursor, shard)
            self._positions[shard] = self._committed[shard] = cursor[1] if cursor else "0-0"
        await self._read_announced()
        delay = 0.1
        while not self.stopping:
            try:
                await self.round()
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - nothing is trimmed until persisted: try again
                log.warning("persister: %s; trying again in %.1f s", exc, delay)
                METRICS.persister_errors.inc()
                # A round may fail after reading (its second read, say): read those entries again.
                self._positions.update(self._committed)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def round(self, block: bool = True) -> int:
        """Read, persist and announce one batch per shard with news; returns entries persisted."""
        await self._refresh_shard_state()
        # What a failed round (or a previous node) committed but did not announce:
        # durable replies wait for it, and no new entry may come to carry it.
        await self._announce_committed()
        batches = await self._read(block)
        if not batches:
            return 0
        if self._policy.max_wait_s > 0 and sum(len(b) for b in batches.values()) < self._policy.batch_size:
            await asyncio.sleep(self._policy.max_wait_s)
            first = dict(self._read_generations)
            for shard, more in (await self._read(False)).items():
                if shard in batches and first.get(shard) != self._read_generations[shard]:
                    # Rebuilt in between: a batch is of one log only. Read the rest next round.
                    self._positions[shard] = batches[shard][-1][0]
                    self._read_generations[shard] = first[shard]
                    continue
                batches.setdefault(shard, []).extend(more)
        self._refused: list[int] = []
        failure = await _finish_on_cancel(asyncio.to_thread(self._persist_all, batches))
        for shard in self._refused:
            self._fenced(shard, "ledger")
        now_ms = time.time() * 1000
        for entries in batches.values():
            for entry_id, _ in entries:
                METRICS.persister_lag.observe(max(0.0, now_ms - parse_id(entry_id)[0]) / 1000)
        await self._announce_committed()
        count = sum(len(e) for e in batches.values())
        self.persisted += count
        METRICS.persisted.inc(count)
        if failure is not None:
            raise failure
        return count

    async def _read_announced(self) -> None:
        """Note the cursors Redis already holds, so a start (or a handover) announces only what is new."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for shard in self._shards:
                    pipe.get(ShardKeys(shard).persisted)
                held = await pipe.execute()
        except RedisError:
            return  # the first round announces them all
        for shard, value in zip(self._shards, held, strict=True):
            if value is not None and value.decode() == self._committed[shard]:
                self._announced[shard] = self._committed[shard]

    async def _announce_committed(self) -> None:
        """Announce each shard's committed cursor not yet announced, and trim its log up to it."""
        due = {
            s: last
            for s, last in self._committed.items()
            if last != "0-0" and self._announced.get(s) != last and s in self._index
        }
        if not due:
            return
        if not self._scripts_loaded:
            await self._scripts.load(self._redis)
            self._scripts_loaded = True
        announce = self._scripts.announce
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard, last in due.items():
                k = ShardKeys(shard)
                # By SHA (loaded at start): a pipeline given the script would ask SCRIPT EXISTS every time.
                pipe.evalsha(
                    announce.sha,
                    2,
                    k.persisted,
                    k.log,
                    k.prefix,
                    self._epoch_arg(shard),
                    last,
                    _next_id(last),
                    PERSISTED_CHANNEL,
                    f"{shard} {last}",
                )
            try:
                replies = await pipe.execute()
            except NoScriptError:
                self._scripts_loaded = False  # a restarted Redis: load them again, then announce
                raise
        for (shard, last), reply in zip(due.items(), replies, strict=True):
            if announced(reply):
                self._announced[shard] = last
            else:
                self._fenced(shard, "redis")

    def _epoch_arg(self, shard: int) -> int | str:
        epoch = self._epochs[shard]
        return "" if epoch is None else epoch

    def _fenced(self, shard: int, store: str) -> None:
        """Stop persisting ``shard``: a newer owner's epoch refused our write to ``store``."""
        if shard not in self._index:
            return
        METRICS.fenced_writes.labels(store=store, duty="persister").inc()
        log.warning(
            "fenced: shard %d, epoch %s is stale in %s: a newer owner persists it; this node stops",
            shard,
            self._epochs[shard],
            store,
            extra=log_context(shard=shard, epoch=self._epochs[shard]),
        )
        self._shards.remove(shard)
        self._index = {s: i for i, s in enumerate(self._shards)}
        if self._on_fenced is not None:
            self._on_fenced(shard, store)

    async def _read(self, block: bool) -> dict[int, list[tuple[str, dict[str, str]]]]:
        """New entries per shard, each shard's rebuild generation read in the same instant."""
        streams: dict[KeyT, StreamIdT] = {ShardKeys(shard).log: self._positions[shard] for shard in self._shards}
        if not streams:
            if block:
                await asyncio.sleep(self._policy.block_s)
            return {}
        if block:
            # Wait for news; the entries themselves are read below, atomically
            # with the generations they belong to.
            if not await self._redis.xread(streams, count=1, block=int(self._policy.block_s * 1000)):
                return {}
        async with self._redis.pipeline(transaction=True) as pipe:
            for shard in self._shards:
                pipe.hget(ShardKeys(shard).meta, "gen")
            pipe.xread(streams, count=self._policy.batch_size)
            *generations, reply = await pipe.execute()
        out: dict[int, list[tuple[str, dict[str, str]]]] = {}
        for stream, entries in reply or ():
            shard = int(stream.decode().split("{s", 1)[1].split("}", 1)[0])
            decoded = [
                (entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()}) for entry_id, fields in entries
            ]
            if decoded:
                out[shard] = decoded
                self._positions[shard] = decoded[-1][0]
                self._read_generations[shard] = int(generations[self._index[shard]] or 0)
        return out

    def _persist_all(self, batches: dict[int, list[tuple[str, dict[str, str]]]]) -> Exception | None:
        """Commit each shard's batch; drop from ``batches`` those that failed and return the failure.

        A shard refused for its epoch is dropped too, and noted in ``self._refused``."""
        failure = None
        for shard in list(batches):
            try:
                epoch = self._epochs[shard] or 0
                self._ledger.persist(shard, self._read_generations[shard], batches[shard], epoch=epoch)
            except Fenced:
                del batches[shard]
                self._refused.append(shard)
            except Exception as exc:  # noqa: BLE001 - the others still get announced
                failure = exc
                del batches[shard]
                # Read these entries again next round, from the last commit.
                self._positions[shard] = self._committed[shard]
            else:
                self._committed[shard] = batches[shard][-1][0]
        return failure

    async def _refresh_shard_state(self) -> None:
        """Once a second: the backlog (log entries not yet persisted)."""
        if time.monotonic() - self._state_read < 1.0:
            return
        self._state_read = time.monotonic()
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in self._shards:
                # The log is trimmed up to what is persisted: what is left is the backlog.
                pipe.xlen(ShardKeys(shard).log)
            METRICS.persister_backlog.set(sum(await pipe.execute()))
