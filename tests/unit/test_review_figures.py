"""The sale review's pure part: figures from records, on every kind of sale (no ledger, no sockets).

The figures against a real ledger are checked in tests/integration/test_review.py
(this module may not share its name: the test folders are not packages).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from flashstock.server.ledger.review import (
    AFTERMATH_MS,
    Deduction,
    Incident,
    SaleRecords,
    SkuDefinition,
    format_amount,
    review,
    write_review,
)

PUT_MS = 1_700_000_000_000
SKU = SkuDefinition(
    sku_id="hot",
    shard=5,
    sale=2,
    mode="fast",
    total=5,
    per_user_limit=2,
    max_per_request=0,
    sale_start_ms=0,
    sale_end_ms=0,
    put_ms=PUT_MS,
    goal_units=0,
    goal_sellout_ms=0,
    goal_buyers=0,
    unit_price_minor=0,
    currency="",
)


def taken(user: str, qty: int, at: int, state: str = "confirmed", kind: str = "D", updated: int | None = None):  # type: ignore[no-untyped-def]
    return Deduction(user, qty, kind, state, PUT_MS + at, PUT_MS + (at if updated is None else updated))


def figures(second: int, attempts: int, **outcomes: int) -> dict[str, int]:
    row = {"second": second, "attempts": attempts, "units": 0, "users": 1, "users_total": attempts}
    row |= {"buyers_total": 0, "latency_p50_us": 0, "latency_p99_us": 0}
    row |= {f"o_{o}": 0 for o in ("ok", "dup", "sold_out", "insufficient", "limit", "not_on_sale", "qty_max", "error")}
    return row | {f"o_{k}": v for k, v in outcomes.items()}


def records(*deductions: Deduction, sku: SkuDefinition = SKU, sale: int = 2, seconds=(), incidents=()):  # type: ignore[no-untyped-def]
    return SaleRecords(sku, sale, list(deductions), list(seconds), list(incidents))


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (19990, "EUR", "199.90 EUR"),
        (123_456_789, "usd", "1,234,567.89 usd"),
        (5, "EUR", "0.05 EUR"),
        (1500, "JPY", "1,500 JPY"),
        (1234, "KWD", "1.234 KWD"),
        (-250, "EUR", "-2.50 EUR"),
        (10**20 + 1, "EUR", "1,000,000,000,000,000,000.01 EUR"),  # exact, beyond a float's digits
    ],
)
def test_amounts_are_exact_in_major_units(minor, currency, text):
    assert format_amount(minor, currency) == text


def test_the_first_moment_stock_reached_zero_is_the_sell_out_even_when_a_hold_gives_units_back():
    result = review(
        records(
            taken("a", 2, 100),
            taken("b", 1, 900, state="expired", kind="H", updated=5_000),
            taken("c", 2, 1_200),  # stock 0 here
            taken("d", 1, 6_000),  # the expired unit, sold again
        )
    )
    assert result.sellout_ms == PUT_MS + 1_200 and result.time_to_sellout_ms == 1_200
    assert result.stock_steps == [
        (PUT_MS + 100, 3),
        (PUT_MS + 900, 2),
        (PUT_MS + 1_200, 0),
        (PUT_MS + 5_000, 1),
        (PUT_MS + 6_000, 0),
    ]
    assert [s.stock for s in result.seconds] == [2, 0, 0, 0, 0, 1, 0]
    assert result.sold == 5 and result.taken == 6 and result.given_back == 1
    assert [s.sold_cumulative for s in result.seconds] == [2, 4, 4, 4, 4, 4, 5]


def test_a_sale_that_did_not_sell_out_misses_its_sell_out_goal_and_says_by_nothing():
    sku = replace(SKU, goal_units=4, goal_sellout_ms=10_000, goal_buyers=1, sale_start_ms=PUT_MS + 50)
    result = review(records(taken("a", 2, 100), taken("b", 1, 200, state="held", kind="H"), sku=sku))
    assert result.sellout_ms is None and result.start_from == "sale_start_ms"
    goals = {g.name: (g.target, g.actual, g.met, g.by) for g in result.goals}
    assert goals == {"units": (4, 2, False, -2), "sellout_ms": (10_000, None, False, None), "buyers": (1, 2, True, 1)}
    assert result.to_json()["sellout"] == {"sold_out": False, "at_ms": None, "time_to_sellout_ms": None}


def test_without_goals_or_price_there_is_no_verdict_and_no_amount():
    result = review(records(taken("a", 1, 100)))
    assert [(g.target, g.met, g.by) for g in result.goals] == [(None, None, None)] * 3
    assert result.amount_minor is None and result.to_json()["amount"] is None


def test_units_per_buyer_count_what_is_handed_out_against_the_limit():
    result = review(
        records(
            taken("a", 1, 100),
            taken("a", 1, 200, state="held", kind="H"),
            taken("b", 1, 300),
            taken("c", 2, 400, state="released", kind="H"),  # gave everything back: no buyer
        )
    )
    assert result.buyer_units == {"a": 2, "b": 1}
    assert result.units_per_buyer == {1: 1, 2: 1} and result.at_limit == 1
    assert result.holds == {"taken": 2, "confirmed": 0, "expired": 0, "released": 1, "open": 1}


def test_without_per_second_figures_the_funnel_and_refusals_are_not_recorded():
    result = review(records(taken("a", 1, 100)))
    assert result.attempts is None and result.users is None and result.refusals() is None
    assert result.peak_attempts_per_s is None and all(s.figures is None for s in result.seconds)


def test_per_second_figures_fill_quiet_seconds_with_zero_and_sum_refusals():
    base = PUT_MS // 1000
    result = review(
        records(
            taken("a", 1, 100),
            seconds=[figures(base, 10, ok=1, sold_out=9), figures(base + 3, 4, limit=3, error=1)],
        )
    )
    assert [s.second for s in result.seconds] == [base, base + 1, base + 2, base + 3]
    assert [s.figures["attempts"] if s.figures else None for s in result.seconds] == [10, 0, 0, 4]
    assert result.attempts == 14 and result.users == 10 and result.peak_attempts_per_s == (10, base)
    refused = result.refusals()
    assert refused is not None and refused["sold_out"] == 9 and refused["limit"] == 3 and refused["error"] == 1


def test_an_earlier_sale_has_no_definition_and_starts_at_its_first_activity():
    result = review(records(taken("a", 1, 500), taken("b", 1, 800), sale=1))
    assert not result.current_sale and result.definition is None
    assert result.start_ms == PUT_MS + 500 and result.start_from == "first activity"
    assert result.sellout_ms is None and result.stock_steps == [] and result.seconds[0].stock is None
    assert result.sold == 2 and result.per_user_limit is None and result.at_limit is None
    assert result.to_json()["sellout"] is None


def test_the_incidents_window_runs_from_the_start_to_the_end_time_or_a_minute_after_the_last_deduction():
    happened = [
        Incident(PUT_MS + at, f"k{at}", "n", 1, "") for at in (-1, 0, 700, 700 + AFTERMATH_MS, 700 + AFTERMATH_MS + 1)
    ]
    result = review(records(taken("a", 1, 700), incidents=happened))
    assert [i.kind for i in result.incidents] == ["k0", "k700", f"k{700 + AFTERMATH_MS}"]
    ended = review(records(taken("a", 1, 700), sku=replace(SKU, sale_end_ms=PUT_MS + 700), incidents=happened))
    assert [i.kind for i in ended.incidents] == ["k0", "k700"] and ended.end_from == "sale_end_ms"


def test_the_folder_holds_the_page_its_plots_and_the_data(tmp_path: Path):
    sku = replace(SKU, unit_price_minor=250, currency="EUR")
    result = review(records(taken("a", 2, 100), taken("b", 1, 1_100), sku=sku))

    page = write_review(result, tmp_path / "out")

    assert page == tmp_path / "out" / "index.html"
    html = page.read_text()
    pngs = set(re.findall(r'src="([a-z]+)\.png"', html))
    assert pngs == {"sold", "stock", "funnel", "buyers"}  # attempts and refusals: not recorded
    assert all((tmp_path / "out" / f"{name}.png").read_bytes().startswith(b"\x89PNG") for name in pngs)
    assert html.count("Not recorded") >= 2 and "7.50 EUR" in html
    data = json.loads((tmp_path / "out" / "review.json").read_text())
    assert data["units"]["sold"] == 3 and data["amount"]["minor"] == 750
    assert (tmp_path / "out" / "seconds.csv").read_text().splitlines()[0].startswith("second,time_utc,taken,sold")
    assert (tmp_path / "out" / "buyers.csv").read_text().splitlines() == ["user,units,at_limit", "a,2,1", "b,1,0"]
