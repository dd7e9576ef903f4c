"""The audit trail's pure parts: a SKU's figures from a script's JSON, a log entry's row, the CLI's texts."""

from __future__ import annotations

import json

import pytest
import typer

from flashstock.server.cli.audit import args_text, change_text, since_ms
from flashstock.server.ledger import AuditNote, row_of_shard_change, shard_change_record
from flashstock.server.ledger._audit import row_of_entry, sku_figures

HASH = ["avail", "3", "total", "5", "held", "0", "conf", "2", "paused", "0", "mode", "fast", "sv", "7", "cur", "EUR"]


def test_a_sku_hash_becomes_its_figures_by_readable_names_with_numbers_and_flags():
    got = sku_figures(json.dumps(HASH))
    assert got == {
        "available": 3,
        "total": 5,
        "held": 0,
        "confirmed": 2,
        "paused": False,
        "mode": "fast",
        "currency": "EUR",
    }
    # An empty hash (a SKU put for the first time) has no figures; a field unknown here keeps its name.
    assert sku_figures("{}") is None and sku_figures("[]") is None and sku_figures("") is None
    assert sku_figures(json.dumps(["rate", "10"])) == {"rate": 10}


def test_a_log_entry_with_a_note_is_one_row_keyed_by_its_shard_and_entry_id():
    note = AuditNote("jwt:ops", "ipv4:10.0.0.1:5000", "AdjustStock", {"sku_id": "s", "delta": 3})
    after = [*HASH[:2], "total", "8"]
    fields = {"t": "A", "k": "s", "au": note.encode(), "ab": json.dumps(HASH), "aa": json.dumps(after)}

    row = row_of_entry(4, "1700000000000-3", fields, 1700000000000)

    assert row is not None
    assert (row["identity"], row["peer"], row["method"], row["sku_id"], row["shard"]) == (
        "jwt:ops",
        "ipv4:10.0.0.1:5000",
        "AdjustStock",
        "s",
        4,
    )
    assert json.loads(row["args"]) == {"sku_id": "s", "delta": 3}
    assert json.loads(row["before"])["total"] == 5 and json.loads(row["after"])["total"] == 8
    assert row["source"] == "log/4/1700000000000-3"
    assert row_of_entry(4, "1-0", {"t": "A", "k": "s"}, 1) is None  # no note: an older node's entry


def test_a_shard_change_record_round_trips_through_etcd():
    value = json.dumps(shard_change_record(5, "ops", "ops@host", "shards.pin", {"shard": 3, "node": "n2"})).encode()
    row = row_of_shard_change("/flashstock/c/audit/5-abc", value)
    assert (row["at_ms"], row["method"], row["shard"], row["sku_id"], row["before"]) == (5, "shards.pin", 3, None, None)
    assert row["source"] == "etcd//flashstock/c/audit/5-abc"
    drain = row_of_shard_change(
        "k", json.dumps(shard_change_record(5, "ops", "h", "shards.drain", {"node": "n"})).encode()
    )
    assert drain["shard"] is None


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("90s", 1_000_000 - 90_000),
        ("1h", 1_000_000 - 3_600_000),
        ("1h30m", 1_000_000 - 5_400_000),
        ("2d", 1_000_000 - 172_800_000),
    ],
)
def test_since_is_a_span_back_from_now(text, ms):
    assert since_ms(text, now_ms=1_000_000) == ms


def test_since_is_an_iso_time_and_anything_else_is_refused_saying_what_is_wanted():
    assert since_ms("2026-11-25T20:00:00+00:00", now_ms=0) == 1_795_636_800_000
    for bad in ("yesterday", "1x", "h1", ""):
        with pytest.raises(typer.BadParameter, match="neither a span back from now"):
            since_ms(bad, now_ms=0)


def test_a_change_shows_what_it_changed_and_a_call_its_set_arguments():
    before = {"total": 5, "available": 3, "paused": False}
    assert change_text(before, {"total": 8, "available": 6, "paused": False}) == "total 5→8, available 3→6"
    assert change_text(None, {"total": 5, "available": 5, "paused": False, "mode": "fast"}).startswith("new: total 5")
    assert change_text(None, None) == "-" and change_text(before, before) == "-"
    assert args_text({"sku_id": "s", "delta": -2, "request_id": "r1", "goal_units": 0}) == "delta=-2 request_id=r1"
