"""The node's incident log writes to a real ledger off the caller's path, folds bursts, and never raises."""

from __future__ import annotations

import logging

import pytest

from flashstock.server.duties.incidents import IncidentLog
from flashstock.server.ledger import Ledger, sqlite_url
from tests.helpers import eventually


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(sqlite_url(tmp_path))
    led.open()
    yield led
    led.close()


def test_a_recorded_incident_reaches_the_ledger_with_the_nodes_name(ledger):
    log = IncidentLog(ledger, node="node-a")
    log.record("rebuild", "rebuilt from the ledger", shard=4, at_ms=1234)
    assert log.flush()
    (row,) = ledger.incidents()
    assert (row.kind, row.node, row.shard, row.detail, row.at_ms) == (
        "rebuild",
        "node-a",
        4,
        "rebuilt from the ledger",
        1234,
    )
    log.close()


def test_a_burst_of_fenced_writes_is_one_row_now_and_one_with_the_count_when_the_window_closes(ledger):
    clock = Clock()
    log = IncidentLog(ledger, node="node-a", repeat_window_s=10, clock=clock)
    for i in range(50):
        log.record_repeated("fenced_write", f"redis refused the reaper's write #{i}", shard=7)
    log.record_repeated("fenced_write", "redis refused the persister's write", shard=8)
    assert log.flush()
    assert [(r.shard, r.detail) for r in ledger.incidents()] == [
        (7, "redis refused the reaper's write #0"),
        (8, "redis refused the persister's write"),
    ]

    clock.now += 10
    rows = eventually(ledger.incidents, until=lambda rows: len(rows) == 3)
    assert rows[2].shard == 7
    assert rows[2].detail == "49 times more within 10 s; the last: redis refused the reaper's write #49"
    log.close()


def test_close_writes_what_is_still_folded(ledger):
    clock = Clock()
    log = IncidentLog(ledger, repeat_window_s=10, clock=clock)
    for _ in range(3):
        log.record_repeated("fenced_write", "refused", shard=1)
    log.close()
    assert [r.detail for r in ledger.incidents()] == ["refused", "2 times more within 10 s; the last: refused"]


def test_a_ledger_that_refuses_the_row_costs_a_log_line_never_an_error(tmp_path, caplog):
    unopened = Ledger(sqlite_url(tmp_path))  # no schema: every insert fails
    log = IncidentLog(unopened, node="node-a")
    with caplog.at_level(logging.WARNING, logger="flashstock.server.duties.incidents"):
        log.record("session_lost", "etcd session lost")
        log.record("session_lost", "etcd session lost again")
        assert log.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "could not record a session_lost incident" in lines[0]
    log.close()
    unopened.close()
