"""The ledger's audit table on SQLite and PostgreSQL: written with the change it records, once per source."""

from __future__ import annotations

import json

import pytest

from flashstock.server.ledger import AuditNote, Ledger, StaleGeneration, row_of_shard_change, shard_change_record

HASH_BEFORE = ["total", "5", "avail", "5", "held", "0", "conf", "0", "paused", "0", "mode", "fast"]
HASH_AFTER = ["total", "5", "avail", "5", "held", "0", "conf", "0", "paused", "1", "mode", "fast"]


@pytest.fixture
def ledger(engine_url: str):
    led = Ledger(engine_url)
    led.open()
    try:
        yield led
    finally:
        led.close()


def put_entry(sku: str) -> dict[str, str]:
    fields = {"t": "P", "k": sku, "q": "5", "lim": "0", "maxq": "0", "start": "0", "end": "0", "mode": "fast"}
    return {**fields, "s": "1", "r": f"p-{sku}", "f": "fp", "au": AuditNote("anonymous", "ipv4:1", "PutSku").encode()}


def pause_entry(sku: str) -> dict[str, str]:
    note = AuditNote("jwt:ops", "ipv4:10.1.1.1:4000", "PauseSku", {"sku_id": sku, "request_id": f"z-{sku}"})
    return {
        "t": "Z",
        "k": sku,
        "r": f"z-{sku}",
        "f": "fp2",
        "au": note.encode(),
        "ab": json.dumps(HASH_BEFORE),
        "aa": json.dumps(HASH_AFTER),
    }


def test_a_change_and_its_audit_row_are_written_together_and_once(ledger):
    entries = [("1000-0", put_entry("s1")), ("2000-0", pause_entry("s1"))]

    ledger.persist(3, 0, entries)
    ledger.persist(3, 0, entries)  # a replay (a crash before the cursor was announced): nothing twice

    pause, put = ledger.audit()
    assert (pause.method, pause.identity, pause.peer, pause.at_ms) == (
        "PauseSku",
        "jwt:ops",
        "ipv4:10.1.1.1:4000",
        2000,
    )
    assert (pause.before["paused"], pause.after["paused"], pause.shard, pause.sku_id) == (False, True, 3, "s1")
    assert pause.args == {"sku_id": "s1", "request_id": "z-s1"} and pause.source == "log/3/2000-0"
    assert put.before is None and put.after is None  # a note without figures keeps none
    [state] = ledger.sku_states(sku_id="s1")
    assert state.paused


def test_a_refused_batch_writes_neither_the_change_nor_its_audit_row(ledger):
    ledger.persist(4, 0, [("1000-0", put_entry("s2"))])
    ledger.bump_generation(4, 1500)  # a rebuild began: entries read before it are refused, whole

    with pytest.raises(StaleGeneration):
        ledger.persist(4, 0, [("2000-0", pause_entry("s2"))])

    assert [r.method for r in ledger.audit(sku_id="s2")] == ["PutSku"]
    assert not ledger.sku_states(sku_id="s2")[0].paused


def test_shard_change_records_are_kept_once_and_read_newest_first_by_sku_and_time(ledger):
    rows = [
        row_of_shard_change(
            f"/flashstock/c/audit/{ms}-x",
            json.dumps(shard_change_record(ms, "os:me@h", "h", "shards.pin", {"shard": 1})).encode(),
        )
        for ms in (10, 20, 30)
    ]
    ledger.copy_audit(rows)
    ledger.copy_audit(rows[1:])  # copied again by another node: kept once

    assert [r.at_ms for r in ledger.audit()] == [30, 20, 10]
    assert [r.at_ms for r in ledger.audit(since_ms=20)] == [30, 20]
    assert [r.at_ms for r in ledger.audit(limit=1)] == [30]
    assert ledger.audit(sku_id="nothing") == []
