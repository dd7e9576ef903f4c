"""A sale's figures, the pure parts: outcomes, latency buckets and quantiles, ledger rows, the SKUs shown, the cap."""

from __future__ import annotations

import pytest
import redis.asyncio

from flashstock.client import BatchItemResult, BatchResult, InvalidArgument, Outcome, Unavailable
from flashstock.server.duties.salefigures import (
    MetricsPolicy,
    SkuFigures,
    SkuMetrics,
    on_sale,
    parse_member,
    second_row,
    shown_skus,
)
from flashstock.server.rpc.servicer import batch_error_outcomes, batch_outcomes
from flashstock.server.store.keys import LATENCY_BUCKETS_US, SALE_OUTCOMES
from flashstock.server.store.replies import QtyAboveMax
from flashstock.server.store.salestats import (
    SaleStats,
    error_outcome,
    latency_field,
    latency_quantile,
    sale_outcome,
)


def test_every_answer_of_a_take_counts_as_one_sale_outcome():
    assert sale_outcome(Outcome.OK) == "ok"
    assert sale_outcome(Outcome.DUPLICATE) == "dup"
    assert sale_outcome(Outcome.SOLD_OUT) == "sold_out"
    assert sale_outcome(Outcome.INSUFFICIENT) == "insufficient"
    assert sale_outcome(Outcome.LIMIT) == "limit"
    assert sale_outcome(Outcome.NOT_ON_SALE) == "not_on_sale"
    assert sale_outcome(Outcome.HOLD_NOT_FOUND) == "error"
    assert error_outcome(QtyAboveMax("too many", sku="x")) == "qty_max"
    assert error_outcome(InvalidArgument("bad")) == "error"
    assert error_outcome(Unavailable("down")) == "error"
    assert {sale_outcome(o) for o in Outcome} | {"qty_max"} <= set(SALE_OUTCOMES)


def test_a_refused_batch_counts_its_passing_items_as_the_refusal():
    refused = BatchResult(Outcome.SOLD_OUT, (BatchItemResult("a", Outcome.OK), BatchItemResult("b", Outcome.SOLD_OUT)))
    assert batch_outcomes(refused) == ["sold_out", "sold_out"]
    taken = BatchResult(Outcome.OK, (BatchItemResult("a", Outcome.OK), BatchItemResult("b", Outcome.OK)))
    assert batch_outcomes(taken) == ["ok", "ok"]
    items = [("a", 1), ("b", 9)]
    assert batch_error_outcomes(items, QtyAboveMax("too many", sku="b")) == ["error", "qty_max"]
    assert batch_error_outcomes(items, Unavailable("down")) == ["error", "error"]


@pytest.mark.parametrize(
    ("latency_us", "field"),
    [(0, "l:0"), (250, "l:0"), (251, "l:1"), (1_000, "l:2"), (1_000_000, "l:11"), (1_000_001, "l:12")],
)
def test_latency_falls_in_the_bucket_of_its_upper_bound(latency_us, field):
    assert latency_field(latency_us) == field


def test_latency_quantiles_interpolate_within_their_bucket():
    assert latency_quantile({}, 0.5) == 0
    # 100 attempts in (500, 1000] us: the median is half way.
    assert latency_quantile({2: 100}, 0.5) == 750
    # 98 fast, 2 in (10 ms, 20 ms]: p99 is half way into the slow bucket.
    assert latency_quantile({0: 98, 6: 2}, 0.99) == 15_000
    assert latency_quantile({0: 98, 6: 2}, 0.5) == round(250 * 50 / 98)
    # Past the last bound: the last bound.
    assert latency_quantile({len(LATENCY_BUCKETS_US): 5}, 0.99) == LATENCY_BUCKETS_US[-1]


def test_a_second_becomes_one_ledger_row():
    fields = {b"o:ok": b"3", b"o:sold_out": b"7", b"units": b"4", b"l:2": b"10", b"lsum": b"9000"}
    row = second_row("sku-1", 2, 1_700_000_000, fields, 9, 40, 3, 123)
    assert row["attempts"] == 10
    assert (row["o_ok"], row["o_sold_out"], row["o_error"]) == (3, 7, 0)
    assert (row["units"], row["users"], row["users_total"], row["buyers_total"]) == (4, 9, 40, 3)
    assert (row["sku_id"], row["sale"], row["second"], row["updated_ms"]) == ("sku-1", 2, 1_700_000_000, 123)
    assert row["latency_p50_us"] == 750


def test_members_of_sale_seconds_name_a_sku_and_a_second():
    assert parse_member(b"a\nb\n17") == ("a\nb", 17)
    assert parse_member(b"no-second") is None
    assert parse_member(b"\n5") is None


def test_the_skus_shown_are_on_sale_or_recent_capped_newest_first():
    policy = MetricsPolicy(window_s=600, cap=2)
    now = 10_000.0
    candidates = [("old", 1_000.0, False), ("selling-old", 2_000.0, True), ("a", 9_990.0, False), ("b", 9_999, False)]
    assert shown_skus(candidates, now, policy) == ["b", "a"]
    assert shown_skus(candidates, now, MetricsPolicy(window_s=600, cap=10)) == ["b", "a", "selling-old"]
    assert on_sale({"avail": 1, "start": 0, "end": 0}, 5)
    assert not on_sale({"avail": 0, "held": 0}, 5)
    assert not on_sale({"avail": 5, "start": 0, "end": 4}, 5)
    assert not on_sale({"avail": 5, "start": 6, "end": 0}, 5)


def test_the_collector_exports_the_cached_figures_only():
    metrics = SkuMetrics()
    assert all(not family.samples for family in metrics.collect())
    metrics.figures = (SkuFigures("s", {"ok": 2}, units_taken=3, units_left=7, visitors=5, buyers=2),)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in metrics.collect() for s in f.samples}
    assert samples[("flashstock_sku_attempts_total", (("outcome", "ok"), ("sku", "s")))] == 2
    assert samples[("flashstock_sku_attempts_total", (("outcome", "error"), ("sku", "s")))] == 0
    assert samples[("flashstock_sku_units_taken_total", (("sku", "s"),))] == 3
    assert samples[("flashstock_sku_units_left", (("sku", "s"),))] == 7
    assert samples[("flashstock_sku_visitors", (("sku", "s"),))] == 5
    assert samples[("flashstock_sku_buyers", (("sku", "s"),))] == 2
    assert samples[("flashstock_sku_sold_out", (("sku", "s"),))] == 0


def test_a_worker_counts_at_most_max_skus_per_interval_and_counts_the_rest_as_dropped():
    # No I/O: the client is never connected.
    stats = SaleStats(redis.asyncio.Redis(), shards=8, clock=lambda: 100.0, max_skus=3)
    for i in range(5):
        stats.record(f"sku-{i}", "u", "ok", 1, 0.001)
    stats.record("sku-0", "u2", "ok", 1, 0.001)  # a SKU already counted still is
    assert stats.dropped == 2
