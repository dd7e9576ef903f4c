"""Reconciliation: the stock figures in Redis against the ledger's, SKU by SKU.

Redis keeps per SKU its figures ``total``, ``held``, ``confirmed`` and
``available`` (in the hash fields ``total``, ``held``, ``conf``, ``avail``);
the ledger holds every deduction with its state, from which the same figures
follow. Both rest on the shard logs: Redis
writes a change and its log entry in one script, the persister drains the log
into the ledger. Once the ledger has caught up with a shard's log, the two
sides must agree to the unit; :func:`reconcile` waits for that, reads both,
and :func:`compare` (pure) lists every difference, a SKU known to one side
only included. Released and expired units have no counters in Redis: they are
shown from the ledger and not compared.

Used by every node for the shards it owns (the reconciliation duty,
:mod:`.shard`), whose findings are metrics, and by ``flashstock reconcile``
and the demo, which show it (:mod:`flashstock.server.cli.reconcile`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flashstock.lockmgr import shard_of
from flashstock.server.ledger import Ledger, SkuState
from flashstock.server.ledger.reports import persisted_cursors, sku_shards
from flashstock.server.store.durable import parse_id
from flashstock.server.store.keys import SHARD_READY, SKU_INDEX_KEY, ShardKeys
from flashstock.server.store.redis import BlockingRedis, ResponseError
from flashstock.server.store.replies import sku_hash

COMPARED = ("total", "held", "confirmed", "available", "sale")
"""The figures both sides keep, compared one to one; the table and the messages name them so too."""


class ReconcileError(Exception):
    """Reconciliation cannot run: the message names the setting or argument to fix."""


@dataclass(frozen=True)
class SkuFigures:
    """One side's figures of a SKU."""

    sku_id: str
    shard: int
    total: int
    """Units put on sale, after adjustments."""
    held: int
    """Units in open holds."""
    confirmed: int
    """Units sold for good."""
    available: int
    """Units still for sale: total less held and confirmed."""
    sale: int
    """The sale number (+1 on every put)."""
    released: int | None = None
    """Units given back by a Release (the ledger only)."""
    expired: int | None = None
    """Units given back by an expired hold (the ledger only)."""


@dataclass(frozen=True)
class Difference:
    """A figure of a SKU on which Redis and the ledger disagree.

    ``figure`` is one of :data:`COMPARED`, or ``"presence"`` for a SKU that
    only one side knows (the other side's value is then None).
    """

    sku_id: str
    figure: str
    redis: int | None
    ledger: int | None

    def __str__(self) -> str:
        if self.figure == "presence":
            side = "Redis" if self.ledger is None else "the ledger"
            return f"{self.sku_id}: only in {side}"
        return f"{self.sku_id}: {self.figure} {self.redis} in Redis, {self.ledger} in the ledger"


def figures_from_hash(sku_id: str, shard: int, fields: Mapping[Any, Any]) -> SkuFigures:
    """A SKU's figures from its Redis hash (HGETALL, as bytes or text), read by
    :func:`~flashstock.server.store.replies.sku_hash`."""
    h = sku_hash(sku_id, fields)
    return SkuFigures(
        sku_id=sku_id,
        shard=shard,
        total=h.total,
        held=h.held,
        confirmed=h.confirmed,
        available=h.available,
        sale=h.sale,
    )


def figures_from_ledger(state: SkuState) -> SkuFigures:
    """A SKU's figures from the ledger's view of its current sale."""
    return SkuFigures(
        sku_id=state.sku_id,
        shard=state.shard,
        total=state.total,
        held=state.held,
        confirmed=state.confirmed,
        available=state.available,
        sale=state.sale,
        released=state.released,
        expired=state.expired,
    )


def compare(redis_rows: Iterable[SkuFigures], ledger_rows: Iterable[SkuFigures]) -> list[Difference]:
    """Every difference between the two sides, by SKU id then figure."""
    redis_by_id = {r.sku_id: r for r in redis_rows}
    ledger_by_id = {r.sku_id: r for r in ledger_rows}
    out: list[Difference] = []
    for sku_id in sorted(set(redis_by_id) | set(ledger_by_id)):
        in_redis, in_ledger = redis_by_id.get(sku_id), ledger_by_id.get(sku_id)
        if in_redis is None or in_ledger is None:
            out.append(
                Difference(sku_id, "presence", None if in_redis is None else 1, None if in_ledger is None else 1)
            )
            continue
        for figure in COMPARED:
            a, b = getattr(in_redis, figure), getattr(in_ledger, figure)
            if a != b:
                out.append(Difference(sku_id, figure, a, b))
    return out


# -- waiting for the persister ---------------------------------------------------


@dataclass(frozen=True)
class LogMark:
    """A shard's log and state in Redis at one moment."""

    length: int
    """Entries in the log (the persister trims those the ledger holds)."""
    last_id: str
    """The last entry id ever added ('0-0' when there is no log)."""
    state: str | None
    """The shard's state: ``SHARD_READY`` once whole; 'building', an older layout's or None (lost) otherwise."""


def unsettled_reason(mark: LogMark, cursor: str | None) -> str | None:
    """Why a shard cannot be compared yet (None: it can).

    The ledger has caught up when the log holds no entry beyond its cursor:
    the log is empty (trimmed), or its last entry is at or below the cursor.
    """
    if mark.state != SHARD_READY.decode():
        return "its Redis state is being rebuilt" if mark.state == "building" else "its Redis state is missing"
    if mark.length == 0 or (cursor is not None and parse_id(mark.last_id) <= parse_id(cursor)):
        return None
    return f"the ledger is behind the log ({cursor or 'nothing'} < {mark.last_id})"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_redis(
    client: BlockingRedis, shards: Sequence[int], sku_ids: Sequence[str], shard_count: int
) -> tuple[dict[int, LogMark], dict[str, SkuFigures]]:
    """The log marks of ``shards`` and the figures of ``sku_ids`` (those defined), read in
    one MULTI, so they are of one moment. ``client`` may decode responses or not."""
    with client.pipeline(transaction=True) as pipe:
        for shard in shards:
            keys = ShardKeys(shard)
            pipe.xinfo_stream(keys.log)
            pipe.hget(keys.meta, "state")
        for sku_id in sku_ids:
            pipe.hgetall(ShardKeys(shard_of(sku_id, shard_count)).sku(sku_id))
        replies = pipe.execute(raise_on_error=False)
    marks: dict[int, LogMark] = {}
    for i, shard in enumerate(shards):
        info, state = replies[2 * i], replies[2 * i + 1]
        state = None if state is None else _text(state)
        if isinstance(info, ResponseError):
            if "no such key" not in str(info).lower():
                raise info
            marks[shard] = LogMark(0, "0-0", state)
        else:
            info = {_text(k): v for k, v in info.items()}
            marks[shard] = LogMark(int(info["length"]), _text(info["last-generated-id"]), state)
    rows: dict[str, SkuFigures] = {}
    for sku_id, fields in zip(sku_ids, replies[2 * len(shards) :], strict=True):
        if isinstance(fields, Exception):
            raise fields
        if fields:
            rows[sku_id] = figures_from_hash(sku_id, shard_of(sku_id, shard_count), fields)
    return marks, rows


@dataclass
class Reconciliation:
    """Both sides' figures and their differences."""

    redis: dict[str, SkuFigures]
    ledger: dict[str, SkuFigures]
    differences: list[Difference]
    unsettled: dict[int, str] = field(default_factory=dict)
    """Shards that could not be brought to a comparable state within the wait, and why."""
    waited_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the two sides agree on every compared figure of every SKU."""
        return not self.differences


def _check_shards(ledger_shards: Mapping[str, int], shard_count: int) -> None:
    for sku_id, shard in ledger_shards.items():
        if shard_of(sku_id, shard_count) != shard:
            raise ReconcileError(
                f"shards: the ledger keeps SKU {sku_id!r} in shard {shard}, but with {shard_count} shards it "
                f"would be in shard {shard_of(sku_id, shard_count)}; give the cluster's --shards"
            )


def read_once(
    client: BlockingRedis,
    ledger: Ledger,
    shard_count: int,
    sku_id: str | None = None,
    shards: Iterable[int] | None = None,
) -> Reconciliation:
    """One reading of both sides, for every SKU, ``sku_id``, or the SKUs of ``shards``.

    Reads Redis (the SKU hashes and the shards' logs, in one MULTI), then the
    ledger, then the logs again. A shard is settled when the ledger held
    every log entry the Redis figures rest on and no entry was added
    meanwhile: both sides then describe the same moment. The others are
    named in ``unsettled``; their SKUs are compared too, and may differ only
    because the persister is behind.
    """
    only = None if shards is None else set(shards)
    ledger_shards = sku_shards(ledger.engine, sku_id)
    _check_shards(ledger_shards, shard_count)
    redis_ids = [sku_id] if sku_id is not None else [_text(i) for i in client.zrange(SKU_INDEX_KEY, 0, -1)]
    ids = sorted(i for i in set(ledger_shards) | set(redis_ids) if only is None or shard_of(i, shard_count) in only)
    read_shards = sorted({shard_of(i, shard_count) for i in ids})
    marks, redis_rows = read_redis(client, read_shards, ids, shard_count)
    cursors = persisted_cursors(ledger.engine)  # before the ledger's figures: they hold at least this
    unsettled = {s: why for s in read_shards if (why := unsettled_reason(marks[s], cursors.get(s)))}
    ledger_rows = {
        s.sku_id: figures_from_ledger(s) for s in ledger.sku_states(sku_id=sku_id) if only is None or s.shard in only
    }
    after, _ = read_redis(client, read_shards, (), shard_count)
    for shard in read_shards:
        if after[shard].last_id != marks[shard].last_id:
            unsettled.setdefault(shard, "the log moved while reading")
    for new in set(ledger_rows) - set(ids):
        unsettled.setdefault(ledger_rows[new].shard, "a SKU appeared while reading")
    return Reconciliation(
        redis=redis_rows,
        ledger=ledger_rows,
        differences=compare(redis_rows.values(), ledger_rows.values()),
        unsettled=unsettled,
    )


def reconcile(
    client: BlockingRedis,
    ledger: Ledger,
    shard_count: int,
    sku_id: str | None = None,
    wait_s: float = 10.0,
    poll_s: float = 0.05,
    on_wait: Callable[[dict[int, str]], None] | None = None,
) -> Reconciliation:
    """Compare Redis and the ledger, for every SKU or ``sku_id``, once every shard is settled.

    Reads both sides (:func:`read_once`) until no shard is unsettled,
    calling ``on_wait`` with the shards still unsettled, for up to
    ``wait_s`` seconds; after that it returns the last reading, whose
    ``unsettled`` names those shards.
    """
    started = time.monotonic()
    deadline = started + wait_s
    while True:
        reading = read_once(client, ledger, shard_count, sku_id)
        if not reading.unsettled or time.monotonic() >= deadline:
            reading.waited_s = time.monotonic() - started
            return reading
        if on_wait is not None:
            on_wait(reading.unsettled)
        time.sleep(poll_s)


def settled_differences(reading: Reconciliation) -> list[Difference]:
    """The differences of SKUs whose shards were settled: real ones, not a persister behind."""

    def shard(sku_id: str) -> int:
        return (reading.redis.get(sku_id) or reading.ledger[sku_id]).shard

    return [d for d in reading.differences if shard(d.sku_id) not in reading.unsettled]
