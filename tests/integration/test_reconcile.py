"""``flashstock reconcile``: Redis against the ledger after real sales, and a tampered Redis caught.

This module runs on a Redis and a node of its own (the ``redis_server`` and
``node`` fixtures are overridden here; ``admin``, ``stock``, ``redis`` and
``sku`` from conftest then use them): the session's Redis also serves
``node_2w``, whose persister drains the same shard logs into a ledger of its
own, so the session node's ledger may lack entries (until shards get owners,
one node per Redis).
"""

from __future__ import annotations

import json
import re
import time

import redis as redis_py
from rich.console import Console
from typer.testing import CliRunner

from flashstock.client import Outcome
from flashstock.lockmgr import shard_of
from flashstock.server.cli.app import app
from flashstock.server.cli.reconcile import run_reconcile
from flashstock.server.duties.reconcile import reconcile
from flashstock.server.ledger import Ledger, sqlite_url
from flashstock.server.ledger.reports import checked_upgrade
from flashstock.server.local.procs import NodeProcess, RedisServer
from flashstock.server.store.keys import SHARD_READY, ShardKeys
from tests.helpers import stacks

# This module's own stack, in place of the session's: assigned, so a test's
# parameter of the same name shadows no import.
node = stacks.node
redis_server = stacks.redis_server

ENV = {"COLUMNS": "250", "NO_COLOR": "1"}


def run_cli(node: NodeProcess, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(
        app, ["reconcile", "--redis-url", node.redis_url, "--ledger", node.ledger_url, *args], env=ENV
    )


def sku_rows(output: str, sku: str) -> tuple[list[str], list[str]]:
    """The Redis and the ledger row of ``sku`` in the reconcile table, as cells."""
    lines = output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:2] == [sku, "redis"])
    return lines[at].split(), lines[at + 1].split()


def sell(admin, stock, sku: str) -> None:  # type: ignore[no-untyped-def]
    """Put 10 units; deduct 3; hold 2 and confirm, hold 1 and release, hold 1 and leave it open."""
    admin.put_sku(sku, 10)
    assert stock.deduct(sku, "u1", 2).outcome is Outcome.OK
    assert stock.deduct(sku, "u2", 1).outcome is Outcome.OK
    confirmed = stock.hold(sku, "u3", 2, ttl_ms=60_000)
    assert stock.confirm(sku, confirmed.deduction.request_id).outcome is Outcome.OK
    released = stock.hold(sku, "u4", 1, ttl_ms=60_000)
    assert stock.release(sku, released.deduction.request_id).outcome is Outcome.OK
    assert stock.hold(sku, "u5", 1, ttl_ms=60_000).outcome is Outcome.OK


def test_after_a_sale_both_sides_show_what_the_test_did(node, admin, stock, sku):
    sell(admin, stock, sku)

    result = run_cli(node, "--sku", sku)

    assert result.exit_code == 0, result.output
    redis_row, ledger_row = sku_rows(result.output, sku)
    #                    total held confirmed released expired available
    assert redis_row[2:] == ["10", "1", "5", "-", "-", "4", "ok"]
    assert ledger_row == ["shard", str(shard_of(sku)), "ledger", "10", "1", "5", "1", "0", "4"]
    assert "agree on all 1 SKU(s)" in result.output


def test_reconcile_function_reports_the_figures(node, admin, stock, sku):
    sell(admin, stock, sku)
    client = redis_py.Redis.from_url(node.redis_url, decode_responses=True)
    ledger = Ledger(node.ledger_url)
    try:
        rec = reconcile(client, ledger, 64, sku_id=sku, wait_s=10)
    finally:
        client.close()
        ledger.close()
    assert rec.ok and not rec.unsettled, rec
    in_redis, in_ledger = rec.redis[sku], rec.ledger[sku]
    assert (in_redis.total, in_redis.held, in_redis.confirmed, in_redis.available, in_redis.sale) == (10, 1, 5, 4, 1)
    assert (
        in_ledger.total,
        in_ledger.held,
        in_ledger.confirmed,
        in_ledger.available,
        in_ledger.released,
        in_ledger.expired,
    ) == (10, 1, 5, 4, 1, 0)


def test_a_tampered_redis_is_caught_and_the_sku_named(node, admin, stock, sku, redis):
    admin.put_sku(sku, 10)
    assert stock.deduct(sku, "u1", 2).outcome is Outcome.OK
    assert run_cli(node, "--sku", sku).exit_code == 0
    key = ShardKeys(shard_of(sku)).sku(sku)

    # Deliberately corrupt Redis (one unit appears from nowhere): the check must see it.
    redis.hincrby(key, "avail", 1)
    try:
        result = run_cli(node, "--sku", sku)
        everything = run_cli(node)
    finally:
        redis.hincrby(key, "avail", -1)

    assert result.exit_code == 1, result.output
    redis_row, ledger_row = sku_rows(result.output, sku)
    assert redis_row[7] == "9" and ledger_row[-1] == "8"
    assert "differs: available" in result.output
    assert f"{sku}: available 9 in Redis, 8 in the ledger" in result.output
    # Without --sku too: every SKU is checked.
    assert everything.exit_code == 1 and f"{sku}: available 9 in Redis" in everything.output
    # Put back, the two sides agree again: it was the tampering that was caught.
    assert run_cli(node, "--sku", sku).exit_code == 0


def test_a_sku_missing_from_redis_is_a_difference(node, admin, sku, redis):
    admin.put_sku(sku, 5)
    assert run_cli(node, "--sku", sku).exit_code == 0

    redis.delete(ShardKeys(shard_of(sku)).sku(sku))  # corrupting Redis: the SKU's state is gone
    result = run_cli(node, "--sku", sku)

    assert result.exit_code == 1, result.output
    assert "only in the ledger" in result.output and sku in result.output


def test_a_sku_in_neither_place_is_a_usage_error(node, sku):
    result = run_cli(node, "--sku", sku)
    assert result.exit_code == 2
    assert sku in result.output and "neither" in result.output


def test_unreachable_redis_and_missing_ledger_name_the_setting(node, tmp_path):
    result = CliRunner().invoke(
        app, ["reconcile", "--redis-url", "redis://127.0.0.1:1/0", "--ledger", node.ledger_url, "--wait", "0"], env=ENV
    )
    assert result.exit_code == 2 and "redis_url" in result.output, result.output
    result = CliRunner().invoke(app, ["reconcile", "--redis-url", node.redis_url, "--data-dir", str(tmp_path)], env=ENV)
    assert result.exit_code == 2 and "no ledger" in result.output, result.output
    assert not (tmp_path / "ledger.sqlite3").exists()


def test_settings_come_from_the_environment_like_serve(node, admin, sku):
    admin.put_sku(sku, 3)
    env = {**ENV, "FLASHSTOCK_REDIS_URL": node.redis_url, "FLASHSTOCK_DATA_DIR": str(node.data_dir)}
    result = CliRunner().invoke(app, ["reconcile", "--sku", sku], env=env)
    assert result.exit_code == 0, result.output
    assert sku_rows(result.output, sku)[0][2] == "3"
    # The wrong shard count is refused, not read as "missing in Redis".
    result = CliRunner().invoke(app, ["reconcile", "--sku", sku], env={**env, "FLASHSTOCK_SHARDS": "7"})
    assert result.exit_code == 2 and "shards" in result.output, result.output


def test_reconcile_waits_only_so_long_for_a_ledger_that_lags(tmp_path):
    # A Redis of this test's own, with no node: a SKU whose shard log no
    # persister drains into the ledger. Reconcile waits --wait, names the
    # shard, and compares what it has.
    url = sqlite_url(tmp_path)
    checked_upgrade(url)
    sku, shards = "lagging-sku", 5
    keys = ShardKeys(shard_of(sku, shards))
    console = Console(width=250, record=True, color_system=None)
    with RedisServer() as server:
        client = redis_py.Redis.from_url(server.url, decode_responses=True)
        client.hset(keys.meta, mapping={"state": SHARD_READY, "gen": 0})
        client.hset(keys.sku(sku), mapping={"avail": 4, "total": 4, "held": 0, "conf": 0, "sale": 1})
        client.xadd(keys.log, {"t": "P", "k": sku})
        client.close()
        started = time.monotonic()
        code = run_reconcile(server.url, url, shards, console, sku_id=sku, wait_s=0.5)
        waited = time.monotonic() - started
    text = console.export_text()
    assert code == 1
    assert 0.5 <= waited < 5
    assert re.search(rf"shard\(s\) still unsettled: {keys.shard} \(the ledger is behind the log", text), text
    assert f"{sku}: only in Redis" in text


def test_the_demo_ends_with_a_reconcile_in_durable_mode_then_its_figures_and_review(tmp_path):
    review_dir = tmp_path / "review"
    result = CliRunner().invoke(
        app,
        [
            *("demo", "--buyers", "300", "--users", "60", "--stock", "40", "--concurrency", "20", "--mode", "durable"),
            *("--review-dir", str(review_dir)),
        ],
        env=ENV,
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"SKU mode \(as the node has it\)\s*│\s*durable", result.output), result.output
    redis_row, ledger_row = sku_rows(result.output, "demo-hot-sku")
    assert redis_row[2:5] == ["40", "0", "40"] and redis_row[-1] == "ok"
    assert ledger_row[3:6] == ["40", "0", "40"]
    # The board ran beside the cluster; the ledger's figures counted every attempt; the review was written.
    assert re.search(r"the live board of the sale: http://127\.0\.0\.1:\d+/", result.output), result.output
    counted = re.search(
        r"the ledger's per-second figures count every attempt \(([\d,]+) == ([\d,]+)\): PASS", result.output
    )
    assert counted and counted[1] == counted[2] and int(counted[1].replace(",", "")) >= 300, result.output
    assert f"the sale's review: {review_dir / 'index.html'}" in result.output.replace("\n", "")
    figures = json.loads((review_dir / "review.json").read_text())
    assert figures["units"]["sold"] == 40 and figures["funnel"]["attempts"] == int(counted[1].replace(",", ""))


def test_the_demo_fails_when_reconcile_finds_a_difference(monkeypatch):
    import flashstock.server.local.demo as demo

    seen = []

    def differing(redis_url, ledger_url, shards, console, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((redis_url, ledger_url, shards))
        return 1

    monkeypatch.setattr(demo, "run_reconcile", differing)
    result = CliRunner().invoke(
        app,
        [
            *("demo", "--buyers", "50", "--users", "20", "--stock", "10", "--concurrency", "10", "--no-board"),
            *("--review-dir", ""),
        ],
        env=ENV,
    )
    assert result.exit_code == 1, result.output
    assert "disagree" in result.output
    assert len(seen) == 1 and seen[0][0].startswith("redis://") and seen[0][1].startswith("sqlite:///")
