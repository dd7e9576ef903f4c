"""The admission decision of a serving worker: take a call, or shed it at once (pure, every input)."""

from __future__ import annotations

import random

import grpc
import pytest

from flashstock.client import Overloaded, Unavailable, from_status, to_status
from flashstock.server.rpc.admission import (
    RETRY_MAX_S,
    RETRY_MIN_S,
    Admission,
    CallerCaps,
    RedisBreaker,
    caller_of,
)


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


# Per-caller caps: one caller (the peer's address) cannot take a worker from the others.


@pytest.mark.parametrize(
    ("peer", "caller"),
    [
        ("ipv4:127.0.0.1:54321", "127.0.0.1"),
        ("ipv4:10.1.2.3:1", "10.1.2.3"),
        ("ipv6:[::1]:54321", "::1"),
        ("ipv6:%5B::1%5D:54321", "::1"),
        ("ipv6:[fe80::1%25eth0]:80", "fe80::1%eth0"),
        ("unix:/tmp/node.sock", "unix:/tmp/node.sock"),
        ("unix:", "unix:"),
        ("", ""),
    ],
)
def test_a_caller_is_the_peer_address_without_its_port(peer, caller):
    assert caller_of(peer) == caller


def test_a_caller_past_its_in_flight_cap_is_refused_while_others_are_served():
    a = Admission(0, callers=CallerCaps(max_in_flight=2, rate=0))
    assert a.admit(0.0, "10.0.0.1") is None and a.admit(0.0, "10.0.0.1") is None
    refusal = a.admit(0.0, "10.0.0.1")
    assert isinstance(refusal, Overloaded)
    assert "caller 10.0.0.1" in refusal.message and "max_in_flight_per_caller" in refusal.message
    assert "nothing was taken" in refusal.message
    assert RETRY_MIN_S <= refusal.retry_after <= RETRY_MAX_S
    assert a.in_flight == 2 and a.callers is not None and a.callers.in_flight("10.0.0.1") == 2
    # Another caller is served meanwhile.
    assert a.admit(0.0, "10.0.0.2") is None and a.admit(0.0, "10.0.0.2") is None
    # A finished call frees a place for its own caller.
    a.finished(0.01, 0.01, "10.0.0.1")
    assert a.callers.in_flight("10.0.0.1") == 1
    assert a.admit(0.02, "10.0.0.1") is None


def test_the_rate_cap_allows_a_burst_of_one_seconds_worth_then_refills():
    caps = CallerCaps(max_in_flight=0, rate=10, rng=random.Random(1))
    a = Admission(0, callers=caps)
    for _ in range(10):
        assert a.admit(0.0, "gw") is None
        a.finished(0.0, 0.0, "gw")
    refusal = a.admit(0.0, "gw")
    assert isinstance(refusal, Overloaded)
    assert "caller gw" in refusal.message and "max_rate_per_caller" in refusal.message
    # Told to come back when the bucket holds a token: 1/10 s from an empty bucket (plus a little jitter).
    assert 0.1 <= refusal.retry_after <= 0.1 + RETRY_MIN_S
    # Refused calls take no token: 50 ms later half a token has come back, still short.
    assert a.admit(0.05, "gw") is not None
    assert a.admit(0.1, "gw") is None  # one token after 100 ms
    assert a.admit(0.1, "gw") is not None
    # A long pause refills to one second's worth, no more.
    a.finished(0.0, 100.0, "gw")
    assert sum(a.admit(100.0, "gw") is None for _ in range(30)) == 10
    # Other callers have buckets of their own.
    assert a.admit(100.0, "other") is None


def test_a_slow_rate_still_allows_one_call():
    caps = CallerCaps(max_in_flight=0, rate=0.5)
    assert caps.check("gw", 0.0) is None
    caps.take("gw")
    refusal = caps.check("gw", 0.0)
    assert refusal is not None and refusal.retry_after >= 2.0
    assert caps.check("gw", 2.0) is None


def test_a_call_the_worker_refuses_takes_nothing_from_its_caller():
    caps = CallerCaps(max_in_flight=5, rate=3)
    a = Admission(max_in_flight=1, callers=caps)
    assert a.admit(0.0, "gw") is None
    for _ in range(10):
        refusal = a.admit(0.0, "gw")
        assert refusal is not None and "max_in_flight" in refusal.message and "caller" not in refusal.message
    assert caps.in_flight("gw") == 1
    a.finished(0.0, 0.0, "gw")
    # Two tokens left of three: the ten refusals took none.
    assert a.admit(0.0, "gw") is None
    a.finished(0.0, 0.0, "gw")
    assert a.admit(0.0, "gw") is None
    a.finished(0.0, 0.0, "gw")
    assert a.admit(0.0, "gw") is not None


def test_a_call_its_caller_refuses_takes_nothing_from_the_worker():
    a = Admission(max_in_flight=3, callers=CallerCaps(max_in_flight=1, rate=0))
    assert a.admit(0.0, "gw") is None
    assert all(a.admit(0.0, "gw") is not None for _ in range(10))
    assert a.in_flight == 1
    assert a.admit(0.0, "b") is None and a.admit(0.0, "c") is None


def test_tracked_callers_are_bounded_forgetting_the_least_recently_seen_idle_one():
    caps = CallerCaps(max_in_flight=1, rate=1, max_callers=3)
    for name in ("a", "b", "c"):
        assert caps.check(name, 0.0) is None
        caps.take(name)
    caps.finished("a")
    caps.finished("c")
    # "b" has a call in flight, so it is kept; "a" (idle, least recently seen) goes.
    assert caps.check("d", 0.0) is None
    assert len(caps) == 3 and caps.in_flight("b") == 1
    # "a" comes back with a full bucket (it was forgotten); "c", idle, went to make room.
    assert caps.check("a", 0.0) is None
    assert len(caps) == 3
    # "b" still over its in-flight cap: it was not forgotten.
    assert caps.check("b", 0.0) is not None
    # Many callers never grow it past the bound.
    for i in range(1000):
        caps.check(f"x{i}", float(i))
    assert len(caps) <= 3


def test_callers_with_calls_in_flight_are_kept_past_the_bound():
    caps = CallerCaps(max_in_flight=1, rate=0, max_callers=2)
    for name in ("a", "b", "c"):
        assert caps.check(name, 0.0) is None
        caps.take(name)
    assert len(caps) == 3  # every one holds a call: none can be forgotten
    assert all(caps.check(name, 0.0) is not None for name in ("a", "b", "c"))
    for name in ("a", "b", "c"):
        caps.finished(name)
    caps.check("d", 0.0)
    assert len(caps) == 2
