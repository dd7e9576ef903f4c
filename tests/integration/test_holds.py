"""Holds: confirm, release and expiry each settle a hold once, and units come back exactly once."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from flashstock.client import DeductionState, InvalidArgument, Outcome
from tests.helpers import aeventually, eventually, redis_now_ms


def rid() -> str:
    return uuid.uuid4().hex


def counters(stock, sku):
    s = stock.get_stock(sku)
    return s.total, s.available, s.held, s.confirmed


def test_hold_takes_units_until_confirmed_then_they_are_sold(admin, stock, sku):
    admin.put_sku(sku, 5)
    hold = stock.hold(sku, "u1", 2)
    assert hold.outcome is Outcome.OK
    assert hold.deduction.state is DeductionState.HELD
    assert hold.deduction.expires_at_ms > hold.deduction.taken_at_ms
    assert counters(stock, sku) == (5, 3, 2, 0)

    confirmed = stock.confirm(sku, hold.deduction.request_id)

    assert confirmed.outcome is Outcome.OK
    assert confirmed.deduction.state is DeductionState.CONFIRMED
    assert confirmed.deduction.qty == 2
    assert counters(stock, sku) == (5, 3, 0, 2)


def test_released_hold_gives_its_units_back(admin, stock, sku):
    admin.put_sku(sku, 5)
    hold = stock.hold(sku, "u1", 2)

    released = stock.release(sku, hold.deduction.request_id)

    assert released.outcome is Outcome.OK
    assert released.deduction.state is DeductionState.RELEASED
    assert released.stock_left == 5
    assert counters(stock, sku) == (5, 5, 0, 0)


def test_hold_ttl_ms_sets_its_expiry_on_redis_clock(admin, stock, sku, redis):
    admin.put_sku(sku, 5)
    before = redis_now_ms(redis)

    hold = stock.hold(sku, "u1", 1, ttl_ms=60_000)

    d = hold.deduction
    assert d.expires_at_ms == d.taken_at_ms + 60_000
    assert before <= d.taken_at_ms <= redis_now_ms(redis)


def test_unconfirmed_hold_expires_and_gives_units_back_exactly_once(admin, stock, sku):
    admin.put_sku(sku, 5)
    hold = stock.hold(sku, "u1", 2, ttl_ms=200)
    assert counters(stock, sku) == (5, 3, 2, 0)

    # The reaper expires it: nobody calls Confirm or Release meanwhile.
    eventually(lambda: counters(stock, sku), until=lambda c: c == (5, 5, 0, 0))

    hold_id = hold.deduction.request_id
    late_confirm = stock.confirm(sku, hold_id)
    late_release = stock.release(sku, hold_id)
    assert late_confirm.outcome is Outcome.HOLD_EXPIRED
    assert late_release.outcome is Outcome.HOLD_EXPIRED
    assert late_confirm.deduction.state is DeductionState.EXPIRED
    # Neither call gave the units back a second time.
    assert counters(stock, sku) == (5, 5, 0, 0)


def test_confirm_retried_with_same_request_id_is_duplicate(admin, stock, sku):
    admin.put_sku(sku, 5)
    hold_id = stock.hold(sku, "u1", 2).deduction.request_id
    confirm_id = rid()
    first = stock.confirm(sku, hold_id, request_id=confirm_id)

    again = stock.confirm(sku, hold_id, request_id=confirm_id)

    assert first.outcome is Outcome.OK
    assert again.outcome is Outcome.DUPLICATE
    assert again.deduction == first.deduction
    assert counters(stock, sku) == (5, 3, 0, 2)


def test_release_retried_with_same_request_id_is_duplicate(admin, stock, sku):
    admin.put_sku(sku, 5)
    hold_id = stock.hold(sku, "u1", 2).deduction.request_id
    release_id = rid()
    first = stock.release(sku, hold_id, request_id=release_id)

    again = stock.release(sku, hold_id, request_id=release_id)

    assert first.outcome is Outcome.OK
    assert again.outcome is Outcome.DUPLICATE
    assert again.deduction == first.deduction
    assert counters(stock, sku) == (5, 5, 0, 0)


def test_confirmed_hold_cannot_be_confirmed_again_or_released(admin, stock, sku):
    admin.put_sku(sku, 5)
    hold_id = stock.hold(sku, "u1", 2).deduction.request_id
    assert stock.confirm(sku, hold_id).outcome is Outcome.OK

    other_confirm = stock.confirm(sku, hold_id, request_id=rid())
    release = stock.release(sku, hold_id, request_id=rid())

    assert other_confirm.outcome is Outcome.HOLD_CONFIRMED
    assert release.outcome is Outcome.HOLD_CONFIRMED
    assert release.deduction.state is DeductionState.CONFIRMED
    assert counters(stock, sku) == (5, 3, 0, 2)


def test_released_hold_cannot_be_confirmed(admin, stock, sku):
    admin.put_sku(sku, 5)
    hold_id = stock.hold(sku, "u1", 2).deduction.request_id
    assert stock.release(sku, hold_id).outcome is Outcome.OK

    confirm = stock.confirm(sku, hold_id)
    release = stock.release(sku, hold_id, request_id=rid())

    assert confirm.outcome is Outcome.HOLD_RELEASED
    assert release.outcome is Outcome.HOLD_RELEASED
    assert counters(stock, sku) == (5, 5, 0, 0)


def test_confirm_of_unknown_hold_is_hold_not_found(admin, stock, sku):
    admin.put_sku(sku, 5)
    deduct_id = stock.deduct(sku, "u1", 1).deduction.request_id

    assert stock.confirm(sku, rid()).outcome is Outcome.HOLD_NOT_FOUND
    assert stock.release(sku, rid()).outcome is Outcome.HOLD_NOT_FOUND
    # A Deduct is not a hold.
    assert stock.confirm(sku, deduct_id).outcome is Outcome.HOLD_NOT_FOUND
    assert counters(stock, sku) == (5, 4, 0, 1)


def test_hold_of_another_sku_is_not_found(admin, stock, sku):
    admin.put_sku(sku, 5)
    admin.put_sku(sku + "-b", 5)
    hold_id = stock.hold(sku, "u1", 1).deduction.request_id

    assert stock.confirm(sku + "-b", hold_id).outcome is Outcome.HOLD_NOT_FOUND
    assert counters(stock, sku) == (5, 4, 1, 0)


def test_released_hold_gives_back_the_users_limit(admin, stock, sku):
    admin.put_sku(sku, 10, per_user_limit=2)
    hold_id = stock.hold(sku, "u1", 2).deduction.request_id
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.LIMIT

    assert stock.release(sku, hold_id).outcome is Outcome.OK

    assert stock.deduct(sku, "u1", 2).outcome is Outcome.OK
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.LIMIT


def test_expired_hold_gives_back_the_users_limit(admin, stock, sku):
    admin.put_sku(sku, 10, per_user_limit=2)
    stock.hold(sku, "u1", 2, ttl_ms=200)
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.LIMIT

    eventually(lambda: stock.get_stock(sku), until=lambda s: s.held == 0)

    assert stock.deduct(sku, "u1", 2).outcome is Outcome.OK
    assert stock.deduct(sku, "u1", 1).outcome is Outcome.LIMIT


def test_confirmed_hold_keeps_counting_against_the_users_limit(admin, stock, sku):
    admin.put_sku(sku, 10, per_user_limit=2)
    hold_id = stock.hold(sku, "u1", 2).deduction.request_id

    assert stock.confirm(sku, hold_id).outcome is Outcome.OK

    assert stock.deduct(sku, "u1", 1).outcome is Outcome.LIMIT


def test_hold_retried_after_expiry_returns_first_answer_and_takes_nothing(admin, stock, sku):
    admin.put_sku(sku, 5)
    request_id = rid()
    first = stock.hold(sku, "u1", 2, ttl_ms=200, request_id=request_id)
    eventually(lambda: stock.get_stock(sku), until=lambda s: s.held == 0)

    again = stock.hold(sku, "u1", 2, ttl_ms=200, request_id=request_id, retry=True)

    assert again.outcome is Outcome.DUPLICATE
    assert again.deduction.taken_at_ms == first.deduction.taken_at_ms
    assert again.deduction.state is DeductionState.EXPIRED
    assert counters(stock, sku) == (5, 5, 0, 0)


@pytest.mark.parametrize("ttl_ms", [-1, 24 * 3600 * 1000 + 1])
def test_hold_ttl_out_of_range_is_invalid_argument(admin, stock, sku, ttl_ms):
    admin.put_sku(sku, 5)

    with pytest.raises(InvalidArgument) as err:
        stock.hold(sku, "u1", 1, ttl_ms=ttl_ms)

    assert [v.field for v in err.value.violations] == ["ttl_ms"]
    assert counters(stock, sku) == (5, 5, 0, 0)


async def test_confirms_racing_the_expiry_have_exactly_one_winner(aadmin, astock, sku, redis):
    """Many Confirms per hold, sent around its expiry: one Confirm wins, or the expiry does.

    The expiry is decided on Redis's clock whether or not the reaper has come
    by: a Confirm sent after the hold's expiry never wins.
    """
    holds_n, confirms_per_hold, qty, ttl_ms = 12, 6, 2, 300
    total = holds_n * qty + 3
    await aadmin.put_sku(sku, total)
    holds = await asyncio.gather(*(astock.hold(sku, f"u{i}", qty, ttl_ms=ttl_ms) for i in range(holds_n)))
    assert all(h.outcome is Outcome.OK for h in holds)
    loop = asyncio.get_running_loop()
    # Redis's clock as seen from here; read before the local one, so it is
    # never ahead: "sent after the expiry" below is true of the real send.
    skew_ms = redis_now_ms(redis) - loop.time() * 1000

    async def confirm_at(hold, offset_ms):
        wait_ms = hold.deduction.expires_at_ms + offset_ms - skew_ms - loop.time() * 1000
        await asyncio.sleep(max(0.0, wait_ms / 1000))
        sent_at_ms = loop.time() * 1000 + skew_ms
        return sent_at_ms, await astock.confirm(sku, hold.deduction.request_id)

    # Each hold's Confirms cluster around its own point, from well before its
    # expiry to well after, so both sides win some of the races.
    results = await asyncio.gather(
        *(
            asyncio.gather(*(confirm_at(h, 8 * (n - holds_n // 2) + i - 2) for i in range(confirms_per_hold)))
            for n, h in enumerate(holds)
        )
    )

    won_by_confirm = 0
    for hold, sends in zip(holds, results, strict=True):
        outcomes = [r.outcome for _, r in sends]
        oks = outcomes.count(Outcome.OK)
        assert oks <= 1, (hold.deduction.request_id, outcomes)
        if oks == 1:
            # Whoever came after the winner learns the hold is confirmed.
            assert set(outcomes) <= {Outcome.OK, Outcome.HOLD_CONFIRMED}, outcomes
            won_by_confirm += 1
        else:
            assert set(outcomes) == {Outcome.HOLD_EXPIRED}, outcomes
        for sent_at_ms, r in sends:
            if sent_at_ms >= hold.deduction.expires_at_ms + 3:
                assert r.outcome is not Outcome.OK, (sent_at_ms, hold.deduction, r)
        # The final word agrees with the race.
        final = await astock.release(sku, hold.deduction.request_id)
        assert final.outcome is (Outcome.HOLD_CONFIRMED if oks else Outcome.HOLD_EXPIRED)

    level = await aeventually(lambda: astock.get_stock(sku), until=lambda s: s.held == 0)
    assert level.confirmed == won_by_confirm * qty
    assert level.available + level.held + level.confirmed == level.total == total
