"""The board's arithmetic (server/board/figures.py): conversion, rates, percentiles, sell-out, goals, alerts."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flashstock.server.board.figures import (
    ALERT_HOLD_S,
    RATE_SECONDS,
    SERIES_POINTS,
    NodeMemory,
    SaleMemory,
    goals,
    merged,
    metric_sums,
    node_alerts,
    node_rates,
    percentile_ms,
    sku_figures,
)
from flashstock.server.store.keys import LATENCY_BUCKETS_US

SKU = {"avail": "60", "total": "100", "held": "5", "conf": "35", "sale": "1", "start": "0"}


def _figures(definition=SKU, totals=None, recent=(), visitors=0, buyers=0, memory=None, now_ms=1_000_000):  # type: ignore[no-untyped-def]
    return sku_figures("hot", definition, totals or {}, list(recent), visitors, buyers, memory or SaleMemory(), now_ms)


def test_conversion_is_ok_over_attempts_and_buyers_over_visitors() -> None:
    totals = {"o:ok": "40", "o:sold_out": "50", "o:limit": "10", "units": "40"}
    entry = _figures(totals=totals, visitors=80, buyers=20)
    assert entry["pv"] == entry["attempts"] == 100
    assert entry["conversion_ok_attempts"] == pytest.approx(0.4)
    assert entry["conversion_buyers_visitors"] == pytest.approx(0.25)
    assert (entry["left"], entry["sold"], entry["held"], entry["uv"]) == (60, 40, 5, 80)


def test_conversion_without_attempts_is_unknown_not_zero() -> None:
    entry = _figures()
    assert entry["conversion_ok_attempts"] is None
    assert entry["conversion_buyers_visitors"] is None
    assert entry["p50_ms"] is None


def test_rates_are_the_last_seconds_mean() -> None:
    recent = [{"o:ok": "10", "o:dup": "2", "units": "10"}, {"o:ok": "20", "units": "20"}, {}]
    entry = _figures(recent=recent)
    assert entry["attempts_per_s"] == pytest.approx(32 / RATE_SECONDS)
    assert entry["sold_per_s"] == pytest.approx(30 / RATE_SECONDS)
    assert merged(recent)["o:ok"] == "30"


def test_percentiles_interpolate_inside_the_bucket() -> None:
    # 100 latencies: 50 in (0, 250 us], 49 in (250, 500], 1 above the last bound.
    figures = {"l:0": "50", "l:1": "49", f"l:{len(LATENCY_BUCKETS_US)}": "1"}
    assert percentile_ms(figures, 0.5) == pytest.approx(0.25)
    assert percentile_ms(figures, 0.25) == pytest.approx(0.125)
    assert percentile_ms(figures, 0.99) == pytest.approx(0.5)
    assert percentile_ms(figures, 1.0) == pytest.approx(LATENCY_BUCKETS_US[-1] / 1000)
    assert percentile_ms({}, 0.5) is None


def test_recent_latencies_win_over_the_whole_sale() -> None:
    totals = {"o:ok": "100", "l:5": "100"}
    assert _figures(totals=totals)["p50_ms"] == pytest.approx(7.5)  # only the totals: (5 ms, 10 ms]
    entry = _figures(totals=totals, recent=[{"o:ok": "4", "l:0": "4"}])
    assert entry["p50_ms"] == pytest.approx(0.125)


def test_sellout_is_projected_while_selling_and_actual_after() -> None:
    memory = SaleMemory()
    entry = _figures(recent=[{"units": "30"}] * RATE_SECONDS, memory=memory, now_ms=10_000)
    assert entry["sellout"] == {"actual_s": None, "projected_s": pytest.approx(60 / 30)}
    out = dict(SKU, avail="0")
    entry = _figures(definition=out, memory=memory, now_ms=13_500)
    assert entry["sellout"] == {"actual_s": pytest.approx(3.5), "projected_s": None}
    # Later polls keep the moment it sold out.
    assert _figures(definition=out, memory=memory, now_ms=20_000)["sellout"]["actual_s"] == pytest.approx(3.5)


def test_goals_are_missed_only_once_the_sale_is_over() -> None:
    definition = dict(SKU, gu="80", end="50000")
    assert _figures(definition=definition, now_ms=10_000)["goals"]["units"]["met"] is None
    assert _figures(definition=definition, now_ms=50_000)["goals"]["units"]["met"] is False
    assert _figures(definition=dict(definition, avail="0"), now_ms=10_000)["goals"]["units"]["met"] is True


def test_sellout_counts_from_the_window_start() -> None:
    out = dict(SKU, avail="0", start="4000")
    assert _figures(definition=out, now_ms=9_000)["sellout"]["actual_s"] == pytest.approx(5.0)


def test_nothing_sold_projects_nothing() -> None:
    assert _figures(definition=dict(SKU, avail="100"))["sellout"] == {"actual_s": None, "projected_s": None}


def test_a_new_put_starts_a_new_memory() -> None:
    memory = SaleMemory()
    _figures(definition=dict(SKU, avail="0"), memory=memory, now_ms=5_000)
    entry = _figures(definition=dict(SKU, avail="100", sale="2"), memory=memory, now_ms=6_000)
    assert entry["sellout"]["actual_s"] is None
    assert len(entry["series"]) == 1


def test_series_keep_the_last_points() -> None:
    memory = SaleMemory()
    for i in range(SERIES_POINTS + 5):
        entry = _figures(memory=memory, now_ms=1_000 * i)
    assert len(entry["series"]) == SERIES_POINTS
    assert entry["series"][0][0] == 5.0
    assert entry["series"][-1][1] == 60


def test_goals_progress_and_amount() -> None:
    definition = {"gu": "200", "gb": "10", "gs": "30000", "pr": "1999", "cur": "EUR"}
    out = goals(definition, sold=100, buyers=12, actual_s=None, elapsed_s=15.0)
    assert out["units"] == {"goal": 200, "value": 100, "progress": 0.5, "met": None}  # still selling
    assert out["buyers"]["met"] is True
    assert goals(definition, 100, 12, actual_s=5.0, elapsed_s=5.0, over=True)["units"]["met"] is False
    assert goals(definition, 200, 12, actual_s=5.0, elapsed_s=5.0, over=True)["units"]["met"] is True
    assert out["sellout"] == {"goal": 30.0, "value": 15.0, "progress": 0.5, "met": None}
    assert out["amount"] == {"minor": 199_900, "currency": "EUR"}
    assert goals(definition, 100, 12, actual_s=25.0, elapsed_s=40.0)["sellout"]["met"] is True
    assert goals(definition, 100, 12, actual_s=None, elapsed_s=31.0)["sellout"]["met"] is False
    assert goals({}, 100, 12, None, None) == {}


METRICS = """
# TYPE flashstock_fenced_writes counter
flashstock_fenced_writes_total{store="redis",duty="reaper"} 1.0
flashstock_fenced_writes_total{store="ledger",duty="persister"} 2.0
# TYPE flashstock_reconcile_differences gauge
flashstock_reconcile_differences 0.0
# TYPE flashstock_persister_lag_seconds histogram
flashstock_persister_lag_seconds_bucket{le="+Inf"} 10.0
flashstock_persister_lag_seconds_count 10.0
flashstock_persister_lag_seconds_sum 1.0
# TYPE grpc_server_handled counter
grpc_server_handled_total{grpc_method="Deduct",grpc_code="OK"} 100.0
"""


def _sums(text: str = METRICS) -> dict[str, float]:
    return metric_sums(list(text_string_to_metric_families(text)))


def test_metric_sums_add_the_label_sets() -> None:
    sums = _sums()
    assert sums["flashstock_fenced_writes_total"] == 3.0
    assert sums["grpc_server_handled_total"] == 100.0


def test_node_rates_between_scrapes() -> None:
    before = _sums()
    now = dict(before, grpc_server_handled_total=300.0)
    now["flashstock_persister_lag_seconds_sum"] = 31.0
    now["flashstock_persister_lag_seconds_count"] = 20.0
    rates = node_rates(now, before, 2.0)
    assert rates["rps"] == pytest.approx(100.0)
    assert rates["lag_s"] == pytest.approx(3.0)
    assert node_rates(now, None, 2.0) == {"rps": None, "lag_s": None}
    # A restarted node's counters went back: no rate rather than a negative one.
    assert node_rates(before, now, 2.0)["rps"] is None


def test_a_healthy_node_raises_nothing() -> None:
    memory = NodeMemory(metrics=_sums())
    assert node_alerts("a", "SERVING", _sums(), {"lag_s": 0.1}, memory, now=100.0) == []


@pytest.mark.parametrize("health", ["NOT_SERVING", "unreachable"])
def test_a_node_not_serving_is_an_alert(health: str) -> None:
    alerts = node_alerts("a", health, None, {}, NodeMemory(), now=0.0)
    assert [a["kind"] for a in alerts] == ["health"]


def test_reconcile_differences_backlog_and_lag_are_alerts() -> None:
    metrics = dict(_sums(), flashstock_reconcile_differences=2.0, flashstock_persister_backlog_entries=50_000.0)
    alerts = node_alerts("a", "SERVING", metrics, {"lag_s": 5.0}, NodeMemory(metrics=_sums()), now=0.0)
    assert {a["kind"] for a in alerts} == {"reconcile", "backlog", "lag"}


def test_counters_going_up_raise_an_alert_that_stays_a_while() -> None:
    memory = NodeMemory(metrics=_sums())
    later = dict(_sums(), flashstock_fenced_writes_total=4.0, flashstock_etcd_session_losses_total=1.0)
    memory.metrics = _sums()
    memory.metrics["flashstock_etcd_session_losses_total"] = 0.0
    alerts = node_alerts("a", "SERVING", later, {}, memory, now=10.0)
    assert {a["kind"] for a in alerts} == {"fenced_writes", "session_lost"}
    memory.metrics = later
    assert {a["kind"] for a in node_alerts("a", "SERVING", later, {}, memory, now=10.0 + ALERT_HOLD_S)} == {
        "fenced_writes",
        "session_lost",
    }
    assert node_alerts("a", "SERVING", later, {}, memory, now=11.0 + ALERT_HOLD_S) == []


def test_a_node_gone_from_the_registry_is_an_alert() -> None:
    alerts = node_alerts("a", "unreachable", None, {}, NodeMemory(), now=0.0, registered=False)
    assert {a["kind"] for a in alerts} == {"health", "registry"}
