"""Generated sales, run concurrently against a real node: the promises hold whatever the mix.

Each example puts a fresh SKU (stock S, per-user limit L) and runs a few waves
of operations by a few users, every wave's operations at once: Deducts,
short Holds, Confirms and Releases of earlier holds, and retries (an earlier
request_id sent again, marked as a retry or not). Meanwhile GetStock is sampled.
When every hold is settled or expired, a checker holds the outcomes against
the promises: no oversell, each request_id took effect at most once, a
retry of a request that took effect got its first answer, the per-user
limit held, one winner per hold, and the counters add up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashstock.client import (
    Deduction,
    DeductionState,
    InvalidArgument,
    Outcome,
    StockLevel,
)
from tests.helpers import aeventually

USERS = ("u0", "u1", "u2", "u3")
REFUSALS = {Outcome.SOLD_OUT, Outcome.INSUFFICIENT, Outcome.LIMIT}


# -- the scenario -------------------------------------------------------------

_user = st.sampled_from(USERS)
_qty = st.sampled_from([1, 1, 1, 2, 3])
_ref = st.integers(0, 10_000)  # picks among earlier requests, modulo their number
_op = st.one_of(
    st.tuples(st.just("deduct"), _user, _qty),
    st.tuples(st.just("hold"), _user, _qty, st.integers(100, 400)),
    st.tuples(st.just("confirm"), _ref),
    st.tuples(st.just("release"), _ref),
    # A resend of an earlier request id, marked as a retry or not: no answer depends on the flag.
    st.tuples(st.just("retry"), _ref, st.booleans()),
    st.tuples(st.just("retry"), _ref, st.booleans()),
    st.tuples(st.just("resettle"), _ref),
)
# A wave: a pause before it (so holds may expire between waves, or while a
# Confirm is on its way), then its operations, all sent at once.
_wave = st.tuples(st.sampled_from([0, 0, 50, 120, 250]), st.lists(_op, min_size=3, max_size=16))
scenarios = st.fixed_dictionaries(
    {
        "stock": st.integers(1, 30),
        "limit": st.integers(0, 3),
        "waves": st.lists(_wave, min_size=2, max_size=5),
    }
)


@dataclass
class Send:
    """One call as sent and answered."""

    wave: int
    result: Any = None
    error: BaseException | None = None


@dataclass
class Take:
    """A Deduct or Hold request_id and every send of it."""

    rid: str
    kind: str  # "deduct" | "hold"
    user: str
    qty: int
    ttl_ms: int = 0
    sends: list[Send] = field(default_factory=list)


@dataclass
class Settle:
    """A Confirm or Release request_id and every send of it."""

    rid: str
    op: str  # "confirm" | "release"
    hold: Take
    sends: list[Send] = field(default_factory=list)


def _identity(d: Deduction) -> tuple:
    """What a retry must get back unchanged (the state may have moved on since)."""
    return d.request_id, d.sku_id, d.user_id, d.qty, d.taken_at_ms, d.expires_at_ms


# -- running it ---------------------------------------------------------------


async def _run(astock, sku: str, scenario: dict) -> tuple[list[Take], list[Settle], list[StockLevel]]:
    takes: list[Take] = []
    settles: list[Settle] = []
    samples: list[StockLevel] = []
    running = True

    async def sample() -> None:
        while running:
            samples.append(await astock.get_stock(sku))
            await asyncio.sleep(0.005)

    async def send(wave: int, sends: list[Send], coro) -> None:
        s = Send(wave)
        sends.append(s)
        try:
            s.result = await coro
        except Exception as exc:  # noqa: BLE001 - judged by the checker
            s.error = exc

    def take_call(t: Take, retry: bool):
        if t.kind == "deduct":
            return astock.deduct(sku, t.user, t.qty, request_id=t.rid, retry=retry)
        return astock.hold(sku, t.user, t.qty, ttl_ms=t.ttl_ms, request_id=t.rid, retry=retry)

    def settle_call(s: Settle):
        call = astock.confirm if s.op == "confirm" else astock.release
        return call(sku, s.hold.rid, request_id=s.rid)

    sampler = asyncio.create_task(sample())
    try:
        for wave, (pause_ms, ops) in enumerate(scenario["waves"]):
            await asyncio.sleep(pause_ms / 1000)
            # Refer only to requests of earlier waves: their first send is answered.
            earlier_takes = list(takes)
            earlier_holds = [t for t in takes if t.kind == "hold"]
            earlier_settles = list(settles)
            calls = []
            for op in ops:
                kind = op[0]
                if kind in ("deduct", "hold"):
                    t = Take(uuid.uuid4().hex, kind, op[1], op[2], op[3] if kind == "hold" else 0)
                    takes.append(t)
                    calls.append(send(wave, t.sends, take_call(t, retry=False)))
                elif kind in ("confirm", "release") and earlier_holds:
                    s = Settle(uuid.uuid4().hex, kind, earlier_holds[op[1] % len(earlier_holds)])
                    settles.append(s)
                    calls.append(send(wave, s.sends, settle_call(s)))
                elif kind == "retry" and earlier_takes:
                    t = earlier_takes[op[1] % len(earlier_takes)]
                    calls.append(send(wave, t.sends, take_call(t, retry=op[2])))
                elif kind == "resettle" and earlier_settles:
                    s = earlier_settles[op[1] % len(earlier_settles)]
                    calls.append(send(wave, s.sends, settle_call(s)))
            await asyncio.gather(*calls)
    finally:
        running = False
        await sampler
    return takes, settles, samples


# -- the checker --------------------------------------------------------------


def _check_take(t: Take, sku: str, limit: int) -> Send | None:
    """Check every send of one Deduct/Hold; return the send that took effect, if any."""
    for s in t.sends:
        if s.error is not None:
            # The only error a valid scenario may meet: qty above the cap (the limit).
            assert isinstance(s.error, InvalidArgument), (t, s)
            assert 0 < limit < t.qty, (t, s)
    answered = [s for s in t.sends if s.error is None]
    oks = [s for s in answered if s.result.outcome is Outcome.OK]
    assert len(oks) <= 1, f"request {t.rid} took effect {len(oks)} times: {t}"
    dups = [s for s in answered if s.result.outcome is Outcome.DUPLICATE]
    if not oks:
        assert not dups, f"DUPLICATE of a request that never took effect: {t}"
        for s in answered:
            assert s.result.outcome in REFUSALS, (t, s)
            assert s.result.deduction is None, (t, s)
        return None
    ok = oks[0]
    d = ok.result.deduction
    assert (d.request_id, d.sku_id, d.user_id, d.qty) == (t.rid, sku, t.user, t.qty), (t, d)
    if t.kind == "hold":
        assert d.state is DeductionState.HELD and d.expires_at_ms == d.taken_at_ms + t.ttl_ms, (t, d)
    else:
        assert d.state is DeductionState.CONFIRMED, (t, d)
    for s in answered:
        if s.wave > ok.wave:
            # Sent after the first answer came back: it must be that answer.
            assert s.result.outcome is Outcome.DUPLICATE, (t, s)
        if s.result.outcome is Outcome.DUPLICATE:
            assert _identity(s.result.deduction) == _identity(d), (t, s)
    return ok


FINAL = {
    Outcome.HOLD_CONFIRMED: "confirm",
    Outcome.HOLD_RELEASED: "release",
    Outcome.HOLD_EXPIRED: None,
}


def _check_hold_settles(hold: Take, took: Send | None, settles: list[Settle], final: Outcome | None) -> None:
    """One winner per hold, and every settle call agrees with it."""
    winners = []
    for s in settles:
        assert all(x.error is None for x in s.sends), s
        oks = [x for x in s.sends if x.result.outcome is Outcome.OK]
        assert len(oks) <= 1, s
        if oks:
            winners.append((s, oks[0]))
    assert len(winners) <= 1, f"hold {hold.rid} settled by {len(winners)} calls"
    if took is None:
        assert not winners, hold
        for s in settles:
            assert {x.result.outcome for x in s.sends} == {Outcome.HOLD_NOT_FOUND}, s
        return
    winner = winners[0] if winners else None
    assert FINAL[final] == (winner[0].op if winner else None), (hold.rid, final, winner)
    for s in settles:
        for x in s.sends:
            out = x.result.outcome
            if x.wave < took.wave:
                assert out is Outcome.HOLD_NOT_FOUND, (s, x)
            elif x.wave == took.wave or out is Outcome.OK:
                continue  # sent alongside the hold's own send: no order to hold it to
            elif winner is not None and s is winner[0]:
                # The winner's request_id again: its first answer.
                assert out is Outcome.DUPLICATE, (s, x)
                assert x.result.deduction == winner[1].result.deduction, (s, x)
            else:
                assert out is final, (hold.rid, final, s, x)


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios)
async def test_concurrent_sales_keep_every_promise(aadmin, astock, scenario):
    sku = f"prop-{uuid.uuid4().hex}"
    total, limit = scenario["stock"], scenario["limit"]
    await aadmin.put_sku(sku, total, per_user_limit=limit)

    takes, settles, samples = await _run(astock, sku, scenario)
    end = await aeventually(lambda: astock.get_stock(sku), until=lambda s: s.held == 0)

    # No oversell, at any moment we looked, and the counters always add up.
    for s in [*samples, end]:
        assert s.total == total, s
        assert 0 <= s.held + s.confirmed <= s.total, s
        assert s.available + s.held + s.confirmed == s.total, s
    assert end.available + end.confirmed == total

    settles_of: dict[str, list[Settle]] = defaultdict(list)
    for s in settles:
        settles_of[s.hold.rid].append(s)
    confirmed_by_user: dict[str, int] = defaultdict(int)
    confirmed = 0
    for t in takes:
        took = _check_take(t, sku, limit)
        final = None
        if t.kind == "hold":
            if took is not None:
                # Every hold is over by now; a late Release only reads how it ended.
                final = (await astock.release(sku, t.rid)).outcome
                assert final in FINAL, (t, final)
            _check_hold_settles(t, took, settles_of[t.rid], final)
        if took is not None and (t.kind == "deduct" or final is Outcome.HOLD_CONFIRMED):
            confirmed += t.qty
            confirmed_by_user[t.user] += t.qty

    # Each request_id took effect at most once: the counter is exactly their sum.
    assert end.confirmed == confirmed
    if limit > 0:
        assert max(confirmed_by_user.values(), default=0) <= limit, dict(confirmed_by_user)
