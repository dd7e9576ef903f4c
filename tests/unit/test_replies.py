"""Decoding script replies: every code of every script's contract."""

import pytest

from flashstock.client import (
    AdmissionTokenRefused,
    DeductionState,
    InvalidArgument,
    Mode,
    Outcome,
    RequestIdReused,
    SkuNotFound,
    StockBelowHandedOut,
)
from flashstock.server.store import replies as r

REC = [b"H", b"H", 2, b"u1", b"sku", 1000, 5000]


@pytest.mark.parametrize(
    "code, outcome",
    [
        ("OK", Outcome.OK),
        ("DUP", Outcome.DUPLICATE),
        ("SOLD_OUT", Outcome.SOLD_OUT),
        ("INSUFFICIENT", Outcome.INSUFFICIENT),
        ("LIMIT", Outcome.LIMIT),
        ("NOT_ON_SALE", Outcome.NOT_ON_SALE),
    ],
)
def test_take_outcomes(code, outcome):
    answer = r.take_result([code.encode(), 3, 0], "sku", "rid")
    result = answer.result
    assert result.outcome is outcome and result.stock_left == 3 and answer.sold_out_sv == 0
    assert result.deduction is None and not answer.durable


def test_take_ok_carries_the_deduction_sold_out_version_and_log_entry():
    answer = r.take_result([b"OK", 0, 9, *REC, b"1700-3", 1], "sku", "rid")
    assert answer.sold_out_sv == 9 and answer.log_id == "1700-3" and answer.durable
    d = answer.result.deduction
    assert (d.request_id, d.sku_id, d.user_id, d.qty, d.state, d.taken_at_ms, d.expires_at_ms) == (
        "rid",
        "sku",
        "u1",
        2,
        DeductionState.HELD,
        1000,
        5000,
    )


def test_take_errors():
    with pytest.raises(SkuNotFound) as e:
        r.take_result([b"NO_SKU", -1, 0], "sku", "rid")
    assert e.value.sku == "sku"
    with pytest.raises(RequestIdReused):
        r.take_result([b"MISMATCH", -1, 0], "sku", "rid")
    with pytest.raises(InvalidArgument) as e:
        r.take_result([b"QTY_MAX", 2, 0], "sku", "rid")
    assert e.value.violations[0].field == "qty"
    with pytest.raises(r.ShardMissing):
        r.take_result([b"NO_SHARD", -1, 0], "sku", "rid")
    with pytest.raises(AdmissionTokenRefused) as e:
        r.take_result([b"TOKEN", -1, 0], "sku", "rid", "it expired 5 ms ago")
    assert "it expired 5 ms ago" in e.value.message and e.value.sku == "sku"


def test_rate_limited_says_when_to_come_back():
    result = r.take_result([b"RATE_LIMITED", -1, 0, 420], "sku", "rid").result
    assert (result.outcome, result.retry_after_ms, result.deduction) == (Outcome.RATE_LIMITED, 420, None)


def test_a_batch_rate_limited_comes_back_after_its_longest_item():
    raw = [b"REFUSED", 2, b"RATE_LIMITED", -1, b"", 0, 300, b"RATE_LIMITED", -1, b"", 0, 700]
    result, _ = r.batch_result(raw, ["a", "b"], "rid")
    assert result.outcome is Outcome.RATE_LIMITED and result.retry_after_ms == 700
    assert [i.retry_after_ms for i in result.items] == [300, 700]


@pytest.mark.parametrize("code", ["OK", "DUP", "HOLD_NOT_FOUND", "HOLD_EXPIRED", "HOLD_RELEASED", "HOLD_CONFIRMED"])
def test_settle_codes(code):
    result = r.settle_result([code.encode(), -1, 0, *REC, b"", 0], "sku", "hold").result
    assert result.outcome.name == {"DUP": "DUPLICATE"}.get(code, code)
    assert result.deduction.request_id == "hold"


def test_batch_refusal_is_the_first_refused_item():
    raw = [b"REFUSED", 3, b"OK", 5, b"", 0, 0, b"LIMIT", 4, b"", 0, 0, b"SOLD_OUT", 0, b"", 0, 0]
    result, waits = r.batch_result(raw, ["a", "b", "c"], "rid")
    assert result.outcome is Outcome.LIMIT and waits == []
    assert [i.outcome for i in result.items] == [Outcome.OK, Outcome.LIMIT, Outcome.SOLD_OUT]


def test_batch_durable_items_are_waited_for():
    raw = [b"OK", 2, b"OK", 5, b"10-1", 1, 0, b"OK", 4, b"11-0", 0, 0]
    result, waits = r.batch_result(raw, ["a", "b"], "rid")
    assert result.outcome is Outcome.OK and waits == [(0, "10-1")]


def test_batch_errors_name_the_item():
    with pytest.raises(SkuNotFound) as e:
        r.batch_result([b"NO_SKU", 2], ["a", "b"], "rid")
    assert e.value.sku == "b"
    with pytest.raises(InvalidArgument) as e:
        r.batch_result([b"QTY_MAX", 1, 3], ["a", "b"], "rid")
    assert e.value.violations[0].field == "items[0].qty"
    with pytest.raises(AdmissionTokenRefused) as e:
        r.batch_result([b"TOKEN", 2], ["a", "b"], "rid", ["", "no admission token"])
    assert e.value.sku == "b" and "no admission token" in e.value.message


def test_admin_reply_and_below_handed_out():
    fields = [
        b"avail",
        b"1",
        b"total",
        b"5",
        b"held",
        b"1",
        b"conf",
        b"3",
        b"lim",
        b"2",
        b"maxq",
        b"0",
        b"start",
        b"0",
        b"end",
        b"0",
        b"paused",
        b"1",
        b"mode",
        b"durable",
    ]
    answer = r.admin_result([b"DUP", b"5-0", *fields], "s", 4)
    result = answer.result
    assert result.duplicate and result.sku.paused and result.sku.mode is Mode.DURABLE and result.sku.shard == 4
    assert answer.durable and answer.log_id == "5-0"  # admin changes always wait for the ledger
    with pytest.raises(StockBelowHandedOut) as e:
        r.admin_result([b"BELOW", b"", *fields], "s", 4)
    assert e.value.handed_out == 4


def test_a_sku_hash_with_a_float_formatted_integer_reads_exactly():
    # An older node wrote numbers past 17 digits the way Lua formats them.
    sku = r.sku_from_hash("s", 3, {b"total": b"5", b"start": b"1e+17", b"end": b"4.611686018427388e+18"})
    assert sku.sale_start_ms == 10**17 and sku.total == 5
    assert sku.sale_end_ms == 4611686018427388000


@pytest.mark.parametrize("garbage", [b"abc", b"1.5", b"inf", b"nan", b"1e+999999999", b"9223372036854775808", b""])
def test_a_sku_hash_with_garbage_is_unreadable_naming_the_field(garbage):
    with pytest.raises(r.UnreadableSku) as e:
        r.sku_from_hash("s", 3, {b"total": b"5", b"lim": garbage})
    assert "'lim'" in e.value.message and e.value.sku == "s"


def test_adjust_above_the_most_a_sku_may_hold_is_invalid_argument():
    fields = [b"total", b"7", b"avail", b"7", b"held", b"0", b"conf", b"0"]
    with pytest.raises(InvalidArgument) as e:
        r.admin_result([b"ABOVE", b"", *fields], "s", 4)
    assert [v.field for v in e.value.violations] == ["delta"]


# -- every reply read into its contract's names ---------------------------------


def test_a_take_reply_names_its_record_and_log_entry():
    reply = r.TakeReply.decode([b"OK", 7, 9, *REC, b"1700-3", 1])
    assert (reply.code, reply.available, reply.sold_out_sv, reply.log_id, reply.durable) == ("OK", 7, 9, "1700-3", True)
    assert reply.record == r.Record("H", "H", 2, "u1", "sku", 1000, 5000)
    assert r.TakeReply.decode([b"SOLD_OUT", 0, 0]) == r.TakeReply("SOLD_OUT", 0, 0, None, "", False)
    limited = r.TakeReply.decode([b"RATE_LIMITED", -1, 0, 340])
    assert limited == r.TakeReply("RATE_LIMITED", -1, 0, None, "", False, retry_after_ms=340)


def test_a_batch_reply_names_each_item_or_the_item_that_stopped_it():
    reply = r.BatchReply.decode([b"OK", 2, b"OK", 5, b"10-1", 1, 0, b"OK", 4, b"", 0, 0])
    assert reply.items == (r.BatchItemReply("OK", 5, "10-1", True), r.BatchItemReply("OK", 4, "", False))
    assert reply.item == -1
    refused = r.BatchReply.decode([b"REFUSED", 2, b"OK", 5, b"", 0, 0, b"RATE_LIMITED", -1, b"", 0, 250])
    assert refused.items[1] == r.BatchItemReply("RATE_LIMITED", -1, "", False, 250)
    assert r.BatchReply.decode([b"TOKEN", 2]) == r.BatchReply("TOKEN", (), item=1)
    assert r.BatchReply.decode([b"QTY_MAX", 2, 3]) == r.BatchReply("QTY_MAX", (), item=1, cap=3)
    assert r.BatchReply.decode([b"NO_SHARD", 1]) == r.BatchReply("NO_SHARD", (), item=0)


def test_an_admin_reply_carries_the_sku_hash_after_the_call():
    reply = r.AdminReply.decode([b"OK", b"5-0", b"avail", b"3", b"total", b"5"])
    assert reply == r.AdminReply("OK", "5-0", {b"avail": b"3", b"total": b"5"})
    assert r.AdminReply.decode([b"NO_SKU"]) == r.AdminReply("NO_SKU", "", {})


def test_the_sku_hash_reads_in_one_vocabulary():
    h = r.sku_hash("s", {b"total": b"10", b"avail": b"4", b"held": b"2", b"conf": b"4", b"sv": b"3", b"sale": b"2"})
    assert (h.total, h.available, h.held, h.confirmed, h.stock_version, h.sale) == (10, 4, 2, 4, 3, 2)
    assert not h.paused and h.mode is Mode.FAST
    text = r.sku_hash("s", {"avail": "1", "mode": "durable", "paused": "1"})  # a decoding client's hash too
    assert text.available == 1 and text.paused and text.mode is Mode.DURABLE
    assert set(r.SKU_FIELDS) == set(r.SkuHash._fields) - {"paused", "mode", "currency", "require_token"}


def test_the_sku_hash_carries_the_goals_and_price_and_an_older_hash_has_none():
    fields = {b"total": b"10", b"gu": b"8", b"gs": b"30000", b"gb": b"5", b"pr": b"1999", b"cur": b"EUR"}
    sku = r.sku_from_hash("s", 3, fields)
    assert (sku.goal_units, sku.goal_sellout_ms, sku.goal_buyers) == (8, 30000, 5)
    assert (sku.unit_price_minor, sku.currency) == (1999, "EUR")
    older = r.sku_from_hash("s", 3, {b"total": b"10"})
    assert (older.goal_units, older.goal_sellout_ms, older.goal_buyers, older.unit_price_minor) == (0, 0, 0, 0)
    assert older.currency == ""


def test_bind_reply_says_who_made_the_binding_and_what_is_bound():
    made = r.BindReply.decode([1, b"shards", b"64", b"cluster", b""])
    assert made == r.BindReply(created=True, bound={"shards": "64", "cluster": ""})
    assert r.BindReply.decode([0]) == r.BindReply(False, {})


def test_fence_reply_is_taken_or_refused_with_the_stored_epoch():
    assert r.FenceReply.decode([1, 4]) == r.FenceReply(taken=True, stored_epoch=4)
    assert r.FenceReply.decode([-1, 9]) == r.FenceReply(taken=False, stored_epoch=9)


def test_reap_reply_counts_or_is_fenced():
    assert r.ReapReply.decode(3) == r.ReapReply(expired=3, fenced=False)
    assert r.ReapReply.decode(-1) == r.ReapReply(expired=0, fenced=True)


def test_announce_reply_is_recorded_or_fenced():
    assert r.announced(1) and not r.announced(-1)


@pytest.mark.parametrize(
    "raw, step", [(b"OK", r.RebuildStep.OK), (b"STALE", r.RebuildStep.STALE), ("FENCED", r.RebuildStep.FENCED)]
)
def test_rebuild_step_replies(raw, step):
    assert r.RebuildStep.decode(raw) is step
