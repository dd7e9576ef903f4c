"""AdminService: define, read, list, adjust; admin calls are idempotent by request_id."""

from __future__ import annotations

import uuid

import pytest

from flashstock.client import (
    FailedPrecondition,
    InvalidArgument,
    Mode,
    Outcome,
    SkuDefinition,
    SkuNotFound,
    StockBelowHandedOut,
)
from flashstock.lockmgr import shard_of


def rid() -> str:
    return uuid.uuid4().hex


def test_put_sku_defines_it_and_get_sku_reads_it_back(admin, sku):
    put = admin.put_sku(sku, 7, per_user_limit=2, max_per_request=1, sale_start_ms=1000, sale_end_ms=2_000_000_000_000)

    got = admin.get_sku(sku)

    assert not put.duplicate
    assert got == put.sku
    assert (got.sku_id, got.total, got.available, got.held, got.confirmed) == (sku, 7, 7, 0, 0)
    assert (got.per_user_limit, got.max_per_request) == (2, 1)
    assert (got.sale_start_ms, got.sale_end_ms) == (1000, 2_000_000_000_000)
    assert (got.paused, got.mode) == (False, Mode.FAST)
    assert got.shard == shard_of(sku)


def test_a_definition_puts_what_its_fields_as_arguments_put(admin, sku):
    fields = {"per_user_limit": 2, "max_per_request": 1, "sale_end_ms": 2_000_000_000_000, "mode": Mode.DURABLE}
    definition = SkuDefinition(sku, 7, **fields)
    request_id = rid()

    put = admin.put_sku(definition, request_id=request_id)
    # The same definition as arguments, under the same request id: the same call, so a duplicate.
    again = admin.put_sku(sku, 7, **fields, request_id=request_id)

    assert (put.sku.total, put.sku.per_user_limit, put.sku.max_per_request, put.sku.mode) == (7, 2, 1, Mode.DURABLE)
    assert again.duplicate and again.sku == put.sku
    # A definition comes alone: a field beside it would be ignored, so it is refused before any call.
    with pytest.raises(TypeError, match="not both"):
        admin.put_sku(definition, 9)
    with pytest.raises(TypeError, match="not both"):
        admin.put_sku(definition, per_user_limit=5)


def test_put_again_restarts_the_sale(admin, stock, sku):
    admin.put_sku(sku, 5, per_user_limit=1)
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.LIMIT

    admin.put_sku(sku, 3, per_user_limit=1)

    got = admin.get_sku(sku)
    assert (got.total, got.available, got.confirmed) == (3, 3, 0)
    # Per-user counts start from zero too.
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK


def test_hold_of_a_previous_sale_gives_its_units_to_nobody(admin, stock, sku):
    admin.put_sku(sku, 5)
    hold_id = stock.hold(sku, "u1", 2).deduction.request_id
    admin.put_sku(sku, 3)

    assert stock.release(sku, hold_id).outcome is Outcome.HOLD_VOIDED
    assert stock.confirm(sku, hold_id).outcome is Outcome.HOLD_VOIDED

    got = admin.get_sku(sku)
    assert (got.total, got.available, got.held, got.confirmed) == (3, 3, 0, 0)


def test_list_skus_pages_through_a_prefix_in_id_order(admin, sku):
    prefix = f"{sku}/"
    ids = [f"{prefix}{i:02d}" for i in (4, 0, 3, 1, 2)]
    for sku_id in ids:
        admin.put_sku(sku_id, 1)
    admin.put_sku(f"{sku}-not-in-prefix", 1)

    pages, token = [], ""
    while True:
        page = admin.list_skus(prefix, page_size=2, page_token=token)
        pages.append([s.sku_id for s in page.skus])
        token = page.next_page_token
        if not token:
            break

    assert pages == [sorted(ids)[0:2], sorted(ids)[2:4], sorted(ids)[4:5]]
    assert [s.sku_id for s in admin.all_skus(prefix)] == sorted(ids)
    listed = admin.list_skus(prefix, page_size=10)
    assert listed.next_page_token == ""
    assert [s.total for s in listed.skus] == [1] * 5


def test_list_skus_with_a_prefix_finds_non_ascii_ids(admin, sku):
    prefix = f"{sku}/"
    ids = sorted(f"{prefix}{tail}" for tail in ("a", "é", "中", "😀"))
    for sku_id in ids:
        admin.put_sku(sku_id, 1)

    assert [s.sku_id for s in admin.all_skus(prefix)] == sorted(ids, key=str.encode)


def test_list_skus_page_size_above_1000_is_invalid_argument(admin):
    with pytest.raises(InvalidArgument) as err:
        admin.list_skus(page_size=1001)

    assert [v.field for v in err.value.violations] == ["page_size"]


def test_adjust_below_units_handed_out_fails_and_changes_nothing(admin, stock, sku):
    admin.put_sku(sku, 5)
    assert stock.deduct(sku, "u1", 2).outcome is Outcome.OK
    assert stock.hold(sku, "u2", 1).outcome is Outcome.OK

    with pytest.raises(StockBelowHandedOut) as err:
        admin.adjust_stock(sku, -3)

    assert isinstance(err.value, FailedPrecondition)
    assert err.value.handed_out == 3
    assert err.value.sku == sku
    got = admin.get_sku(sku)
    assert (got.total, got.available, got.held, got.confirmed) == (5, 2, 1, 2)
    # Down to exactly the units handed out is allowed.
    down = admin.adjust_stock(sku, -2)
    assert (down.sku.total, down.sku.available) == (3, 0)


def test_adjust_with_same_request_id_is_applied_once(admin, sku):
    admin.put_sku(sku, 5)
    request_id = rid()

    first = admin.adjust_stock(sku, +3, request_id=request_id)
    again = admin.adjust_stock(sku, +3, request_id=request_id)

    assert (first.duplicate, again.duplicate) == (False, True)
    assert first.sku.total == again.sku.total == 8
    assert admin.get_sku(sku).total == 8


def test_put_with_same_request_id_is_applied_once(admin, stock, sku):
    request_id = rid()
    admin.put_sku(sku, 5, request_id=request_id)
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK

    again = admin.put_sku(sku, 5, request_id=request_id)

    # The retry did not restart the sale.
    assert again.duplicate
    assert (again.sku.available, again.sku.confirmed) == (4, 1)


def test_adjust_of_unknown_sku_is_not_found(admin, sku):
    with pytest.raises(SkuNotFound) as err:
        admin.adjust_stock(sku, +1)
    assert err.value.sku == sku
    with pytest.raises(SkuNotFound):
        admin.get_sku(sku)
    with pytest.raises(SkuNotFound):
        admin.pause_sku(sku)


def test_an_admin_request_id_reused_for_another_call_is_refused(admin, sku):
    from flashstock.client import RequestIdReused

    admin.put_sku(sku, 10, request_id=f"{sku}-put")
    assert admin.adjust_stock(sku, 5, request_id=f"{sku}-adj").sku.total == 15
    with pytest.raises(RequestIdReused):
        admin.adjust_stock(sku, 7, request_id=f"{sku}-adj")  # another delta
    paused = admin.pause_sku(sku, request_id=f"{sku}-p")
    assert paused.sku.paused and not paused.duplicate
    assert admin.pause_sku(sku, request_id=f"{sku}-p").duplicate
    with pytest.raises(RequestIdReused):
        admin.resume_sku(sku, request_id=f"{sku}-p")  # pause's id on a resume
    with pytest.raises(RequestIdReused):
        admin.put_sku(sku, 99, request_id=f"{sku}-put")  # another stock
    assert admin.get_sku(sku).total == 15
