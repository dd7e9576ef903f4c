"""Bounded work per serving worker: the decisions to take a call or refuse it at once.

A worker that takes every call queues without bound when Redis (or the
worker itself) is slower than the crowd: every call waits, then every
caller times out and sends again. :class:`Admission` refuses a new
StockService call instead, at once, with :class:`~flashstock.client.Overloaded`
(RESOURCE_EXHAUSTED carrying a ``RetryInfo``), before it reaches Redis: a
refused call takes nothing, and a resend with the same request id is safe.

Two limits, each off at 0:

- ``max_in_flight``: calls of this worker begun and not yet answered. The
  call past it is refused.
- ``max_queue_s``: a standing queue, found the way CoDel finds one. When even
  the fastest call answered in the last ``window_s`` took longer than this,
  calls are waiting behind a backlog, not merely slow: new calls are refused
  until a window's fastest call is under the limit again (or a window passes
  with no call answered).

:class:`CallerCaps` adds caps per caller (its identity with auth on, else the peer's IP address): calls in
flight and calls a second from one caller, so that one misbehaving gateway
cannot take the worker from everyone else.

:class:`RedisBreaker` fails fast on a sick Redis: after some Redis timeouts in
a row, a worker answers UNAVAILABLE at once for a cool-down, until a probe
finds Redis answering again.

Pure: no I/O, no clock of its own (the caller passes ``now``), and the
jitter comes from a ``random.Random`` that a test can seed.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import unquote

from flashstock.client import Overloaded, Unavailable

RETRY_MIN_S = 0.05
"""Shortest retry delay a shed call is told (before jitter spreads it up to :data:`RETRY_MAX_S`)."""
RETRY_MAX_S = 0.2
"""Longest retry delay a shed call is told."""
QUEUE_WINDOW_S = 0.1
"""The interval over which the fastest answered call is watched for ``max_queue_s``."""
SHEDDING_HOLD_S = 2.0
"""A worker counts as shedding (:meth:`Admission.shedding`) this long after its last refusal of its own."""
MAX_CALLERS = 10_000
"""Callers a worker keeps figures of (:class:`CallerCaps`), besides those with calls in flight now."""


def caller_of(peer: str) -> str:
    """The caller a gRPC peer string names: its IP address without the port.

    ``ipv4:127.0.0.1:54321`` -> ``127.0.0.1``; ``ipv6:[::1]:54321`` (or
    percent-encoded, ``ipv6:%5B::1%5D:54321``) -> ``::1``; anything else
    (``unix:...``, an empty peer) is its own caller, as given.
    """
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv4":
        return rest.rpartition(":")[0] or rest
    if scheme == "ipv6":
        host = unquote(rest).rpartition(":")[0]
        return host.strip("[]") or rest
    return peer


class Admission:
    """One worker's calls in flight, and whether the next call may start.

    ::

        refusal = admission.admit(now)
        if refusal is not None:
            raise refusal            # took nothing
        try:
            ...                      # the call
        finally:
            admission.finished(seconds, now)
    """

    __slots__ = (
        "max_in_flight",
        "max_queue_s",
        "window_s",
        "in_flight",
        "callers",
        "_rng",
        "_queued",
        "_window_end",
        "_fastest",
        "_last_shed",
    )

    def __init__(
        self,
        max_in_flight: int,
        max_queue_s: float = 0.0,
        *,
        callers: CallerCaps | None = None,
        window_s: float = QUEUE_WINDOW_S,
        rng: random.Random | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        """Most calls in flight; 0 = no cap."""
        self.max_queue_s = max_queue_s
        """Longest standing queue, seconds; 0 = not watched."""
        self.window_s = window_s
        self.in_flight = 0
        """Calls admitted and not yet finished."""
        self.callers = callers
        """The per-caller caps, asked first (None: off)."""
        self._rng = rng or random.Random()
        self._queued = False
        """A standing queue was found in the last full window."""
        self._window_end = -math.inf
        self._fastest = math.inf
        """The fastest call answered in the window ending at ``_window_end``."""
        self._last_shed = -math.inf
        """When the worker's own caps last refused a call."""

    def _close_window(self, now: float) -> None:
        # The window that ended decides until the next one ends; a window with no
        # call answered finds no queue (the calls it refused took no time at all).
        if now >= self._window_end:
            self._queued = self._fastest > self.max_queue_s and self._fastest != math.inf
            self._fastest = math.inf
            self._window_end = now + self.window_s

    def admit(self, now: float, caller: str = "") -> Overloaded | None:
        """None: the call is taken (counted in flight until :meth:`finished`). Else the refusal to raise.

        ``caller`` (:func:`caller_of` the peer) is asked of the per-caller caps
        first, so a caller over its own cap is told so; a call either refuses
        takes nothing from the other.
        """
        callers = self.callers
        if callers is not None:
            refusal = callers.check(caller, now)
            if refusal is not None:
                return refusal
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            self._last_shed = now
            return self._refusal(f"node overloaded: {self.in_flight} calls in flight in this worker, its max_in_flight")
        if self.max_queue_s:
            self._close_window(now)
            if self._queued:
                self._last_shed = now
                return self._refusal(
                    f"node overloaded: calls wait longer than its max_queue_ms "
                    f"({self.max_queue_s * 1000:g} ms) before an answer"
                )
        if callers is not None:
            callers.take(caller)
        self.in_flight += 1
        return None

    @property
    def last_shed(self) -> float | None:
        """When the worker's own caps last refused a call (the ``now`` given then); None: never."""
        return None if self._last_shed == -math.inf else self._last_shed

    def shedding(self, now: float) -> bool:
        """True while the worker sheds: its own caps refused a call in the last :data:`SHEDDING_HOLD_S`.

        A caller refused over its own cap does not count: one gateway's excess
        is not the worker's overload.
        """
        return now - self._last_shed < SHEDDING_HOLD_S

    def finished(self, seconds: float, now: float, caller: str = "") -> None:
        """A call :meth:`admit` took (from ``caller``) was answered (or failed) after ``seconds``."""
        self.in_flight -= 1
        if self.callers is not None:
            self.callers.finished(caller)
        if self.max_queue_s:
            self._close_window(now)
            self._fastest = min(self._fastest, seconds)

    def _refusal(self, why: str) -> Overloaded:
        return _refused(why, self._rng.uniform(RETRY_MIN_S, RETRY_MAX_S))


class _Caller:
    __slots__ = ("in_flight", "tokens", "stamp")

    def __init__(self, tokens: float, now: float) -> None:
        self.in_flight = 0
        self.tokens = tokens
        """Calls the caller may start now at its rate (a token bucket; refilled to ``stamp``)."""
        self.stamp = now


class CallerCaps:
    """Per-caller caps of one worker, so that one misbehaving gateway cannot take it from everyone else.

    A caller is what the servicer names it: the identity auth decided
    (``jwt:<sub>``, ``cert:<subject>``) when auth is on, else the peer's IP
    address (:func:`caller_of`). Two caps, each off at 0:

    - ``max_in_flight``: calls from the caller begun and not yet answered.
    - ``rate``: calls per second from the caller, a token bucket holding one
      second's worth (at least one call): a burst of ``rate`` calls, then
      ``rate`` a second.

    :meth:`check` says whether a call may start and :meth:`take` counts it
    (the worker's own caps decide in between, so a call refused by either
    takes nothing from the other); :meth:`finished` releases it. At most
    ``max_callers`` callers are kept besides those with calls in flight: the
    one seen least recently is forgotten first (its bucket starts full when
    it comes back).
    """

    __slots__ = ("max_in_flight", "rate", "burst", "max_callers", "_callers", "_rng")

    def __init__(
        self,
        max_in_flight: int,
        rate: float,
        *,
        max_callers: int = MAX_CALLERS,
        rng: random.Random | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        """Most calls in flight per caller; 0 = no cap."""
        self.rate = rate
        """Calls per second per caller; 0 = no cap."""
        self.burst = max(rate, 1.0)
        """Tokens a full bucket holds."""
        self.max_callers = max_callers
        self._callers: OrderedDict[str, _Caller] = OrderedDict()
        """Callers by when last seen, the least recent first."""
        self._rng = rng or random.Random()

    def __len__(self) -> int:
        """Callers kept now."""
        return len(self._callers)

    def in_flight(self, caller: str) -> int:
        """Calls from ``caller`` taken and not yet finished."""
        held = self._callers.get(caller)
        return 0 if held is None else held.in_flight

    def check(self, caller: str, now: float) -> Overloaded | None:
        """None: ``caller`` may start a call now (then :meth:`take` it). Else the refusal to raise."""
        held = self._callers.get(caller)
        if held is None:
            self._forget_idle(self.max_callers - 1)
            held = self._callers[caller] = _Caller(self.burst, now)
        else:
            self._callers.move_to_end(caller)
        if self.max_in_flight and held.in_flight >= self.max_in_flight:
            delay = self._rng.uniform(RETRY_MIN_S, RETRY_MAX_S)
            return _refused(
                f"caller {caller} over its cap: {held.in_flight} calls from it in flight in this worker, "
                "the node's max_in_flight_per_caller",
                delay,
            )
        if self.rate:
            held.tokens = min(self.burst, held.tokens + (now - held.stamp) * self.rate)
            held.stamp = now
            if held.tokens < 1.0:
                # When the bucket has a token again, spread a little so the caller's calls do not come back in step.
                delay = (1.0 - held.tokens) / self.rate + self._rng.uniform(0.0, RETRY_MIN_S)
                return _refused(
                    f"caller {caller} over its rate: more than {self.rate:g} calls a second from it in this "
                    "worker, the node's max_rate_per_caller",
                    delay,
                )
        return None

    def take(self, caller: str) -> None:
        """Count a call :meth:`check` allowed (just before, with no await between)."""
        held = self._callers[caller]
        held.in_flight += 1
        if self.rate:
            held.tokens -= 1.0

    def finished(self, caller: str) -> None:
        """A call :meth:`take` counted was answered (or failed)."""
        held = self._callers.get(caller)
        if held is not None and held.in_flight:
            held.in_flight -= 1

    def _forget_idle(self, keep: int) -> None:
        # The least recently seen first; a caller with calls in flight is kept (and counts as seen now).
        callers = self._callers
        for _ in range(len(callers)):
            if len(callers) <= keep:
                return
            oldest, held = next(iter(callers.items()))
            if held.in_flight:
                callers.move_to_end(oldest)
            else:
                del callers[oldest]


def _refused(why: str, delay: float) -> Overloaded:
    return Overloaded(f"{why}; nothing was taken: retry the same request after {delay * 1000:.0f} ms", delay)


class RedisBreaker:
    """Fail fast on a sick Redis: after ``trip_after`` Redis timeouts in a row, stop sending for a cool-down.

    While open, every StockService call is answered at once with
    :class:`~flashstock.client.Unavailable` and a retry delay, instead of
    waiting ``redis_timeout_s`` for a Redis that does not answer (and
    piling more calls onto it). The node probes Redis itself once each
    cool-down (:meth:`probe_failed`, :meth:`close`); calls never serve as
    probes. ``on_open`` (set by the node) is called when it opens: it turns
    the worker's health NOT_SERVING and starts the probing.

    ::

        refusal = breaker.refusal(now)     # before the call: None, or the Unavailable to raise
        breaker.timed_out(now)             # the call's Redis command timed out
        breaker.answered()                 # the call was answered (Redis answered in time)
    """

    __slots__ = ("trip_after", "cooldown_s", "on_open", "_streak", "_open_until", "_rng")

    def __init__(self, trip_after: int, cooldown_s: float, *, rng: random.Random | None = None) -> None:
        self.trip_after = trip_after
        """Redis timeouts in a row that open the breaker; 0 = never."""
        self.cooldown_s = cooldown_s
        """How long an open breaker sends nothing before the next probe, seconds."""
        self.on_open: Callable[[], None] | None = None
        """Called (from the event loop) each time the breaker opens."""
        self._streak = 0
        self._open_until: float | None = None
        """None: closed (calls go to Redis). Else when the next probe is due."""
        self._rng = rng or random.Random()

    @property
    def is_open(self) -> bool:
        """True while calls are refused (from the trip until a probe succeeds)."""
        return self._open_until is not None

    def refusal(self, now: float) -> Unavailable | None:
        """None while closed; else the error to answer with at once."""
        if self._open_until is None:
            return None
        # Until the probe after the cool-down has told: then the next probe's time.
        wait = max(self._open_until - now, 0.0) + self._rng.uniform(RETRY_MIN_S, RETRY_MAX_S)
        return Unavailable(
            f"Redis did not answer in time {self.trip_after} times in a row: this worker stopped sending to it "
            f"for a cool-down ({self.cooldown_s * 1000:g} ms, then a probe); nothing was taken: "
            f"retry the same request after {wait * 1000:.0f} ms",
            wait,
        )

    def timed_out(self, now: float) -> None:
        """A call's Redis command timed out; the ``trip_after``-th in a row opens the breaker."""
        if self._open_until is not None or not self.trip_after:
            return
        self._streak += 1
        if self._streak >= self.trip_after:
            self._open_until = now + self.cooldown_s
            if self.on_open is not None:
                self.on_open()

    def answered(self) -> None:
        """A call that went to Redis was answered in time: the streak starts again."""
        self._streak = 0

    def due(self, now: float) -> float:
        """Seconds until the next probe (0: now); 0 when closed."""
        return 0.0 if self._open_until is None else max(self._open_until - now, 0.0)

    def probe_failed(self, now: float) -> None:
        """The probe found Redis still sick: another cool-down."""
        if self._open_until is not None:
            self._open_until = now + self.cooldown_s

    def close(self) -> None:
        """The probe found Redis well: calls go to it again."""
        self._open_until = None
        self._streak = 0


__all__ = [
    "MAX_CALLERS",
    "QUEUE_WINDOW_S",
    "RETRY_MAX_S",
    "RETRY_MIN_S",
    "SHEDDING_HOLD_S",
    "Admission",
    "CallerCaps",
    "RedisBreaker",
    "caller_of",
]
