"""Decoding script replies: every code of every script's contract."""

import pytest

from flashstock.client import (
    DeductionState,
    InvalidArgument,
    Mode,
    Outcome,
    RequestIdReused,
    SkuNotFound,
    StockBelowHandedOut,
)
from flashstock.server import _replies as r

REC = [b"H", b"H", 2, b"u1", b"sku", 1000, 5000]


@pytest.mark.parametrize(
    "code, outcome",
    [("OK", Outcome.OK), ("DUP", Outcome.DUPLICATE), ("SOLD_OUT", Outcome.SOLD_OUT),
     ("INSUFFICIENT", Outcome.INSUFFICIENT), ("LIMIT", Outcome.LIMIT), ("NOT_ON_SALE", Outcome.NOT_ON_SALE)],
)
def test_take_outcomes(code, outcome):
    result, sv = r.take_result([code.encode(), 3, 0], "sku", "rid")
    assert result.outcome is outcome and result.stock_left == 3 and sv == 0
    assert result.deduction is None


def test_take_ok_carries_the_deduction_and_sold_out_version():
    result, sv = r.take_result([b"OK", 0, 9, *REC], "sku", "rid")
    assert sv == 9
    d = result.deduction
    assert (d.request_id, d.sku_id, d.user_id, d.qty, d.state, d.taken_at_ms, d.expires_at_ms) == (
        "rid", "sku", "u1", 2, DeductionState.HELD, 1000, 5000)


def test_take_errors():
    with pytest.raises(SkuNotFound) as e:
        r.take_result([b"NO_SKU", -1, 0], "sku", "rid")
    assert e.value.sku == "sku"
    with pytest.raises(RequestIdReused):
        r.take_result([b"MISMATCH", -1, 0], "sku", "rid")
    with pytest.raises(InvalidArgument) as e:
        r.take_result([b"QTY_MAX", 2, 0], "sku", "rid")
    assert e.value.violations[0].field == "qty"


@pytest.mark.parametrize("code", ["OK", "DUP", "HOLD_NOT_FOUND", "HOLD_EXPIRED", "HOLD_RELEASED", "HOLD_CONFIRMED"])
def test_settle_codes(code):
    result = r.settle_result([code.encode(), -1, 0, *REC], "sku", "hold")
    assert result.outcome.name == {"DUP": "DUPLICATE"}.get(code, code)
    assert result.deduction.request_id == "hold"


def test_batch_refusal_is_the_first_refused_item():
    raw = [b"REFUSED", 3, b"OK", 5, b"LIMIT", 4, b"SOLD_OUT", 0]
    result = r.batch_result(raw, ["a", "b", "c"], "rid")
    assert result.outcome is Outcome.LIMIT
    assert [i.outcome for i in result.items] == [Outcome.OK, Outcome.LIMIT, Outcome.SOLD_OUT]


def test_batch_errors_name_the_item():
    with pytest.raises(SkuNotFound) as e:
        r.batch_result([b"NO_SKU", 2], ["a", "b"], "rid")
    assert e.value.sku == "b"
    with pytest.raises(InvalidArgument) as e:
        r.batch_result([b"QTY_MAX", 1, 3], ["a", "b"], "rid")
    assert e.value.violations[0].field == "items[0].qty"


def test_admin_reply_and_below_handed_out():
    fields = [b"avail", b"1", b"total", b"5", b"held", b"1", b"conf", b"3", b"lim", b"2", b"maxq", b"0",
              b"start", b"0", b"end", b"0", b"paused", b"1", b"mode", b"durable"]
    result = r.admin_result([b"DUP", *fields], "s", 4)
    assert result.duplicate and result.sku.paused and result.sku.mode is Mode.DURABLE and result.sku.shard == 4
    with pytest.raises(StockBelowHandedOut) as e:
        r.admin_result([b"BELOW", *fields], "s", 4)
    assert e.value.handed_out == 4
