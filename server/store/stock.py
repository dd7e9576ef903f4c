"""The stock store: flashstock's operations as Redis script calls.

A thin adapter: it names the keys (:class:`~flashstock.server.store.keys.ShardKeys`),
runs one script per operation, and hands the reply to the pure decoders in
:mod:`.replies`. Around every call, the same two rules:

- a shard whose state is missing in Redis is rebuilt from the ledger
  (:class:`~flashstock.server.duties.rebuild.ShardRebuilder`), then the call is sent once more;
- an answer about a durable SKU (and every admin change) is returned only
  once the ledger holds its log entry (:class:`~.durable.PersistWatch`)
  and the shard was not rebuilt since the call (a rebuilt shard has a new
  log, whose entry ids pass those of the lost one: "persisted up to" says
  nothing then about an entry of the lost log); past ``durable_wait_s``,
  or after a rebuild, the caller gets UNAVAILABLE, and a retry with the
  same request id returns the real outcome.

Redis failures surface as :class:`~flashstock.client.Unavailable`
(:class:`~flashstock.server.store.redis.redis_errors`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from flashstock.client import (
    AdminResult,
    BatchResult,
    DeductResult,
    Mode,
    SettleResult,
    Sku,
    SkuDefinition,
    SkuNotFound,
    SkuPage,
    StockLevel,
    Unavailable,
)
from flashstock.lockmgr import shard_of
from flashstock.server._log_gate import LogGate
from flashstock.server._logs import log_context
from flashstock.server._metrics import METRICS
from flashstock.server.duties.rebuild import ShardRebuilder
from flashstock.server.ledger import AuditNote, SkuChange
from flashstock.server.rpc.validate import MAX_STOCK, max_hold_ms
from flashstock.server.store import replies as _replies
from flashstock.server.store.coalesce import ShardCoalescer
from flashstock.server.store.durable import PersistWatch
from flashstock.server.store.keys import SHARD_READY, SKU_INDEX_KEY, ShardKeys
from flashstock.server.store.redis import AsyncRedis, redis_errors
from flashstock.server.store.replies import Answer, ShardMissing
from flashstock.server.store.scripts import StockScripts
from flashstock.server.store.soldout import SoldOutBook

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreLimits:
    """Times the store applies to what it records."""

    request_ttl_s: int = 86400
    """A request's first answer is kept for retries at least this long, at most
    twice as long (seconds); holds must be shorter."""
    default_hold_ms: int = 600_000
    """Hold length when a Hold asks for 0."""
    coalesce_window_s: float = 0.002
    """Least time between two deduction calls of a busy shard (see :mod:`.coalesce`)."""
    durable_wait_s: float = 2.0
    """How long a durable reply waits for the ledger before answering UNAVAILABLE."""


_T = TypeVar("_T")


class StockStore:
    """Every stock operation, one script call each, on one Redis."""

    def __init__(
        self,
        redis: AsyncRedis,
        shards: int,
        book: SoldOutBook,
        watch: PersistWatch,
        rebuilder: ShardRebuilder,
        limits: StoreLimits = StoreLimits(),
        on_batch: Callable[[int], object] | None = None,
    ) -> None:
        """``on_batch``: told the size of each batch of deductions sent to Redis in one call."""
        self._redis = redis
        self._shards = shards
        self._book = book
        self._watch = watch
        self._rebuilder = rebuilder
        self._limits = limits
        self._scripts = StockScripts.register(redis)
        self._record_ttl_ms = limits.request_ttl_s * 1000
        self._generations: dict[int, bytes | None] = {}
        """Per shard, its rebuild generation as last read from Redis: never above the current one."""
        self._generation_reads: dict[int, asyncio.Future[bytes | None]] = {}
        self._unreadable_log = LogGate(interval_s=60.0)
        self._coalescer: ShardCoalescer[tuple[str, str, int, str, int, int]] = ShardCoalescer(
            self._take_batch, window=limits.coalesce_window_s, on_batch=on_batch
        )

    @property
    def shards(self) -> int:
        """The number of logical shards."""
        return self._shards

    @property
    def max_hold_ms(self) -> int:
        """The longest hold this node allows (the one rule, :func:`~flashstock.server.rpc.validate.max_hold_ms`)."""
        return max_hold_ms(self._limits.request_ttl_s)

    def keys(self, sku_id: str) -> ShardKeys:
        """The key names of ``sku_id``'s shard."""
        return ShardKeys(shard_of(sku_id, self._shards))

    @property
    def scripts(self) -> StockScripts:
        """The scripts, registered on this store's Redis client (loaded by :meth:`load_scripts`)."""
        return self._scripts

    async def load_scripts(self) -> None:
        """Load every script into Redis now (else on first use)."""
        async with redis_errors():
            await self._scripts.load(self._redis)

    async def close(self) -> None:
        """Cancel coalesced calls in flight."""
        await self._coalescer.close()

    # -- the two rules around every call ------------------------------------

    async def _call(
        self, sku_ids: Sequence[str], call: Callable[[], Awaitable[_T]]
    ) -> tuple[_T, dict[int, bytes | None]]:
        """Run ``call``; when it finds a shard missing, rebuild the shards of ``sku_ids`` and run it once more.

        Returns the reply and, per shard, a generation read before the call
        (for :meth:`wait_persisted`).
        """
        shards = sorted({shard_of(sku_id, self._shards) for sku_id in sku_ids})
        async with redis_errors():
            try:
                generations = {shard: await self._generation_before(shard) for shard in shards}
                return await call(), generations
            except ShardMissing:
                for shard in shards:
                    await self._rebuilder.ensure(shard)
                    self._generations.pop(shard, None)
            try:
                generations = {shard: await self._generation_before(shard) for shard in shards}
                return await call(), generations
            except ShardMissing:
                raise Unavailable(f"shards {shards} are being rebuilt", retry_after=0.5) from None

    def forget_generations(self, shards: list[int]) -> None:
        """The shards were rebuilt behind this store's back: read their generations anew."""
        for shard in shards:
            self._generations.pop(shard, None)

    async def _generation_before(self, shard: int) -> bytes | None:
        """The shard's generation as last read (read now if never): at most the one a call sent next sees."""
        if shard not in self._generations:
            # The store's client does not decode replies: bytes, which redis-py's types (bytes | str) cannot tell.
            self._generations[shard] = cast("bytes | None", await self._redis.hget(ShardKeys(shard).meta, "gen"))
        return self._generations[shard]

    async def _generation_now(self, shard: int) -> bytes | None:
        """The shard's generation, read after this call began; concurrent callers share one read."""
        read = self._generation_reads.get(shard)
        if read is None:
            read = self._generation_reads[shard] = asyncio.ensure_future(self._read_generation(shard))
        return await asyncio.shield(read)

    async def _read_generation(self, shard: int) -> bytes | None:
        # Whoever joined this read did so before it is sent; later callers start another.
        del self._generation_reads[shard]
        async with redis_errors():
            generation = cast("bytes | None", await self._redis.hget(ShardKeys(shard).meta, "gen"))
        self._generations[shard] = generation
        return generation

    async def _settled(self, shard: int, answer: Answer[_T], generations: dict[int, bytes | None]) -> _T:
        """The answer's result, once the ledger holds its log entry when it must."""
        if answer.durable and answer.log_id:
            await self.wait_persisted(shard, answer.log_id, generations[shard])
        return answer.result

    async def wait_persisted(self, shard: int, log_id: str, generation: bytes | None) -> None:
        """Return once the ledger holds ``log_id`` of ``shard``; else raise Unavailable.

        ``generation``: the shard's generation read before the call that wrote
        ``log_id``. Stream ids only order the entries of one log: should the
        shard have been rebuilt since (a new log, ids passing the old ones),
        no cursor says whether ``log_id`` of the lost log was persisted.
        """
        if not await self._watch.wait(shard, log_id, self._limits.durable_wait_s):
            # An announcement may have been missed (a reconnect): ask the shard's cursor.
            async with redis_errors():
                persisted = cast("bytes | None", await self._redis.get(ShardKeys(shard).persisted))
            if persisted is not None:
                self._watch.learn(shard, persisted.decode())
            if not self._watch.holds(shard, log_id):
                METRICS.durable_timeouts.inc()
                raise Unavailable(
                    "not yet in the ledger; send the same request id again for the outcome",
                    retry_after=0.2,
                    shard=shard,
                )
        # Generations only grow: the same one before the call and after the
        # ledger caught up means no rebuild in between, so one log throughout.
        if generation is None or await self._generation_now(shard) != generation:
            raise Unavailable(
                "the shard was rebuilt from the ledger meanwhile; send the same request id again for the outcome",
                retry_after=0.05,
                shard=shard,
            )

    # -- deductions ----------------------------------------------------------

    async def take(
        self, sku_id: str, user_id: str, qty: int, request_id: str, hold_ms: int = 0, token_problem: str = "no token"
    ) -> DeductResult:
        """Deduct (``hold_ms == 0``) or hold ``qty`` units.

        ``token_problem``: what the node found wrong with the call's admission
        token ('' = it is valid); a SKU that requires a token refuses any
        other (:class:`~flashstock.client.AdmissionTokenRefused`, this text
        in its message). Concurrent requests of one shard share one script
        call (coalescing); each is decided exactly as if it ran alone.
        """
        shard = shard_of(sku_id, self._shards)
        token_ok = 0 if token_problem else 1

        async def call() -> Answer[DeductResult]:
            raw = await self._coalescer.submit(shard, (sku_id, user_id, qty, request_id, hold_ms, token_ok))
            return _replies.take_result(raw, sku_id, request_id, token_problem)

        answer, generations = await self._call((sku_id,), call)
        if answer.sold_out_sv:
            self._book.learn(sku_id, answer.sold_out_sv, True)
        return await self._settled(shard, answer, generations)

    async def _take_batch(self, shard: int, items: Sequence[tuple[str, str, int, str, int, int]]) -> list:
        k = ShardKeys(shard)
        keys = [k.log, k.hold_expiries, k.sold_out]
        args: list[str | int] = [k.prefix, self._record_ttl_ms]
        for sku_id, user_id, qty, request_id, hold_ms, token_ok in items:
            keys += (k.sku(sku_id), k.users(sku_id))
            args += (sku_id, user_id, qty, request_id, hold_ms, token_ok)
        return await self._scripts.deduct(keys=keys, args=args)

    async def hold(
        self, sku_id: str, user_id: str, qty: int, request_id: str, ttl_ms: int, token_problem: str = "no token"
    ) -> DeductResult:
        """Hold ``qty`` units for ``ttl_ms`` (0 = the default hold length); ``token_problem`` as for :meth:`take`."""
        return await self.take(sku_id, user_id, qty, request_id, ttl_ms or self._limits.default_hold_ms, token_problem)

    async def settle(self, sku_id: str, hold_id: str, request_id: str, confirm: bool) -> SettleResult:
        """Confirm or release the hold ``hold_id``."""
        k = self.keys(sku_id)

        async def call() -> Answer[SettleResult]:
            raw = await self._scripts.settle(
                keys=[k.log],
                args=["C" if confirm else "R", request_id, sku_id, hold_id, k.prefix, self._record_ttl_ms],
            )
            return _replies.settle_result(raw, sku_id, hold_id, request_id)

        answer, generations = await self._call((sku_id,), call)
        return await self._settled(k.shard, answer, generations)

    async def batch(
        self,
        user_id: str,
        items: Sequence[tuple[str, int]],
        request_id: str,
        token_problems: Sequence[str] | None = None,
    ) -> BatchResult:
        """Take every item, or none.

        ``token_problems``: per item, what the node found wrong with its
        admission token ('' = valid; None: no item has one), as for :meth:`take`.
        """
        problems = list(token_problems) if token_problems is not None else ["no token"] * len(items)
        keys: list[str] = []
        args: list[str | int] = [user_id, request_id, self._record_ttl_ms]
        for (sku_id, qty), problem in zip(items, problems, strict=True):
            k = self.keys(sku_id)
            keys += [k.sku(sku_id), k.users(sku_id), k.log, k.sold_out]
            args += [sku_id, qty, k.prefix, 0 if problem else 1]
        sku_ids = [sku for sku, _ in items]

        async def call() -> tuple[BatchResult, list[tuple[int, str]]]:
            raw = await self._scripts.batch(keys=keys, args=args)
            return _replies.batch_result(raw, sku_ids, request_id, problems)

        (result, waits), generations = await self._call(sku_ids, call)
        for index, log_id in waits:
            shard = shard_of(sku_ids[index], self._shards)
            await self.wait_persisted(shard, log_id, generations[shard])
        return result

    # -- reads -----------------------------------------------------------------

    async def stock_level(self, sku_id: str) -> StockLevel:
        """The counters of ``sku_id``."""
        sku = await self.get_sku(sku_id)
        return StockLevel(sku.sku_id, sku.total, sku.available, sku.held, sku.confirmed)

    async def get_sku(self, sku_id: str) -> Sku:
        """The definition and counters of ``sku_id``."""
        k = self.keys(sku_id)
        async with redis_errors():
            fields = await self._redis.hgetall(k.sku(sku_id))
            if not fields and await self._redis.hget(k.meta, "state") != SHARD_READY:
                await self._rebuilder.ensure(k.shard)
                fields = await self._redis.hgetall(k.sku(sku_id))
        if not fields:
            raise SkuNotFound(f"SKU {sku_id!r} is not defined", sku=sku_id)
        return _replies.sku_from_hash(sku_id, k.shard, fields)

    async def list_skus(self, prefix: str, page_size: int, page_token: str) -> SkuPage:
        """A page of SKUs in id order, starting after ``page_token``."""
        start = f"({page_token}" if page_token else (f"[{prefix}" if prefix else "-")
        # 0xFF as a raw byte: no UTF-8 byte is that high, so every id with the
        # prefix sorts below it (the character U+00FF would be b"\xc3\xbf").
        stop = b"[" + prefix.encode() + b"\xff" if prefix else "+"
        async with redis_errors():
            ids = await self._redis.zrangebylex(SKU_INDEX_KEY, start, stop, start=0, num=page_size + 1)
            names = [i.decode() for i in cast("list[bytes]", ids)]
            async with self._redis.pipeline(transaction=False) as pipe:
                for sku_id in names[:page_size]:
                    pipe.hgetall(self.keys(sku_id).sku(sku_id))
                hashes = await pipe.execute()
        # The page's ids, each with its hash; the one id past the page only says that another page follows.
        pairs = zip(names[:page_size], hashes, strict=True)
        skus = tuple(sku for sku_id, fields in pairs if fields and (sku := self._listed(sku_id, fields)))
        more = len(names) > page_size
        return SkuPage(skus=skus, next_page_token=names[page_size - 1] if more else "")

    def _listed(self, sku_id: str, fields: dict[Any, Any]) -> Sku | None:
        # One unreadable SKU must not fail the listing of every other one:
        # it is left out (GetSku names it), and said in the log now and then.
        try:
            return _replies.sku_from_hash(sku_id, self.keys(sku_id).shard, fields)
        except _replies.UnreadableSku as exc:
            held_back = self._unreadable_log.admit(sku_id)
            if held_back is not None:
                log.warning(
                    "ListSkus leaves out %s (%d times since the last such line)",
                    exc.message,
                    held_back,
                    extra=log_context(sku=sku_id, shard=self.keys(sku_id).shard),
                )
            return None

    async def put_sku(self, definition: SkuDefinition, request_id: str, note: AuditNote | None = None) -> AdminResult:
        """Put ``definition`` on sale (again: restarts the SKU's sale); ``note``: who and how, for the audit
        trail (written with the change; None: no audit record)."""
        d = definition
        k = self.keys(d.sku_id)
        async with redis_errors():
            # The index first: a SKU may be listed a moment before it exists,
            # never exist without being listed.
            await self._redis.zadd(SKU_INDEX_KEY, {d.sku_id: 0})

        async def call() -> Answer[AdminResult]:
            raw = await self._scripts.put_sku(
                keys=[
                    k.sku(d.sku_id),
                    k.users(d.sku_id),
                    k.sold_out,
                    k.admin_record(d.sku_id, request_id),
                    k.log,
                    k.sale_totals(d.sku_id),
                    k.visitors(d.sku_id),
                    k.buyers(d.sku_id),
                ],
                args=[
                    d.sku_id,
                    d.stock,
                    d.per_user_limit,
                    d.max_per_request,
                    d.sale_start_ms,
                    d.sale_end_ms,
                    "durable" if d.mode is Mode.DURABLE else "fast",
                    self._limits.request_ttl_s,
                    k.prefix,
                    request_id,
                    d.goal_units,
                    d.goal_sellout_ms,
                    d.goal_buyers,
                    d.unit_price_minor,
                    d.currency,
                    d.user_rate_per_s,
                    1 if d.require_token else 0,
                    # Always the last argument (the script reads ARGV[#ARGV]).
                    "" if note is None else note.encode(),
                ],
            )
            return _replies.admin_result(raw, d.sku_id, k.shard, request_id)

        answer, generations = await self._call((d.sku_id,), call)
        return await self._settled(k.shard, answer, generations)

    async def change_sku(
        self, sku_id: str, change: SkuChange, request_id: str, delta: int = 0, note: AuditNote | None = None
    ) -> AdminResult:
        """Adjust the stock by ``delta`` (:attr:`~SkuChange.ADJUST`), or pause or resume the sale;
        ``note``: who and how, for the audit trail (written with the change; None: no audit record)."""
        if change is SkuChange.PUT:
            raise ValueError("put a SKU with put_sku")
        k = self.keys(sku_id)

        async def call() -> Answer[AdminResult]:
            raw = await self._scripts.adjust_sku(
                keys=[k.sku(sku_id), k.sold_out, k.admin_record(sku_id, request_id), k.log],
                args=[
                    sku_id,
                    change.value,
                    delta,
                    self._limits.request_ttl_s,
                    k.prefix,
                    MAX_STOCK,
                    request_id,
                    "" if note is None else note.encode(),
                ],
            )
            return _replies.admin_result(raw, sku_id, k.shard, request_id)

        answer, generations = await self._call((sku_id,), call)
        return await self._settled(k.shard, answer, generations)

    async def reap_due(self, epochs: Mapping[int, int | None], most_per_shard: int = 500) -> tuple[int, list[int]]:
        """Expire every hold whose time has passed in the shards of ``epochs``
        (shard -> its owner epoch; None: standalone, not fenced).

        Returns how many expired, and the shards whose reaping was refused
        because a newer owner's epoch is stored. One pipelined read finds the
        shards whose earliest hold is due (by Redis's clock); only those get
        a script call.
        """
        shards = list(epochs)
        fenced: list[int] = []
        if not shards:
            return 0, fenced
        async with redis_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.time()
                for shard in shards:
                    pipe.zrange(ShardKeys(shard).hold_expiries, 0, 0, withscores=True)
                now_s, *earliest = await pipe.execute()
            now_ms = now_s[0] * 1000 + now_s[1] // 1000
            expired = 0
            for shard, first in zip(shards, earliest, strict=True):
                if first and first[0][1] <= now_ms:
                    k = ShardKeys(shard)
                    epoch = epochs[shard]
                    reaped = _replies.ReapReply.decode(
                        await self._scripts.reap(
                            keys=[k.hold_expiries, k.log],
                            args=[k.prefix, most_per_shard, self._record_ttl_ms, "" if epoch is None else epoch],
                        )
                    )
                    if reaped.fenced:
                        fenced.append(shard)
                    expired += reaped.expired
        return expired, fenced
