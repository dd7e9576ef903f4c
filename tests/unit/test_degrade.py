"""Degraded mode of a serving worker (pure): the snapshot cache, and when the mode is on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from flashstock.server._config import NodeConfig, load_config
from flashstock.server._serving_metrics import WorkerFigures, merge, read_snapshots, snapshot_path, write_snapshot
from flashstock.server.rpc.admission import SHEDDING_HOLD_S, Admission, CallerCaps
from flashstock.server.rpc.degrade import MAX_SNAPSHOTS, Degrade, Snapshots

# -- Snapshots ------------------------------------------------------------------


def test_an_answer_is_reused_while_at_most_max_age_old_then_dropped():
    s = Snapshots(1.0)
    s.put("a", "first", 10.0)
    assert s.get("a", 10.0) == "first"
    assert s.get("a", 11.0) == "first"  # exactly max_age old: still fresh
    assert s.get("a", 11.001) is None
    assert len(s) == 0  # the stale answer is gone
    assert s.get("a", 10.5) is None


def test_answers_are_kept_per_key():
    s = Snapshots(1.0)
    s.put(("GetStock", "a"), 1, 0.0)
    s.put(("GetStock", "b"), 2, 0.0)
    s.put(("ListSkus", "", 100, ""), 3, 0.0)
    assert s.get(("GetStock", "a"), 0.5) == 1
    assert s.get(("GetStock", "b"), 0.5) == 2
    assert s.get(("GetSku", "a"), 0.5) is None  # another method: another key
    assert s.get(("ListSkus", "", 100, "x"), 0.5) is None  # another page
    assert s.get(("ListSkus", "", 100, ""), 0.5) == 3


def test_a_new_answer_replaces_the_old_and_restarts_its_age():
    s = Snapshots(1.0)
    s.put("a", "old", 0.0)
    s.put("a", "new", 0.9)
    assert s.get("a", 1.5) == "new"
    assert len(s) == 1


def test_at_most_max_entries_are_kept_the_least_recently_used_going_first():
    s = Snapshots(10.0, max_entries=3)
    for key in "abc":
        s.put(key, key.upper(), 0.0)
    assert s.get("a", 0.0) == "A"  # "a" is used: "b" is now the least recent
    s.put("d", "D", 0.0)
    assert len(s) == 3
    assert s.get("b", 0.0) is None
    assert [s.get(k, 0.0) for k in "acd"] == ["A", "C", "D"]
    assert Snapshots(1.0).max_entries == MAX_SNAPSHOTS


# -- when degraded ------------------------------------------------------------------


def test_a_worker_sheds_for_a_while_after_its_own_caps_refused_a_call():
    a = Admission(max_in_flight=1)
    assert not a.shedding(0.0)
    assert a.admit(0.0) is None
    assert not a.shedding(0.0)  # taking calls is not shedding
    assert a.admit(1.0) is not None
    assert a.shedding(1.0) and a.shedding(1.0 + SHEDDING_HOLD_S - 0.01)
    assert not a.shedding(1.0 + SHEDDING_HOLD_S)


def test_a_standing_queue_refusal_counts_as_shedding():
    a = Admission(max_in_flight=0, max_queue_s=0.01, window_s=0.1)
    assert a.admit(0.0) is None
    a.finished(0.05, 0.05)  # the fastest call of the window waited 50 ms
    assert a.admit(0.2) is not None
    assert a.shedding(0.2)


def test_a_caller_over_its_own_cap_does_not_make_the_worker_shed():
    a = Admission(max_in_flight=100, callers=CallerCaps(max_in_flight=1, rate=0))
    assert a.admit(0.0, "10.0.0.1") is None
    assert a.admit(0.0, "10.0.0.1") is not None
    assert not a.shedding(0.0)


def test_degraded_while_shedding_and_off_by_itself_after():
    a = Admission(max_in_flight=1)
    d = Degrade(1.0, a)
    assert not d.on(0.0)
    a.admit(0.0)
    a.admit(0.0)  # refused
    assert d.on(0.5)
    assert not d.on(SHEDDING_HOLD_S + 0.1)


def test_degraded_by_hand_until_switched_off():
    d = Degrade(1.0, None, by_hand=True)
    assert d.on(0.0) and d.on(1e6)
    d.by_hand = False
    assert not d.on(1e6)
    assert not Degrade(1.0, None).on(0.0)


def test_the_snapshots_are_forgotten_when_degraded_mode_ends():
    d = Degrade(100.0, None, by_hand=True)
    assert d.on(0.0)
    d.snapshots.put("a", 1, 0.0)
    d.by_hand = False
    assert not d.on(1.0)
    assert len(d.snapshots) == 0


def _reader() -> tuple[list[int], Callable[[], Awaitable[int]]]:
    reads: list[int] = []

    async def fetch() -> int:
        reads.append(len(reads) + 1)
        return len(reads)

    return reads, fetch


def test_read_goes_to_the_source_every_time_when_not_degraded():
    d = Degrade(60.0, None)
    reads, fetch = _reader()

    async def run() -> list[int]:
        return [await d.read("k", fetch) for _ in range(3)]

    assert asyncio.run(run()) == [1, 2, 3]
    assert len(d.snapshots) == 0  # not even filled


def test_read_reuses_the_snapshot_while_degraded_per_key():
    d = Degrade(60.0, None, by_hand=True)
    reads, fetch = _reader()

    async def run() -> list[int]:
        return [await d.read(k, fetch) for k in ("k", "k", "other", "k")]

    assert asyncio.run(run()) == [1, 1, 2, 1]
    assert reads == [1, 2]


def test_kept_answers_only_while_degraded_and_fresh_without_fetching():
    d = Degrade(1.0, None, by_hand=True)
    assert d.kept("k", 0.0) is None  # nothing read yet
    d.snapshots.put("k", 7, 0.0)
    assert d.kept("k", 0.5) == 7
    assert d.kept("other", 0.5) is None
    assert d.kept("k", 1.5) is None  # too old
    d.snapshots.put("k", 8, 2.0)
    d.by_hand = False
    assert d.kept("k", 2.1) is None  # not degraded: the snapshots are not read (and are forgotten)


# -- the settings and the metric ------------------------------------------------------


def test_the_degrade_settings_default_and_load():
    assert NodeConfig().degrade is False
    assert NodeConfig().degraded_read_max_age_ms == 1000
    assert load_config(env={"FLASHSTOCK_DEGRADE": "true"}).degrade is True
    assert load_config({"degrade": True, "degraded_read_max_age_ms": 250}, env={}).degraded_read_max_age_ms == 250


@pytest.mark.parametrize("age", [0, -1, 60_001])
def test_a_max_age_out_of_range_is_refused_naming_the_setting(age: int):
    with pytest.raises(ValueError, match="degraded_read_max_age_ms"):
        NodeConfig(degraded_read_max_age_ms=age)


def test_each_workers_degraded_flag_reaches_the_metrics(tmp_path: Path):
    on, off = WorkerFigures(), WorkerFigures()
    on.degraded = True
    write_snapshot(snapshot_path(tmp_path, 0), on.snapshot(0, 0.0, 0))
    write_snapshot(snapshot_path(tmp_path, 1), off.snapshot(1, 0.0, 0))
    assert merge(read_snapshots(tmp_path)).degraded == {0: True, 1: False}
