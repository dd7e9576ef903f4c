"""The node's pub/sub feed from Redis: sell-outs and restocks, and persister progress;
and the loader of the ids that took a sold-out SKU's units.

One task per process subscribes first, then reads the snapshots (every
shard's sold-out hash and persisted cursor), so nothing announced in between
is missed. On a broken connection the sold-out memory is emptied (every
request goes to Redis, which is always right) until the subscription and the
snapshots are back; the feed's connection is also the node's view of Redis
for health checks. On every (re)connect, and every few seconds while
connected, it runs the node's ``check`` (the bound settings: a Redis that
restarted empty, or was flushed, has lost them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from flashstock.lockmgr import shard_of
from flashstock.server._logs import log_context
from flashstock.server.store.durable import PersistWatch
from flashstock.server.store.keys import PERSISTED_CHANNEL, SHARD_READY, SOLD_OUT_CHANNEL, ShardKeys
from flashstock.server.store.redis import AsyncRedis
from flashstock.server.store.replies import SKU_FIELDS
from flashstock.server.store.soldout import SoldOutBook

log = logging.getLogger(__name__)

CHECK_EVERY_S = 5.0
"""How often the feed runs its ``check`` while connected (one HGETALL: see ``_binding.py``)."""


class _ShardNotReady(Exception):
    """The SKU's shard is being rebuilt: its records are not all back yet."""


class TakersLoader:
    """Loads, per sold-out SKU, the request ids that took its units into the :class:`SoldOutBook`.

    They are the fields of the SKU's record buckets (the current and the
    previous generation: every record a resend can still find). The read is
    an HSCAN, so a large SKU never blocks Redis; it is taken only if the SKU
    was sold out at the same stock version before and after it: while a SKU
    is sold out no request can take its units, so no taker is missed. A
    failed load leaves the SKU answered by Redis (slower, always right).
    """

    PATIENCE_S = 30.0
    """How long a load waits for a shard being rebuilt (its records are installed after its SKUs)."""

    def __init__(self, redis: AsyncRedis, book: SoldOutBook, shards: int, record_ttl_ms: int) -> None:
        self._redis = redis
        self._book = book
        self._shards = shards
        self._record_ttl_ms = record_ttl_ms
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._gate = asyncio.Semaphore(4)

    def schedule(self, sku_id: str, version: int) -> None:
        """Load the takers of ``sku_id``'s sell-out at ``version`` (from inside the event loop)."""
        running = self._loading.get(sku_id)
        if running is not None:
            running.cancel()  # an older sell-out's load: its ids would be refused anyway
        task = asyncio.get_running_loop().create_task(self._load(sku_id, version), name=f"takers {sku_id}")
        self._loading[sku_id] = task
        task.add_done_callback(lambda t: self._loading.pop(sku_id, None) if self._loading.get(sku_id) is t else None)

    async def _load(self, sku_id: str, version: int) -> None:
        delay = 0.05
        deadline = asyncio.get_running_loop().time() + self.PATIENCE_S
        while True:
            try:
                async with self._gate:
                    takers = await self._read(sku_id, version)
                if takers is not None:
                    self._book.install_takers(sku_id, version, takers)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the SKU stays answered by Redis
                if asyncio.get_running_loop().time() > deadline:
                    log.warning(
                        "takers of %s not loaded (%s): its refusals go to Redis",
                        sku_id,
                        exc,
                        extra=log_context(sku=sku_id, shard=shard_of(sku_id, self._shards)),
                    )
                    return
                log.debug("takers of %s: %s; trying again", sku_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def _read(self, sku_id: str, version: int) -> frozenset[str] | None:
        """The takers, or None when the SKU is no longer sold out at ``version``."""
        keys = ShardKeys(shard_of(sku_id, self._shards))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hmget(keys.sku(sku_id), SKU_FIELDS["stock_version"], SKU_FIELDS["available"])
            pipe.hget(keys.meta, "state")
            (seconds, micros), (sv, available), state = await pipe.execute()
        if state != SHARD_READY:
            # Being rebuilt: its SKUs (and their sell-outs) come back before its records.
            raise _ShardNotReady(f"shard {keys.shard} is not whole")
        if sv is None or int(sv) != version or int(available or 0) > 0:
            return None
        generation = (seconds * 1000 + micros // 1000) // self._record_ttl_ms
        takers: set[str] = set()
        for bucket in (keys.record_bucket(generation - 1, sku_id), keys.record_bucket(generation, sku_id)):
            # (HSCAN NOVALUES needs Redis 7.4; Debian 12 ships 7.0.)
            async for field, _record in self._redis.hscan_iter(bucket, count=1000):
                takers.add(field.decode())
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.sku(sku_id), SKU_FIELDS["stock_version"])
            pipe.hget(keys.meta, "state")
            sv_after, state_after = await pipe.execute()
        if state_after != SHARD_READY:
            raise _ShardNotReady(f"shard {keys.shard} was being rebuilt")
        if sv_after != sv:
            return None  # restocked (or rebuilt) meanwhile: the newer news brings its own load
        return frozenset(takers)


class RedisFeed:
    """Keeps a :class:`SoldOutBook` and a :class:`PersistWatch` in step with Redis."""

    def __init__(
        self,
        redis: AsyncRedis,
        book: SoldOutBook,
        watch: PersistWatch,
        shards: int,
        on_redis: Callable[[bool], Awaitable[None]] | None = None,
        check: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._redis = redis
        self._book = book
        self._watch = watch
        self._shards = shards
        self._on_redis = on_redis
        self._check = check
        self._up: bool | None = None
        self.ready = asyncio.Event()
        """Set once the first snapshots are in."""

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with a short back-off."""
        delay = 0.05
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: resubscribe
                self._book.forget_all()
                was_up = self._up
                if was_up is not False:
                    log.warning("Redis feed lost (%s); asking Redis every time until it is back", exc)
                await self._tell(False)
                delay = 0.05 if was_up else min(delay * 2, 2.0)
                await asyncio.sleep(delay)

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        handlers = {
            SOLD_OUT_CHANNEL.encode(): self._book.apply_message,
            PERSISTED_CHANNEL.encode(): self._watch.apply_message,
        }
        try:
            await pubsub.subscribe(SOLD_OUT_CHANNEL, PERSISTED_CHANNEL)
            await self._load_snapshots()
            loop = asyncio.get_running_loop()
            next_check = loop.time()
            if self._check is not None:
                await self._check()  # before SERVING again: a Redis back empty has lost the bound settings
                next_check += CHECK_EVERY_S
            self.ready.set()
            await self._tell(True)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    handlers[message["channel"]](message["data"].decode())
                if self._check is not None and loop.time() >= next_check:
                    # A FLUSHALL keeps the connection: only looking again finds it.
                    await self._check()
                    next_check = loop.time() + CHECK_EVERY_S
        finally:
            await pubsub.aclose()

    async def _tell(self, up: bool) -> None:
        if up is not self._up:
            self._up = up
            if self._on_redis is not None:
                await self._on_redis(up)

    async def _load_snapshots(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in range(self._shards):
                pipe.hgetall(ShardKeys(shard).sold_out)
                pipe.get(ShardKeys(shard).persisted)
            replies = await pipe.execute()
        for shard in range(self._shards):
            sold, persisted = replies[2 * shard], replies[2 * shard + 1]
            for sku_id, version in sold.items():
                self._book.learn(sku_id.decode(), int(version), True)
            if persisted:
                self._watch.learn(shard, persisted.decode())
