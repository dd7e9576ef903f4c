"""Typed values of the flashstock API, free of protobuf.

The numbers of each enum are the wire numbers of the .proto enums of the same
name (a unit test pins them), so converting is a plain ``Enum(value)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.IntEnum):
    """What became of a mutating call (``flashstock.v1.Outcome``)."""

    OK = 1
    SOLD_OUT = 2
    INSUFFICIENT = 3
    LIMIT = 4
    NOT_ON_SALE = 5
    DUPLICATE = 6
    HOLD_EXPIRED = 7
    HOLD_RELEASED = 8
    HOLD_CONFIRMED = 9
    HOLD_NOT_FOUND = 10
    HOLD_VOIDED = 11
    RATE_LIMITED = 12


class DeductionState(enum.IntEnum):
    """Where the units of a deduction stand (``flashstock.v1.DeductionState``)."""

    UNSPECIFIED = 0
    HELD = 1
    CONFIRMED = 2
    RELEASED = 3
    EXPIRED = 4


class Mode(enum.IntEnum):
    """How a SKU's deductions are made durable (``flashstock.v1.Mode``)."""

    FAST = 1
    DURABLE = 2


@dataclass(frozen=True, slots=True)
class Deduction:
    """The recorded first answer of a Deduct or Hold that took effect."""

    request_id: str
    """The request id of the Deduct or Hold that took the units."""
    sku_id: str
    """The SKU the units were taken from."""
    user_id: str
    """The buyer."""
    qty: int
    """Units taken."""
    state: DeductionState
    """Where the units stand now."""
    expires_at_ms: int = 0
    """Holds only: expiry, unix ms on Redis's clock."""
    taken_at_ms: int = 0
    """When the units were taken, unix ms on Redis's clock."""


@dataclass(frozen=True, slots=True)
class DeductResult:
    """The answer to Deduct or Hold."""

    outcome: Outcome
    """What happened; DUPLICATE means ``deduction`` is the first answer."""
    deduction: Deduction | None = None
    """The deduction made (OK) or recorded before (DUPLICATE)."""
    stock_left: int = -1
    """Units left after the call; 0 when refused as sold out; -1 when not read (DUPLICATE)."""
    retry_after_ms: int = 0
    """RATE_LIMITED: come back in this many ms (the user's attempt window ends); 0 otherwise."""

    @property
    def took_effect(self) -> bool:
        """True when the request's units are taken (now or by its first send)."""
        return self.outcome in (Outcome.OK, Outcome.DUPLICATE)


HoldResult = DeductResult
"""The answer to Hold: the same shape as Deduct's; the hold id is its request id."""


@dataclass(frozen=True, slots=True)
class SettleResult:
    """The answer to Confirm or Release."""

    outcome: Outcome
    """OK, DUPLICATE, HOLD_EXPIRED, HOLD_RELEASED, HOLD_CONFIRMED, HOLD_VOIDED or HOLD_NOT_FOUND."""
    deduction: Deduction | None = None
    """The hold as it stands after the call."""
    stock_left: int = -1
    """Units left after the call; -1 when not known."""


@dataclass(frozen=True, slots=True)
class StockLevel:
    """A SKU's counters."""

    sku_id: str
    """The SKU."""
    total: int
    """Units put on sale, after adjustments."""
    available: int
    """Units left for sale."""
    held: int
    """Units held."""
    confirmed: int
    """Units sold for good."""

    @property
    def sold_out(self) -> bool:
        """True once no unit is left."""
        return self.available <= 0


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One SKU of a BatchDeduct."""

    sku_id: str
    """The SKU."""
    qty: int = 1
    """Units to take."""
    admission_token: str = ""
    """The user's admission token for this SKU (:func:`admission_token`); '' = none."""


@dataclass(frozen=True, slots=True)
class BatchItemResult:
    """What became of one item of a BatchDeduct."""

    sku_id: str
    """The item's SKU."""
    outcome: Outcome
    """OK, or this item's refusal."""
    stock_left: int = -1
    """Units left of the SKU after the call; -1 when not known."""
    retry_after_ms: int = 0
    """RATE_LIMITED: come back in this many ms; 0 otherwise."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The answer to BatchDeduct: all items taken, or none."""

    outcome: Outcome
    """OK, DUPLICATE, or the first item refusal."""
    items: tuple[BatchItemResult, ...] = ()
    """One per item, in request order."""
    retry_after_ms: int = 0
    """RATE_LIMITED: come back in this many ms (the longest of the items'); 0 otherwise."""


@dataclass(frozen=True, slots=True)
class SkuDefinition:
    """What an operator puts on sale: a SKU's stock and the rules of its sale (PutSku).

    Putting a definition (again) restarts the SKU's sale: its counters start
    from ``stock``, and holds of the earlier sale are void.
    """

    sku_id: str
    """The SKU id."""
    stock: int
    """Units put on sale: the SKU's total until an adjustment."""
    per_user_limit: int = 0
    """Most units one user may have (held + confirmed); 0 = no limit."""
    max_per_request: int = 0
    """Most units one request may take; 0 = the per-user limit."""
    sale_start_ms: int = 0
    """Sale opens (unix ms, Redis clock); 0 = open."""
    sale_end_ms: int = 0
    """Sale closes (unix ms, Redis clock); 0 = never."""
    mode: Mode = Mode.FAST
    """Fast or durable."""
    goal_units: int = 0
    """The sale's goal of units sold (at most ``stock``); 0 = none."""
    goal_sellout_ms: int = 0
    """The sale's goal of selling out within this many ms of its start; 0 = none."""
    goal_buyers: int = 0
    """The sale's goal of distinct buyers (at most ``stock``); 0 = none."""
    unit_price_minor: int = 0
    """Price of one unit in minor units of ``currency`` (cents); 0 = not given."""
    currency: str = ""
    """ISO 4217 code of the price (``"EUR"``); required with a price, else empty."""
    user_rate_per_s: int = 0
    """Most attempts one user may make on the SKU per second, across nodes; 0 = no cap."""
    require_token: bool = False
    """Deduct and Hold need the gateway's admission token for the user and SKU."""


@dataclass(frozen=True, slots=True)
class Sku:
    """A SKU's definition and live counters."""

    sku_id: str
    """The SKU id."""
    total: int = 0
    """Units put on sale, after adjustments."""
    available: int = 0
    """Units left."""
    held: int = 0
    """Units held."""
    confirmed: int = 0
    """Units sold for good."""
    per_user_limit: int = 0
    """Most units one user may have; 0 = no limit."""
    max_per_request: int = 0
    """Most units one request may take; 0 = the per-user limit."""
    sale_start_ms: int = 0
    """Sale opens (unix ms, Redis clock); 0 = open."""
    sale_end_ms: int = 0
    """Sale closes (unix ms, Redis clock); 0 = never."""
    paused: bool = False
    """Paused by an operator."""
    mode: Mode = Mode.FAST
    """Fast or durable."""
    shard: int = 0
    """The SKU's shard."""
    goal_units: int = 0
    """The sale's goal of units sold; 0 = none."""
    goal_sellout_ms: int = 0
    """The sale's goal of selling out within this many ms of its start; 0 = none."""
    goal_buyers: int = 0
    """The sale's goal of distinct buyers; 0 = none."""
    unit_price_minor: int = 0
    """Price of one unit in minor units of ``currency``; 0 = not given."""
    currency: str = ""
    """ISO 4217 code of the price; empty when none is given."""
    user_rate_per_s: int = 0
    """Most attempts one user may make on the SKU per second; 0 = no cap."""
    require_token: bool = False
    """Deduct and Hold need an admission token."""


@dataclass(frozen=True, slots=True)
class SkuPage:
    """One page of ListSkus."""

    skus: tuple[Sku, ...] = ()
    """SKUs in id order."""
    next_page_token: str = ""
    """Pass on for the next page; empty when there is none."""


@dataclass(frozen=True, slots=True)
class AdminResult:
    """The answer to a mutating admin call."""

    sku: Sku
    """The SKU as it stands after the call."""
    duplicate: bool = False
    """True when this request id had been applied before (nothing changed)."""


__all__ = [
    "AdminResult",
    "BatchItem",
    "BatchItemResult",
    "BatchResult",
    "Deduction",
    "DeductionState",
    "DeductResult",
    "HoldResult",
    "Mode",
    "Outcome",
    "SettleResult",
    "Sku",
    "SkuDefinition",
    "SkuPage",
    "StockLevel",
]
