"""Turning the replies of the Lua scripts into typed results or errors.

Pure functions, in two steps. First every script's reply (the shape in the
header of its .lua file) is read into a named tuple whose fields follow that
contract (:class:`TakeReply`, :class:`BatchReply`, :class:`AdminReply`,
:class:`BindReply`, :class:`FenceReply`, :class:`ReapReply`,
:func:`announced`, :class:`RebuildStep`): positions are counted here and
nowhere else. Then the stock operations' replies become what a caller gets
(:func:`take_result`, :func:`settle_result`, :func:`batch_result`,
:func:`admin_result`) or an error of the tree.

A SKU's figures have one vocabulary in Python: ``total``, ``available``,
``held``, ``confirmed`` (and, in the ledger, ``released``, ``expired``). The
SKU hash in Redis keeps its short field names (``avail``, ``conf``...: see
``lua/_lib.lua``); :data:`SKU_FIELDS` maps them, and :func:`sku_hash`
is the one reader of that hash.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, NamedTuple, TypeVar

from flashstock.client import (
    AdminResult,
    AdmissionTokenRefused,
    BatchItemResult,
    BatchResult,
    Deduction,
    DeductionState,
    DeductResult,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    Mode,
    Outcome,
    RequestIdReused,
    SettleResult,
    Sku,
    SkuNotFound,
    StockBelowHandedOut,
)
from flashstock.server.rpc.validate import MAX_STOCK

_OUTCOMES = {
    "OK": Outcome.OK,
    "DUP": Outcome.DUPLICATE,
    "SOLD_OUT": Outcome.SOLD_OUT,
    "INSUFFICIENT": Outcome.INSUFFICIENT,
    "LIMIT": Outcome.LIMIT,
    "NOT_ON_SALE": Outcome.NOT_ON_SALE,
    "HOLD_NOT_FOUND": Outcome.HOLD_NOT_FOUND,
    "HOLD_EXPIRED": Outcome.HOLD_EXPIRED,
    "HOLD_RELEASED": Outcome.HOLD_RELEASED,
    "HOLD_CONFIRMED": Outcome.HOLD_CONFIRMED,
    "HOLD_VOIDED": Outcome.HOLD_VOIDED,
    "RATE_LIMITED": Outcome.RATE_LIMITED,
}

_STATES = {
    "H": DeductionState.HELD,
    "C": DeductionState.CONFIRMED,
    "R": DeductionState.RELEASED,
    "X": DeductionState.EXPIRED,
}


_T = TypeVar("_T")


class ShardMissing(Exception):
    """The script found the shard's state missing (or being rebuilt)."""


@dataclass(frozen=True)
class Answer(Generic[_T]):
    """A decoded script reply: the typed result and what the node must do next."""

    result: _T
    """What the caller gets."""
    sold_out_sv: int = 0
    """The stock version of a sell-out this call saw (0 = none)."""
    log_id: str = ""
    """The log entry the answer rests on ('' = none)."""
    durable: bool = False
    """The SKU is durable: reply only once the ledger holds ``log_id``."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the replies, read into their contracts' names ------------------------------


class Record(NamedTuple):
    """A record of units taken, as a reply carries it (``rec[1..7]`` in ``lua/_lib.lua``)."""

    kind: str
    """'D' Deduct, 'H' Hold, 'B' a BatchDeduct item."""
    state: str
    """'H' held, 'C' confirmed, 'R' released, 'X' expired."""
    qty: int
    user_id: str
    sku_id: str
    taken_ms: int
    expires_ms: int
    """When a hold expires (0 for a deduction)."""


class TakeReply(NamedTuple):
    """One request's reply of deduct.lua, or settle.lua's reply (``reply()`` in ``lua/_lib.lua``)."""

    code: str
    available: int
    """Units left after the call (-1: not told); for QTY_MAX, the SKU's cap per request."""
    sold_out_sv: int
    """The stock version of a sell-out this call made (0 = none)."""
    record: Record | None
    """The request's record, when it took effect (now or before)."""
    log_id: str
    """The log entry the answer rests on ('' = none)."""
    durable: bool
    """The SKU is durable."""
    retry_after_ms: int = 0
    """RATE_LIMITED: ms until the user's attempt window ends."""

    @classmethod
    def decode(cls, raw: Sequence[Any]) -> TakeReply:
        """Read ``{code, left, sv[, kind, state, qty, user, sku, taken_ms, exp_ms, log_id, durable]}``
        or ``{'RATE_LIMITED', -1, 0, retry_after_ms}``."""
        if len(raw) == 4:
            return cls(_text(raw[0]), int(raw[1]), int(raw[2]), None, "", False, int(raw[3]))
        record = None
        if len(raw) >= 10:
            kind, state, qty, user, sku, taken_ms, expires_ms = raw[3:10]
            record = Record(
                _text(kind), _text(state), int(qty), _text(user), _text(sku), int(taken_ms), int(expires_ms)
            )
        log_id, durable = (_text(raw[10]), int(raw[11]) == 1) if len(raw) >= 12 else ("", False)
        return cls(_text(raw[0]), int(raw[1]), int(raw[2]) if len(raw) > 2 else 0, record, log_id, durable)


class BatchItemReply(NamedTuple):
    """One item of batch.lua's reply."""

    code: str
    available: int
    """Units of the item's SKU left after the call."""
    log_id: str
    durable: bool
    retry_after_ms: int = 0
    """RATE_LIMITED: ms until the user's attempt window on the item's SKU ends."""


class BatchReply(NamedTuple):
    """batch.lua's reply: per item when the batch was decided, else the item that stopped it."""

    code: str
    items: tuple[BatchItemReply, ...]
    """Every item's reply (OK, DUP, REFUSED); empty otherwise."""
    item: int = -1
    """NO_SKU, MISMATCH, TOKEN, QTY_MAX, NO_SHARD: the (0-based) index of the item concerned."""
    cap: int = 0
    """QTY_MAX: the item SKU's cap per request."""

    @classmethod
    def decode(cls, raw: Sequence[Any]) -> BatchReply:
        """Read ``{code, n, item_code, left, log_id, durable, retry_after_ms, ...}`` or ``{code, index[, cap]}``."""
        code = _text(raw[0])
        if code not in ("OK", "DUP", "REFUSED"):
            return cls(code, (), item=int(raw[1]) - 1, cap=int(raw[2]) if len(raw) > 2 else 0)
        flat = raw[2 : 2 + 5 * int(raw[1])]
        return cls(
            code,
            tuple(
                BatchItemReply(_text(c), int(left), _text(log_id), int(durable) == 1, int(wait))
                for c, left, log_id, durable, wait in zip(
                    flat[0::5], flat[1::5], flat[2::5], flat[3::5], flat[4::5], strict=True
                )
            ),
        )


class AdminReply(NamedTuple):
    """put_sku.lua's or adjust_sku.lua's reply: ``{code[, log_id, HGETALL of the SKU...]}``."""

    code: str
    log_id: str
    fields: dict[Any, Any]
    """The SKU's hash after the call (empty for NO_SHARD, NO_SKU, MISMATCH)."""

    @classmethod
    def decode(cls, raw: Sequence[Any]) -> AdminReply:
        """Read the reply."""
        flat = list(raw[2:])
        return cls(_text(raw[0]), _text(raw[1]) if len(raw) > 1 else "", dict(zip(flat[0::2], flat[1::2], strict=True)))


class BindReply(NamedTuple):
    """bind.lua's reply: ``{created, name, value, ...}``."""

    created: bool
    """This call made the binding."""
    bound: dict[str, str]
    """The settings bound in Redis now, as text."""

    @classmethod
    def decode(cls, raw: Sequence[Any]) -> BindReply:
        """Read the reply."""
        values = [_text(v) for v in raw[1:]]
        return cls(bool(int(raw[0])), dict(zip(values[0::2], values[1::2], strict=True)))


class FenceReply(NamedTuple):
    """fence.lua's reply: ``{1, epoch before}`` or ``{-1, stored epoch}``."""

    taken: bool
    """The shard's stored epoch is the claimer's now; False: a newer owner's is stored."""
    stored_epoch: int
    """The epoch stored before the call."""

    @classmethod
    def decode(cls, raw: Sequence[Any]) -> FenceReply:
        """Read the reply."""
        return cls(int(raw[0]) >= 0, int(raw[1]))


class ReapReply(NamedTuple):
    """reap.lua's reply: the holds expired, or -1 (fenced)."""

    expired: int
    """Holds expired by the call."""
    fenced: bool
    """Refused: a newer owner's epoch is stored (nothing was written)."""

    @classmethod
    def decode(cls, raw: Any) -> ReapReply:
        """Read the reply."""
        count = int(raw)
        return cls(max(count, 0), count < 0)


def announced(raw: Any) -> bool:
    """announce.lua's reply: True when the cursor was recorded; False: fenced (a newer owner's epoch)."""
    return int(raw) == 1


class RebuildStep(enum.Enum):
    """rebuild.lua's reply to one step."""

    OK = "OK"
    """The step is done."""
    STALE = "STALE"
    """The mutex is not ours any more, or another generation is in place: nothing was written."""
    FENCED = "FENCED"
    """('begin' only) a newer owner's epoch is stored."""

    @classmethod
    def decode(cls, raw: Any) -> RebuildStep:
        """Read the reply."""
        return cls(_text(raw))


# -- stock operations: what the caller gets ----------------------------------------


def _deduction(record: Record | None, request_id: str) -> Deduction | None:
    if record is None:
        return None
    return Deduction(
        request_id=request_id,
        sku_id=record.sku_id,
        user_id=record.user_id,
        qty=record.qty,
        state=_STATES[record.state],
        expires_at_ms=record.expires_ms,
        taken_at_ms=record.taken_ms,
    )


class QtyAboveMax(InvalidArgument):
    """A request asked for more units than the SKU's max per request (QTY_MAX; a sale figure of its own)."""


def _common_errors(
    code: str, cap: int, sku_id: str, request_id: str, field: str = "qty", token_problem: str = ""
) -> None:
    if code == "NO_SHARD":
        raise ShardMissing(sku_id)
    if code == "TOKEN":
        raise AdmissionTokenRefused(
            f"SKU {sku_id!r} takes Deduct and Hold only with a valid admission token for the user: "
            f"{token_problem or 'the token was refused'}",
            sku=sku_id,
        )
    if code == "NO_SKU":
        raise SkuNotFound(f"SKU {sku_id!r} is not defined", sku=sku_id)
    if code == "MISMATCH":
        raise RequestIdReused(
            f"request_id {request_id!r} took effect before on SKU {sku_id!r} as another call or with other arguments",
            request_id=request_id,
            sku=sku_id,
        )
    if code == "QTY_MAX":
        raise QtyAboveMax(
            f"{field} is above the SKU's max per request ({cap})",
            [FieldViolation(field, f"must be <= {cap}, the max per request of {sku_id!r}")],
            sku=sku_id,
        )


def take_result(raw: Sequence[Any], sku_id: str, request_id: str, token_problem: str = "") -> Answer[DeductResult]:
    """Decode one request's reply of deduct.lua (``token_problem``: what the node found wrong with the
    call's admission token, for the message of a TOKEN refusal)."""
    reply = TakeReply.decode(raw)
    _common_errors(reply.code, reply.available, sku_id, request_id, token_problem=token_problem)
    result = DeductResult(
        outcome=_OUTCOMES[reply.code],
        deduction=_deduction(reply.record, request_id),
        stock_left=reply.available,
        retry_after_ms=reply.retry_after_ms,
    )
    return Answer(result, sold_out_sv=reply.sold_out_sv, log_id=reply.log_id, durable=reply.durable)


def settle_result(raw: Sequence[Any], sku_id: str, hold_id: str, request_id: str = "") -> Answer[SettleResult]:
    """Decode settle.lua's reply."""
    reply = TakeReply.decode(raw)
    if reply.code == "NO_SHARD":
        raise ShardMissing(sku_id)
    if reply.code == "MISMATCH":
        raise RequestIdReused(
            f"request_id {request_id!r} took effect before as another call (another hold, or a Confirm for a "
            "Release, or a Deduct...)",
            request_id=request_id,
            sku=sku_id,
        )
    result = SettleResult(
        outcome=_OUTCOMES[reply.code],
        deduction=_deduction(reply.record, hold_id),
        stock_left=reply.available,
    )
    return Answer(result, log_id=reply.log_id, durable=reply.durable)


def batch_result(
    raw: Sequence[Any], sku_ids: Sequence[str], request_id: str, token_problems: Sequence[str] = ()
) -> tuple[BatchResult, list[tuple[int, str]]]:
    """Decode batch.lua's reply: the result, and the (item index, log id) of durable items to wait for.

    ``token_problems``: per item, what the node found wrong with its admission token ('' = valid).
    """
    reply = BatchReply.decode(raw)
    if reply.item >= 0:
        problem = token_problems[reply.item] if reply.item < len(token_problems) else ""
        _common_errors(reply.code, reply.cap, sku_ids[reply.item], request_id, f"items[{reply.item}].qty", problem)
    items = tuple(
        BatchItemResult(
            sku_id=sku_id, outcome=_OUTCOMES[item.code], stock_left=item.available, retry_after_ms=item.retry_after_ms
        )
        for sku_id, item in zip(sku_ids, reply.items, strict=True)
    )
    waits = [(i, item.log_id) for i, item in enumerate(reply.items) if item.durable and item.log_id]
    if reply.code == "OK":
        outcome = Outcome.OK
    elif reply.code == "DUP":
        outcome = Outcome.DUPLICATE
    else:
        outcome = next(item.outcome for item in items if item.outcome is not Outcome.OK)
    retry_after_ms = max((item.retry_after_ms for item in items), default=0)
    return BatchResult(outcome=outcome, items=items, retry_after_ms=retry_after_ms), waits


_INT64 = range(-(2**63), 2**63)


class UnreadableSku(FailedPrecondition):
    """A SKU's hash in Redis holds a value that is no integer (GetSku refuses it; ListSkus leaves it out)."""


def _hash_int(sku_id: str, f: dict[str, str], name: str) -> int:
    text = f.get(name, "0")
    value: int | None
    try:
        value = int(text)
    except ValueError:
        # An older node wrote numbers past 17 digits as floats ('1e+17'):
        # read an integral one exactly; anything else is unreadable.
        try:
            number = Decimal(text)
        except InvalidOperation:
            number = Decimal("NaN")
        # Compared as a Decimal first: int() of '1e+999999999' would take ages.
        integral = number.is_finite() and _INT64[0] <= number <= _INT64[-1] and number == number.to_integral_value()
        value = int(number) if integral else None
    if value is None or value not in _INT64:
        raise UnreadableSku(
            f"SKU {sku_id!r}: its field {name!r} in Redis is {text[:40]!r}, not an integer; put the SKU again",
            sku=sku_id,
        )
    return value


SKU_FIELDS: Mapping[str, str] = {
    "total": "total",
    "available": "avail",
    "held": "held",
    "confirmed": "conf",
    "per_user_limit": "lim",
    "max_per_request": "maxq",
    "sale_start_ms": "start",
    "sale_end_ms": "end",
    "stock_version": "sv",
    "sale": "sale",
    "goal_units": "gu",
    "goal_sellout_ms": "gs",
    "goal_buyers": "gb",
    "unit_price_minor": "pr",
    "user_rate_per_s": "ur",
}
"""A SKU's numbers: the name in Python -> the field of its hash in Redis (``lua/_lib.lua``)."""


class SkuHash(NamedTuple):
    """A SKU's hash in Redis, its fields under their Python names (absent numbers read 0)."""

    total: int
    """Units put on sale, after adjustments."""
    available: int
    """Units left."""
    held: int
    """Units in open holds."""
    confirmed: int
    """Units sold for good."""
    per_user_limit: int
    max_per_request: int
    sale_start_ms: int
    sale_end_ms: int
    stock_version: int
    """+1 on every put, adjust and sold-out/available flip."""
    sale: int
    """+1 on every put."""
    goal_units: int
    """The sale's goals (0 = none; a hash put before goals existed has none)."""
    goal_sellout_ms: int
    goal_buyers: int
    unit_price_minor: int
    """0 = no price."""
    user_rate_per_s: int
    """Most attempts per user per second (0 = no cap; a hash put before it existed has none)."""
    paused: bool
    mode: Mode
    currency: str
    """'' = no price."""
    require_token: bool = False
    """Deduct and Hold need an admission token."""


def sku_hash(sku_id: str, fields: Mapping[Any, Any]) -> SkuHash:
    """Read a SKU's hash (HGETALL as a dict, bytes or text); :class:`UnreadableSku` when a number is not one."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    numbers = {name: _hash_int(sku_id, f, field) for name, field in SKU_FIELDS.items()}
    mode = Mode.DURABLE if f.get("mode") == "durable" else Mode.FAST
    return SkuHash(
        **numbers,
        paused=f.get("paused", "0") == "1",
        mode=mode,
        currency=f.get("cur", ""),
        require_token=f.get("rt", "0") == "1",
    )


def sku_from_hash(sku_id: str, shard: int, fields: Mapping[Any, Any]) -> Sku:
    """A SKU from its Redis hash (HGETALL as a dict); :class:`UnreadableSku` when a number is not one."""
    h = sku_hash(sku_id, fields)
    return Sku(
        sku_id=sku_id,
        total=h.total,
        available=h.available,
        held=h.held,
        confirmed=h.confirmed,
        per_user_limit=h.per_user_limit,
        max_per_request=h.max_per_request,
        sale_start_ms=h.sale_start_ms,
        sale_end_ms=h.sale_end_ms,
        paused=h.paused,
        mode=h.mode,
        shard=shard,
        goal_units=h.goal_units,
        goal_sellout_ms=h.goal_sellout_ms,
        goal_buyers=h.goal_buyers,
        unit_price_minor=h.unit_price_minor,
        currency=h.currency,
        user_rate_per_s=h.user_rate_per_s,
        require_token=h.require_token,
    )


def admin_result(raw: Sequence[Any], sku_id: str, shard: int, request_id: str = "") -> Answer[AdminResult]:
    """Decode put_sku.lua's or adjust_sku.lua's reply (admin changes always wait for the ledger)."""
    reply = AdminReply.decode(raw)
    code = reply.code
    if code == "NO_SHARD":
        raise ShardMissing(sku_id)
    if code == "NO_SKU":
        raise SkuNotFound(f"SKU {sku_id!r} is not defined", sku=sku_id)
    if code == "MISMATCH":
        raise RequestIdReused(
            f"request_id {request_id!r} was applied before to another admin call", request_id=request_id, sku=sku_id
        )
    sku = sku_from_hash(sku_id, shard, reply.fields)
    if code == "BELOW":
        handed_out = sku.held + sku.confirmed
        raise StockBelowHandedOut(
            f"SKU {sku_id!r}: the stock cannot go below the {handed_out} units handed out",
            handed_out=handed_out,
            sku=sku_id,
        )
    if code == "ABOVE":
        raise InvalidArgument(
            f"SKU {sku_id!r}: the stock cannot go above {MAX_STOCK} units (it is {sku.total})",
            [FieldViolation("delta", f"would make the total more than {MAX_STOCK}, the most a SKU may hold")],
            sku=sku_id,
        )
    return Answer(AdminResult(sku=sku, duplicate=code == "DUP"), log_id=reply.log_id, durable=bool(reply.log_id))
