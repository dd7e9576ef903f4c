"""The admission decision of a serving worker: take a call, or shed it at once (pure, every input)."""

from __future__ import annotations

import random

import grpc
import pytest

from flashstock.client import Overloaded, Unavailable, from_status, to_status
from flashstock.server.rpc.admission import RETRY_MAX_S, RETRY_MIN_S, Admission, RedisBreaker


def test_calls_past_max_in_flight_are_refused_until_one_finishes():
    a = Admission(max_in_flight=2)
    assert a.admit(0.0) is None and a.admit(0.0) is None
    refusal = a.admit(0.0)
    assert isinstance(refusal, Overloaded)
    assert a.in_flight == 2  # the refused call is not counted in flight
    a.finished(0.01, 0.01)
    assert a.admit(0.02) is None and a.in_flight == 2


def test_zero_means_no_cap():
    a = Admission(max_in_flight=0)
    assert all(a.admit(0.0) is None for _ in range(10_000))
    assert a.in_flight == 10_000


def test_a_refusal_says_why_and_carries_a_jittered_retry_delay_in_range():
    a = Admission(max_in_flight=1, rng=random.Random(7))
    a.admit(0.0)
    delays = set()
    for _ in range(200):
        refusal = a.admit(0.0)
        assert refusal is not None
        assert RETRY_MIN_S <= refusal.retry_after <= RETRY_MAX_S
        assert "max_in_flight" in refusal.message and "nothing was taken" in refusal.message
        delays.add(refusal.retry_after)
    assert len(delays) > 100  # spread, so shed callers do not come back in step


def test_the_refusal_travels_as_resource_exhausted_with_its_retry_info():
    a = Admission(max_in_flight=1, rng=random.Random(1))
    a.admit(0.0)
    refusal = a.admit(0.0)
    assert refusal is not None
    status = to_status(refusal)
    assert status.code == 8  # RESOURCE_EXHAUSTED
    back = from_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        status.message,
        [("grpc-status-details-bin", status.SerializeToString())],
    )
    assert isinstance(back, Overloaded)
    assert back.retry_after == pytest.approx(refusal.retry_after, abs=1e-6)


def test_a_standing_queue_sheds_until_a_window_answers_fast_again():
    a = Admission(max_in_flight=0, max_queue_s=0.05, window_s=0.1)
    # Window 1 (0.0-0.1): every call answered slowly, the fastest in 80 ms.
    assert a.admit(0.0) is None
    for t in (0.02, 0.04):
        assert a.admit(t) is None
    for t in (0.08, 0.09, 0.095):
        a.finished(0.08, t)
    assert a.admit(0.099) is None  # the window decides only once it has ended
    refused = a.admit(0.1)
    assert isinstance(refused, Overloaded) and "max_queue_ms" in refused.message
    assert isinstance(a.admit(0.15), Overloaded)


def test_one_fast_answer_in_a_window_means_no_standing_queue():
    a = Admission(max_in_flight=0, max_queue_s=0.05, window_s=0.1)
    for _ in range(3):
        a.admit(0.0)
    a.finished(0.3, 0.03)
    a.finished(0.01, 0.05)  # one call got through quickly: slow calls, not a queue
    a.finished(0.3, 0.06)
    assert a.admit(0.12) is None and a.admit(0.13) is None


def test_a_window_with_no_answer_lifts_the_refusal():
    a = Admission(max_in_flight=0, max_queue_s=0.05, window_s=0.1)
    a.admit(0.0)
    a.finished(0.5, 0.05)
    assert a.admit(0.1) is not None  # the slow window decides the next one
    # Nothing answered in 0.1-0.2 (every call was refused): the queue has drained.
    assert a.admit(0.21) is None


def test_max_queue_off_never_watches_times():
    a = Admission(max_in_flight=0, max_queue_s=0.0)
    a.admit(0.0)
    a.finished(100.0, 100.0)
    assert a.admit(100.1) is None


def test_the_breaker_opens_after_trip_after_timeouts_in_a_row_only():
    opened: list[float] = []
    b = RedisBreaker(trip_after=3, cooldown_s=1.0, rng=random.Random(3))
    b.on_open = lambda: opened.append(1)
    b.timed_out(0.0)
    b.timed_out(0.1)
    b.answered()  # not in a row
    b.timed_out(0.2)
    b.timed_out(0.3)
    assert not b.is_open and b.refusal(0.3) is None
    b.timed_out(0.4)
    assert b.is_open and opened == [1]
    b.timed_out(0.5)  # more timeouts while open change nothing
    assert opened == [1]


def test_an_open_breaker_refuses_with_unavailable_and_the_time_until_its_probe():
    b = RedisBreaker(trip_after=1, cooldown_s=1.0, rng=random.Random(3))
    b.timed_out(10.0)
    refusal = b.refusal(10.25)
    assert isinstance(refusal, Unavailable)
    assert 0.75 + RETRY_MIN_S <= refusal.retry_after <= 0.75 + RETRY_MAX_S
    assert "cool-down" in refusal.message and "nothing was taken" in refusal.message
    assert to_status(refusal).code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert b.due(10.25) == pytest.approx(0.75)


def test_a_failed_probe_means_another_cool_down_and_a_good_one_closes():
    b = RedisBreaker(trip_after=1, cooldown_s=1.0)
    b.timed_out(0.0)
    assert b.due(1.5) == 0.0  # the probe is due
    b.probe_failed(1.5)
    assert b.is_open and b.due(1.5) == pytest.approx(1.0)
    b.close()
    assert not b.is_open and b.refusal(2.0) is None and b.due(2.0) == 0.0
    b.timed_out(3.0)  # the streak started again from zero: one timeout (trip_after=1) opens it
    assert b.is_open


def test_trip_after_zero_never_opens():
    b = RedisBreaker(trip_after=0, cooldown_s=1.0)
    for t in range(100):
        b.timed_out(float(t))
    assert not b.is_open
