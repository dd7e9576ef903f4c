"""``flashstock sales report`` and ``flashstock ledger upgrade|status`` on real ledgers.

The sales tests run on a Redis and a node of this module's own (``redis_server``
and ``node`` are overridden here, so ``admin`` and ``stock`` from conftest
use them): on the session's Redis, ``node_2w``'s persister drains the same
shard logs into its own ledger, so the session node's ledger may lack
entries. The ledger tests need no node: each has files of its own.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
import redis as redis_py
import sqlalchemy as sa
from typer.testing import CliRunner

from flashstock.client import Outcome
from flashstock.lockmgr import shard_of
from flashstock.server.cli.app import app
from flashstock.server.cli.sales import REPORT_FIELDS
from flashstock.server.duties.reconcile import reconcile
from flashstock.server.ledger import HEAD, Ledger
from flashstock.server.ledger._schema import metadata
from flashstock.server.local.procs import NodeProcess, free_port
from tests.helpers import eventually, stacks

# This module's own stack, in place of the session's: assigned, so a test's
# parameter of the same name shadows no import.
node = stacks.node
redis_server = stacks.redis_server

ENV = {"COLUMNS": "250", "NO_COLOR": "1"}


def cli(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), env={**ENV, **(env or {})})


def ledger_caught_up(node: NodeProcess, sku: str | None = None) -> None:
    """Wait until the node's ledger holds everything Redis shows (reconcile's wait), and agrees."""
    client = redis_py.Redis.from_url(node.redis_url, decode_responses=True)
    ledger = Ledger(node.ledger_url)
    try:
        rec = reconcile(client, ledger, node.shards, sku_id=sku, wait_s=10)
    finally:
        client.close()
        ledger.close()
    assert rec.ok and not rec.unsettled, rec


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


# -- sales report ------------------------------------------------------------------


def test_sales_report_json_matches_what_the_test_sold(node, admin, stock, sku):
    admin.put_sku(sku, 20)
    first = stock.deduct(sku, "u1", 2)
    assert first.outcome is Outcome.OK
    assert stock.deduct(sku, "u2", 1).outcome is Outcome.OK
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK
    to_confirm = stock.hold(sku, "u3", 2, ttl_ms=60_000)
    assert stock.confirm(sku, to_confirm.deduction.request_id).outcome is Outcome.OK
    to_release = stock.hold(sku, "u4", 1, ttl_ms=60_000)
    assert stock.release(sku, to_release.deduction.request_id).outcome is Outcome.OK
    assert stock.hold(sku, "u5", 1, ttl_ms=200).outcome is Outcome.OK  # left to expire
    last = stock.hold(sku, "u6", 3, ttl_ms=60_000)  # left open
    assert last.outcome is Outcome.OK
    eventually(lambda: stock.get_stock(sku), until=lambda s: s.held == 3)  # the reaper expired u5's hold
    ledger_caught_up(node, sku)

    result = cli("sales", "report", "--sku", sku, "--format", "json", "--ledger", node.ledger_url)

    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row == {
        "sku": sku,
        "shard": shard_of(sku),
        "sale": 1,
        "mode": "fast",
        "total": 20,
        "confirmed": 2 + 1 + 1 + 2,  # three deducts and the confirmed hold
        "held": 3,
        "available": 20 - 6 - 3,
        "buyers": 4,  # u1, u2, u3 (confirmed), u6 (held); not u4 (released) nor u5 (expired)
        "holds": 4,
        "holds_confirmed": 1,
        "holds_expired": 1,
        "holds_released": 1,
        "holds_open": 1,
        "first_sale": row["first_sale"],
        "last_sale": row["last_sale"],
    }
    # First and last units still handed out: the first deduct and the open hold
    # (the ledger may keep the log entry's ms, at most a tick from the record's).
    assert row["first_sale"].endswith("+00:00")
    assert abs(ms(row["first_sale"]) - first.deduction.taken_at_ms) <= 2
    assert abs(ms(row["last_sale"]) - last.deduction.taken_at_ms) <= 2


def test_sales_report_csv_has_a_header_and_one_row_per_sku(node, admin, stock, sku):
    skus = [f"{sku}-a", f"{sku}-b"]
    for n, s in enumerate(skus, start=1):
        admin.put_sku(s, 10)
        assert stock.deduct(s, "u1", n).outcome is Outcome.OK
    ledger_caught_up(node)

    result = cli("sales", "report", "--format", "csv", "--data-dir", str(node.data_dir))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == ",".join(REPORT_FIELDS)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    ledger = Ledger(node.ledger_url)
    try:
        in_ledger = sorted(s.sku_id for s in ledger.sku_states())
    finally:
        ledger.close()
    assert [r["sku"] for r in rows] == in_ledger  # one row per SKU, by id
    by_sku = {r["sku"]: r for r in rows}
    figures = [(by_sku[s]["confirmed"], by_sku[s]["available"], by_sku[s]["buyers"]) for s in skus]
    assert figures == [("1", "9", "1"), ("2", "8", "1")]
    assert by_sku[skus[0]]["first_sale"] and by_sku[skus[0]]["holds"] == "0"

    table = cli("sales", "report", "--sku", skus[1], "--ledger", node.ledger_url)
    assert table.exit_code == 0 and skus[1] in table.output and skus[0] not in table.output


def test_sales_report_of_an_unknown_sku_or_a_missing_ledger_fails(node, sku, tmp_path):
    unknown = cli("sales", "report", "--sku", sku, "--format", "json", "--ledger", node.ledger_url)
    assert unknown.exit_code == 1 and sku in unknown.output
    assert unknown.stdout == ""  # nothing a program would take for a report

    missing = cli("sales", "report", "--data-dir", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "no ledger" in missing.output and "data_dir" in missing.output
    assert not (tmp_path / "nowhere").exists()  # a report creates nothing


# -- ledger upgrade and status ---------------------------------------------------------


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_upgrade_creates_the_schema_of_a_fresh_file(tmp_path):
    path = tmp_path / "new" / "ledger.sqlite3"

    result = cli("ledger", "upgrade", "--ledger", f"sqlite:///{path}")

    assert result.exit_code == 0, result.output
    assert f"none (empty) → {HEAD} (head)" in result.output
    assert tables(path) == set(metadata.tables) | {"alembic_version"}
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    engine.dispose()

    again = cli("ledger", "upgrade", "--ledger", f"sqlite:///{path}")
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_upgrade_finds_the_ledger_like_serve_does(tmp_path):
    by_flag = cli("ledger", "upgrade", "--data-dir", str(tmp_path / "a"))
    assert by_flag.exit_code == 0, by_flag.output
    assert "ledger_url" not in by_flag.output and (tmp_path / "a" / "ledger.sqlite3").exists()

    by_env = cli("ledger", "upgrade", env={"FLASHSTOCK_DATA_DIR": str(tmp_path / "b")})
    assert by_env.exit_code == 0 and (tmp_path / "b" / "ledger.sqlite3").exists()

    # FLASHSTOCK_LEDGER beats --data-dir's default file; the flag beats the env.
    url_c = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    by_ledger_env = cli("ledger", "upgrade", "--data-dir", str(tmp_path / "d"), env={"FLASHSTOCK_LEDGER": url_c})
    assert by_ledger_env.exit_code == 0 and (tmp_path / "c.sqlite3").exists() and not (tmp_path / "d").exists()
    url_e = f"sqlite:///{tmp_path / 'e.sqlite3'}"
    flag_wins = cli("ledger", "upgrade", "--ledger", url_e, env={"FLASHSTOCK_LEDGER": url_c})
    assert flag_wins.exit_code == 0 and (tmp_path / "e.sqlite3").exists()

    config = tmp_path / "flashstock.toml"
    config.write_text(f'ledger = "sqlite:///{tmp_path / "f.sqlite3"}"\n')
    by_file = cli("ledger", "upgrade", "--config", str(config))
    assert by_file.exit_code == 0 and (tmp_path / "f.sqlite3").exists()


def test_upgrade_refuses_a_file_that_is_not_a_database_and_leaves_it_byte_identical(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    junk = os.urandom(8192)
    path.write_bytes(junk)

    result = cli("ledger", "upgrade", "--data-dir", str(tmp_path))

    assert result.exit_code == 2
    assert str(path) in result.output and "not an SQLite database" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert path.read_bytes() == junk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.sqlite3"]  # no -wal, no -shm


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_upgrade_refuses_a_database_of_another_application(tmp_path, journal):
    path = tmp_path / "shop.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
    conn.execute("INSERT INTO orders (item) VALUES ('book')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    files = sorted(p.name for p in tmp_path.iterdir())

    result = cli("ledger", "upgrade", "--ledger", f"sqlite:///{path}")

    assert result.exit_code == 2, result.output
    assert "not a flashstock ledger" in result.output and "orders" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    if journal == "delete":  # a WAL file's header says WAL either way; nothing else may change
        assert path.read_bytes() == before
    assert tables(path) == {"orders"}


def test_upgrade_names_the_setting_of_a_bad_or_unreachable_ledger(tmp_path):
    bad = cli("ledger", "upgrade", "--ledger", "mysql://db/flashstock")
    assert bad.exit_code == 2 and "ledger" in bad.output and "mysql" in bad.output

    no_path = cli("ledger", "upgrade", "--ledger", "sqlite:///")
    assert no_path.exit_code == 2 and "file path" in no_path.output

    url = f"postgresql+psycopg://flashstock:s3cret@127.0.0.1:{free_port()}/ledger"
    unreachable = cli("ledger", "upgrade", "--ledger", url)
    assert unreachable.exit_code == 2 and "cannot open" in unreachable.output, unreachable.output
    assert "s3cret" not in unreachable.output and "Traceback" not in unreachable.output


def test_status_shows_the_revision_and_the_persisted_shards(node, admin, stock, sku, tmp_path):
    admin.put_sku(sku, 5)
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK
    ledger_caught_up(node, sku)

    result = cli("ledger", "status", "--data-dir", str(node.data_dir))

    assert result.exit_code == 0, result.output
    assert f"{HEAD} (head)" in result.output
    ledger = Ledger(node.ledger_url)
    try:
        assert f"ledger_id {ledger.identity()}" in result.output
    finally:
        ledger.close()
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.output.splitlines() if "│" in line]
    shard, cursor, _generation, _moved, rebuilds, _epoch = next(r for r in rows if r[0] == str(shard_of(sku)))
    assert cursor != "-"  # a persisted cursor
    assert int(rebuilds) >= 1  # the shard was installed (rebuilt) once at the node's start

    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    behind = cli("ledger", "status", "--ledger", f"sqlite:///{empty}")
    assert behind.exit_code == 1 and "ledger upgrade" in behind.output
    assert empty.read_bytes() == b""
