"""Deduct against a real node and Redis: outcomes, limits, idempotency, sale windows."""

from __future__ import annotations

import uuid

import pytest

from flashstock.client import DeductionState, InvalidArgument, Outcome, RequestIdReused
from flashstock.lockmgr import shard_of
from tests.helpers import eventually, redis_now_ms


def rid() -> str:
    return uuid.uuid4().hex


def test_deduct_takes_units_and_records_the_deduction(admin, stock, sku):
    admin.put_sku(sku, 5)
    request_id = rid()

    r = stock.deduct(sku, "u1", 2, request_id=request_id)

    assert r.outcome is Outcome.OK
    assert r.stock_left == 3
    d = r.deduction
    assert (d.request_id, d.sku_id, d.user_id, d.qty, d.state) == (request_id, sku, "u1", 2, DeductionState.CONFIRMED)
    assert d.taken_at_ms > 0
    level = stock.get_stock(sku)
    assert (level.total, level.available, level.held, level.confirmed) == (5, 3, 0, 2)


def test_per_user_limit_counts_every_deduction_of_the_user(admin, stock, sku):
    admin.put_sku(sku, 10, per_user_limit=2)

    assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK
    assert stock.deduct(sku, "u1", 2).outcome is Outcome.LIMIT
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.LIMIT
    # Another user has a limit of their own.
    assert stock.deduct(sku, "u2", 2).outcome is Outcome.OK

    level = stock.get_stock(sku)
    assert (level.available, level.confirmed) == (6, 4)


def test_more_than_left_is_insufficient_and_takes_nothing(admin, stock, sku):
    admin.put_sku(sku, 3)
    assert stock.deduct(sku, "u1", 2).outcome is Outcome.OK

    r = stock.deduct(sku, "u2", 2)

    assert r.outcome is Outcome.INSUFFICIENT
    assert r.deduction is None
    assert r.stock_left == 1
    assert stock.get_stock(sku).available == 1


def test_deduct_at_zero_is_sold_out(admin, stock, sku):
    admin.put_sku(sku, 2)
    assert stock.deduct(sku, "u1", 2).outcome is Outcome.OK

    r = stock.deduct(sku, "u2", 1)

    assert r.outcome is Outcome.SOLD_OUT
    assert r.deduction is None
    level = stock.get_stock(sku)
    assert level.sold_out
    assert (level.available, level.confirmed) == (0, 2)


def test_same_request_id_returns_first_answer_and_takes_nothing_more(admin, stock, sku):
    admin.put_sku(sku, 5)
    request_id = rid()
    first = stock.deduct(sku, "u1", 2, request_id=request_id)

    again = stock.deduct(sku, "u1", 2, request_id=request_id)
    marked = stock.deduct(sku, "u1", 2, request_id=request_id, retry=True)

    assert first.outcome is Outcome.OK
    for r in (again, marked):
        assert r.outcome is Outcome.DUPLICATE
        assert r.deduction == first.deduction
    assert stock.get_stock(sku).available == 3


async def test_same_request_id_returns_first_answer_on_the_async_client(aadmin, astock, sku):
    await aadmin.put_sku(sku, 5)
    request_id = rid()
    first = await astock.deduct(sku, "u1", 1, request_id=request_id)

    again = await astock.deduct(sku, "u1", 1, request_id=request_id)

    assert first.outcome is Outcome.OK
    assert again.outcome is Outcome.DUPLICATE
    assert again.deduction == first.deduction
    assert (await astock.get_stock(sku)).available == 4


def test_request_id_reused_with_other_arguments_is_refused(admin, stock, sku):
    admin.put_sku(sku, 10)
    request_id = rid()
    assert stock.deduct(sku, "u1", 1, request_id=request_id).outcome is Outcome.OK

    for user, qty in (("u1", 2), ("u2", 1)):
        with pytest.raises(RequestIdReused) as err:
            stock.deduct(sku, user, qty, request_id=request_id)
        assert err.value.request_id == request_id
    # A Hold is another kind of request than a Deduct.
    with pytest.raises(RequestIdReused):
        stock.hold(sku, "u1", 1, request_id=request_id)

    assert stock.get_stock(sku).available == 9


def test_one_request_id_keys_a_deduction_on_each_sku_of_the_shard(admin, stock, sku):
    shard = shard_of(sku)
    other = next(f"{sku}-{i}" for i in range(10_000) if shard_of(f"{sku}-{i}") == shard)
    admin.put_sku(sku, 5)
    admin.put_sku(other, 5)
    request_id = rid()  # an order id keying both lines of an order
    assert stock.deduct(sku, "u1", 1, request_id=request_id).outcome is Outcome.OK

    assert stock.deduct(other, "u1", 2, request_id=request_id).outcome is Outcome.OK
    assert stock.deduct(other, "u1", 2, request_id=request_id).outcome is Outcome.DUPLICATE
    assert (stock.get_stock(sku).available, stock.get_stock(other).available) == (4, 3)


def test_sale_not_yet_open_on_redis_clock_takes_nothing_then_opens(admin, stock, sku, redis):
    start = redis_now_ms(redis) + 2000
    admin.put_sku(sku, 5, sale_start_ms=start, sale_end_ms=start + 60_000)

    early = [stock.deduct(sku, "u1", 1), stock.hold(sku, "u2", 1)]

    assert [r.outcome for r in early] == [Outcome.NOT_ON_SALE, Outcome.NOT_ON_SALE]
    assert stock.get_stock(sku).available == 5
    opened = eventually(lambda: stock.deduct(sku, "u1", 1), until=lambda r: r.outcome is Outcome.OK)
    assert opened.deduction.taken_at_ms >= start
    assert stock.get_stock(sku).available == 4


def test_sale_that_ended_is_not_on_sale(admin, stock, sku, redis):
    now = redis_now_ms(redis)
    admin.put_sku(sku, 5, sale_start_ms=now - 60_000, sale_end_ms=now - 1)

    r = stock.deduct(sku, "u1", 1)

    assert r.outcome is Outcome.NOT_ON_SALE
    assert r.deduction is None
    assert stock.get_stock(sku).available == 5


def test_open_window_on_redis_clock_sells(admin, stock, sku, redis):
    now = redis_now_ms(redis)
    admin.put_sku(sku, 5, sale_start_ms=now - 60_000, sale_end_ms=now + 60_000)

    assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK


def test_paused_sku_is_not_on_sale_until_resumed(admin, stock, sku):
    admin.put_sku(sku, 5)

    assert admin.pause_sku(sku).sku.paused
    paused = stock.deduct(sku, "u1", 1)
    held = stock.hold(sku, "u1", 1)
    assert (paused.outcome, held.outcome) == (Outcome.NOT_ON_SALE, Outcome.NOT_ON_SALE)
    assert stock.get_stock(sku).available == 5

    assert not admin.resume_sku(sku).sku.paused
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK
    assert stock.get_stock(sku).available == 4


def test_qty_above_max_per_request_is_invalid_argument_on_qty(admin, stock, sku):
    admin.put_sku(sku, 10, max_per_request=2)

    with pytest.raises(InvalidArgument) as err:
        stock.deduct(sku, "u1", 3)

    assert [v.field for v in err.value.violations] == ["qty"]
    assert stock.get_stock(sku).available == 10
    assert stock.deduct(sku, "u1", 2).outcome is Outcome.OK


def test_max_per_request_defaults_to_the_per_user_limit(admin, stock, sku):
    admin.put_sku(sku, 10, per_user_limit=2)

    with pytest.raises(InvalidArgument) as err:
        stock.deduct(sku, "u1", 3)

    assert [v.field for v in err.value.violations] == ["qty"]
    assert stock.get_stock(sku).available == 10


def test_scripts_flushed_from_redis_are_loaded_again(stock, admin, redis, sku):
    admin.put_sku(sku, 5)
    redis.script_flush()  # as after a restart or failover: every EVALSHA meets NOSCRIPT
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK
    assert stock.get_stock(sku).available == 4
