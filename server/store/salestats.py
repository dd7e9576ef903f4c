"""A sale's figures, counted by each serving worker and flushed to Redis once an interval.

:meth:`SaleStats.record` is on the hot path: a few dict operations in
memory, no I/O. A background task (:meth:`SaleStats.run`, started by the
node in each serving worker) sends what was counted once per interval in
one non-transactional pipeline, per (SKU, second): HINCRBY of the fields
(``o:<outcome>``, ``units``, ``l:<i>``, ``lsum``) on the second's hash and on
the sale's totals, PFADD of the users to the sale's and the second's
visitors (and of the buyers to its buyers), EXPIRE of the per-second keys,
and ZADD to the shard's ``sale_seconds`` and ``active`` sets (key names:
the end of :mod:`.keys`). The shard's duties move the seconds to the
ledger (:mod:`flashstock.server.duties.salefigures`).

Memory stays bounded: at most :data:`MAX_SKUS` distinct SKUs per interval
(attempts on others are dropped and counted, logged through a
:class:`~flashstock.server._log_gate.LogGate`), and figures a failed flush
kept for the next try are dropped, with a warning, once older than
:data:`KEEP_UNSENT_S`. Nothing here blocks or fails a request.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flashstock.client import Outcome
from flashstock.lockmgr import shard_of
from flashstock.server._log_gate import LogGate
from flashstock.server.store.keys import (
    FIRST_SOLD_FIELD,
    LATENCY_BUCKETS_US,
    SALE_OUTCOMES,
    SALE_SECONDS_TTL_S,
    ShardKeys,
)
from flashstock.server.store.redis import AsyncRedis
from flashstock.server.store.replies import QtyAboveMax

log = logging.getLogger(__name__)

MAX_SKUS = 1000
"""Distinct SKUs a worker counts per flush interval; attempts on more are dropped (and counted)."""

KEEP_UNSENT_S = 60
"""How long figures a failed flush kept are tried again (seconds of node clock); older ones are dropped."""

PFADD_CHUNK = 1000
"""Most users per PFADD command."""

_SALE_OUTCOME = {
    Outcome.OK: "ok",
    Outcome.DUPLICATE: "dup",
    Outcome.SOLD_OUT: "sold_out",
    Outcome.INSUFFICIENT: "insufficient",
    Outcome.LIMIT: "limit",
    Outcome.NOT_ON_SALE: "not_on_sale",
    Outcome.RATE_LIMITED: "rate_limited",
}
_OUTCOME_FIELD = {name: f"o:{name}" for name in SALE_OUTCOMES}
_LATENCY_FIELD = tuple(f"l:{i}" for i in range(len(LATENCY_BUCKETS_US) + 1))


def sale_outcome(outcome: Outcome) -> str:
    """The figure (one of SALE_OUTCOMES) an answer's outcome counts as."""
    return _SALE_OUTCOME.get(outcome, "error")


def error_outcome(error: BaseException) -> str:
    """The figure an error raised by a take counts as: ``qty_max`` or ``error``."""
    return "qty_max" if isinstance(error, QtyAboveMax) else "error"


def latency_field(latency_us: int) -> str:
    """The latency bucket field (``l:<i>``) of one attempt."""
    return _LATENCY_FIELD[bisect.bisect_left(LATENCY_BUCKETS_US, latency_us)]


def latency_quantile(buckets: dict[int, int], q: float) -> int:
    """The ``q`` quantile (0-1) of the bucket counts ``{i: count}`` (``l:<i>``), us.

    Linear within the bucket it falls in (from the bucket below's bound);
    past the last bound, the last bound.
    """
    total = sum(buckets.values())
    if total <= 0:
        return 0
    target = q * total
    seen = 0
    for i in range(len(LATENCY_BUCKETS_US) + 1):
        count = buckets.get(i, 0)
        if count and seen + count >= target:
            if i == len(LATENCY_BUCKETS_US):
                return LATENCY_BUCKETS_US[-1]
            low = LATENCY_BUCKETS_US[i - 1] if i else 0
            return round(low + (LATENCY_BUCKETS_US[i] - low) * (target - seen) / count)
        seen += count
    return LATENCY_BUCKETS_US[-1]


@dataclass
class SecondFigures:
    """What one worker counted for one SKU in one second."""

    counts: dict[str, int] = field(default_factory=dict)
    """Hash field -> increment."""
    users: set[str] = field(default_factory=set)
    """Users who tried."""
    buyers: set[str] = field(default_factory=set)
    """Users who took units (OK)."""

    def merge(self, other: SecondFigures) -> None:
        """Add ``other``'s figures to these."""
        for name, n in other.counts.items():
            self.counts[name] = self.counts.get(name, 0) + n
        self.users |= other.users
        self.buyers |= other.buyers


class SaleStats:
    """One serving worker's sale figures: counted in memory, flushed to Redis by :meth:`run`."""

    def __init__(
        self,
        redis: AsyncRedis,
        shards: int,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        max_skus: int = MAX_SKUS,
    ) -> None:
        self._redis = redis
        self._shards = shards
        self.interval_s = interval_s
        """Between flushes, seconds."""
        self._clock = clock
        self._max_skus = max_skus
        self._seconds: dict[tuple[str, int], SecondFigures] = {}
        self._skus: set[str] = set()
        self._unsent: dict[tuple[str, int], SecondFigures] = {}
        self.dropped = 0
        """Attempts not counted: past the SKU cap of an interval, or kept too long after failed flushes."""
        self._dropped_log = LogGate(interval_s=60.0)

    def record(self, sku_id: str, user_id: str, outcome: str, units: int, latency_s: float) -> None:
        """Count one attempt (``outcome`` one of SALE_OUTCOMES), ended now; in memory, no I/O."""
        key = (sku_id, int(self._clock()))
        figures = self._seconds.get(key)
        if figures is None:
            if sku_id not in self._skus:
                if len(self._skus) >= self._max_skus:
                    self._drop(1, f"more than {self._max_skus} SKUs in one interval")
                    return
                self._skus.add(sku_id)
            figures = self._seconds[key] = SecondFigures()
        counts = figures.counts
        name = _OUTCOME_FIELD[outcome]
        counts[name] = counts.get(name, 0) + 1
        latency_us = int(latency_s * 1_000_000)
        name = latency_field(latency_us)
        counts[name] = counts.get(name, 0) + 1
        counts["lsum"] = counts.get("lsum", 0) + latency_us
        figures.users.add(user_id)
        if units:
            counts["units"] = counts.get("units", 0) + units
        if outcome == "ok":
            figures.buyers.add(user_id)

    def _drop(self, attempts: int, why: str) -> None:
        self.dropped += attempts
        held_back = self._dropped_log.admit(why)
        if held_back is not None:
            log.warning("sale figures: dropped attempts: %s (%d more such drops since the last line)", why, held_back)

    async def flush(self) -> bool:
        """Send everything counted (and kept from failed flushes) in one pipeline; False if it failed."""
        pending, self._unsent = self._unsent, {}
        for key, figures in self._seconds.items():
            if key in pending:
                pending[key].merge(figures)
            else:
                pending[key] = figures
        self._seconds, self._skus = {}, set()
        if not pending:
            return True
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for (sku_id, second), figures in pending.items():
                    self._queue(pipe, sku_id, second, figures)
                await pipe.execute()
            return True
        except asyncio.CancelledError:
            self._keep(pending)
            raise
        except Exception as exc:  # noqa: BLE001 - kept for the next try: a request never waits on this
            log.debug("sale figures: flush failed: %r", exc)
            self._keep(pending)
            return False

    def _keep(self, pending: dict[tuple[str, int], SecondFigures]) -> None:
        oldest = int(self._clock()) - KEEP_UNSENT_S
        stale = [key for key in pending if key[1] < oldest]
        if stale:
            attempts = sum(n for key in stale for name, n in pending[key].counts.items() if name.startswith("o:"))
            for key in stale:
                del pending[key]
            self._drop(attempts, f"Redis took no figures for {KEEP_UNSENT_S} s")
        for key, figures in pending.items():
            if key in self._unsent:
                self._unsent[key].merge(figures)
            else:
                self._unsent[key] = figures

    def _queue(self, p: Any, sku_id: str, second: int, figures: SecondFigures) -> None:
        k = ShardKeys(shard_of(sku_id, self._shards))
        per_second, totals = k.sale_second(second, sku_id), k.sale_totals(sku_id)
        visitors_second = k.visitors_second(second, sku_id)
        for name, n in figures.counts.items():
            p.hincrby(per_second, name, n)
            p.hincrby(totals, name, n)
        users = sorted(figures.users)
        for i in range(0, len(users), PFADD_CHUNK):
            p.pfadd(k.visitors(sku_id), *users[i : i + PFADD_CHUNK])
            p.pfadd(visitors_second, *users[i : i + PFADD_CHUNK])
        buyers = sorted(figures.buyers)
        if buyers:
            # When units were first taken (to the second): a board's start of selling, for the time to sell-out.
            p.hsetnx(totals, FIRST_SOLD_FIELD, second)
        for i in range(0, len(buyers), PFADD_CHUNK):
            p.pfadd(k.buyers(sku_id), *buyers[i : i + PFADD_CHUNK])
        p.expire(per_second, SALE_SECONDS_TTL_S)
        p.expire(visitors_second, SALE_SECONDS_TTL_S)
        p.zadd(k.sale_seconds, {f"{sku_id}\n{second}": second})
        # GT: a late flush of an older second never moves a SKU's last activity back.
        p.zadd(k.active, {sku_id: second}, gt=True)

    async def run(self) -> None:
        """Flush once per interval, until cancelled (then :meth:`flush` once more for the rest)."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()


__all__ = [
    "KEEP_UNSENT_S",
    "MAX_SKUS",
    "SaleStats",
    "SecondFigures",
    "error_outcome",
    "latency_field",
    "latency_quantile",
    "sale_outcome",
]
