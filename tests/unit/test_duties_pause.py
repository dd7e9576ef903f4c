"""When the non-core duties pause (pure), and the channel that tells the duties' process (snapshot files)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

import pytest

from flashstock.server._metrics import METRICS
from flashstock.server._serving_metrics import (
    BadSnapshot,
    WorkerFigures,
    parse_snapshot,
    read_snapshots,
    snapshot_path,
    write_snapshot,
)
from flashstock.server.duties.pause import BY_HAND, SHED_PAUSE_S, SHEDDING, pause_reason, watch_pause
from flashstock.server.rpc.admission import Admission
from tests.helpers import aeventually


def test_no_reason_when_no_worker_shed_and_no_switch():
    assert pause_reason(False, [], 100.0) is None
    assert pause_reason(False, [None, None], 100.0) is None


def test_paused_while_a_worker_shed_within_the_hold_then_not():
    assert pause_reason(False, [None, 100.0], 100.0 + SHED_PAUSE_S - 0.1) == SHEDDING
    assert pause_reason(False, [None, 100.0], 100.0 + SHED_PAUSE_S) is None


def test_the_operators_switch_is_named_first():
    assert pause_reason(True, [], 0.0) == BY_HAND
    assert pause_reason(True, [100.0], 100.0) == BY_HAND


def test_an_admission_knows_when_it_last_shed_by_its_own_caps():
    a = Admission(max_in_flight=1)
    assert a.last_shed is None
    assert a.admit(1.0) is None
    assert a.last_shed is None
    assert a.admit(2.5) is not None
    assert a.last_shed == 2.5


def test_a_workers_shed_stamp_travels_in_its_snapshot(tmp_path: Path):
    figures = WorkerFigures()
    write_snapshot(snapshot_path(tmp_path, 0), figures.snapshot(0, 0.0, 0))
    figures.shed_at = 1234.5
    write_snapshot(snapshot_path(tmp_path, 1), figures.snapshot(1, 0.0, 0))
    assert [s["shed_at"] for s in read_snapshots(tmp_path)] == [None, 1234.5]


def test_a_snapshot_of_before_the_stamp_reads_as_never_shed_and_a_bad_stamp_is_refused():
    snap = WorkerFigures().snapshot(0, 0.0, 0)
    del snap["shed_at"]
    assert parse_snapshot(json.dumps(snap).encode())["shed_at"] is None
    snap["shed_at"] = "yesterday"
    with pytest.raises(BadSnapshot):
        parse_snapshot(json.dumps(snap).encode())


class _Duties:
    pause_reason: str | None = None


def _paused_metric(reason: str) -> float:
    value = METRICS.registry.get_sample_value("flashstock_duties_paused", {"reason": reason})
    assert value is not None
    return value


async def test_the_watch_pauses_on_a_recent_shed_logs_once_and_resumes_by_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    now = [1000.0]
    duties = _Duties()
    figures = WorkerFigures()
    path = snapshot_path(tmp_path, 0)
    write_snapshot(path, figures.snapshot(0, 0.0, 0))
    caplog.set_level(logging.WARNING, logger="flashstock.server.duties.pause")
    watch = asyncio.create_task(watch_pause(duties, lambda: False, tmp_path, interval_s=0.01, clock=lambda: now[0]))

    try:
        await aeventually(lambda: _paused_metric(SHEDDING) == 0)  # shown from the start
        assert duties.pause_reason is None
        figures.shed_at = now[0] - 1
        write_snapshot(path, figures.snapshot(0, 0.0, 0))
        await aeventually(lambda: duties.pause_reason == SHEDDING)
        assert _paused_metric(SHEDDING) == 1 and _paused_metric(BY_HAND) == 0
        await asyncio.sleep(0.05)  # several more rounds, still shedding: one line only
        now[0] += SHED_PAUSE_S
        await aeventually(lambda: duties.pause_reason is None)
        assert _paused_metric(SHEDDING) == 0
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"non-core duties paused (reconcile, sale figures into the ledger): a serving worker shed calls within "
        f"the last {SHED_PAUSE_S:g} s",
        "non-core duties resumed (reconcile, sale figures into the ledger)",
    ]


async def test_the_watch_without_a_folder_follows_the_operators_switch_only():
    duties = _Duties()
    switch = [True]
    watch = asyncio.create_task(watch_pause(duties, lambda: switch[0], None, interval_s=0.01))
    try:
        await aeventually(lambda: duties.pause_reason == BY_HAND)
        switch[0] = False
        await aeventually(lambda: duties.pause_reason is None)
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
