"""Durable mode: an answer about a durable SKU is given only once the ledger holds it.

Every test here reads the node's SQLite ledger (:class:`Ledger`) right after
the reply, without polling: that is the promise. Where the ledger can only
catch up later (a fast SKU, a hold the reaper expires), the test polls with
``eventually``.

The node of this module has a Redis of its own (a second node on one Redis
would run a second persister on the same logs) and answers UNAVAILABLE after
``--durable-wait-ms 500`` when the ledger does not catch up.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py

from flashstock.client import (
    AdminClient,
    AsyncStockClient,
    ClientConfig,
    DeductionState,
    Mode,
    Outcome,
    RetryPolicy,
    StockClient,
    Unavailable,
)
from flashstock.lockmgr import shard_of
from flashstock.server.ledger import Ledger
from flashstock.server.local.procs import NodeProcess, RedisServer
from flashstock.server.store.keys import ShardKeys
from tests.helpers import eventually, redis_now_ms

DURABLE_WAIT_MS = 500


def rid() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def durable_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node with a Redis of its own, its ledger in a tmp folder."""
    data_dir = tmp_path_factory.mktemp("durable-node")
    with (
        RedisServer() as redis_server,
        NodeProcess(
            redis_server.url, data_dir=data_dir, extra_args=("--durable-wait-ms", str(DURABLE_WAIT_MS))
        ) as node,
    ):
        yield node


@pytest.fixture
def durable_config(request: pytest.FixtureRequest, durable_node: NodeProcess) -> Iterator[ClientConfig]:
    yield ClientConfig(addresses=[durable_node.address])
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- log of node {durable_node.address} ---\n{durable_node.log()}")


@pytest.fixture
def stock(durable_config: ClientConfig) -> Iterator[StockClient]:
    """A StockService client of this module's node (not the session's)."""
    with StockClient(durable_config) as client:
        yield client


@pytest.fixture
def admin(durable_config: ClientConfig) -> Iterator[AdminClient]:
    """An AdminService client of this module's node (not the session's)."""
    with AdminClient(durable_config) as client:
        yield client


@pytest.fixture
def ledger(durable_node: NodeProcess) -> Iterator[Ledger]:
    """A reader of the node's ledger."""
    reader = Ledger(durable_node.ledger_url)
    try:
        yield reader
    finally:
        reader.close()


def row(ledger: Ledger, request_id: str) -> dict:
    rows = ledger.deductions_of([request_id])
    assert request_id in rows, f"{request_id} is not in the ledger"
    return rows[request_id]


def ledger_counters(ledger: Ledger, sku: str) -> tuple[int, int, int]:
    (state,) = ledger.sku_states(sku_id=sku)
    return state.total, state.held, state.confirmed


def redis_counters(stock: StockClient, sku: str) -> tuple[int, int, int]:
    level = stock.get_stock(sku)
    return level.total, level.held, level.confirmed


# -- answered once in the ledger ------------------------------------------------


def test_durable_deduct_is_in_the_ledger_when_answered(admin, stock, ledger, sku):
    admin.put_sku(sku, 10, mode=Mode.DURABLE)
    request_id = rid()

    r = stock.deduct(sku, "u1", 2, request_id=request_id)

    assert r.outcome is Outcome.OK
    d = row(ledger, request_id)
    assert (d["sku_id"], d["user_id"], d["qty"], d["kind"], d["state"]) == (sku, "u1", 2, "D", "confirmed")
    # The ledger keeps the time of the answer, so a retry after a rebuild gets the same one.
    assert d["taken_ms"] == r.deduction.taken_at_ms
    assert ledger_counters(ledger, sku) == (10, 0, 2)


def test_durable_hold_confirm_and_release_are_in_the_ledger_when_answered(admin, stock, ledger, sku):
    admin.put_sku(sku, 10, mode=Mode.DURABLE)

    hold = stock.hold(sku, "u1", 3, ttl_ms=60_000)
    held = row(ledger, hold.deduction.request_id)
    assert (held["kind"], held["state"], held["qty"]) == ("H", "held", 3)
    assert held["expires_ms"] == hold.deduction.expires_at_ms

    confirm_id = rid()
    confirmed = stock.confirm(sku, hold.deduction.request_id, request_id=confirm_id)
    assert confirmed.outcome is Outcome.OK
    after = row(ledger, hold.deduction.request_id)
    assert (after["state"], after["closer_id"]) == ("confirmed", confirm_id)

    other = stock.hold(sku, "u2", 1, ttl_ms=60_000)
    release_id = rid()
    released = stock.release(sku, other.deduction.request_id, request_id=release_id)
    assert released.outcome is Outcome.OK
    gone = row(ledger, other.deduction.request_id)
    assert (gone["state"], gone["closer_id"]) == ("released", release_id)
    assert ledger_counters(ledger, sku) == (10, 0, 3)


def test_admin_changes_are_in_the_ledger_when_answered(admin, ledger, sku):
    # Every admin change waits for the ledger, whatever the SKU's mode.
    admin.put_sku(sku, 10, per_user_limit=2)
    (s,) = ledger.sku_states(sku_id=sku)
    assert (s.total, s.per_user_limit, s.mode, s.paused, s.sale) == (10, 2, "fast", False, 1)

    admin.adjust_stock(sku, 5)
    assert ledger.sku_states(sku_id=sku)[0].total == 15

    admin.pause_sku(sku)
    assert ledger.sku_states(sku_id=sku)[0].paused is True
    admin.resume_sku(sku)
    assert ledger.sku_states(sku_id=sku)[0].paused is False

    admin.put_sku(sku, 7, mode=Mode.DURABLE)
    (s,) = ledger.sku_states(sku_id=sku)
    assert (s.total, s.mode, s.sale) == (7, "durable", 2)


# -- the ledger cannot keep up ------------------------------------------------


def test_durable_reply_past_the_wait_is_unavailable_yet_took_effect_and_a_retry_returns_it(
    durable_node, admin, stock, ledger, sku
):
    admin.put_sku(sku, 10, mode=Mode.DURABLE)
    request_id = rid()
    impatient = ClientConfig(addresses=[durable_node.address], deadline_s=5.0, retry=RetryPolicy(max_attempts=1))
    # The test holds the ledger's write lock: the persister's commits wait
    # (busy_timeout 10 s, longer than this test holds it).
    lock = sqlite3.connect(Path(durable_node.data_dir) / "ledger.sqlite3", timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        with StockClient(impatient) as short, pytest.raises(Unavailable):
            short.deduct(sku, "u1", 1, request_id=request_id)

        # Not acknowledged, not in the ledger (WAL: readers pass the lock), yet taken in Redis.
        assert ledger.deductions_of([request_id]) == {}
        assert redis_counters(stock, sku) == (10, 0, 1)
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    again = stock.deduct(sku, "u1", 1, request_id=request_id, retry=True)

    assert again.outcome is Outcome.DUPLICATE
    assert (again.deduction.user_id, again.deduction.qty, again.deduction.state) == ("u1", 1, DeductionState.CONFIRMED)
    assert row(ledger, request_id)["taken_ms"] == again.deduction.taken_at_ms
    assert redis_counters(stock, sku) == ledger_counters(ledger, sku) == (10, 0, 1)


# -- the persister restarts ---------------------------------------------------


def test_persister_restart_persists_everything_exactly_once(tmp_path, sku):
    data_dir = tmp_path / "data"
    answers: dict[str, Outcome] = {}
    with RedisServer() as redis_server:
        # A slow group commit (50 ms): entries are still in the log when SIGTERM comes.
        args = ("--persist-max-wait-ms", "50")
        for phase in range(3):
            with (
                NodeProcess(redis_server.url, data_dir=data_dir, extra_args=args) as node,
                StockClient(addresses=[node.address]) as stock,
                AdminClient(addresses=[node.address]) as admin,
            ):
                if phase == 0:
                    admin.put_sku(sku, 1000)
                for i in range(100):
                    request_id = f"p{phase}-{i}"
                    answers[request_id] = stock.deduct(sku, f"u{i % 7}", 1 + i % 3, request_id=request_id).outcome
            # Leaving the block SIGTERMs the node, whatever its persister was doing.

        with NodeProcess(redis_server.url, data_dir=data_dir) as node, StockClient(addresses=[node.address]) as stock:
            ledger = Ledger(node.ledger_url)
            try:
                took = {r for r, outcome in answers.items() if outcome is Outcome.OK}
                assert len(took) == 300
                eventually(lambda: ledger_counters(ledger, sku), until=lambda c: c == redis_counters(stock, sku))
                rows = ledger.deductions_of(answers)
                assert set(rows) == took
                units = 3 * sum(1 + i % 3 for i in range(100))
                assert sum(r["qty"] for r in rows.values()) == redis_counters(stock, sku)[2] == units
                # Every commit announced: Redis knows the ledger's cursor.
                shard = shard_of(sku, node.shards)
                with redis_py.Redis.from_url(redis_server.url) as redis:
                    persisted = ShardKeys(shard).persisted
                    eventually(lambda: redis.get(persisted), until=lambda pc: pc.decode() == ledger.cursor(shard)[1])
            finally:
                ledger.close()


# -- holds and expiry ---------------------------------------------------------


def test_hold_expired_by_the_reaper_is_expired_in_the_ledger_exactly_once(admin, stock, ledger, sku):
    admin.put_sku(sku, 5, mode=Mode.DURABLE)
    hold = stock.hold(sku, "u1", 2, ttl_ms=200)
    hold_id = hold.deduction.request_id
    assert row(ledger, hold_id)["state"] == "held"

    # Nobody settles it: the reaper expires it, and the persister writes that down.
    eventually(lambda: row(ledger, hold_id)["state"], until=lambda state: state == "expired")

    late = stock.confirm(sku, hold_id)
    assert late.outcome is Outcome.HOLD_EXPIRED
    (state,) = ledger.sku_states(sku_id=sku)
    assert (state.held, state.confirmed, state.expired) == (0, 0, 2)  # two units, expired once
    assert row(ledger, hold_id)["closer_id"] == ""
    level = stock.get_stock(sku)
    assert (level.available, level.held) == (5, 0)  # the units came back once


async def test_confirm_racing_the_expiry_agrees_with_the_ledger(durable_node, admin, ledger, sku):
    # When each Confirm is sent, against its hold's expiry: a second either side, so a loaded machine's
    # scheduling delays (tens of ms) still leave both outcomes in the race.
    offsets_ms = range(-1000, 1001, 100)
    admin.put_sku(sku, len(offsets_ms), mode=Mode.DURABLE)
    outcomes: dict[str, Outcome] = {}
    closers: dict[str, str] = {}
    with redis_py.Redis.from_url(durable_node.redis_url) as redis:
        async with AsyncStockClient(addresses=[durable_node.address]) as stock:
            holds = [await stock.hold(sku, f"u{i}", 1, ttl_ms=3000) for i in range(len(offsets_ms))]
            skew_ms = redis_now_ms(redis) - asyncio.get_running_loop().time() * 1000

            async def confirm_at(hold_id: str, at_ms: int) -> None:
                # Scheduled on Redis's clock, which decides: this sleep times the race, it waits for no state.
                await asyncio.sleep(max(0.0, (at_ms - skew_ms) / 1000 - asyncio.get_running_loop().time()))
                closers[hold_id] = rid()
                outcomes[hold_id] = (await stock.confirm(sku, hold_id, request_id=closers[hold_id])).outcome

            await asyncio.gather(
                *(
                    confirm_at(h.deduction.request_id, h.deduction.expires_at_ms + offset)
                    for h, offset in zip(holds, offsets_ms, strict=True)
                )
            )

        assert set(outcomes.values()) == {Outcome.OK, Outcome.HOLD_EXPIRED}, outcomes
        rows = ledger.deductions_of(outcomes)
        for hold_id, outcome in outcomes.items():
            expected = ("confirmed", closers[hold_id]) if outcome is Outcome.OK else ("expired", "")
            assert (rows[hold_id]["state"], rows[hold_id]["closer_id"]) == expected, (hold_id, outcome)
        confirmed = sum(o is Outcome.OK for o in outcomes.values())
        with StockClient(addresses=[durable_node.address]) as sync_stock:
            assert redis_counters(sync_stock, sku) == ledger_counters(ledger, sku) == (len(offsets_ms), 0, confirmed)


def test_the_persister_reports_its_lag_and_backlog(tmp_path):
    """Persister lag (ms, a histogram) and backlog (entries) are served as Prometheus metrics."""
    import urllib.request

    from flashstock.client import AdminClient, StockClient
    from flashstock.server.local.procs import NodeProcess, RedisServer, free_port

    port = free_port()
    with (
        RedisServer() as redis_server,
        NodeProcess(redis_server.url, data_dir=tmp_path, extra_args=("--metrics-port", str(port))) as node,
    ):
        with AdminClient(addresses=node.address) as admin, StockClient(addresses=node.address) as stock:
            admin.put_sku("lagged", 100)
            for i in range(30):
                stock.deduct("lagged", f"u{i}", 1)

        def scrape() -> dict[str, float]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                lines = reply.read().decode().splitlines()
            return {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in lines
                if line.startswith(("flashstock_persister_lag_seconds_count", "flashstock_persister_backlog_entries"))
            }

        # 30 deductions and the put, each timed from its log entry to its commit.
        metrics = eventually(scrape, until=lambda m: m.get("flashstock_persister_lag_seconds_count", 0) >= 31)
        assert "flashstock_persister_backlog_entries" in metrics
        eventually(scrape, until=lambda m: m["flashstock_persister_backlog_entries"] == 0)
