"""Sold-out is cheap, but never at the cost of exactly-once.

Once a SKU is sold out, attempts are refused from node memory with no Redis
round trip (counted with INFO commandstats: no EVALSHA); a request marked as
a retry still reaches the record and gets its first answer; a restock or a
new put is heard over pub/sub and the SKU sells again, in every worker.
"""

from __future__ import annotations

import uuid

import pytest

from flashstock.client import ClientConfig, Outcome, StockClient
from tests.helpers import (
    BACKGROUND_COMMANDS,
    calls_delta,
    command_calls,
    eventually,
    logs_drained,
    no_hold_due_soon,
)
from tests.helpers.processes import QUIET, client_reaching_every_worker, running_node

REFUSALS = 200


def redis_calls_of(redis, action):
    """Run ``action`` and return the Redis commands it caused, reaper rounds left out."""
    eventually(lambda: no_hold_due_soon(redis) and logs_drained(redis))
    before = command_calls(redis)
    result = action()
    delta = calls_delta(before, command_calls(redis))
    delta = {name: n for name, n in delta.items() if name not in BACKGROUND_COMMANDS | {"info"}}
    return result, delta


def refuse_many(stock, sku, n=REFUSALS):
    return [stock.deduct(sku, f"late-{i}", 1).outcome for i in range(n)]


def sell_out(admin, stock, sku, units=2):
    admin.put_sku(sku, units)
    first = stock.deduct(sku, "early", units)
    assert first.outcome is Outcome.OK and first.stock_left == 0
    return first


def test_retry_after_sell_out_returns_first_answer(admin, stock, sku, redis):
    first = sell_out(admin, stock, sku)

    # The fast path is on: a new, unmarked request is refused from memory...
    unmarked, calls = redis_calls_of(redis, lambda: stock.deduct(sku, "late", 1))
    assert unmarked.outcome is Outcome.SOLD_OUT
    assert calls.get("evalsha", 0) == 0, calls
    # ...yet the retry of the request that succeeded before gets its first answer.
    retried = stock.deduct(sku, "early", 2, request_id=first.deduction.request_id, retry=True)

    assert retried.outcome is Outcome.DUPLICATE
    assert retried.deduction == first.deduction
    level = stock.get_stock(sku)
    assert (level.available, level.confirmed) == (0, 2)


def test_hold_retry_after_sell_out_returns_first_answer(admin, stock, sku):
    admin.put_sku(sku, 1)
    first = stock.hold(sku, "early", 1)
    assert first.outcome is Outcome.OK

    unmarked = stock.hold(sku, "late", 1)
    retried = stock.hold(sku, "early", 1, request_id=first.deduction.request_id, retry=True)

    assert unmarked.outcome is Outcome.SOLD_OUT
    assert retried.outcome is Outcome.DUPLICATE
    assert retried.deduction == first.deduction
    assert stock.get_stock(sku).held == 1


def test_refusals_after_sell_out_make_no_redis_calls(admin, stock, sku, redis):
    sell_out(admin, stock, sku)

    outcomes, calls = redis_calls_of(redis, lambda: refuse_many(stock, sku))

    assert outcomes == [Outcome.SOLD_OUT] * REFUSALS
    assert calls.get("evalsha", 0) == 0, calls
    assert sum(calls.values()) < REFUSALS // 10, calls
    assert stock.get_stock(sku).available == 0


def test_sell_out_on_another_node_is_refused_from_memory(admin, stock, sku, redis, node_2w):
    sell_out(admin, stock, sku)  # through the session node
    with StockClient(ClientConfig(addresses=[node_2w.address], connections_per_address=8)) as other:
        # Each worker of the other node learns it over pub/sub, or at worst
        # from the one script reply that refuses it: never more than that.
        outcomes, calls = redis_calls_of(redis, lambda: refuse_many(other, sku))

    assert outcomes == [Outcome.SOLD_OUT] * REFUSALS
    assert calls.get("evalsha", 0) <= node_2w.workers, calls


def test_a_node_started_after_the_sell_out_refuses_it_from_memory(admin, stock, sku, redis, redis_server, node):
    sell_out(admin, stock, sku)
    # A node joining late reads the sold-out set at start (subscribe, then snapshot).
    with (
        running_node(redis_server.url, ledger=node.ledger_url, extra_args=QUIET) as late,
        StockClient(ClientConfig(addresses=[late.address])) as other,
    ):
        outcomes, calls = redis_calls_of(redis, lambda: refuse_many(other, sku))

    assert outcomes == [Outcome.SOLD_OUT] * REFUSALS
    assert calls.get("evalsha", 0) == 0, calls


def test_restock_of_sold_out_sku_sells_again(admin, stock, sku):
    sell_out(admin, stock, sku)
    assert stock.deduct(sku, "late", 1).outcome is Outcome.SOLD_OUT

    adjusted = admin.adjust_stock(sku, +3)
    assert (adjusted.sku.total, adjusted.sku.available) == (5, 3)

    # The node hears "available" over pub/sub; until then it may still refuse.
    eventually(lambda: stock.deduct(sku, "late", 1), until=lambda r: r.outcome is Outcome.OK)
    level = stock.get_stock(sku)
    assert (level.total, level.available, level.confirmed) == (5, 2, 3)


def test_put_again_of_sold_out_sku_restarts_its_sale(admin, stock, sku):
    sell_out(admin, stock, sku)

    admin.put_sku(sku, 4)

    first = eventually(lambda: stock.deduct(sku, "early", 1), until=lambda r: r.outcome is Outcome.OK)
    assert first.stock_left == 3
    level = stock.get_stock(sku)
    assert (level.total, level.available, level.confirmed) == (4, 3, 1)


def test_stock_adjusted_down_to_zero_is_refused_from_memory(admin, stock, sku, redis):
    admin.put_sku(sku, 3)
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK

    admin.adjust_stock(sku, -2)

    eventually(lambda: stock.deduct(sku, "u2", 1), until=lambda r: r.outcome is Outcome.SOLD_OUT)
    outcomes, calls = redis_calls_of(redis, lambda: refuse_many(stock, sku))
    assert outcomes == [Outcome.SOLD_OUT] * REFUSALS
    assert calls.get("evalsha", 0) == 0, calls


# -- several worker processes on one port ------------------------------------


@pytest.fixture
def spread_stock(admin, node_2w):
    """A client of ``node_2w`` with 8 connections, which reach both its worker processes."""
    with client_reaching_every_worker(node_2w, admin) as client:
        yield client


def _round(client, sku, n=8, **kw):
    """One Deduct on each connection of ``client`` (its calls go round-robin)."""
    return [client.deduct(sku, f"r-{uuid.uuid4().hex[:8]}", 1, **kw).outcome for _ in range(n)]


def test_every_worker_refuses_sold_out_from_memory(admin, spread_stock, sku, redis):
    admin.put_sku(sku, 3)
    assert spread_stock.deduct(sku, "early", 3).outcome is Outcome.OK
    # Each worker hears of the sell-out (pub/sub, or its own script reply).
    eventually(
        lambda: redis_calls_of(redis, lambda: _round(spread_stock, sku, 16)),
        until=lambda r: r[0] == [Outcome.SOLD_OUT] * 16 and r[1].get("evalsha", 0) == 0,
    )

    outcomes, calls = redis_calls_of(redis, lambda: refuse_many(spread_stock, sku))

    assert outcomes == [Outcome.SOLD_OUT] * REFUSALS
    assert calls.get("evalsha", 0) == 0, calls
    assert sum(calls.values()) < REFUSALS // 10, calls


def test_restock_is_heard_by_every_worker(admin, spread_stock, sku):
    admin.put_sku(sku, 3)
    assert spread_stock.deduct(sku, "early", 3).outcome is Outcome.OK
    eventually(lambda: _round(spread_stock, sku), until=lambda outcomes: outcomes == [Outcome.SOLD_OUT] * 8)

    admin.adjust_stock(sku, +200)  # through the other node: only pub/sub tells these workers

    eventually(lambda: _round(spread_stock, sku), until=lambda outcomes: outcomes == [Outcome.OK] * 8)
    level = admin.get_sku(sku)
    assert level.available + level.confirmed == level.total == 203
