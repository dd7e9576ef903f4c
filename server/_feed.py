"""The node's pub/sub feed from Redis: sell-outs and restocks, and persister progress.

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

import redis.asyncio as aioredis

from flashstock.lockmgr import PERSISTED_CHANNEL, SOLD_OUT_CHANNEL, ShardKeys

from ._durable import PersistWatch
from ._soldout import SoldOutBook

log = logging.getLogger(__name__)

CHECK_EVERY_S = 5.0
"""How often the feed runs its ``check`` while connected (one HGETALL: see ``_binding.py``)."""


class RedisFeed:
    """Keeps a :class:`SoldOutBook` and a :class:`PersistWatch` in step with Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
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
