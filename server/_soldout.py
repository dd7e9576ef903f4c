"""Node memory of sold-out SKUs, kept in step with Redis over pub/sub.

Once a SKU sells out, every node refuses further attempts from this memory,
without a Redis round trip. Every change of a SKU's sold-out state comes with
a stock version ``sv`` that only grows (put, adjust and every flip bump it),
so the book keeps, per SKU, the newest state it has heard of, whatever order
the snapshot and the announcements arrive in.

:class:`SoldOutBook` is pure; :class:`SoldOutListener` feeds it from Redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from flashstock.lockmgr import SOLD_OUT_CHANNEL, ShardKeys

log = logging.getLogger(__name__)


class SoldOutBook:
    """Which SKUs are sold out, as of the newest stock version heard of."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[int, bool]] = {}
        self._sold_out: set[str] = set()

    def __contains__(self, sku_id: str) -> bool:
        """True when ``sku_id`` is known to be sold out."""
        return sku_id in self._sold_out

    def __len__(self) -> int:
        return len(self._sold_out)

    def learn(self, sku_id: str, version: int, sold_out: bool) -> None:
        """Take in a state of ``sku_id`` as of ``version``; older news is ignored."""
        known = self._state.get(sku_id)
        if known is not None and known[0] >= version:
            return
        self._state[sku_id] = (version, sold_out)
        if sold_out:
            self._sold_out.add(sku_id)
        else:
            self._sold_out.discard(sku_id)

    def apply_message(self, message: str) -> None:
        """Take in an announcement: ``"S <sv> <sku>"`` (sold out) or ``"A <sv> <sku>"``."""
        kind, version, sku_id = message.split(" ", 2)
        self.learn(sku_id, int(version), kind == "S")

    def forget_all(self) -> None:
        """Drop everything: with no news flowing, ask Redis every time instead."""
        self._state.clear()
        self._sold_out.clear()


class SoldOutListener:
    """Keeps a :class:`SoldOutBook` in step with Redis, in one task per process.

    Subscribes first, then reads the snapshot of every shard's sold-out hash,
    so nothing announced in between is missed. On a broken connection the
    book is emptied (every request goes to Redis, which is always right) until
    the subscription and snapshot are back.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        book: SoldOutBook,
        shards: int,
        on_redis: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self._redis = redis
        self._book = book
        self._shards = shards
        self._on_redis = on_redis
        self._up: bool | None = None
        self.ready = asyncio.Event()
        """Set once the first snapshot is in."""

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
                    log.warning("sold-out feed lost (%s); asking Redis until it is back", exc)
                await self._tell(False)
                delay = 0.05 if was_up else min(delay * 2, 2.0)
                await asyncio.sleep(delay)

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(SOLD_OUT_CHANNEL)
            await self._load_snapshot()
            self.ready.set()
            await self._tell(True)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    data = message["data"]
                    self._book.apply_message(data.decode() if isinstance(data, bytes) else data)
        finally:
            await pubsub.aclose()

    async def _tell(self, up: bool) -> None:
        # The feed's connection is the node's view of Redis: health follows it.
        if up is not self._up:
            self._up = up
            if self._on_redis is not None:
                await self._on_redis(up)

    async def _load_snapshot(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in range(self._shards):
                pipe.hgetall(ShardKeys(shard).sold_out)
            for sold in await pipe.execute():
                for sku_id, version in sold.items():
                    self._book.learn(sku_id.decode(), int(version), True)
