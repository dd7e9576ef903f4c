"""A sale's figures: from Redis into the ledger, and into the per-SKU metrics.

The serving workers count a sale's figures and flush them to Redis once a
second (:mod:`flashstock.server.store.salestats`). This duty, run by
:class:`~.shard.ShardDuties` for the shards the node owns, every couple of
seconds:

- reads the (SKU, second) figure hashes listed in each shard's
  ``sale_seconds`` set up to two seconds ago (every worker has flushed
  them by then), with the distinct users of the second and the sale's
  totals so far (HyperLogLogs), and upserts them into the ledger's
  ``sale_seconds`` table, one transaction per round; then drops from the
  set the members older than ten seconds (a late flush within those is
  upserted again; one after re-lists its member);
- refreshes the cache the per-SKU metrics (:class:`SkuMetrics`,
  ``flashstock_sku_*``) are served from, so a scrape never touches Redis:
  SKUs on sale now or with attempts within ``metrics_sku_window_s``, at
  most ``metrics_sku_cap`` of them, the most recently active first.

Each SKU belongs to one shard and each shard to one node: a SKU's figures
are exported by one node of a cluster. Best effort throughout: a failed
round is logged and done again by the next.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flashstock.server._log_gate import LogGate
from flashstock.server._metrics import METRICS
from flashstock.server.ledger import Ledger
from flashstock.server.store.keys import LATENCY_BUCKETS_US, SALE_OUTCOMES, ShardKeys
from flashstock.server.store.redis import AsyncRedis
from flashstock.server.store.salestats import latency_quantile

log = logging.getLogger(__name__)

SETTLE_S = 2
"""A second's figures are read once it is this far behind the node's clock (every worker flushed it)."""

FORGET_AFTER_S = 10
"""A second's member leaves ``sale_seconds`` once this far behind (a later flush lists it again)."""


@dataclass(frozen=True)
class MetricsPolicy:
    """Which SKUs get per-SKU metrics."""

    window_s: float = 600.0
    """SKUs with attempts within this many seconds (besides those on sale now)."""
    cap: int = 100
    """Most SKUs, the most recently active first."""


def _int(value: Any) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def second_row(
    sku_id: str,
    sale: int,
    second: int,
    fields: dict[Any, Any],
    users: int,
    users_total: int,
    buyers_total: int,
    now_ms: int,
) -> dict[str, Any]:
    """The ledger's ``sale_seconds`` row of one (SKU, second) figure hash (``fields`` as HGETALL gives it)."""
    f = {_text(k): _int(v) for k, v in fields.items()}
    outcomes = {f"o_{name}": f.get(f"o:{name}", 0) for name in SALE_OUTCOMES}
    buckets = {i: f.get(f"l:{i}", 0) for i in range(len(LATENCY_BUCKETS_US) + 1)}
    return {
        "sku_id": sku_id,
        "sale": sale,
        "second": second,
        "attempts": sum(outcomes.values()),
        **outcomes,
        "units": f.get("units", 0),
        "users": users,
        "users_total": users_total,
        "buyers_total": buyers_total,
        "latency_p50_us": latency_quantile(buckets, 0.50),
        "latency_p99_us": latency_quantile(buckets, 0.99),
        "updated_ms": now_ms,
    }


def parse_member(member: Any) -> tuple[str, int] | None:
    """``(sku_id, second)`` of a ``sale_seconds`` member (``<sku_id>\\n<second>``); None if it is none."""
    sku_id, _, second = _text(member).rpartition("\n")
    if not sku_id or not second.isdigit():
        return None
    return sku_id, int(second)


@dataclass(frozen=True)
class SkuFigures:
    """One SKU's figures, as the per-SKU metrics show them."""

    sku_id: str
    attempts: dict[str, int] = field(default_factory=dict)
    """Attempts of the current sale by outcome (SALE_OUTCOMES)."""
    units_taken: int = 0
    units_left: int = 0
    units_held: int = 0
    visitors: int = 0
    """Distinct users who tried (HLL)."""
    buyers: int = 0
    """Distinct users who took units (HLL)."""
    sold_out: bool = False


def on_sale(sku: dict[str, int], now_ms: int) -> bool:
    """True while a SKU (its hash's numbers) has units and its sale window is open."""
    open_window = sku.get("start", 0) <= now_ms and (sku.get("end", 0) == 0 or now_ms < sku.get("end", 0))
    return open_window and sku.get("avail", 0) + sku.get("held", 0) > 0


def shown_skus(candidates: Iterable[tuple[str, float, bool]], now_s: float, policy: MetricsPolicy) -> list[str]:
    """The SKUs to export of ``(sku_id, last active second, on sale now)``: recent or on sale, capped, newest first."""
    kept = [(active, sku_id) for sku_id, active, selling in candidates if selling or active >= now_s - policy.window_s]
    kept.sort(reverse=True)
    return [sku_id for _, sku_id in kept[: policy.cap]]


class SkuMetrics(Collector):
    """The ``flashstock_sku_*`` metrics, from the cache the duty refreshes (a scrape reads no Redis)."""

    def __init__(self) -> None:
        self.figures: Sequence[SkuFigures] = ()
        """The SKUs shown, as of the duty's last round."""

    def collect(self) -> Iterator[Metric]:
        """The metrics of the cached figures."""
        figures = self.figures
        attempts = CounterMetricFamily(
            "flashstock_sku_attempts",
            "Deduct/Hold/BatchDeduct-item attempts in the SKU's current sale, by outcome.",
            labels=["sku", "outcome"],
        )
        taken = CounterMetricFamily(
            "flashstock_sku_units_taken", "Units taken (OK answers) in the SKU's current sale.", labels=["sku"]
        )
        gauges = {
            "left": GaugeMetricFamily("flashstock_sku_units_left", "Units left to sell.", labels=["sku"]),
            "held": GaugeMetricFamily("flashstock_sku_units_held", "Units held (holds not settled).", labels=["sku"]),
            "visitors": GaugeMetricFamily(
                "flashstock_sku_visitors", "Distinct users who tried in the current sale (HyperLogLog).", labels=["sku"]
            ),
            "buyers": GaugeMetricFamily(
                "flashstock_sku_buyers",
                "Distinct users who took units in the current sale (HyperLogLog).",
                labels=["sku"],
            ),
            "sold_out": GaugeMetricFamily("flashstock_sku_sold_out", "1 while the SKU is sold out.", labels=["sku"]),
        }
        for f in figures:
            for outcome in SALE_OUTCOMES:
                attempts.add_metric([f.sku_id, outcome], f.attempts.get(outcome, 0))
            taken.add_metric([f.sku_id], f.units_taken)
            gauges["left"].add_metric([f.sku_id], f.units_left)
            gauges["held"].add_metric([f.sku_id], f.units_held)
            gauges["visitors"].add_metric([f.sku_id], f.visitors)
            gauges["buyers"].add_metric([f.sku_id], f.buyers)
            gauges["sold_out"].add_metric([f.sku_id], 1 if f.sold_out else 0)
        yield attempts
        yield taken
        yield from gauges.values()


SKU_METRICS = SkuMetrics()
"""The process's per-SKU metrics (filled in the process that runs the duties)."""
METRICS.registry.register(SKU_METRICS)


class SaleFigures:
    """One round at a time: move settled seconds to the ledger, refresh the per-SKU metrics."""

    def __init__(
        self,
        redis: AsyncRedis,
        ledger: Ledger,
        policy: MetricsPolicy = MetricsPolicy(),
        clock: Callable[[], float] = time.time,
        metrics: SkuMetrics = SKU_METRICS,
    ) -> None:
        self._redis = redis
        self._ledger = ledger
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        self._errors = LogGate(interval_s=60.0)

    async def round(self, shards: Iterable[int], move: bool = True) -> int:
        """One round over ``shards``; returns the rows written to the ledger (none when not ``move``: the
        per-SKU metrics only, while the node's non-core duties are paused, duties/pause.py)."""
        shards = sorted(shards)
        written = 0
        try:
            if move:
                written = await self.move_seconds(shards)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            self._warn("moving seconds to the ledger", exc)
        try:
            await self.refresh_metrics(shards)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            self._warn("refreshing the per-SKU metrics", exc)
        return written

    def _warn(self, what: str, exc: Exception) -> None:
        held_back = self._errors.admit(what)
        if held_back is not None:
            log.warning("sale figures: %s failed: %r (%d more such failures since the last line)", what, exc, held_back)

    async def move_seconds(self, shards: Sequence[int]) -> int:
        """Upsert the settled seconds of ``shards`` into the ledger, then forget the old ones; returns the rows."""
        now = self._clock()
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in shards:
                pipe.zrangebyscore(ShardKeys(shard).sale_seconds, "-inf", int(now) - SETTLE_S)
            listed = await pipe.execute()
        found = [
            (shard, member, parsed)
            for shard, members in zip(shards, listed, strict=True)
            for member in members
            if (parsed := parse_member(member)) is not None
        ]
        if not found:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard, _, (sku_id, second) in found:
                k = ShardKeys(shard)
                pipe.hgetall(k.sale_second(second, sku_id))
                pipe.pfcount(k.visitors_second(second, sku_id))
                pipe.pfcount(k.visitors(sku_id))
                pipe.pfcount(k.buyers(sku_id))
                pipe.hget(k.sku(sku_id), "sale")
            read = await pipe.execute()
        now_ms = int(now * 1000)
        rows = []
        for i, (_, _, (sku_id, second)) in enumerate(found):
            fields, users, users_total, buyers_total, sale = read[5 * i : 5 * i + 5]
            if fields and sale is not None:  # expired, or the SKU is gone: nothing to keep
                rows.append(second_row(sku_id, int(sale), second, fields, users, users_total, buyers_total, now_ms))
        await asyncio.to_thread(self._ledger.put_sale_seconds, rows)
        old = [(shard, member) for shard, member, (_, second) in found if second < now - FORGET_AFTER_S]
        if old:
            async with self._redis.pipeline(transaction=False) as pipe:
                for shard, member in old:
                    pipe.zrem(ShardKeys(shard).sale_seconds, member)
                await pipe.execute()
        return len(rows)

    async def refresh_metrics(self, shards: Sequence[int]) -> None:
        """Read the figures of the SKUs to show (of ``shards``) into the metrics' cache."""
        cap = self._policy.cap
        if cap <= 0 or not shards:
            self._metrics.figures = ()
            return
        now = self._clock()
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in shards:
                pipe.zrevrange(ShardKeys(shard).active, 0, cap - 1, withscores=True)
            listed = await pipe.execute()
        candidates = [
            (shard, _text(m), float(score)) for shard, ms in zip(shards, listed, strict=True) for m, score in ms
        ]
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard, sku_id, _ in candidates:
                pipe.hmget(ShardKeys(shard).sku(sku_id), "avail", "held", "start", "end")
            hashes = await pipe.execute()
        skus = {
            sku_id: (shard, dict(zip(("avail", "held", "start", "end"), map(_int, values), strict=True)))
            for (shard, sku_id, _), values in zip(candidates, hashes, strict=True)
            if values[0] is not None
        }
        now_ms = int(now * 1000)
        shown = shown_skus(
            ((sku_id, active, on_sale(skus[sku_id][1], now_ms)) for _, sku_id, active in candidates if sku_id in skus),
            now,
            self._policy,
        )
        async with self._redis.pipeline(transaction=False) as pipe:
            for sku_id in shown:
                k = ShardKeys(skus[sku_id][0])
                pipe.hgetall(k.sale_totals(sku_id))
                pipe.pfcount(k.visitors(sku_id))
                pipe.pfcount(k.buyers(sku_id))
            read = await pipe.execute()
        figures = []
        for i, sku_id in enumerate(shown):
            totals, visitors, buyers = read[3 * i : 3 * i + 3]
            t = {_text(k): _int(v) for k, v in totals.items()}
            sku = skus[sku_id][1]
            figures.append(
                SkuFigures(
                    sku_id=sku_id,
                    attempts={name: t.get(f"o:{name}", 0) for name in SALE_OUTCOMES},
                    units_taken=t.get("units", 0),
                    units_left=sku["avail"],
                    units_held=sku["held"],
                    visitors=int(visitors),
                    buyers=int(buyers),
                    sold_out=sku["avail"] == 0,
                )
            )
        self._metrics.figures = tuple(figures)


__all__ = [
    "FORGET_AFTER_S",
    "SETTLE_S",
    "SKU_METRICS",
    "MetricsPolicy",
    "SaleFigures",
    "SkuFigures",
    "SkuMetrics",
    "on_sale",
    "parse_member",
    "second_row",
    "shown_skus",
]
