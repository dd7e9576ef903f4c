"""When the node's non-core duties wait: while it is degraded by hand, or a serving worker shed calls lately.

Under pressure a node spends Redis's time and its own on selling. Two duties
are not needed for that and wait while the node is under pressure:

- the reconcile duty (:mod:`.reconcile`): a comparison of every owned SKU,
  a few Redis round trips and a ledger scan per pass;
- the sale figures' move into the ledger (:meth:`.salefigures.SaleFigures.move_seconds`):
  the seconds wait in Redis (an hour, ``SALE_SECONDS_TTL_S``) and are moved
  when the pause ends. The per-SKU metrics' refresh goes on: it is the
  operator's view of the sale at its peak.

The persister, the hold reaper and the warden are core (durable answers wait
for the persister, expired holds give units back, a lost shard must come
back) and never pause.

The serving workers say when they last shed a call in their serving figures'
snapshot (``shed_at``, :mod:`.._serving_metrics`), which the duties' process
reads once a second (:func:`watch_pause`): the duties pause while any worker
shed within :data:`SHED_PAUSE_S`, or while the operator's switch is on
(``degrade``, ``<data_dir>/degrade``), and resume by themselves. The reason is
logged once on each switch and shown as ``flashstock_duties_paused{reason}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from flashstock.server._metrics import METRICS
from flashstock.server._serving_metrics import read_snapshots

log = logging.getLogger(__name__)

SHED_PAUSE_S = 5.0
"""The duties stay paused this long after a worker's last shed call: more than the snapshots' lag (the
worker notes it within a second, and flushes once a second), so a steady overload is one pause."""

BY_HAND = "by_hand"
"""Reason: an operator switched degraded mode on."""
SHEDDING = "shedding"
"""Reason: a serving worker shed calls within :data:`SHED_PAUSE_S`."""
REASONS = (BY_HAND, SHEDDING)
"""Every reason, as the metric's ``reason`` label."""

_SAID = {
    BY_HAND: "the node is in degraded mode by hand",
    SHEDDING: f"a serving worker shed calls within the last {SHED_PAUSE_S:g} s",
}


def pause_reason(
    by_hand: bool, shed_stamps: Iterable[float | None], now: float, hold_s: float = SHED_PAUSE_S
) -> str | None:
    """Why the non-core duties wait now (:data:`BY_HAND` first), or None: they run.

    ``shed_stamps``: each worker's last shed call (unix seconds; None: never);
    ``now``: unix seconds.
    """
    if by_hand:
        return BY_HAND
    if any(stamp is not None and now - stamp < hold_s for stamp in shed_stamps):
        return SHEDDING
    return None


class Pausable(Protocol):
    """What :func:`watch_pause` steers (:class:`.shard.ShardDuties`)."""

    pause_reason: str | None


def show(reason: str | None) -> None:
    """Set ``flashstock_duties_paused``: 1 for ``reason``, 0 for the others."""
    for each in REASONS:
        METRICS.duties_paused.labels(reason=each).set(1 if each == reason else 0)


async def watch_pause(
    duties: Pausable,
    by_hand: Callable[[], bool],
    folder: Path | None,
    interval_s: float = 1.0,
    clock: Callable[[], float] = time.time,
) -> None:
    """Once every ``interval_s``: set ``duties.pause_reason`` from the operator's switch (``by_hand()``, a
    file stat) and the workers' snapshots in ``folder`` (None: the workers write none, and shedding is not
    seen); log each switch. Runs until cancelled."""
    show(duties.pause_reason)
    while True:
        hand = await asyncio.to_thread(by_hand)
        snapshots = await asyncio.to_thread(read_snapshots, folder) if folder is not None else []
        reason = pause_reason(hand, (snap.get("shed_at") for snap in snapshots), clock())
        if reason != duties.pause_reason:
            if reason is not None:
                log.warning("non-core duties paused (reconcile, sale figures into the ledger): %s", _SAID[reason])
            else:
                log.warning("non-core duties resumed (reconcile, sale figures into the ledger)")
            duties.pause_reason = reason
            show(reason)
        await asyncio.sleep(interval_s)


__all__ = ["BY_HAND", "REASONS", "SHED_PAUSE_S", "SHEDDING", "Pausable", "pause_reason", "show", "watch_pause"]
