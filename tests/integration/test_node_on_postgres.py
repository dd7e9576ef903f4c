"""A whole node on a PostgreSQL ledger: its own Redis, a fresh database, real clients.

The node creates the ledger's schema in the empty database at start. Durable
SKUs (and every admin change) are answered only once the ledger holds the
change, so their rows are checked right after the reply, without waiting; a
fast SKU's rows reach the ledger a moment later, so they are polled for.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.rows import dict_row

from flashstock.client import AdminClient, Mode, Outcome, StockClient
from flashstock.server.ledger import HEAD, Ledger, create_engine, schema_revision
from flashstock.server.local.procs import NodeProcess, RedisServer
from tests.helpers import eventually


def rid() -> str:
    return uuid.uuid4().hex


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL as psycopg takes it (no '+psycopg')."""
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Rows:
    """Reads the ledger's tables with plain psycopg: what is in PostgreSQL, not what flashstock says."""

    def __init__(self, url: str) -> None:
        self._conn = psycopg.connect(libpq_url(url), autocommit=True, row_factory=dict_row)

    def deductions(self, *request_ids: str) -> dict[str, dict[str, Any]]:
        cur = self._conn.execute("SELECT * FROM deductions WHERE request_id = ANY(%s)", (list(request_ids),))
        return {r["request_id"]: r for r in cur}

    def sku(self, sku_id: str) -> dict[str, Any] | None:
        return self._conn.execute("SELECT * FROM skus WHERE sku_id = %s", (sku_id,)).fetchone()

    def close(self) -> None:
        self._conn.close()


@pytest.fixture
def pg_node(request: pytest.FixtureRequest, engine_url: str) -> Iterator[NodeProcess]:
    """A node with a Redis of its own, whose ledger is the test's PostgreSQL database."""
    with RedisServer() as redis_server, NodeProcess(redis_server.url, ledger=engine_url) as node:
        try:
            yield node
        finally:
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                print(f"--- log of node {node.address} ---\n{node.log()}")


@pytest.mark.parametrize("engine_url", ["postgresql"], indirect=True)
def test_node_writes_its_ledger_to_postgresql(engine_url, pg_node):
    engine = create_engine(engine_url)
    try:
        assert schema_revision(engine) == HEAD  # the node created the schema in the empty database
    finally:
        engine.dispose()
    assert not (pg_node.data_dir / "ledger.sqlite3").exists()

    db = Rows(engine_url)
    admin = AdminClient(addresses=[pg_node.address])
    stock = StockClient(addresses=[pg_node.address])
    try:
        durable, fast = f"durable-{rid()[:8]}", f"fast-{rid()[:8]}"

        # Durable: every reply rests on a ledger commit, so the rows are there at once.
        put = admin.put_sku(durable, 10, per_user_limit=5, mode=Mode.DURABLE)
        sku_row = db.sku(durable)
        assert sku_row is not None
        assert (sku_row["total"], sku_row["mode"], sku_row["per_user_limit"]) == (10, "durable", 5)
        assert sku_row["paused"] is False
        assert sku_row["shard"] == put.sku.shard

        deducted = stock.deduct(durable, "u1", 2)
        assert deducted.outcome is Outcome.OK
        d_id = deducted.deduction.request_id
        row = db.deductions(d_id)[d_id]
        assert (row["kind"], row["state"], row["qty"], row["user_id"]) == ("D", "confirmed", 2, "u1")
        assert row["sku_id"] == durable
        assert row["taken_ms"] == deducted.deduction.taken_at_ms
        assert row["shard"] == put.sku.shard

        held = stock.hold(durable, "u2", 1, ttl_ms=60_000)
        h_id = held.deduction.request_id
        row = db.deductions(h_id)[h_id]
        assert (row["kind"], row["state"], row["expires_ms"]) == ("H", "held", held.deduction.expires_at_ms)

        confirm_id = rid()
        assert stock.confirm(durable, h_id, request_id=confirm_id).outcome is Outcome.OK
        row = db.deductions(h_id)[h_id]
        assert (row["state"], row["closer_id"]) == ("confirmed", confirm_id)

        released = stock.hold(durable, "u3", 3, ttl_ms=60_000)
        r_id = released.deduction.request_id
        release_id = rid()
        assert stock.release(durable, r_id, request_id=release_id).outcome is Outcome.OK
        row = db.deductions(r_id)[r_id]
        assert (row["state"], row["closer_id"], row["qty"]) == ("released", release_id, 3)

        retried = stock.deduct(durable, "u1", 2, request_id=d_id, retry=True)
        assert retried.deduction.request_id == d_id
        assert len(db.deductions(d_id, h_id, r_id)) == 3

        # The ledger's counters agree with the node's.
        ledger = Ledger(engine_url)
        try:
            (state,) = ledger.sku_states(sku_id=durable)
        finally:
            ledger.close()
        level = stock.get_stock(durable)
        assert (state.total, state.confirmed, state.held, state.released) == (10, 3, 0, 3)
        assert (level.total, level.confirmed, level.held, level.available) == (10, 3, 0, state.available)

        # Fast: the reply does not wait; the persister gets there a moment later.
        admin.put_sku(fast, 5)
        assert db.sku(fast)["mode"] == "fast"  # admin changes always wait for the ledger
        f_id = stock.deduct(fast, "u9", 1).deduction.request_id
        row = eventually(lambda: db.deductions(f_id).get(f_id))
        assert (row["kind"], row["state"], row["qty"], row["user_id"]) == ("D", "confirmed", 1, "u9")
    finally:
        stock.close()
        admin.close()
        db.close()
