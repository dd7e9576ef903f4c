"""BatchDeduct: every item of an order is taken, or none is."""

from __future__ import annotations

import uuid

import pytest

from flashstock.client import BatchItem, InvalidArgument, Outcome, SkuNotFound


def rid() -> str:
    return uuid.uuid4().hex


def available(stock, *skus):
    return [stock.get_stock(s).available for s in skus]


def test_batch_with_one_item_short_takes_nothing_on_any_sku(admin, stock, sku):
    a, b, c = f"{sku}-a", f"{sku}-b", f"{sku}-c"
    admin.put_sku(a, 5)
    admin.put_sku(b, 1)
    admin.put_sku(c, 5)

    r = stock.batch_deduct("u1", [(a, 2), (b, 2), (c, 1)])

    assert r.outcome is Outcome.INSUFFICIENT
    assert [i.outcome for i in r.items] == [Outcome.OK, Outcome.INSUFFICIENT, Outcome.OK]
    assert [i.sku_id for i in r.items] == [a, b, c]
    assert available(stock, a, b, c) == [5, 1, 5]
    assert [stock.get_stock(s).confirmed for s in (a, b, c)] == [0, 0, 0]


def test_batch_over_a_users_limit_takes_nothing(admin, stock, sku):
    a, b = f"{sku}-a", f"{sku}-b"
    admin.put_sku(a, 5)
    admin.put_sku(b, 5, per_user_limit=1)
    assert stock.deduct(b, "u1", 1).outcome is Outcome.OK

    r = stock.batch_deduct("u1", [BatchItem(a, 1), BatchItem(b, 1)])

    assert r.outcome is Outcome.LIMIT
    assert available(stock, a, b) == [5, 4]


def test_batch_takes_every_item(admin, stock, sku):
    a, b = f"{sku}-a", f"{sku}-b"
    admin.put_sku(a, 5)
    admin.put_sku(b, 1)

    r = stock.batch_deduct("u1", [(a, 2), (b, 1)])

    assert r.outcome is Outcome.OK
    assert [(i.sku_id, i.outcome, i.stock_left) for i in r.items] == [(a, Outcome.OK, 3), (b, Outcome.OK, 0)]
    assert available(stock, a, b) == [3, 0]
    assert [stock.get_stock(s).confirmed for s in (a, b)] == [2, 1]


def test_batch_retried_with_same_request_id_is_duplicate_and_takes_nothing(admin, stock, sku):
    a, b = f"{sku}-a", f"{sku}-b"
    admin.put_sku(a, 5)
    admin.put_sku(b, 5)
    request_id = rid()
    assert stock.batch_deduct("u1", [(a, 2), (b, 1)], request_id=request_id).outcome is Outcome.OK

    again = stock.batch_deduct("u1", [(a, 2), (b, 1)], request_id=request_id)

    assert again.outcome is Outcome.DUPLICATE
    assert [i.sku_id for i in again.items] == [a, b]
    assert available(stock, a, b) == [3, 4]


def test_batch_retry_after_sell_out_returns_first_answer(admin, stock, sku):
    a, b = f"{sku}-a", f"{sku}-b"
    admin.put_sku(a, 5)
    admin.put_sku(b, 1)
    request_id = rid()
    assert stock.batch_deduct("u1", [(a, 1), (b, 1)], request_id=request_id).outcome is Outcome.OK

    unmarked = stock.batch_deduct("u2", [(a, 1), (b, 1)])
    retried = stock.batch_deduct("u1", [(a, 1), (b, 1)], request_id=request_id, retry=True)

    assert unmarked.outcome is Outcome.SOLD_OUT
    assert [i.outcome for i in unmarked.items] == [Outcome.OK, Outcome.SOLD_OUT]
    assert retried.outcome is Outcome.DUPLICATE
    assert available(stock, a, b) == [4, 0]


def test_batch_with_a_sku_twice_is_invalid_argument(admin, stock, sku):
    admin.put_sku(sku, 5)

    with pytest.raises(InvalidArgument) as err:
        stock.batch_deduct("u1", [(sku, 1), (sku, 2)])

    assert [v.field for v in err.value.violations] == ["items[1].sku_id"]
    assert available(stock, sku) == [5]


def test_batch_with_no_items_is_invalid_argument(stock):
    with pytest.raises(InvalidArgument) as err:
        stock.batch_deduct("u1", [])

    assert [v.field for v in err.value.violations] == ["items"]


def test_batch_with_an_unknown_sku_is_not_found_and_takes_nothing(admin, stock, sku):
    admin.put_sku(sku, 5)
    missing = f"{sku}-missing"

    with pytest.raises(SkuNotFound) as err:
        stock.batch_deduct("u1", [(sku, 1), (missing, 1)])

    assert err.value.sku == missing
    assert available(stock, sku) == [5]
