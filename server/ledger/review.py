"""The review of one SKU's sale, from the ledger alone (``flashstock sales review``).

Three steps, the middle one pure:

- :func:`read_sale` reads what the ledger holds about the sale: the SKU's
  row, the sale's deductions, its ``sale_seconds`` rows and the incidents of
  the ledger (no Redis, no node).
- :func:`review` turns those records into a :class:`Review`: units sold and
  the sales amount, sold per second and cumulative, stock over time, time to
  sell out, peak rates, the funnel, refusals by reason over time, units per
  buyer against the limit, the goals met or missed, the incidents of the
  sale window. Parts the ledger does not hold (no ``sale_seconds`` rows yet;
  the definition of an earlier sale, which the ledger does not keep) are
  ``None``: "not recorded", never an error.
- :meth:`Review.to_json` gives its figures as plain data, and
  :func:`write_review` writes them as a folder: ``index.html`` with PNG plots
  beside it, ``review.json``, ``seconds.csv`` and ``buyers.csv``.

Definitions (the integration tests check each against plain SQL):

- *sold*: units in confirmed deductions (Deducts and BatchDeduct items at
  once, Holds once confirmed); the amount is ``sold × unit_price_minor``.
- *taken*: units of every deduction of the sale, whatever became of it;
  *given back*: units of released or expired holds, at their ``updated_ms``.
- *stock* at a moment: ``total − taken + given back`` so far (``total`` is
  the SKU's current one, after adjustments: the ledger keeps no history of
  them). The sale *sold out* at the first moment stock reached 0.
- *start*: ``sale_start_ms``, or ``put_ms`` when the sale had no start time;
  for an earlier sale, its first deduction or second of figures.
  *end* (of the incidents' window): ``sale_end_ms``, else the last deduction
  (without any: the last second of figures, or the start) + :data:`AFTERMATH_MS`.
- *buyers*: distinct users with units handed out (confirmed or held), as in
  ``sales report``; units per buyer counts those units.

Times are unix ms on Redis's clock; ``sale_seconds.second`` is a node's
unix second.
"""

from __future__ import annotations

import bisect
import csv
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from flashstock.server.ledger._ledger import Incident
from flashstock.server.ledger._schema import deductions, incidents, sale_seconds, skus

__all__ = [
    "AFTERMATH_MS",
    "REFUSALS",
    "Deduction",
    "Goal",
    "Incident",
    "Review",
    "SaleRecords",
    "Second",
    "SkuDefinition",
    "format_amount",
    "read_sale",
    "review",
    "write_review",
]

AFTERMATH_MS = 60_000
"""How long after the last deduction the sale window runs, for a sale without an end time."""

REFUSALS = ("sold_out", "limit", "insufficient", "not_on_sale", "qty_max", "rate_limited", "error")
"""The refusal reasons of ``sale_seconds`` (columns ``o_<reason>``), in the order the review shows them."""

_OUTCOMES = ("ok", "dup", *REFUSALS)

_MINOR_DIGITS = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND"), 0),
    **dict.fromkeys(("VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    "CLF": 4,
    "UYW": 4,
}
"""ISO 4217 currencies whose minor unit is not a hundredth of the major one."""


def format_amount(minor: int, currency: str) -> str:
    """``minor`` units of ``currency`` in major units, exactly (``123456, "EUR"`` → ``"1,234.56 EUR"``)."""
    digits = _MINOR_DIGITS.get(currency.upper(), 2)
    sign = "-" if minor < 0 else ""
    major, rest = divmod(abs(minor), 10**digits)
    text = f"{major:,}" + (f".{rest:0{digits}d}" if digits else "")
    return f"{sign}{text} {currency}".rstrip()


# -- the records ---------------------------------------------------------------------


@dataclass(frozen=True)
class SkuDefinition:
    """The SKU's row: its current sale's definition, goals and price."""

    sku_id: str
    shard: int
    sale: int
    """The current sale's number."""
    mode: str
    total: int
    per_user_limit: int
    max_per_request: int
    sale_start_ms: int
    sale_end_ms: int
    put_ms: int
    goal_units: int
    goal_sellout_ms: int
    goal_buyers: int
    unit_price_minor: int
    currency: str


@dataclass(frozen=True)
class Deduction:
    """One deduction of the sale."""

    user_id: str
    qty: int
    kind: str
    """D = Deduct, H = Hold, B = BatchDeduct item."""
    state: str
    """held | confirmed | released | expired"""
    taken_ms: int
    updated_ms: int


@dataclass(frozen=True)
class SaleRecords:
    """What the ledger holds about one sale of one SKU."""

    sku: SkuDefinition
    sale: int
    """The sale reviewed (``sku.sale`` or an earlier one)."""
    deductions: list[Deduction]
    seconds: list[dict[str, int]]
    """``sale_seconds`` rows (columns ``second``, ``attempts``, ``o_*``, ``units``, ``users``, ...), by second."""
    incidents: list[Incident]
    """Every incident of the ledger, by time (the review keeps the sale window's)."""


_FIGURES = ("attempts", *(f"o_{o}" for o in _OUTCOMES), "units", "users", "users_total", "buyers_total")
_FIGURES_ALL = ("second", *_FIGURES, "latency_p50_us", "latency_p99_us")


def read_sale(engine: Engine, sku_id: str, sale: int | None = None) -> SaleRecords | None:
    """The ledger's records of ``sku_id``'s sale ``sale`` (default its current one); None for an unknown SKU."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(skus).where(skus.c.sku_id == sku_id)).mappings().first()
        if row is None:
            return None
        sku = SkuDefinition(**{f.name: row[f.name] for f in SkuDefinition.__dataclass_fields__.values()})
        which = sku.sale if sale is None else sale
        d = deductions.c
        found = conn.execute(
            sa.select(d.user_id, d.qty, d.kind, d.state, d.taken_ms, d.updated_ms)
            .where(d.sku_id == sku_id, d.sale == which)
            .order_by(d.taken_ms, d.request_id)
        )
        taken = [Deduction(r.user_id, int(r.qty), r.kind, r.state, int(r.taken_ms), int(r.updated_ms)) for r in found]
        s = sale_seconds.c
        figures = [
            {name: int(r[name]) for name in _FIGURES_ALL}
            for r in conn.execute(
                sa.select(*(s[name] for name in _FIGURES_ALL))
                .where(s.sku_id == sku_id, s.sale == which)
                .order_by(s.second)
            ).mappings()
        ]
        happened = [
            Incident(int(r.at_ms), r.kind, r.node, int(r.shard), r.detail)
            for r in conn.execute(sa.select(incidents).order_by(incidents.c.at_ms, incidents.c.id))
        ]
    return SaleRecords(sku=sku, sale=which, deductions=taken, seconds=figures, incidents=happened)


# -- the review (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Second:
    """One second of the sale (unix second ``second``): what the deductions and the figures say."""

    second: int
    taken: int
    """Units taken (every deduction taken this second)."""
    sold: int
    """Units sold for good (confirmed deductions taken this second)."""
    sold_cumulative: int
    given_back: int
    """Units of holds released or expired this second."""
    stock: int | None
    """Stock at the end of the second; None when the sale's total is not recorded."""
    figures: dict[str, int] | None
    """The ``sale_seconds`` figures (attempts, ``o_*``, users, latency); None when the sale has none recorded."""


@dataclass(frozen=True)
class Goal:
    """A goal of the sale and how it went."""

    name: str
    """units | sellout_ms | buyers"""
    target: int | None
    """None: no goal set (or not recorded, for an earlier sale)."""
    actual: int | None
    met: bool | None
    """None: no goal."""
    by: int | None
    """How far past (positive) or short of (negative) the goal: units / buyers above it, ms ahead of it."""


@dataclass
class Review:
    """The review of one sale (see the module docstring for the definitions)."""

    sku_id: str
    shard: int
    mode: str
    sale: int
    current_sale: bool
    definition: SkuDefinition | None
    """None for an earlier sale: the ledger keeps only the current sale's definition."""
    start_ms: int
    start_from: str
    """Which time ``start_ms`` is: sale_start_ms | put_ms | first activity | none."""
    end_ms: int
    end_from: str
    sold: int
    taken: int
    held: int
    given_back: int
    amount_minor: int | None
    """``sold × unit_price_minor``; None when no price was given (or not recorded)."""
    currency: str
    sellout_ms: int | None
    """When stock first reached 0; None: not sold out (or the total is not recorded)."""
    peak_units_per_s: tuple[int, int] | None
    """(units taken, second) of the busiest second; None without deductions."""
    peak_attempts_per_s: tuple[int, int] | None
    """(attempts, second); None when no figures are recorded."""
    attempts: int | None
    ok: int | None
    users: int | None
    """Distinct users who tried (the sale's last ``users_total``: approximate, HLL)."""
    holds: dict[str, int]
    """Holds taken, confirmed, expired, released, open (counts)."""
    hold_units_confirmed: int
    buyer_units: dict[str, int]
    """Units handed out (confirmed or held) per buyer."""
    per_user_limit: int | None
    goals: list[Goal]
    incidents: list[Incident]
    seconds: list[Second] = field(default_factory=list)
    stock_steps: list[tuple[int, int]] = field(default_factory=list)
    """(ms, stock after) at every moment stock moved; empty when the total is not recorded."""

    @property
    def recorded_figures(self) -> bool:
        """Whether the ledger holds per-second figures (``sale_seconds``) of the sale."""
        return self.attempts is not None

    @property
    def time_to_sellout_ms(self) -> int | None:
        """From the start to the sell-out; None when not sold out."""
        return None if self.sellout_ms is None else self.sellout_ms - self.start_ms

    @property
    def buyers(self) -> int:
        """Distinct buyers, exact (from the deductions)."""
        return len(self.buyer_units)

    @property
    def units_per_buyer(self) -> dict[int, int]:
        """Histogram: units handed out → buyers with that many."""
        return dict(sorted(Counter(self.buyer_units.values()).items()))

    @property
    def at_limit(self) -> int | None:
        """Buyers with as many units as the per-user limit allows; None without a limit."""
        if not self.per_user_limit:
            return None
        return sum(1 for units in self.buyer_units.values() if units >= self.per_user_limit)

    @property
    def amount(self) -> str | None:
        """The sales amount in major units with the currency; None when not given."""
        return None if self.amount_minor is None else format_amount(self.amount_minor, self.currency)

    def refusals(self) -> dict[str, int] | None:
        """Attempts refused over the whole sale, by reason; None when no figures are recorded."""
        if not self.recorded_figures:
            return None
        return {r: sum(s.figures.get(f"o_{r}", 0) for s in self.seconds if s.figures) for r in REFUSALS}

    def to_json(self) -> dict[str, Any]:
        """The review's figures as plain data (``review.json``)."""
        d = self.definition
        return {
            "sku": self.sku_id,
            "shard": self.shard,
            "mode": self.mode,
            "sale": self.sale,
            "current_sale": self.current_sale,
            "definition": None
            if d is None
            else {
                "total": d.total,
                "per_user_limit": d.per_user_limit,
                "max_per_request": d.max_per_request,
                "sale_start_ms": d.sale_start_ms,
                "sale_end_ms": d.sale_end_ms,
                "put_ms": d.put_ms,
                "unit_price_minor": d.unit_price_minor,
                "currency": d.currency,
            },
            "window": {
                "start_ms": self.start_ms,
                "start_from": self.start_from,
                "end_ms": self.end_ms,
                "end_from": self.end_from,
            },
            "units": {"sold": self.sold, "taken": self.taken, "held": self.held, "given_back": self.given_back},
            "amount": None
            if self.amount_minor is None
            else {"minor": self.amount_minor, "currency": self.currency, "text": self.amount},
            "sellout": {
                "sold_out": self.sellout_ms is not None,
                "at_ms": self.sellout_ms,
                "time_to_sellout_ms": self.time_to_sellout_ms,
            }
            if d is not None
            else None,
            "peaks": {
                "units_per_s": _peak(self.peak_units_per_s),
                "attempts_per_s": _peak(self.peak_attempts_per_s),
            },
            "funnel": {
                "attempts": self.attempts,
                "users": self.users,
                "units_taken": self.taken,
                "holds_confirmed": self.holds["confirmed"],
                "hold_units_confirmed": self.hold_units_confirmed,
                "holds": self.holds,
                "ok": self.ok,
            },
            "refusals": self.refusals(),
            "buyers": {
                "count": self.buyers,
                "per_user_limit": self.per_user_limit,
                "at_limit": self.at_limit,
                "histogram": {str(units): n for units, n in self.units_per_buyer.items()},
            },
            "goals": [
                {"goal": g.name, "target": g.target, "actual": g.actual, "met": g.met, "by": g.by} for g in self.goals
            ],
            "incidents": [
                {"at_ms": i.at_ms, "kind": i.kind, "node": i.node, "shard": i.shard, "detail": i.detail}
                for i in self.incidents
            ],
            "seconds": [second_row(s) for s in self.seconds],
        }


def _peak(peak: tuple[int, int] | None) -> dict[str, int] | None:
    return None if peak is None else {"value": peak[0], "second": peak[1]}


SECOND_FIELDS = (
    "second",
    "time_utc",
    "taken",
    "sold",
    "sold_cumulative",
    "given_back",
    "stock",
    *_FIGURES,
    "latency_p50_us",
    "latency_p99_us",
)
"""The columns of ``seconds.csv`` and the keys of ``review.json``'s ``seconds``."""


def second_row(s: Second) -> dict[str, Any]:
    """One second as a row of ``seconds.csv`` (None: not recorded)."""
    row: dict[str, Any] = {
        "second": s.second,
        "time_utc": datetime.fromtimestamp(s.second, tz=UTC).isoformat(timespec="seconds"),
        "taken": s.taken,
        "sold": s.sold,
        "sold_cumulative": s.sold_cumulative,
        "given_back": s.given_back,
        "stock": s.stock,
    }
    for name in (*_FIGURES, "latency_p50_us", "latency_p99_us"):
        row[name] = None if s.figures is None else s.figures[name]
    return row


def _goal(name: str, target: int, actual: int | None, by: Callable[[int, int], int], ok: bool | None) -> Goal:
    if target <= 0:
        return Goal(name, None, actual, None, None)
    if actual is None:
        return Goal(name, target, None, False, None)
    return Goal(name, target, actual, bool(ok), by(actual, target))


def review(records: SaleRecords) -> Review:
    """The review of the sale in ``records`` (pure: no I/O)."""
    sku, taken = records.sku, records.deductions
    current = records.sale == sku.sale
    definition = sku if current else None
    figures = records.seconds

    # The sale's start, and the end of its incidents' window.
    first_activity = min([d.taken_ms for d in taken] + [f["second"] * 1000 for f in figures[:1]], default=0)
    if definition is not None and definition.sale_start_ms:
        start_ms, start_from = definition.sale_start_ms, "sale_start_ms"
    elif definition is not None:
        start_ms, start_from = definition.put_ms, "put_ms"
    elif first_activity:
        start_ms, start_from = first_activity, "first activity"
    else:
        start_ms, start_from = 0, "none"
    if definition is not None and definition.sale_end_ms:
        end_ms, end_from = definition.sale_end_ms, "sale_end_ms"
    else:
        if taken:
            last, end_from = max(d.taken_ms for d in taken), "last deduction + 60 s"
        elif figures:
            last, end_from = figures[-1]["second"] * 1000 + 999, "last second of figures + 60 s"
        else:
            last, end_from = start_ms, "start + 60 s"
        end_ms = last + AFTERMATH_MS

    # Units, by state; stock moves.
    sold = sum(d.qty for d in taken if d.state == "confirmed")
    held = sum(d.qty for d in taken if d.state == "held")
    given = [(d.updated_ms, d.qty) for d in taken if d.state in ("released", "expired")]
    total_taken = sum(d.qty for d in taken)
    moves: dict[int, int] = Counter()
    for d in taken:
        moves[d.taken_ms] -= d.qty
    for at, qty in given:
        moves[at] += qty
    sellout_ms = None
    stock_steps: list[tuple[int, int]] = []
    if definition is not None:
        stock = definition.total
        for at in sorted(moves):
            stock += moves[at]
            stock_steps.append((at, stock))
            if stock <= 0 and sellout_ms is None:
                sellout_ms = at

    # Per second.
    taken_s: Counter[int] = Counter()
    sold_s: Counter[int] = Counter()
    given_s: Counter[int] = Counter()
    for d in taken:
        taken_s[d.taken_ms // 1000] += d.qty
        if d.state == "confirmed":
            sold_s[d.taken_ms // 1000] += d.qty
    for at, qty in given:
        given_s[at // 1000] += qty
    by_second = {f["second"]: f for f in figures}
    marks = set(taken_s) | set(given_s) | set(by_second)
    seconds: list[Second] = []
    if marks:
        zero = {name: 0 for name in (*_FIGURES, "latency_p50_us", "latency_p99_us")}
        users_total = 0
        cumulative = 0
        stock_now = definition.total if definition is not None else None
        for sec in range(min(marks), max(marks) + 1):
            cumulative += sold_s[sec]
            if stock_now is not None:
                stock_now += given_s[sec] - taken_s[sec]
            row = by_second.get(sec)
            if figures and row is None:
                row = {**zero, "users_total": users_total, "second": sec}  # no attempts that second
            if row is not None:
                users_total = max(users_total, row["users_total"])
            seconds.append(
                Second(
                    second=sec,
                    taken=taken_s[sec],
                    sold=sold_s[sec],
                    sold_cumulative=cumulative,
                    given_back=given_s[sec],
                    stock=stock_now,
                    figures=None if row is None else {k: v for k, v in row.items() if k != "second"},
                )
            )

    holds = {"taken": 0, "confirmed": 0, "expired": 0, "released": 0, "open": 0}
    hold_units_confirmed = 0
    for d in taken:
        if d.kind != "H":
            continue
        holds["taken"] += 1
        holds["open" if d.state == "held" else d.state] += 1
        if d.state == "confirmed":
            hold_units_confirmed += d.qty
    buyer_units: Counter[str] = Counter()
    for d in taken:
        if d.state in ("confirmed", "held"):
            buyer_units[d.user_id] += d.qty

    attempts = sum(f["attempts"] for f in figures) if figures else None
    ok = sum(f["o_ok"] for f in figures) if figures else None
    users = max(f["users_total"] for f in figures) if figures else None
    peak_units = max(((n, s) for s, n in taken_s.items()), key=lambda p: (p[0], -p[1]), default=None)
    peak_attempts = max(((f["attempts"], f["second"]) for f in figures), key=lambda p: (p[0], -p[1]), default=None)

    time_to_sellout = None if sellout_ms is None else sellout_ms - start_ms
    if definition is None:
        goals = [Goal(name, None, None, None, None) for name in ("units", "sellout_ms", "buyers")]
    else:
        goals = [
            _goal("units", definition.goal_units, sold, lambda a, t: a - t, sold >= definition.goal_units),
            _goal(
                "sellout_ms",
                definition.goal_sellout_ms,
                time_to_sellout,
                lambda a, t: t - a,
                time_to_sellout is not None and time_to_sellout <= definition.goal_sellout_ms,
            ),
            _goal(
                "buyers",
                definition.goal_buyers,
                len(buyer_units),
                lambda a, t: a - t,
                len(buyer_units) >= definition.goal_buyers,
            ),
        ]

    priced = definition is not None and definition.unit_price_minor > 0
    return Review(
        sku_id=sku.sku_id,
        shard=sku.shard,
        mode=sku.mode,
        sale=records.sale,
        current_sale=current,
        definition=definition,
        start_ms=start_ms,
        start_from=start_from,
        end_ms=end_ms,
        end_from=end_from,
        sold=sold,
        taken=total_taken,
        held=held,
        given_back=sum(q for _, q in given),
        amount_minor=sold * sku.unit_price_minor if priced else None,
        currency=sku.currency if priced else "",
        sellout_ms=sellout_ms,
        peak_units_per_s=None if peak_units is None else (peak_units[0], peak_units[1]),
        peak_attempts_per_s=peak_attempts,
        attempts=attempts,
        ok=ok,
        users=users,
        holds=holds,
        hold_units_confirmed=hold_units_confirmed,
        buyer_units=dict(sorted(buyer_units.items())),
        per_user_limit=definition.per_user_limit if definition is not None else None,
        goals=goals,
        incidents=_in_window(records.incidents, start_ms, end_ms),
        seconds=seconds,
        stock_steps=stock_steps,
    )


def _in_window(happened: list[Incident], start_ms: int, end_ms: int) -> list[Incident]:
    times = [i.at_ms for i in happened]
    return happened[bisect.bisect_left(times, start_ms) : bisect.bisect_right(times, end_ms)]


# -- the folder ----------------------------------------------------------------------------

BUYER_FIELDS = ("user", "units", "at_limit")
"""The columns of ``buyers.csv``."""


def _write_csv(path: Path, fields: Iterable[str], rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def write_review(result: Review, folder: Path) -> Path:
    """Write ``result`` into ``folder`` (created): index.html, its PNGs, review.json, seconds.csv, buyers.csv.

    Returns the path of index.html. Raises OSError when the folder cannot be written.
    """
    from flashstock.server.ledger._review_page import write_page

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "review.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    _write_csv(folder / "seconds.csv", SECOND_FIELDS, (second_row(s) for s in result.seconds))
    limit = result.per_user_limit
    _write_csv(
        folder / "buyers.csv",
        BUYER_FIELDS,
        (
            {"user": user, "units": units, "at_limit": None if not limit else int(units >= limit)}
            for user, units in result.buyer_units.items()
        ),
    )
    return write_page(result, folder)
