"""A sale's figures from outside: a node with two workers counts each attempt once, in Redis, the ledger, /metrics."""

from __future__ import annotations

import collections
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import redis as redis_py
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from flashstock.client import (
    AdminClient,
    ClientConfig,
    FlashstockError,
    InvalidArgument,
    NotFound,
    Outcome,
    StockClient,
)
from flashstock.lockmgr import shard_of
from flashstock.server.ledger import Ledger
from flashstock.server.local.procs import NodeProcess, RedisServer, free_port
from flashstock.server.store.keys import SALE_OUTCOMES, ShardKeys
from flashstock.server.store.salestats import sale_outcome
from tests.helpers import eventually
from tests.helpers.processes import QUIET, client_reaching_every_worker, running_node


class Stack:
    def __init__(self, redis_server: RedisServer, node: NodeProcess, metrics_port: int) -> None:
        self.redis_server = redis_server
        self.node = node
        self.metrics_port = metrics_port


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    metrics_port = free_port()
    with (
        RedisServer() as redis_server,
        running_node(redis_server.url, workers=2, extra_args=(*QUIET, "--metrics-port", str(metrics_port))) as node,
    ):
        yield Stack(redis_server, node, metrics_port)


def sku_samples(port: int, sku: str) -> dict[tuple[str, str], float]:
    """The per-SKU samples of ``sku`` on the node's /metrics: (name, outcome label or '') -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return {
        (s.name, s.labels.get("outcome", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("sku") == sku
    }


def drive_a_sale(stock: StockClient, sku: str) -> tuple[collections.Counter[str], int, set[str], set[str]]:
    """Every kind of attempt, through connections to both workers; returns what was answered.

    (attempts by outcome, units taken, users who tried, users who took units)
    """
    answered: collections.Counter[str] = collections.Counter()
    units = 0
    users: set[str] = set()
    buyers: set[str] = set()

    def took(user: str, outcome: Outcome, qty: int) -> None:
        nonlocal units
        answered[sale_outcome(outcome)] += 1
        users.add(user)
        if outcome is Outcome.OK:
            units += qty
            buyers.add(user)

    for i in range(24):
        took(f"u{i}", stock.deduct(sku, f"u{i}", 1).outcome, 1)
    for i in range(4):
        took(f"h{i}", stock.hold(sku, f"h{i}", 2).outcome, 2)
    first = stock.deduct(sku, "greedy", 2)
    took("greedy", first.outcome, 2)
    took("greedy", stock.deduct(sku, "greedy", 2, request_id=first.deduction.request_id).outcome, 2)  # dup
    took("greedy", stock.deduct(sku, "greedy", 2).outcome, 2)  # limit (3 per user)
    for i in range(3):
        with pytest.raises(InvalidArgument):  # max 4 per request
            stock.deduct(sku, f"q{i}", 5)
        answered["qty_max"] += 1
        users.add(f"q{i}")
    result = stock.batch_deduct("b0", [(sku, 3)])
    took("b0", result.items[0].outcome, 3)
    took("c0", stock.deduct(sku, "c0", 1).outcome, 1)
    took("b1", stock.deduct(sku, "b1", 3).outcome, 3)  # more than the 2 left: insufficient
    while True:  # sell out, then a few refusals (from the workers' memory, too)
        user = f"last{len(users)}"
        outcome = stock.deduct(sku, user, 1).outcome
        took(user, outcome, 1)
        if outcome is Outcome.SOLD_OUT and answered["sold_out"] >= 6:
            break
    return answered, units, users, buyers


def test_a_sale_is_counted_once_per_attempt_in_redis_the_ledger_and_the_metrics(stack):
    node, port = stack.node, stack.metrics_port
    sku = f"sale-{uuid.uuid4().hex[:10]}"
    made_up = f"made-up-{uuid.uuid4().hex[:10]}"
    config = ClientConfig(addresses=[node.address])
    with AdminClient(config) as admin:
        admin.put_sku(sku, 40, per_user_limit=3, max_per_request=4)
        with client_reaching_every_worker(node, admin) as stock:
            answered, units, users, buyers = drive_a_sale(stock, sku)
            # A made-up SKU, and an invalid request for one, are counted nowhere.
            with pytest.raises(NotFound):
                stock.deduct(made_up, "x", 1)
            with pytest.raises(FlashstockError):
                stock.deduct(made_up, "x", 0)
            with pytest.raises(NotFound):
                stock.batch_deduct("x", [(made_up, 1)])
            # Refused from a worker's sold-out memory, only the item it knows counts (else: NOT_FOUND, none).
            try:
                refused = stock.batch_deduct("bx", [(sku, 1), (made_up, 1)])
            except NotFound:
                pass
            else:
                assert refused.outcome is Outcome.SOLD_OUT
                answered["sold_out"] += 1
                users.add("bx")
    assert units == 40
    assert set(answered) >= {"ok", "dup", "limit", "qty_max", "insufficient", "sold_out"}
    expected = {f"o:{name}": n for name, n in answered.items()}

    r = redis_py.Redis.from_url(stack.redis_server.url)
    k = ShardKeys(shard_of(sku, node.shards))

    def totals() -> dict[str, int]:
        return {key.decode(): int(v) for key, v in r.hgetall(k.sale_totals(sku)).items() if key.startswith(b"o:")}

    eventually(totals, until=lambda t: t == expected)
    assert int(r.hget(k.sale_totals(sku), "units")) == units
    assert abs(r.pfcount(k.visitors(sku)) - len(users)) <= max(1, len(users) // 50)
    assert abs(r.pfcount(k.buyers(sku)) - len(buyers)) <= 1

    # The ledger: its deductions hold the units counted, and its sale_seconds rows sum to the same figures.
    ledger = Ledger(node.ledger_url)
    try:
        with ledger.engine.connect() as conn:
            taken = conn.execute(
                sa.text(
                    "SELECT COALESCE(SUM(qty), 0) FROM deductions WHERE sku_id = :s AND state IN ('held', 'confirmed')"
                ),
                {"s": sku},
            ).scalar_one()
        assert taken == units

        def ledger_sums() -> dict[str, int]:
            rows = ledger.sale_seconds(sku)
            sums = {f"o:{name}": sum(row[f"o_{name}"] for row in rows) for name in SALE_OUTCOMES}
            sums = {name: n for name, n in sums.items() if n}
            return {
                **sums,
                "units": sum(row["units"] for row in rows),
                "attempts": sum(row["attempts"] for row in rows),
            }

        eventually(
            ledger_sums,
            timeout=20,
            until=lambda s: s == {**expected, "units": units, "attempts": sum(answered.values())},
        )
        assert {row["sale"] for row in ledger.sale_seconds(sku)} == {1}
    finally:
        ledger.close()

    # /metrics of the node (its duties process): the same figures, per SKU.
    samples = eventually(
        lambda: sku_samples(port, sku),
        timeout=20,
        until=lambda s: s.get(("flashstock_sku_attempts_total", "sold_out")) == answered["sold_out"],
    )
    for name in SALE_OUTCOMES:
        assert samples[("flashstock_sku_attempts_total", name)] == answered.get(name, 0), name
    assert samples[("flashstock_sku_units_taken_total", "")] == units
    assert samples[("flashstock_sku_units_left", "")] == 0
    assert samples[("flashstock_sku_units_held", "")] == 8
    assert samples[("flashstock_sku_sold_out", "")] == 1
    assert abs(samples[("flashstock_sku_visitors", "")] - len(users)) <= max(1, len(users) // 50)
    assert abs(samples[("flashstock_sku_buyers", "")] - len(buyers)) <= 1

    # Nothing anywhere names the made-up SKU.
    assert list(r.scan_iter(match=f"*{made_up}*", count=1000)) == []
    assert sku_samples(port, made_up) == {}
    r.close()
