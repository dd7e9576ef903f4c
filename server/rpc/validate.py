"""Checks of request fields, done on the node before any I/O.

Pure: each check returns the field violations it found, and the servicer
raises one :class:`~flashstock.client.InvalidArgument` carrying all of them,
so a caller learns every bad field at once and nothing is deducted.

Every number a request carries has one range, written once below as a named
constant; the comment of each field in ``protos/flashstock/v1/*.proto``
states the same range. Every maximum is far below 2**53, so the Lua scripts
(whose numbers are doubles) hold each value exactly and write it back as an
integer, never as ``1e+17``.
"""

from __future__ import annotations

from collections.abc import Iterable

from flashstock.client import FieldViolation, Mode, SkuDefinition

MAX_ID_BYTES = 128
"""Longest sku_id, user_id, request_id (and ListSkus prefix), in UTF-8 bytes."""
MAX_QTY = 1_000_000
"""Most units one request may take (qty, and a SKU's max_per_request), whatever the SKU allows."""
MAX_STOCK = 10**12
"""Most units a SKU may hold: its stock at PutSku, its total after an AdjustStock, a per-user limit."""
MAX_BATCH_ITEMS = 64
"""Most items of one BatchDeduct."""
MAX_HOLD_MS = 24 * 3600 * 1000
"""Longest hold on any node; a node allows at most :func:`max_hold_ms` of its request_ttl_s."""
MAX_TIME_MS = 253_402_300_799_999
"""Latest sale_start_ms / sale_end_ms: 9999-12-31T23:59:59.999Z in unix ms."""
MAX_PAGE_SIZE = 1000
"""Most SKUs of one ListSkus page."""
DEFAULT_PAGE_SIZE = 100
"""SKUs of a ListSkus page when page_size is 0."""
MAX_GOAL_SELLOUT_MS = 365 * 24 * 3600 * 1000
"""Longest sell-out goal of a sale: a year, in ms."""
MAX_PRICE_MINOR = 10**15
"""Highest unit price, in minor units: far above any real one, and price x MAX_STOCK still an exact decimal."""
KNOWN_MODES = frozenset({0, *(int(m) for m in Mode)})
"""The ``mode`` numbers PutSku takes: 0 (unspecified: fast), fast, durable."""


def max_hold_ms(request_ttl_s: int) -> int:
    """The longest hold a node with ``request_ttl_s`` allows: a day, or half its request_ttl_s if less.

    A hold's record must outlive the hold (records last at least request_ttl_s),
    so that a Confirm or a retry near the expiry still finds it.
    """
    return min(MAX_HOLD_MS, request_ttl_s * 1000 // 2)


def _range(field: str, value: int, low: int, high: int) -> list[FieldViolation]:
    if not low <= value <= high:
        return [FieldViolation(field, f"must be {low} to {high}, not {value}")]
    return []


def id_violations(field: str, value: str) -> list[FieldViolation]:
    """``value`` must be 1 to MAX_ID_BYTES bytes, without control characters."""
    if not value:
        return [FieldViolation(field, "is required")]
    return text_violations(field, value)


def text_violations(field: str, value: str) -> list[FieldViolation]:
    """``value`` may be empty, else as an id: at most MAX_ID_BYTES bytes, printable."""
    size = len(value.encode())
    if size > MAX_ID_BYTES:
        return [FieldViolation(field, f"is {size} bytes; at most {MAX_ID_BYTES}")]
    if not value.isprintable():
        return [FieldViolation(field, "contains a control or other unprintable character")]
    return []


def qty_violations(field: str, qty: int) -> list[FieldViolation]:
    """``qty`` must be 1 to MAX_QTY."""
    return _range(field, qty, 1, MAX_QTY)


def take_violations(sku_id: str, user_id: str, qty: int, request_id: str) -> list[FieldViolation]:
    """Deduct and Hold."""
    return [
        *id_violations("sku_id", sku_id),
        *id_violations("user_id", user_id),
        *qty_violations("qty", qty),
        *id_violations("request_id", request_id),
    ]


def hold_ttl_violations(ttl_ms: int, max_ms: int = MAX_HOLD_MS) -> list[FieldViolation]:
    """A hold lasts 0 (the node's default) to ``max_ms`` (the node's :func:`max_hold_ms`)."""
    return _range("ttl_ms", ttl_ms, 0, max_ms)


def settle_violations(sku_id: str, hold_id: str, request_id: str) -> list[FieldViolation]:
    """Confirm and Release."""
    return [
        *id_violations("sku_id", sku_id),
        *id_violations("hold_id", hold_id),
        *id_violations("request_id", request_id),
    ]


def batch_violations(user_id: str, items: Iterable[tuple[str, int]], request_id: str) -> list[FieldViolation]:
    """BatchDeduct: 1 to MAX_BATCH_ITEMS items, each SKU once."""
    out = [*id_violations("user_id", user_id), *id_violations("request_id", request_id)]
    items = list(items)
    if not items:
        out.append(FieldViolation("items", "needs at least one item"))
    if len(items) > MAX_BATCH_ITEMS:
        # Said once; the items themselves are not looked at.
        out.append(FieldViolation("items", f"has {len(items)} items; at most {MAX_BATCH_ITEMS}"))
        return out
    first: dict[str, int] = {}
    for i, (sku_id, qty) in enumerate(items):
        out += id_violations(f"items[{i}].sku_id", sku_id)
        out += qty_violations(f"items[{i}].qty", qty)
        if sku_id in first:
            # Named by index, not echoed: a reply stays small whatever the ids.
            out.append(FieldViolation(f"items[{i}].sku_id", f"is the SKU of items[{first[sku_id]}] again"))
        first.setdefault(sku_id, i)
    return out


def mode_violations(mode: int) -> list[FieldViolation]:
    """``mode`` must be a known number; an unknown one is refused, never taken as fast."""
    if mode not in KNOWN_MODES:
        return [FieldViolation("mode", f"must be one of {sorted(KNOWN_MODES)}, not {mode}")]
    return []


MAX_USER_RATE = 1_000_000
"""The highest per-user attempt rate a SKU may set (attempts per second)."""


def put_violations(definition: SkuDefinition, request_id: str) -> list[FieldViolation]:
    """PutSku: the definition's fields and the request id.

    The mode the request carried is checked on its own (:func:`mode_violations`),
    as sent: a definition holds a :class:`~flashstock.client.Mode`, which no
    unknown number becomes.
    """
    d = definition
    out = [
        *id_violations("sku_id", d.sku_id),
        *id_violations("request_id", request_id),
        *_range("stock", d.stock, 0, MAX_STOCK),
        *_range("per_user_limit", d.per_user_limit, 0, MAX_STOCK),
        *_range("max_per_request", d.max_per_request, 0, MAX_QTY),
        *_range("sale_start_ms", d.sale_start_ms, 0, MAX_TIME_MS),
        *_range("sale_end_ms", d.sale_end_ms, 0, MAX_TIME_MS),
        *_range("user_rate_per_s", d.user_rate_per_s, 0, MAX_USER_RATE),
    ]
    if d.sale_start_ms > 0 and d.sale_end_ms > 0 and d.sale_end_ms <= d.sale_start_ms:
        out.append(FieldViolation("sale_end_ms", "must be after sale_start_ms"))
    return out + goal_violations(d)


def goal_violations(definition: SkuDefinition) -> list[FieldViolation]:
    """PutSku's goals and price: in range, goals that the stock can meet, a currency exactly when a price."""
    d = definition
    out = [
        *_range("goal_units", d.goal_units, 0, MAX_STOCK),
        *_range("goal_sellout_ms", d.goal_sellout_ms, 0, MAX_GOAL_SELLOUT_MS),
        *_range("goal_buyers", d.goal_buyers, 0, MAX_STOCK),
        *_range("unit_price_minor", d.unit_price_minor, 0, MAX_PRICE_MINOR),
    ]
    # A goal the stock cannot meet is a mistake in the definition, not a goal.
    if 0 <= d.stock < d.goal_units <= MAX_STOCK:
        out.append(FieldViolation("goal_units", f"is {d.goal_units}, above the stock {d.stock}: it cannot be met"))
    if 0 <= d.stock < d.goal_buyers <= MAX_STOCK:
        out.append(FieldViolation("goal_buyers", f"is {d.goal_buyers}, above the stock {d.stock}: it cannot be met"))
    if d.currency:
        if not (len(d.currency) == 3 and d.currency.isascii() and d.currency.isalpha() and d.currency.isupper()):
            shown = d.currency if len(d.currency) <= 8 else d.currency[:8] + "..."
            out.append(FieldViolation("currency", f"must be an ISO 4217 code, three letters A-Z, not {shown!r}"))
        elif d.unit_price_minor == 0:
            out.append(FieldViolation("currency", "is given without a unit_price_minor"))
    elif d.unit_price_minor > 0:
        out.append(FieldViolation("currency", "is required with a unit_price_minor"))
    return out


def adjust_violations(sku_id: str, delta: int, request_id: str) -> list[FieldViolation]:
    """AdjustStock. The total after it must stay 0 to MAX_STOCK too: only Redis knows it (adjust_sku.lua)."""
    out = [*id_violations("sku_id", sku_id), *id_violations("request_id", request_id)]
    if delta == 0:
        out.append(FieldViolation("delta", "must not be 0"))
    else:
        out += _range("delta", delta, -MAX_STOCK, MAX_STOCK)
    return out


def list_violations(prefix: str, page_size: int, page_token: str) -> list[FieldViolation]:
    """ListSkus: a prefix as an id (or empty), 0 to MAX_PAGE_SIZE, a token from the same listing."""
    out = [*text_violations("prefix", prefix), *_range("page_size", page_size, 0, MAX_PAGE_SIZE)]
    if page_token:
        out += text_violations("page_token", page_token)
        # A token is the last SKU id of a page of this prefix: one that does
        # not start with it would list SKUs outside the prefix.
        if not page_token.startswith(prefix):
            out.append(FieldViolation("page_token", "is not from a listing of this prefix"))
    return out
