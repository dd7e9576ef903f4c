"""``flashstock sales review``: the review of a sale, made from the ledger alone, against plain SQL.

Each test sells through a real node (its own Redis and node, on an SQLite
file or a PostgreSQL database), waits until the ledger holds everything, and
stops the node: the review is made after the nodes are gone, as an operator
would. The test then writes the sale's per-second figures (``sale_seconds``),
incidents and goals into the ledger itself (the duties that write them are
tested elsewhere): what matters here is that every figure of the review is
what independent SQL over the same ledger says.
"""

from __future__ import annotations

import csv
import json
import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
import sqlalchemy as sa

from flashstock.client import AdminClient, Outcome, StockClient
from flashstock.server.duties.reconcile import reconcile
from flashstock.server.ledger import Ledger, create_engine
from flashstock.server.ledger.review import AFTERMATH_MS, REFUSALS
from flashstock.server.local.procs import NodeProcess, RedisServer
from tests.helpers import eventually

PLOTS = {"sold", "stock", "attempts", "refusals", "funnel", "buyers"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PRICE_MINOR, CURRENCY = 1999, "EUR"
TOTAL, LIMIT = 10, 3
GOAL_UNITS, GOAL_SELLOUT_MS, GOAL_BUYERS = 10, 600_000, 6


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``flashstock ...`` as a stranger runs it: a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "flashstock.server", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "250"},
    )


@dataclass
class Sale:
    """A sale made through a real node, and what the test knows of it from the replies."""

    sku: str
    ledger_url: str
    sellout_ms: int
    """When the reply of the last unit says it was taken."""


def ledger_caught_up(node: NodeProcess, sku: str) -> None:
    """Wait until the node's ledger holds everything Redis shows, and agrees."""
    client = redis_py.Redis.from_url(node.redis_url, decode_responses=True)
    ledger = Ledger(node.ledger_url)
    try:
        rec = reconcile(client, ledger, node.shards, sku_id=sku, wait_s=10)
    finally:
        client.close()
        ledger.close()
    assert rec.ok and not rec.unsettled, rec


def sell(node: NodeProcess, sku: str) -> int:
    """Sell ``sku`` out through ``node``: deducts, holds confirmed, released and expired, refusals.

    Returns when the last unit was taken (stock: 10; buyers u1 3 (the limit),
    u2 2, u3 2 (a confirmed hold), u6 2, u7 1; u4's hold released, u5's expired).
    """
    admin, stock = AdminClient(addresses=[node.address]), StockClient(addresses=[node.address])
    try:
        admin.put_sku(sku, TOTAL, per_user_limit=LIMIT)
        assert stock.deduct(sku, "u1", 3).outcome is Outcome.OK
        assert stock.deduct(sku, "u2", 1).outcome is Outcome.OK
        confirmed = stock.hold(sku, "u3", 2, ttl_ms=60_000)
        assert stock.confirm(sku, confirmed.deduction.request_id).outcome is Outcome.OK
        released = stock.hold(sku, "u4", 1, ttl_ms=60_000)
        assert stock.release(sku, released.deduction.request_id).outcome is Outcome.OK
        assert stock.hold(sku, "u5", 1, ttl_ms=200).outcome is Outcome.OK  # left to expire
        eventually(lambda: stock.get_stock(sku), until=lambda s: s.available == 4)  # the reaper gave it back
        assert stock.deduct(sku, "u6", 2).outcome is Outcome.OK
        assert stock.deduct(sku, "u2", 1).outcome is Outcome.OK
        last = stock.deduct(sku, "u7", 1)
        assert last.outcome is Outcome.OK
        assert stock.deduct(sku, "u8", 1).outcome is Outcome.SOLD_OUT
        return last.deduction.taken_at_ms
    finally:
        admin.close()
        stock.close()


def write_figures(url: str, sku: str) -> None:
    """The goals and price of the sale, its per-second figures (with a quiet second) and incidents."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            row = conn.execute(sa.text("SELECT put_ms, sale FROM skus WHERE sku_id = :s"), {"s": sku}).one()
            first, last = conn.execute(
                sa.text("SELECT MIN(taken_ms), MAX(taken_ms) FROM deductions WHERE sku_id = :s"), {"s": sku}
            ).one()
            conn.execute(
                sa.text(
                    "UPDATE skus SET goal_units = :u, goal_sellout_ms = :t, goal_buyers = :b,"
                    " unit_price_minor = :p, currency = :c WHERE sku_id = :s"
                ),
                {"u": GOAL_UNITS, "t": GOAL_SELLOUT_MS, "b": GOAL_BUYERS, "p": PRICE_MINOR, "c": CURRENCY, "s": sku},
            )
            # The test owns the figures: whatever a node wrote of them goes.
            conn.execute(sa.text("DELETE FROM sale_seconds WHERE sku_id = :s"), {"s": sku})
            base = first // 1000
            for n, second in enumerate((base, base + 1, base + 3, max(base + 4, last // 1000 + 1))):  # base + 2: none
                conn.execute(
                    sa.text(
                        "INSERT INTO sale_seconds (sku_id, sale, second, attempts, o_ok, o_sold_out, o_limit,"
                        " o_insufficient, o_error, units, users, users_total, buyers_total, latency_p50_us,"
                        " latency_p99_us, updated_ms)"
                        " VALUES (:sku, :sale, :second, :attempts, :ok, :so, :lim, :ins, :err, :units, :users,"
                        " :ut, :bt, 300, 900, 0)"
                    ),
                    {
                        "sku": sku,
                        "sale": row.sale,
                        "second": second,
                        "attempts": 40 + 10 * n,
                        "ok": 3 - n if n < 3 else 0,
                        "so": 20 + n,
                        "lim": n,
                        "ins": 1,
                        "err": 0 if n else 2,
                        "units": 2,
                        "users": 12 + n,
                        "ut": 12 * (n + 1),
                        "bt": n + 1,
                    },
                )
            conn.execute(sa.text("DELETE FROM incidents"))
            for at, kind in (
                (row.put_ms - 10_000, "rebuild"),  # before the sale: left out
                (first + 1, "failover"),
                (last + AFTERMATH_MS - 1000, "fenced_write"),
                (last + AFTERMATH_MS + 1000, "session_lost"),  # after the window: left out
            ):
                conn.execute(
                    sa.text("INSERT INTO incidents (at_ms, kind, node, shard, detail) VALUES (:a, :k, 'n1', 3, 'x')"),
                    {"a": at, "k": kind},
                )
    finally:
        engine.dispose()


@pytest.fixture
def sale(request: pytest.FixtureRequest, engine_url: str) -> Iterator[Sale]:
    """A sale sold out through a node of the test's own on ``engine_url``, the node stopped afterwards."""
    sku = f"review-{re.sub(r'[^A-Za-z0-9]', '', request.node.name)[-24:]}"
    with RedisServer() as redis_server, NodeProcess(redis_server.url, ledger=engine_url) as node:
        try:
            sellout_ms = sell(node, sku)
            ledger_caught_up(node, sku)
        except BaseException:
            print(f"--- log of node {node.address} ---\n{node.log()}")
            raise
        node.stop()  # the review is made from the ledger alone
    write_figures(engine_url, sku)
    yield Sale(sku=sku, ledger_url=engine_url, sellout_ms=sellout_ms)


class Sql:
    """Plain SQL over the ledger: what the review must agree with."""

    def __init__(self, url: str, sku: str) -> None:
        self.engine = create_engine(url)
        self.sku = sku

    def all(self, query: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(query), {"s": self.sku}))

    def one(self, query: str) -> Any:
        (row,) = self.all(query)
        return row

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def sql(sale: Sale) -> Iterator[Sql]:
    db = Sql(sale.ledger_url, sale.sku)
    yield db
    db.close()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize("engine_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)], indirect=True)
def test_review_figures_equal_sql_over_the_ledger(sale, sql, tmp_path):
    out = tmp_path / "report"

    done = run_cli("sales", "review", "--sku", sale.sku, "--out", str(out), "--ledger", sale.ledger_url)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str((out / "index.html").resolve())
    got = json.loads((out / "review.json").read_text())
    put_ms, sale_no = sql.one("SELECT put_ms, sale FROM skus WHERE sku_id = :s")
    assert got["sale"] == sale_no == 1 and got["current_sale"]
    assert got["window"]["start_ms"] == put_ms and got["window"]["start_from"] == "put_ms"

    # Units sold and the amount.
    sold = sql.one("SELECT SUM(qty) FROM deductions WHERE sku_id = :s AND state = 'confirmed'")[0]
    assert got["units"]["sold"] == sold == 10
    assert got["amount"] == {"minor": 10 * PRICE_MINOR, "currency": CURRENCY, "text": "199.90 EUR"}

    # Sold per second and cumulative; every second between the first and the last is there.
    per_second = dict(
        sql.all(
            "SELECT taken_ms / 1000, SUM(qty) FROM deductions WHERE sku_id = :s AND state = 'confirmed'"
            " GROUP BY taken_ms / 1000"
        )
    )
    seconds = got["seconds"]
    assert [s["second"] for s in seconds] == list(range(seconds[0]["second"], seconds[-1]["second"] + 1))
    assert {s["second"]: s["sold"] for s in seconds if s["sold"]} == per_second
    running = 0
    for s in seconds:
        running += per_second.get(s["second"], 0)
        assert s["sold_cumulative"] == running
    assert running == sold

    # Stock over time and the sell-out: walked from the ledger's events.
    events = sql.all(
        "SELECT taken_ms, -qty FROM deductions WHERE sku_id = :s UNION ALL"
        " SELECT updated_ms, qty FROM deductions WHERE sku_id = :s AND state IN ('released', 'expired')"
    )
    stock, sellout = TOTAL, None
    for at in sorted({at for at, _ in events}):
        stock += sum(q for a, q in events if a == at)
        if stock <= 0 and sellout is None:
            sellout = at
    # The moment the last unit's reply says it was taken (the ledger may keep the log
    # entry's ms, at most a tick from the record's).
    assert sellout is not None and abs(sellout - sale.sellout_ms) <= 2
    assert got["sellout"] == {"sold_out": True, "at_ms": sellout, "time_to_sellout_ms": sellout - put_ms}
    assert seconds[-1]["stock"] == 0
    for s in seconds:
        upto = (s["second"] + 1) * 1000
        assert s["stock"] == TOTAL + sum(q for a, q in events if a < upto)

    # Per-second figures: sums and maxima of sale_seconds, a quiet second as zeros.
    figures = {r.second: r for r in sql.all("SELECT * FROM sale_seconds WHERE sku_id = :s")}
    for s in seconds:
        row = figures.get(s["second"])
        assert s["attempts"] == (row.attempts if row else 0)
        for reason in REFUSALS:
            assert s[f"o_{reason}"] == (getattr(row, f"o_{reason}") if row else 0)
    attempts, users, peak = sql.one(
        "SELECT SUM(attempts), MAX(users_total), MAX(attempts) FROM sale_seconds WHERE sku_id = :s"
    )
    assert got["peaks"]["attempts_per_s"]["value"] == peak
    peak_units = sql.one(
        "SELECT MAX(n) FROM (SELECT SUM(qty) AS n FROM deductions WHERE sku_id = :s GROUP BY taken_ms / 1000) t"
    )[0]
    assert got["peaks"]["units_per_s"]["value"] == peak_units
    refused = {r: sql.one(f"SELECT SUM(o_{r}) FROM sale_seconds WHERE sku_id = :s")[0] for r in REFUSALS}
    assert got["refusals"] == refused

    # The funnel.
    taken = sql.one("SELECT SUM(qty) FROM deductions WHERE sku_id = :s")[0]
    holds = dict(sql.all("SELECT state, COUNT(*) FROM deductions WHERE sku_id = :s AND kind = 'H' GROUP BY state"))
    assert got["funnel"]["attempts"] == attempts
    assert got["funnel"]["users"] == users
    assert got["funnel"]["units_taken"] == taken == 12
    assert got["funnel"]["holds_confirmed"] == holds["confirmed"] == 1
    assert got["funnel"]["holds"]["expired"] == holds["expired"] == 1
    assert got["funnel"]["holds"]["released"] == holds["released"] == 1

    # Units per buyer against the limit.
    per_buyer = dict(
        sql.all(
            "SELECT user_id, SUM(qty) FROM deductions WHERE sku_id = :s AND state IN ('confirmed', 'held')"
            " GROUP BY user_id"
        )
    )
    assert per_buyer == {"u1": 3, "u2": 2, "u3": 2, "u6": 2, "u7": 1}
    histogram: dict[str, int] = {}
    for units in per_buyer.values():
        histogram[str(units)] = histogram.get(str(units), 0) + 1
    assert got["buyers"] == {"count": 5, "per_user_limit": LIMIT, "at_limit": 1, "histogram": histogram}
    with (out / "buyers.csv").open() as f:
        assert {r["user"]: int(r["units"]) for r in csv.DictReader(f)} == per_buyer
    with (out / "seconds.csv").open() as f:
        assert sum(int(r["sold"]) for r in csv.DictReader(f)) == sold

    # The goals: units met exactly, sell-out well ahead, buyers one short.
    goals = {g["goal"]: g for g in got["goals"]}
    assert goals["units"] == {"goal": "units", "target": GOAL_UNITS, "actual": sold, "met": True, "by": 0}
    time_to_sellout = sellout - put_ms
    assert goals["sellout_ms"] == {
        "goal": "sellout_ms",
        "target": GOAL_SELLOUT_MS,
        "actual": time_to_sellout,
        "met": True,
        "by": GOAL_SELLOUT_MS - time_to_sellout,
    }
    assert goals["buyers"] == {"goal": "buyers", "target": GOAL_BUYERS, "actual": 5, "met": False, "by": -1}

    # The incidents of the window: after the start, up to a minute after the last deduction.
    last = sql.one("SELECT MAX(taken_ms) FROM deductions WHERE sku_id = :s")[0]
    in_window = sql.all(
        f"SELECT kind FROM incidents WHERE at_ms BETWEEN {put_ms} AND {last + AFTERMATH_MS} ORDER BY at_ms"
    )
    assert [i["kind"] for i in got["incidents"]] == [k for (k,) in in_window] == ["failover", "fenced_write"]

    # The page: every plot referenced, each a PNG matplotlib drew at the report's size.
    page = (out / "index.html").read_text()
    referenced = set(re.findall(r'src="([a-z_]+)\.png"', page))
    assert referenced == PLOTS
    for name in PLOTS:
        assert png_size(out / f"{name}.png") == (800, 320)
    assert "http://" not in page and "https://" not in page  # nothing fetched from the internet
    assert "199.90 EUR" in page and "missed" in page


@pytest.mark.slow
@pytest.mark.parametrize("engine_url", ["sqlite"], indirect=True)
def test_review_cli_exit_codes_and_an_earlier_sale(sale, tmp_path):
    missing = run_cli("sales", "review", "--sku", "no-such-sku", "--ledger", sale.ledger_url, "--out", str(tmp_path))
    assert missing.returncode == 1 and "no-such-sku" in missing.stderr and "not in the ledger" in missing.stderr
    assert missing.stdout == ""

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    unwritable = run_cli(
        "sales", "review", "--sku", sale.sku, "--ledger", sale.ledger_url, "--out", str(blocker / "report")
    )
    assert unwritable.returncode == 2 and str(blocker / "report") in unwritable.stderr

    no_ledger = run_cli("sales", "review", "--sku", sale.sku, "--data-dir", str(tmp_path / "nowhere"))
    assert no_ledger.returncode == 2 and "no ledger" in no_ledger.stderr
    assert not (tmp_path / "nowhere").exists()  # a review creates no ledger

    no_sale = run_cli("sales", "review", "--sku", sale.sku, "--sale", "7", "--ledger", sale.ledger_url)
    assert no_sale.returncode == 1 and "no sale 7" in no_sale.stderr

    # As if put again (sale 2): sale 1 is still reviewed, without the definition the ledger no longer holds.
    engine = create_engine(sale.ledger_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE skus SET sale = 2 WHERE sku_id = :s"), {"s": sale.sku})
    finally:
        engine.dispose()
    default = run_cli("sales", "review", "--sku", sale.sku, "--ledger", sale.ledger_url, cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    current = tmp_path / f"review-{sale.sku}-2"  # the default folder, in the working directory
    assert default.stdout.strip() == str((current / "index.html").resolve())
    now = json.loads((current / "review.json").read_text())
    assert now["sale"] == 2 and now["units"]["sold"] == 0 and now["seconds"] == []
    assert now["funnel"]["attempts"] is None and now["refusals"] is None  # no figures: not recorded
    assert now["sellout"] == {"sold_out": False, "at_ms": None, "time_to_sellout_ms": None}
    assert "not recorded" in (current / "index.html").read_text()

    earlier = run_cli("sales", "review", "--sku", sale.sku, "--sale", "1", "--ledger", sale.ledger_url, cwd=tmp_path)
    assert earlier.returncode == 0, earlier.stderr
    then = json.loads((tmp_path / f"review-{sale.sku}-1" / "review.json").read_text())
    assert then["current_sale"] is False and then["definition"] is None and then["sellout"] is None
    assert then["units"]["sold"] == 10 and then["buyers"]["count"] == 5 and then["funnel"]["attempts"] is not None
    assert [g["target"] for g in then["goals"]] == [None, None, None]  # goals of sale 1: not recorded
