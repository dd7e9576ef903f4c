"""Bounded work per serving worker: the decision to take a call or shed it at once.

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

Pure: no I/O, no clock of its own (the caller passes ``now``), and the
jitter comes from a ``random.Random`` that a test can seed.
"""

from __future__ import annotations

import math
import random

from flashstock.client import Overloaded

RETRY_MIN_S = 0.05
"""Shortest retry delay a shed call is told (before jitter spreads it up to :data:`RETRY_MAX_S`)."""
RETRY_MAX_S = 0.2
"""Longest retry delay a shed call is told."""
QUEUE_WINDOW_S = 0.1
"""The interval over which the fastest answered call is watched for ``max_queue_s``."""


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

    __slots__ = ("max_in_flight", "max_queue_s", "window_s", "in_flight", "_rng", "_queued", "_window_end", "_fastest")

    def __init__(
        self,
        max_in_flight: int,
        max_queue_s: float = 0.0,
        *,
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
        self._rng = rng or random.Random()
        self._queued = False
        """A standing queue was found in the last full window."""
        self._window_end = -math.inf
        self._fastest = math.inf
        """The fastest call answered in the window ending at ``_window_end``."""

    def _close_window(self, now: float) -> None:
        # The window that ended decides until the next one ends; a window with no
        # call answered finds no queue (the calls it refused took no time at all).
        if now >= self._window_end:
            self._queued = self._fastest > self.max_queue_s and self._fastest != math.inf
            self._fastest = math.inf
            self._window_end = now + self.window_s

    def admit(self, now: float) -> Overloaded | None:
        """None: the call is taken (counted in flight until :meth:`finished`). Else the refusal to raise."""
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            return self._refusal(f"node overloaded: {self.in_flight} calls in flight in this worker, its max_in_flight")
        if self.max_queue_s:
            self._close_window(now)
            if self._queued:
                return self._refusal(
                    f"node overloaded: calls wait longer than its max_queue_ms "
                    f"({self.max_queue_s * 1000:g} ms) before an answer"
                )
        self.in_flight += 1
        return None

    def finished(self, seconds: float, now: float) -> None:
        """A call :meth:`admit` took was answered (or failed) after ``seconds``."""
        self.in_flight -= 1
        if self.max_queue_s:
            self._close_window(now)
            self._fastest = min(self._fastest, seconds)

    def _refusal(self, why: str) -> Overloaded:
        delay = self._rng.uniform(RETRY_MIN_S, RETRY_MAX_S)
        return Overloaded(f"{why}; nothing was taken: retry the same request after {delay * 1000:.0f} ms", delay)


__all__ = ["QUEUE_WINDOW_S", "RETRY_MAX_S", "RETRY_MIN_S", "Admission"]
