"""What went wrong on a node, kept in the ledger's ``incidents`` table for a sale's review.

The duties (and a request's rebuild) say what happened — a shard taken over
from another node, rebuilt from the ledger, a write fenced off, Redis and the
ledger found to disagree, the etcd session lost — and :class:`IncidentLog`
writes it, off their path and best effort: :meth:`~IncidentLog.record` only
queues a row, one thread of the log's own writes them, and a ledger that
refuses a row costs a (gated) log line, never an error in the duty.

Repeats that come in bursts (a stale owner's writes are fenced many times a
second) are folded by :class:`RepeatFolder`: per kind and shard, the first
one is written at once and the rest of its window as one row with their
count. Pure: the clock is injected.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from flashstock.server._log_gate import LogGate
from flashstock.server.ledger import Ledger

log = logging.getLogger(__name__)

REPEAT_WINDOW_S = 10.0
"""Folded repeats (:meth:`IncidentLog.record_repeated`): at most two rows per kind and shard per window."""


@dataclass(frozen=True, slots=True)
class Folded:
    """The repeats of one key held back over a window, to be written as one row."""

    key: Hashable
    """What was repeated (kind and shard)."""
    count: int
    """How many were held back."""
    last_detail: str
    """The detail of the last one."""
    last_at: float
    """When the last one came (seconds, the folder's clock)."""


class RepeatFolder:
    """Per key: the first occurrence goes through; the others in the next ``window_s`` are counted, then
    handed out together by :meth:`due`."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S, max_keys: int = 4096) -> None:
        self.window_s = window_s
        self._max_keys = max_keys
        self._opened: dict[Hashable, float] = {}  # key -> when its window opened
        self._held: dict[Hashable, Folded] = {}

    def add(self, key: Hashable, detail: str, now: float) -> bool:
        """True: write this one now. False: it was counted, for :meth:`due`."""
        opened = self._opened.get(key)
        if opened is None or now - opened >= self.window_s:
            if opened is None and len(self._opened) >= self._max_keys:
                self._forget_closed(now)
            # A new window; what the last one held back is still handed out by due().
            if key in self._held:
                return self._count(key, detail, now)
            self._opened[key] = now
            return True
        return self._count(key, detail, now)

    def _count(self, key: Hashable, detail: str, now: float) -> bool:
        held = self._held.get(key)
        self._held[key] = Folded(key, (held.count if held else 0) + 1, detail, now)
        return False

    def due(self, now: float) -> list[Folded]:
        """The held-back repeats whose window has closed (each key's window then starts again)."""
        out = []
        for key in list(self._held):
            if now - self._opened.get(key, 0.0) >= self.window_s:
                out.append(self._held.pop(key))
                self._opened[key] = now  # the folded row stands for this window
        return out

    def pending(self) -> list[Folded]:
        """Every held-back repeat now, whatever its window (when the log closes)."""
        out = list(self._held.values())
        self._held.clear()
        return out

    def _forget_closed(self, now: float) -> None:
        for key, opened in list(self._opened.items()):
            if now - opened >= self.window_s and key not in self._held:
                del self._opened[key]


@dataclass(frozen=True, slots=True)
class _Row:
    kind: str
    shard: int
    detail: str
    at_ms: int


class IncidentLog:
    """Writes a node's incidents to the ledger, off the caller's path, best effort.

    Safe to call from any thread and from the event loop: a call only queues.
    """

    def __init__(
        self,
        ledger: Ledger,
        node: str = "",
        repeat_window_s: float = REPEAT_WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self.node = node
        """The name the rows carry (the node's id; set again once its port is known)."""
        self._clock = clock
        self._folder = RepeatFolder(repeat_window_s)
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Row | None] = queue.SimpleQueue()
        self._unwritten = 0  # rows queued and not yet written (or given up)
        self._written = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failures = LogGate(interval_s=60.0)

    def record(self, kind: str, detail: str, shard: int = -1, at_ms: int | None = None) -> None:
        """Queue an incident (``kind`` one of :data:`~flashstock.server.ledger.INCIDENT_KINDS`)."""
        at = int(self._clock() * 1000) if at_ms is None else at_ms
        self._put(_Row(kind, shard, detail, at))

    def record_repeated(self, kind: str, detail: str, shard: int = -1) -> None:
        """As :meth:`record`, folding repeats of ``kind`` on ``shard``: one row now, one per window after
        with their count."""
        now = self._clock()
        with self._lock:
            write_now = self._folder.add((kind, shard), detail, now)
        if write_now:
            self._put(_Row(kind, shard, detail, int(now * 1000)))
        else:
            self._start()  # its thread hands the folded row out when the window closes

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued row is written (or given up); False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._written:
            while self._unwritten:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._written.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and folded (for up to ``timeout`` seconds), then stop the writer."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            folded = self._folder.pending()
            thread = self._thread
        for f in folded:
            self._enqueue(self._folded_row(f))
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
        elif folded:
            self._drain()

    # -- the writer ----------------------------------------------------------------

    def _put(self, row: _Row) -> None:
        with self._lock:
            if self._closed:
                return
        self._enqueue(row)
        self._start()

    def _enqueue(self, row: _Row) -> None:
        with self._lock:
            self._unwritten += 1
        self._queue.put(row)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="incident log", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                row = self._queue.get(timeout=min(1.0, self._folder.window_s / 4))
            except queue.Empty:
                row = _Row("", -1, "", 0)  # a tick: hand out the folded rows that are due
            if row is None:
                self._drain()
                return
            if row.kind:
                self._write(row)
            with self._lock:
                due = self._folder.due(self._clock())
            for f in due:
                self._enqueue(self._folded_row(f))

    def _drain(self) -> None:
        while True:
            try:
                row = self._queue.get_nowait()
            except queue.Empty:
                return
            if row is not None:
                self._write(row)

    def _folded_row(self, f: Folded) -> _Row:
        kind, shard = f.key if isinstance(f.key, tuple) else (str(f.key), -1)
        times = "once more" if f.count == 1 else f"{f.count} times more"
        return _Row(
            kind, shard, f"{times} within {self._folder.window_s:g} s; the last: {f.last_detail}", int(f.last_at * 1000)
        )

    def _write(self, row: _Row) -> None:
        try:
            self._ledger.record_incident(row.kind, self.node, row.shard, row.detail, row.at_ms)
        except Exception as exc:  # noqa: BLE001 - best effort: an incident row is never worth failing a duty
            held_back = self._failures.admit("write")
            if held_back is not None:
                log.warning(
                    "could not record a %s incident in the ledger (%d more such failures since the last line): %r",
                    row.kind,
                    held_back,
                    exc,
                )
        finally:
            with self._written:
                self._unwritten -= 1
                self._written.notify_all()


__all__ = ["REPEAT_WINDOW_S", "Folded", "IncidentLog", "RepeatFolder"]
