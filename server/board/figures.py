"""The board's arithmetic, without I/O: what a SKU's raw Redis figures and a node's metrics mean.

Everything the page shows is computed here from values the collector
(:mod:`.collector`) read, so each rule is unit-tested on every input:
conversion, rates, percentiles from latency buckets, time to sell-out,
goals, and which node readings are alerts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flashstock.server.store.keys import FIRST_SOLD_FIELD, LATENCY_BUCKETS_US, SALE_OUTCOMES

RATE_SECONDS = 3
"""Rates and the recent percentiles are taken over this many whole seconds before the current one."""

SERIES_POINTS = 300
"""How many points of each SKU's curves the board keeps (one per poll: 5 minutes at 1 s)."""

BACKLOG_ALERT_ENTRIES = 10_000
"""A persister backlog above this many log entries is an alert."""

LAG_ALERT_S = 2.0
"""A mean persister lag (log entry to ledger commit) above this many seconds over a poll is an alert."""

ALERT_HOLD_S = 60.0
"""How long an alert raised by a counter going up stays on the board after the increase."""


def _int(raw: Mapping[str, str], name: str) -> int:
    try:
        return int(raw.get(name, 0) or 0)
    except ValueError:
        return 0


def attempts_of(figures: Mapping[str, str]) -> int:
    """Attempts counted in a figure hash (``o:<outcome>`` fields summed)."""
    return sum(_int(figures, f"o:{outcome}") for outcome in SALE_OUTCOMES)


def merged(hashes: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """Figure hashes added field by field (several seconds as one)."""
    out: dict[str, int] = {}
    for figures in hashes:
        for name in figures:
            out[name] = out.get(name, 0) + _int(figures, name)
    return {name: str(value) for name, value in out.items()}


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None when there is nothing to divide by."""
    return numerator / denominator if denominator > 0 else None


def percentile_ms(figures: Mapping[str, str], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of the latencies in a figure hash's buckets, in ms; None without any.

    Interpolated linearly inside the bucket that holds it, as Prometheus's
    ``histogram_quantile`` does; a quantile in the open top bucket is given as
    the last bound (a floor, the most that can be said).
    """
    counts = [_int(figures, f"l:{i}") for i in range(len(LATENCY_BUCKETS_US) + 1)]
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i == len(LATENCY_BUCKETS_US):
                return LATENCY_BUCKETS_US[-1] / 1000
            lower = LATENCY_BUCKETS_US[i - 1] if i else 0
            upper = LATENCY_BUCKETS_US[i]
            return (lower + (upper - lower) * (rank - seen) / count) / 1000
        seen += count
    return LATENCY_BUCKETS_US[-1] / 1000  # not reached: rank <= total


@dataclass
class SaleMemory:
    """What the board remembers of one SKU's sale between polls (Redis keeps no moments)."""

    sale: int = 0
    """The SKU's sale number (``sale``) this memory is of; a new put starts a fresh memory."""
    started_ms: int = 0
    """When selling began: the window's start, else the second units were first taken, else when the board saw them."""
    sold_out_ms: int = 0
    """When the board first saw no unit left (0: not yet)."""
    series: list[list[float | None]] | None = None
    """The curves' points ``[t_s, left, sold_per_s, attempts_per_s]``, the last :data:`SERIES_POINTS`."""


def sku_figures(
    sku: str,
    definition: Mapping[str, str],
    totals: Mapping[str, str],
    recent: Sequence[Mapping[str, str]],
    visitors: int,
    buyers: int,
    memory: SaleMemory,
    now_ms: int,
) -> dict[str, Any]:
    """One SKU's entry of the snapshot; updates ``memory`` (moments and curves).

    ``definition``: the SKU hash; ``totals``: its sale totals hash; ``recent``:
    the figure hashes of the last :data:`RATE_SECONDS` whole seconds;
    ``visitors``/``buyers``: the PFCOUNTs.
    """
    sale = _int(definition, "sale")
    if memory.sale != sale:
        memory.sale, memory.started_ms, memory.sold_out_ms, memory.series = sale, 0, 0, None
    left, total, held = _int(definition, "avail"), _int(definition, "total"), _int(definition, "held")
    sold = max(total - left, 0)
    attempts = attempts_of(totals)
    ok = _int(totals, "o:ok")
    window = merged(recent)
    attempts_per_s = attempts_of(window) / RATE_SECONDS
    sold_per_s = _int(window, "units") / RATE_SECONDS
    latencies = window if attempts_of(window) else totals

    start_ms = _int(definition, "start")
    first_sold_ms = _int(totals, FIRST_SOLD_FIELD) * 1000
    if not memory.started_ms and (start_ms or sold):
        # The window's start; else the second units were first taken (the workers' figures), else now.
        memory.started_ms = start_ms if start_ms and start_ms <= now_ms else (first_sold_ms or now_ms if sold else 0)
    if total > 0 and left == 0 and not memory.sold_out_ms:
        memory.sold_out_ms = now_ms
    elif left > 0:
        memory.sold_out_ms = 0  # restocked
    sellout: dict[str, float | None]
    if memory.sold_out_ms and memory.started_ms:
        sellout = {"actual_s": max(memory.sold_out_ms - memory.started_ms, 0) / 1000, "projected_s": None}
    else:
        sellout = {"actual_s": None, "projected_s": left / sold_per_s if sold_per_s > 0 else None}

    if memory.series is None:
        memory.series = []
    memory.series.append([now_ms / 1000, left, sold_per_s, attempts_per_s])
    del memory.series[:-SERIES_POINTS]

    elapsed_s = (now_ms - memory.started_ms) / 1000 if memory.started_ms else None
    end_ms = _int(definition, "end")
    over = (total > 0 and left == 0) or (end_ms > 0 and now_ms >= end_ms)
    return {
        "sku": sku,
        "left": left,
        "total": total,
        "held": held,
        "sold": sold,
        "paused": _int(definition, "paused") == 1,
        "attempts": attempts,
        "pv": attempts,
        "uv": visitors,
        "buyers": buyers,
        "attempts_per_s": attempts_per_s,
        "sold_per_s": sold_per_s,
        "conversion_ok_attempts": ratio(ok, attempts),
        "conversion_buyers_visitors": ratio(buyers, visitors),
        "outcomes": {outcome: _int(totals, f"o:{outcome}") for outcome in SALE_OUTCOMES},
        "p50_ms": percentile_ms(latencies, 0.5),
        "p99_ms": percentile_ms(latencies, 0.99),
        "sellout": sellout,
        "elapsed_s": elapsed_s,
        "goals": goals(definition, sold, buyers, sellout["actual_s"], elapsed_s, over=over),
        "series": memory.series,
    }


def goals(
    definition: Mapping[str, str],
    sold: int,
    buyers: int,
    actual_s: float | None,
    elapsed_s: float | None,
    *,
    over: bool = False,
) -> dict[str, Any]:
    """Progress against the sale's goals (``gu`` units, ``gs`` sell-out ms, ``gb`` buyers) and the amount sold.

    Each goal present gives ``{goal, value, progress, met}`` (progress 0..1 and
    more once exceeded). ``met`` is True once reached, False once it can no
    longer be (the sale is ``over``: sold out or its window closed; for the
    sell-out time, once past it), None while open. The sell-out goal's
    progress is the time taken ÷ the goal.
    """
    out: dict[str, Any] = {}
    if (units := _int(definition, "gu")) > 0:
        out["units"] = {"goal": units, "value": sold, "progress": sold / units, "met": _met(sold >= units, over)}
    if (goal_buyers := _int(definition, "gb")) > 0:
        out["buyers"] = {
            "goal": goal_buyers,
            "value": buyers,
            "progress": buyers / goal_buyers,
            "met": _met(buyers >= goal_buyers, over),
        }
    if (goal_ms := _int(definition, "gs")) > 0:
        goal_s = goal_ms / 1000
        if actual_s is not None:
            out["sellout"] = {
                "goal": goal_s,
                "value": actual_s,
                "progress": actual_s / goal_s,
                "met": actual_s <= goal_s,
            }
        else:
            taken = elapsed_s or 0.0
            out["sellout"] = {
                "goal": goal_s,
                "value": taken,
                "progress": taken / goal_s,
                "met": False if taken > goal_s else None,
            }
    if (price := _int(definition, "pr")) > 0:
        out["amount"] = {"minor": price * sold, "currency": definition.get("cur", "")}
    return out


def _met(reached: bool, over: bool) -> bool | None:
    return True if reached else (False if over else None)


# -- nodes -----------------------------------------------------------------------------------------


def metric_sums(families: Sequence[Any]) -> dict[str, float]:
    """Every sample of parsed metric families summed over its labels, by sample name (``_created`` left out)."""
    out: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            if sample.name.endswith("_created") or math.isnan(sample.value):
                continue
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def _delta(now: Mapping[str, float], before: Mapping[str, float] | None, name: str) -> float | None:
    if before is None or name not in now or name not in before:
        return None
    change = now[name] - before[name]
    return change if change >= 0 else None  # a restarted node's counters start again


def node_rates(now: Mapping[str, float], before: Mapping[str, float] | None, seconds: float) -> dict[str, float | None]:
    """Rates between two scrapes of a node: RPCs handled per second, the mean persister lag over them."""
    handled = _delta(now, before, "grpc_server_handled_total")
    lag_sum = _delta(now, before, "flashstock_persister_lag_seconds_sum")
    lag_count = _delta(now, before, "flashstock_persister_lag_seconds_count")
    return {
        "rps": handled / seconds if handled is not None and seconds > 0 else None,
        "lag_s": lag_sum / lag_count if lag_sum is not None and lag_count else None,
    }


@dataclass
class NodeMemory:
    """What the board remembers of one node between polls: the last metrics, when counters last went up."""

    metrics: dict[str, float] | None = None
    """The last scrape's sums (:func:`metric_sums`)."""
    at: float = 0.0
    """When it was taken (monotonic seconds)."""
    raised: dict[str, float] | None = None
    """Alert kind -> when its counter last went up (monotonic seconds)."""


RAISING_COUNTERS = {
    "fenced_writes": ("flashstock_fenced_writes_total", "fenced writes: a duty wrote with a stale epoch"),
    "session_lost": ("flashstock_etcd_session_losses_total", "lost its etcd session (its duties stopped)"),
}
"""Counters whose increase is an alert: kind -> (sample name, what it means)."""


def node_alerts(
    node: str,
    health: str,
    metrics: Mapping[str, float] | None,
    rates: Mapping[str, float | None],
    memory: NodeMemory,
    now: float,
    *,
    registered: bool = True,
) -> list[dict[str, str]]:
    """The alerts one node's readings raise; ``memory.raised`` keeps a counter's increase up for :data:`ALERT_HOLD_S`.

    ``registered``: False once the node left etcd's registry (its lease is gone).
    """
    alerts: list[dict[str, str]] = []
    if health != "SERVING":
        alerts.append({"node": node, "kind": "health", "message": f"node {node} is {health}"})
    if not registered:
        alerts.append({"node": node, "kind": "registry", "message": f"node {node} left etcd's registry (lease gone)"})
    raised = memory.raised if memory.raised is not None else {}
    memory.raised = raised
    if metrics is not None:
        differences = metrics.get("flashstock_reconcile_differences", 0.0)
        if differences > 0:
            alerts.append(
                {
                    "node": node,
                    "kind": "reconcile",
                    "message": f"node {node}: Redis and the ledger differ on {differences:g} figures",
                }
            )
        for kind, (name, _) in RAISING_COUNTERS.items():
            change = _delta(metrics, memory.metrics, name)
            if change:
                raised[kind] = now
        backlog = metrics.get("flashstock_persister_backlog_entries", 0.0)
        if backlog > BACKLOG_ALERT_ENTRIES:
            alerts.append(
                {
                    "node": node,
                    "kind": "backlog",
                    "message": f"node {node}: persister backlog {backlog:g} entries",
                }
            )
    lag = rates.get("lag_s")
    if lag is not None and lag > LAG_ALERT_S:
        alerts.append({"node": node, "kind": "lag", "message": f"node {node}: persister lag {lag:.1f} s"})
    for kind, (_, meaning) in RAISING_COUNTERS.items():
        if kind in raised and now - raised[kind] <= ALERT_HOLD_S:
            alerts.append({"node": node, "kind": kind, "message": f"node {node}: {meaning}"})
    return alerts
