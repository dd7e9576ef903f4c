"""Turning the replies of the Lua scripts into typed results or errors.

Pure functions: every script reply shape (see the header of each .lua file)
is decoded here and nowhere else, and unit-tested on every code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, TypeVar

from flashstock.client import (
    AdminResult,
    BatchItemResult,
    BatchResult,
    Deduction,
    DeductionState,
    DeductResult,
    FailedPrecondition,
    InvalidArgument,
    FieldViolation,
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


def _deduction(raw: Sequence[Any], request_id: str) -> Deduction | None:
    # raw[3:] = kind, state, qty, user, sku, taken_ms, exp_ms
    if len(raw) < 10:
        return None
    return Deduction(
        request_id=request_id,
        sku_id=_text(raw[7]),
        user_id=_text(raw[6]),
        qty=int(raw[5]),
        state=_STATES[_text(raw[4])],
        expires_at_ms=int(raw[9]),
        taken_at_ms=int(raw[8]),
    )


def _common_errors(code: str, raw: Sequence[Any], sku_id: str, request_id: str, field: str = "qty") -> None:
    if code == "NO_SHARD":
        raise ShardMissing(sku_id)
    if code == "NO_SKU":
        raise SkuNotFound(f"SKU {sku_id!r} is not defined", sku=sku_id)
    if code == "MISMATCH":
        raise RequestIdReused(
            f"request_id {request_id!r} took effect before on SKU {sku_id!r} as another call or with other arguments",
            request_id=request_id,
            sku=sku_id,
        )
    if code == "QTY_MAX":
        cap = int(raw[1]) if len(raw) > 1 else 0
        raise InvalidArgument(
            f"{field} is above the SKU's max per request ({cap})",
            [FieldViolation(field, f"must be <= {cap}, the max per request of {sku_id!r}")],
            sku=sku_id,
        )


def _log_id(raw: Sequence[Any]) -> tuple[str, bool]:
    if len(raw) < 12:
        return "", False
    return _text(raw[10]), int(raw[11]) == 1


def take_result(raw: Sequence[Any], sku_id: str, request_id: str) -> Answer[DeductResult]:
    """Decode one request's reply of deduct.lua."""
    code = _text(raw[0])
    _common_errors(code, raw, sku_id, request_id)
    result = DeductResult(
        outcome=_OUTCOMES[code],
        deduction=_deduction(raw, request_id),
        stock_left=int(raw[1]),
    )
    log_id, durable = _log_id(raw)
    return Answer(result, sold_out_sv=int(raw[2]), log_id=log_id, durable=durable)


def settle_result(raw: Sequence[Any], sku_id: str, hold_id: str, request_id: str = "") -> Answer[SettleResult]:
    """Decode settle.lua's reply."""
    code = _text(raw[0])
    if code == "NO_SHARD":
        raise ShardMissing(sku_id)
    if code == "MISMATCH":
        raise RequestIdReused(
            f"request_id {request_id!r} took effect before as another call (another hold, or a Confirm for a "
            "Release, or a Deduct...)",
            request_id=request_id,
            sku=sku_id,
        )
    result = SettleResult(
        outcome=_OUTCOMES[code],
        deduction=_deduction(raw, hold_id),
        stock_left=int(raw[1]),
    )
    log_id, durable = _log_id(raw)
    return Answer(result, log_id=log_id, durable=durable)


def batch_result(raw: Sequence[Any], sku_ids: Sequence[str], request_id: str) -> tuple[BatchResult, list[tuple[int, str]]]:
    """Decode batch.lua's reply: the result, and the (item index, log id) of durable items to wait for."""
    code = _text(raw[0])
    if code in ("NO_SKU", "MISMATCH", "QTY_MAX", "NO_SHARD"):
        index = int(raw[1]) - 1
        field = f"items[{index}].qty"
        detail = [code, raw[2]] if len(raw) > 2 else [code]
        _common_errors(code, detail, sku_ids[index], request_id, field)
    n = int(raw[1])
    items = tuple(
        BatchItemResult(sku_id=sku_ids[i], outcome=_OUTCOMES[_text(raw[2 + 4 * i])], stock_left=int(raw[3 + 4 * i]))
        for i in range(n)
    )
    waits = [(i, _text(raw[4 + 4 * i])) for i in range(n) if int(raw[5 + 4 * i]) == 1 and _text(raw[4 + 4 * i])]
    if code == "OK":
        outcome = Outcome.OK
    elif code == "DUP":
        outcome = Outcome.DUPLICATE
    else:
        outcome = next(item.outcome for item in items if item.outcome is not Outcome.OK)
    return BatchResult(outcome=outcome, items=items), waits


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


def sku_from_hash(sku_id: str, shard: int, fields: dict[Any, Any]) -> Sku:
    """A SKU from its Redis hash (HGETALL as a dict); :class:`UnreadableSku` when a number is not one."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    return Sku(
        sku_id=sku_id,
        total=_hash_int(sku_id, f, "total"),
        available=_hash_int(sku_id, f, "avail"),
        held=_hash_int(sku_id, f, "held"),
        confirmed=_hash_int(sku_id, f, "conf"),
        per_user_limit=_hash_int(sku_id, f, "lim"),
        max_per_request=_hash_int(sku_id, f, "maxq"),
        sale_start_ms=_hash_int(sku_id, f, "start"),
        sale_end_ms=_hash_int(sku_id, f, "end"),
        paused=f.get("paused", "0") == "1",
        mode=Mode.DURABLE if f.get("mode") == "durable" else Mode.FAST,
        shard=shard,
    )


def admin_result(raw: Sequence[Any], sku_id: str, shard: int, request_id: str = "") -> Answer[AdminResult]:
    """Decode put_sku.lua's or adjust_sku.lua's reply (admin changes always wait for the ledger)."""
    code = _text(raw[0])
    if code == "NO_SHARD":
        raise ShardMissing(sku_id)
    if code == "NO_SKU":
        raise SkuNotFound(f"SKU {sku_id!r} is not defined", sku=sku_id)
    if code == "MISMATCH":
        raise RequestIdReused(
            f"request_id {request_id!r} was applied before to another admin call", request_id=request_id, sku=sku_id
        )
    log_id = _text(raw[1])
    flat = list(raw[2:])
    sku = sku_from_hash(sku_id, shard, dict(zip(flat[0::2], flat[1::2], strict=True)))
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
    return Answer(AdminResult(sku=sku, duplicate=code == "DUP"), log_id=log_id, durable=bool(log_id))
