"""Logging what strangers can cause, without letting them flood the log.

A caller can send any number of malformed requests; a log line (or worse, a
traceback) for each would make the node's log the cheapest thing to attack.
:class:`LogGate` lets one message of each kind through per interval and
counts the rest, so the line that does get through says how many it stands
for. Pure: the clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

OTHER_KIND = "other"
"""The kind every kind beyond ``max_kinds`` is counted as (the table stays bounded)."""


class LogGate:
    """At most one message per kind per interval; the others are counted, not logged."""

    def __init__(
        self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic, max_kinds: int = 256
    ) -> None:
        self.interval_s = interval_s
        """The shortest time between two messages of one kind, seconds."""
        self._clock = clock
        self._max_kinds = max_kinds
        self._last: dict[Hashable, float] = {}
        self._held_back: dict[Hashable, int] = {}

    def admit(self, kind: Hashable) -> int | None:
        """None: do not log this one. Else log it, saying it stands for this many held back since the last."""
        if kind not in self._last and len(self._last) >= self._max_kinds:
            kind = OTHER_KIND
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._held_back[kind] = self._held_back.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._held_back.pop(kind, 0)


__all__ = ["OTHER_KIND", "LogGate"]
