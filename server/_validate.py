"""Checks of request fields, done on the node before any I/O.

Pure: each check returns the field violations it found, and the servicer
raises one :class:`~flashstock.client.InvalidArgument` carrying all of them,
so a caller learns every bad field at once and nothing is deducted.
"""

from __future__ import annotations

from collections.abc import Iterable

from flashstock.client import FieldViolation

MAX_ID_BYTES = 128
"""Longest sku_id, user_id or request_id, in UTF-8 bytes."""
MAX_QTY = 1_000_000
"""Most units one request may take, whatever the SKU allows."""
MAX_STOCK = 10**12
"""Most units a SKU may hold."""
MAX_BATCH_ITEMS = 64
"""Most items of one BatchDeduct."""
MAX_HOLD_MS = 24 * 3600 * 1000
"""Longest hold, whatever the node allows (it allows at most half its request_ttl_s)."""


def id_violations(field: str, value: str) -> list[FieldViolation]:
    """``value`` must be 1 to MAX_ID_BYTES bytes, without control characters."""
    if not value:
        return [FieldViolation(field, "is required")]
    size = len(value.encode())
    if size > MAX_ID_BYTES:
        return [FieldViolation(field, f"is {size} bytes; at most {MAX_ID_BYTES}")]
    if not value.isprintable():
        return [FieldViolation(field, "contains a control or other unprintable character")]
    return []


def qty_violations(field: str, qty: int) -> list[FieldViolation]:
    """``qty`` must be 1 to MAX_QTY."""
    if qty <= 0:
        return [FieldViolation(field, f"must be > 0, not {qty}")]
    if qty > MAX_QTY:
        return [FieldViolation(field, f"must be <= {MAX_QTY}, not {qty}")]
    return []


def take_violations(sku_id: str, user_id: str, qty: int, request_id: str) -> list[FieldViolation]:
    """Deduct and Hold."""
    return [
        *id_violations("sku_id", sku_id),
        *id_violations("user_id", user_id),
        *qty_violations("qty", qty),
        *id_violations("request_id", request_id),
    ]


def hold_ttl_violations(ttl_ms: int, max_ms: int = MAX_HOLD_MS) -> list[FieldViolation]:
    """A hold lasts 0 (the node's default) to ``max_ms``."""
    if not 0 <= ttl_ms <= max_ms:
        return [FieldViolation("ttl_ms", f"must be 0 to {max_ms}, not {ttl_ms}")]
    return []


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
        out.append(FieldViolation("items", f"has {len(items)} items; at most {MAX_BATCH_ITEMS}"))
    seen: set[str] = set()
    for i, (sku_id, qty) in enumerate(items):
        out += id_violations(f"items[{i}].sku_id", sku_id)
        out += qty_violations(f"items[{i}].qty", qty)
        if sku_id in seen:
            out.append(FieldViolation(f"items[{i}].sku_id", f"{sku_id!r} appears twice"))
        seen.add(sku_id)
    return out


def put_violations(
    sku_id: str,
    stock: int,
    per_user_limit: int,
    max_per_request: int,
    sale_start_ms: int,
    sale_end_ms: int,
    request_id: str,
) -> list[FieldViolation]:
    """PutSku."""
    out = [*id_violations("sku_id", sku_id), *id_violations("request_id", request_id)]
    if not 0 <= stock <= MAX_STOCK:
        out.append(FieldViolation("stock", f"must be 0 to {MAX_STOCK}, not {stock}"))
    for name, value in (
        ("per_user_limit", per_user_limit),
        ("max_per_request", max_per_request),
        ("sale_start_ms", sale_start_ms),
        ("sale_end_ms", sale_end_ms),
    ):
        if value < 0:
            out.append(FieldViolation(name, f"must be >= 0, not {value}"))
    if max_per_request > MAX_QTY:
        out.append(FieldViolation("max_per_request", f"must be <= {MAX_QTY}, not {max_per_request}"))
    if sale_start_ms > 0 and sale_end_ms > 0 and sale_end_ms <= sale_start_ms:
        out.append(FieldViolation("sale_end_ms", "must be after sale_start_ms"))
    return out


def adjust_violations(sku_id: str, delta: int, request_id: str) -> list[FieldViolation]:
    """AdjustStock."""
    out = [*id_violations("sku_id", sku_id), *id_violations("request_id", request_id)]
    if delta == 0:
        out.append(FieldViolation("delta", "must not be 0"))
    elif abs(delta) > MAX_STOCK:
        out.append(FieldViolation("delta", f"must be within ±{MAX_STOCK}"))
    return out
