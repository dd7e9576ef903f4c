"""Degraded mode of a serving worker: reads from a snapshot while the worker sheds.

A worker that sheds StockService calls (:meth:`.admission.Admission.shedding`)
has no time to spare on the crowd refreshing a SKU's page: while it is
degraded, the reads (GetStock; GetSku and ListSkus of AdminService) are served
from :class:`Snapshots`, a small per-worker cache of their answers at most
``max_age_s`` old, keyed by the request. A read the cache cannot answer goes to
Redis and fills it. Writes (Deduct, Hold, ...) never read from it.

Degraded mode is on while the worker sheds, or while an operator switched it
on (the ``degrade`` setting, or the file ``<data_dir>/degrade``, which the node
looks for once a second: :attr:`Degrade.by_hand`); it goes off by itself
:data:`~.admission.SHEDDING_HOLD_S` after the last call shed. Off, reads go
to Redis as always and the cache is neither read nor filled.

A read the snapshots can answer (:meth:`Degrade.kept`) is answered even when
the worker's caps (:mod:`.admission`) would refuse it: from memory it costs
next to nothing, and refusing it would only send the crowd back sooner.

The decisions (:class:`Snapshots`, :meth:`Degrade.on`) are pure: no I/O, no
clock of their own (the caller passes ``now``); :meth:`Degrade.read` is the
thin adapter the servicers call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from time import perf_counter
from typing import Any, TypeVar

from flashstock.server.rpc.admission import Admission

_T = TypeVar("_T")

MAX_SNAPSHOTS = 10_000
"""Read answers a worker keeps at most (:class:`Snapshots`); the least recently used go first."""


class Snapshots:
    """Answers of reads by request key, each reused while at most ``max_age_s`` old.

    At most ``max_entries`` answers are kept; past that, the least recently
    used is dropped. A stale answer is dropped when asked for.
    """

    __slots__ = ("max_age_s", "max_entries", "_entries")

    def __init__(self, max_age_s: float, *, max_entries: int = MAX_SNAPSHOTS) -> None:
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        """key -> (when read, the answer), the least recently used first."""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, now: float) -> Any | None:
        """The answer kept for ``key`` if it was read at most ``max_age_s`` before ``now``; else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        read_at, answer = entry
        if now - read_at > self.max_age_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer

    def put(self, key: Hashable, answer: Any, now: float) -> None:
        """Keep ``answer`` (not None) for ``key``, read at ``now``."""
        self._entries[key] = (now, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every answer."""
        self._entries.clear()


class Degrade:
    """One worker's degraded mode: whether it is on, and its :class:`Snapshots`.

    ::

        reply = await degrade.read(("GetStock", sku_id), lambda: store.stock_level(sku_id))
    """

    __slots__ = ("admission", "by_hand", "snapshots", "_was_on")

    def __init__(self, max_age_s: float, admission: Admission | None = None, *, by_hand: bool = False) -> None:
        self.admission = admission
        """The worker's StockService admission, asked whether it sheds; None: never sheds."""
        self.by_hand = by_hand
        """An operator switched degraded mode on (the ``degrade`` setting, or the ``degrade`` file)."""
        self.snapshots = Snapshots(max_age_s)
        self._was_on = False

    def on(self, now: float) -> bool:
        """True while degraded: switched on by hand, or the worker shed a call lately."""
        on = self.by_hand or (self.admission is not None and self.admission.shedding(now))
        if on != self._was_on:
            self._was_on = on
            if not on:
                self.snapshots.clear()  # the next degraded spell starts from fresh reads
        return on

    def kept(self, key: Hashable, now: float) -> Any | None:
        """The answer :meth:`read` would give for ``key`` from the snapshots now, without a fetch; None:
        not degraded, or no answer at most ``max_age_s`` old is kept."""
        if not self.on(now):
            return None
        return self.snapshots.get(key, now)

    async def read(self, key: Hashable, fetch: Callable[[], Awaitable[_T]]) -> _T:
        """``fetch()``'s answer; while degraded, one at most ``max_age_s`` old from the snapshots."""
        now = perf_counter()
        if not self.on(now):
            return await fetch()
        kept = self.snapshots.get(key, now)
        if kept is not None:
            return kept
        answer = await fetch()
        self.snapshots.put(key, answer, now)
        return answer


__all__ = ["MAX_SNAPSHOTS", "Degrade", "Snapshots"]
