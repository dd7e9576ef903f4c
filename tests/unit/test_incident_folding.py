"""Incidents that come in bursts are folded: the first of a window is written, the rest as one counted row."""

from __future__ import annotations

from flashstock.server.duties.incidents import RepeatFolder
from flashstock.server.duties.reconcile import Difference
from flashstock.server.duties.shard import DIFFERENCES_NAMED, difference_detail


def test_the_first_of_a_window_goes_through_and_the_rest_are_counted():
    folder = RepeatFolder(window_s=10)
    assert folder.add(("fenced_write", 3), "first", now=100.0)
    assert not folder.add(("fenced_write", 3), "second", now=101.0)
    assert not folder.add(("fenced_write", 3), "third", now=105.0)
    assert folder.due(now=109.0) == []  # the window is still open

    (held,) = folder.due(now=110.0)
    assert (held.key, held.count, held.last_detail, held.last_at) == (("fenced_write", 3), 2, "third", 105.0)
    assert folder.due(now=200.0) == []  # handed out once


def test_each_kind_and_shard_has_its_own_window():
    folder = RepeatFolder(window_s=10)
    assert folder.add(("fenced_write", 1), "a", now=0.0)
    assert folder.add(("fenced_write", 2), "b", now=1.0)
    assert folder.add(("failover", 1), "c", now=2.0)
    assert not folder.add(("fenced_write", 1), "a again", now=3.0)


def test_a_steady_stream_makes_one_row_per_window_with_its_count():
    folder = RepeatFolder(window_s=10)
    written, folded = 0, []
    for tick in range(300):  # ten a second for 30 s
        now = tick / 10
        written += folder.add("k", f"#{tick}", now)
        folded += folder.due(now)
    assert written == 1
    assert 2 <= len(folded) <= 3
    assert written + sum(f.count for f in folded) + sum(f.count for f in folder.pending()) == 300


def test_a_repeat_after_a_quiet_window_is_written_at_once():
    folder = RepeatFolder(window_s=10)
    assert folder.add("k", "one", now=0.0)
    assert folder.add("k", "two", now=30.0)


def test_a_reconcile_incident_says_how_many_differences_and_names_the_first_few():
    differences = [Difference(f"sku-{i % 3}", "available", i, i + 1) for i in range(DIFFERENCES_NAMED + 5)]
    detail = difference_detail(differences)
    assert detail.startswith(f"{DIFFERENCES_NAMED + 5} differences in 3 SKUs: sku-0: available 0 in Redis, 1 in")
    assert detail.endswith("; and 5 more")
    assert f"available {DIFFERENCES_NAMED} in Redis" not in detail
