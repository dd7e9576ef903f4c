"""Reconciliation without sockets: comparing both sides' figures, telling a settled shard, showing it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from rich.console import Console

from flashstock.server.cli.reconcile import reconcile_table
from flashstock.server.duties.reconcile import (
    Difference,
    LogMark,
    Reconciliation,
    SkuFigures,
    compare,
    figures_from_hash,
    unsettled_reason,
)

REDIS = SkuFigures("a", shard=3, total=10, held=2, confirmed=5, available=3, sale=1)
LEDGER = replace(REDIS, released=4, expired=1)


def test_equal_sides_have_no_difference():
    assert compare([REDIS], [LEDGER]) == []
    assert compare([], []) == []


def test_released_and_expired_are_not_compared():
    assert compare([REDIS], [replace(LEDGER, released=99, expired=7)]) == []


@pytest.mark.parametrize("figure", ["total", "held", "confirmed", "available", "sale"])
def test_each_compared_figure_is_a_difference(figure):
    ledger = replace(LEDGER, **{figure: getattr(LEDGER, figure) + 1})
    assert compare([REDIS], [ledger]) == [Difference("a", figure, getattr(REDIS, figure), getattr(ledger, figure))]


def test_every_differing_figure_is_listed_in_order():
    ledger = replace(LEDGER, held=0, available=5)
    assert [(d.figure, d.redis, d.ledger) for d in compare([REDIS], [ledger])] == [("held", 2, 0), ("available", 3, 5)]


def test_a_sku_on_one_side_only_is_a_difference():
    only_redis = replace(REDIS, sku_id="b")
    only_ledger = replace(LEDGER, sku_id="c")
    diffs = compare([REDIS, only_redis], [LEDGER, only_ledger])
    assert [(d.sku_id, d.figure) for d in diffs] == [("b", "presence"), ("c", "presence")]
    assert str(diffs[0]) == "b: only in Redis"
    assert str(diffs[1]) == "c: only in the ledger"


def test_difference_names_sku_figure_and_both_values():
    assert str(Difference("a", "available", 4, 3)) == "a: available 4 in Redis, 3 in the ledger"


def test_figures_from_a_redis_hash():
    fields = {
        "avail": "3",
        "total": "10",
        "held": "2",
        "conf": "5",
        "lim": "0",
        "maxq": "0",
        "start": "0",
        "end": "0",
        "paused": "0",
        "mode": "fast",
        "sv": "4",
        "sale": "1",
    }
    assert figures_from_hash("a", 3, fields) == REDIS


@pytest.mark.parametrize(
    "mark, cursor, settled",
    [
        (LogMark(0, "0-0", "ready:2"), None, True),  # no log at all
        (LogMark(0, "1700-5", "ready:2"), "1700-2", True),  # trimmed: the persister held it all
        (LogMark(3, "1700-5", "ready:2"), "1700-5", True),  # not trimmed yet, but persisted
        (LogMark(3, "1700-5", "ready:2"), "1699-9", False),
        (LogMark(3, "1700-5", "ready:2"), "1700-4", False),  # ids compare by (ms, seq), not as text
        (LogMark(1, "1700-10", "ready:2"), "1700-9", False),
        (LogMark(1, "1700-9", "ready:2"), "1700-10", True),
        (LogMark(2, "1700-5", "ready:2"), None, False),  # never persisted
        (LogMark(0, "0-0", "building"), "1700-5", False),
        (LogMark(0, "0-0", None), "1700-5", False),  # Redis lost the shard
    ],
)
def test_a_shard_is_settled_once_the_ledger_holds_its_log(mark, cursor, settled):
    assert (unsettled_reason(mark, cursor) is None) is settled


def _render(rec: Reconciliation) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(reconcile_table(rec))
    return console.export_text()


def test_table_shows_both_sides_and_names_what_differs():
    ledger = replace(LEDGER, available=4)
    rec = Reconciliation({"a": REDIS}, {"a": ledger}, compare([REDIS], [ledger]))
    lines = [line.split() for line in _render(rec).splitlines()]
    redis_row = next(cells for cells in lines if cells[:2] == ["a", "redis"])
    ledger_row = lines[lines.index(redis_row) + 1]
    assert redis_row[2:] == ["10", "2", "5", "-", "-", "3", "differs:", "available"]
    assert ledger_row == ["shard", "3", "ledger", "10", "2", "5", "4", "1", "4"]


def test_table_says_ok_and_one_side_only():
    b = replace(LEDGER, sku_id="b")
    rec = Reconciliation({"a": REDIS}, {"a": LEDGER, "b": b}, compare([REDIS], [LEDGER, b]))
    text = _render(rec)
    assert "only in the ledger" in text
    assert next(line for line in text.splitlines() if line.split()[:2] == ["a", "redis"]).split()[-1] == "ok"
    assert not rec.ok
