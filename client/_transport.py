"""The client's transport: typed values to and from protobuf, and the retry decision.

With the generated stubs, the only client module that imports pb2. Shared
by the async client and the sync one generated from it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, cast

import grpc

from flashstock.v1 import admin_pb2, admin_pb2_grpc, stock_pb2, stock_pb2_grpc

from ._config import ClientConfig
from ._types import (
    AdminResult,
    BatchItem,
    BatchItemResult,
    BatchResult,
    Deduction,
    DeductionState,
    DeductResult,
    Mode,
    Outcome,
    SettleResult,
    Sku,
    SkuDefinition,
    SkuPage,
    StockLevel,
)
from .errors import RETRYABLE_CODES, FlashstockError, Overloaded, from_status

__all__ = ["admin_pb2", "admin_pb2_grpc", "stock_pb2", "stock_pb2_grpc"]


def new_request_id() -> str:
    """A fresh request id (a random UUID, 32 hex digits)."""
    return uuid.uuid4().hex


def request_id_or_new(request_id: str | None) -> str:
    """The caller's request id, or a fresh one when it gave none (None).

    An empty string is passed on, for the node to refuse: a caller whose
    order id came out empty must hear of it, not lose its idempotency.
    """
    return new_request_id() if request_id is None else request_id


def _pem(setting: str, value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        with open(value, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {value!r}: {exc.strerror or exc}") from None


def channel_credentials(config: ClientConfig) -> grpc.ChannelCredentials | None:
    """The TLS credentials of ``config``'s channels (its PEM files read now), or None for plaintext.

    Raises ``ValueError`` naming the setting whose file cannot be read.
    """
    if not config.tls:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_pem("tls_ca", config.tls_ca),
        private_key=_pem("tls_key", config.tls_key),
        certificate_chain=_pem("tls_cert", config.tls_cert),
    )


def call_metadata(config: ClientConfig) -> tuple[tuple[str, str], ...]:
    """The metadata of every call: ``config.metadata``, and the bearer token if any (its file read now).

    Raises ``ValueError`` naming ``token_file`` when it cannot be read or is empty.
    """
    token = config.token
    if config.token_file is not None:
        try:
            with open(config.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"token_file: cannot read {config.token_file!r}: {exc}") from None
        if not token or "\n" in token:
            raise ValueError(f"token_file: {config.token_file!r} does not hold one token on one line")
    metadata = tuple((key, value) for key, value in config.metadata)
    if token:
        metadata += (("authorization", f"Bearer {token.strip()}"),)
    return metadata


def error_of(exc: grpc.RpcError) -> FlashstockError:
    """The flashstock error a failed call stands for."""
    # grpc-stubs declares the trailing metadata as objects with .key and .value; at run time they are
    # (key, value) tuples (an aio call's Metadata iterates the same way).
    return from_status(exc.code(), exc.details() or "", exc.trailing_metadata())  # type: ignore[arg-type]


def pass_cancellation(exc: grpc.RpcError) -> None:
    """Re-raise a call cancelled because our own task is being cancelled as
    ``asyncio.CancelledError``: cancellation passes through, it is no error."""
    if exc.code() is not grpc.StatusCode.CANCELLED:
        return
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop: a blocking call
        return
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from None


def should_retry(exc: grpc.RpcError, error: FlashstockError) -> bool:
    """True for the failures a client retries with the same request id: UNAVAILABLE, DEADLINE_EXCEEDED,
    and a node's :class:`Overloaded` (it shed the call, which took nothing).

    Only a node's shedding carries a retry delay: a RESOURCE_EXHAUSTED of grpc's
    own (a message or metadata past its limit) has none, and would fail again.
    """
    return exc.code() in RETRYABLE_CODES or (isinstance(error, Overloaded) and error.retry_after > 0)


def mark_retry(request: Any) -> None:
    """Mark a request being sent again, so the node consults its record."""
    if "retry" in request.DESCRIPTOR.fields_by_name:
        request.retry = True


def _deduction(pb: stock_pb2.Deduction, present: bool) -> Deduction | None:
    if not present:
        return None
    return Deduction(
        request_id=pb.request_id,
        sku_id=pb.sku_id,
        user_id=pb.user_id,
        qty=pb.qty,
        state=DeductionState(pb.state),
        expires_at_ms=pb.expires_at_ms,
        taken_at_ms=pb.taken_at_ms,
    )


def deduct_result(reply: stock_pb2.DeductReply | stock_pb2.HoldReply) -> DeductResult:
    """A Deduct or Hold reply as a typed result."""
    return DeductResult(
        outcome=Outcome(reply.outcome),
        deduction=_deduction(reply.deduction, reply.HasField("deduction")),
        stock_left=reply.stock_left,
        retry_after_ms=reply.retry_after_ms,
    )


def settle_result(reply: stock_pb2.ConfirmReply | stock_pb2.ReleaseReply) -> SettleResult:
    """A Confirm or Release reply as a typed result."""
    return SettleResult(
        outcome=Outcome(reply.outcome),
        deduction=_deduction(reply.deduction, reply.HasField("deduction")),
        stock_left=getattr(reply, "stock_left", -1),
    )


def stock_level(reply: stock_pb2.GetStockReply) -> StockLevel:
    """A GetStock reply as a typed result."""
    return StockLevel(reply.sku_id, reply.total, reply.available, reply.held, reply.confirmed)


def batch_items(items: Iterable[BatchItem | tuple[str, int]]) -> list[stock_pb2.BatchItem]:
    """Batch items, given as BatchItem or (sku_id, qty) pairs, as protobuf."""
    out = []
    for item in items:
        if isinstance(item, BatchItem):
            out.append(stock_pb2.BatchItem(sku_id=item.sku_id, qty=item.qty, admission_token=item.admission_token))
        else:
            sku_id, qty = item
            out.append(stock_pb2.BatchItem(sku_id=sku_id, qty=qty))
    return out


def batch_result(reply: stock_pb2.BatchDeductReply) -> BatchResult:
    """A BatchDeduct reply as a typed result."""
    return BatchResult(
        outcome=Outcome(reply.outcome),
        items=tuple(BatchItemResult(i.sku_id, Outcome(i.outcome), i.stock_left, i.retry_after_ms) for i in reply.items),
        retry_after_ms=reply.retry_after_ms,
    )


def sku(pb: admin_pb2.Sku) -> Sku:
    """A protobuf SKU as a typed value."""
    return Sku(
        sku_id=pb.sku_id,
        total=pb.total,
        available=pb.available,
        held=pb.held,
        confirmed=pb.confirmed,
        per_user_limit=pb.per_user_limit,
        max_per_request=pb.max_per_request,
        sale_start_ms=pb.sale_start_ms,
        sale_end_ms=pb.sale_end_ms,
        paused=pb.paused,
        mode=Mode(pb.mode) if pb.mode else Mode.FAST,
        shard=pb.shard,
        goal_units=pb.goal_units,
        goal_sellout_ms=pb.goal_sellout_ms,
        goal_buyers=pb.goal_buyers,
        unit_price_minor=pb.unit_price_minor,
        currency=pb.currency,
        user_rate_per_s=pb.user_rate_per_s,
        require_token=pb.require_token,
    )


def admin_result(reply: Any) -> AdminResult:
    """A PutSku, AdjustStock, PauseSku or ResumeSku reply as a typed result."""
    return AdminResult(sku=sku(reply.sku), duplicate=getattr(reply, "duplicate", False))


def sku_page(reply: admin_pb2.ListSkusReply) -> SkuPage:
    """A ListSkus reply as a typed page."""
    return SkuPage(skus=tuple(sku(s) for s in reply.skus), next_page_token=reply.next_page_token)


_DEFINITION_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(SkuDefinition) if f.name not in ("sku_id", "stock")
}


def sku_definition(sku_id: str | SkuDefinition, stock: int | None, **fields: Any) -> SkuDefinition:
    """What ``put_sku`` was given, as a definition: ``sku_id`` when it is one, else made of the arguments.

    A definition comes alone: ``stock`` or a field given beside it would be
    ignored silently, so it is refused.
    """
    if isinstance(sku_id, SkuDefinition):
        extra = sorted(name for name, value in fields.items() if value != _DEFINITION_DEFAULTS[name])
        if stock is not None or extra:
            raise TypeError(f"put_sku: give a SkuDefinition or its fields, not both ({['stock', *extra][0]})")
        return sku_id
    if stock is None:
        raise TypeError(f"put_sku: the stock of {sku_id!r} is missing")
    return SkuDefinition(sku_id, stock, **fields)


def put_sku_request(definition: SkuDefinition, request_id: str) -> admin_pb2.PutSkuRequest:
    """A PutSku request."""
    return admin_pb2.PutSkuRequest(
        sku_id=definition.sku_id,
        stock=definition.stock,
        per_user_limit=definition.per_user_limit,
        max_per_request=definition.max_per_request,
        sale_start_ms=definition.sale_start_ms,
        sale_end_ms=definition.sale_end_ms,
        # protoc's .pyi types an enum field as its enum class, which no plain int is; the wire value is the int.
        mode=cast("admin_pb2.Mode", int(definition.mode)),
        request_id=request_id,
        goal_units=definition.goal_units,
        goal_sellout_ms=definition.goal_sellout_ms,
        goal_buyers=definition.goal_buyers,
        unit_price_minor=definition.unit_price_minor,
        currency=definition.currency,
        user_rate_per_s=definition.user_rate_per_s,
        require_token=definition.require_token,
    )


def rpc_names() -> dict[str, Sequence[str]]:
    """Every RPC of every service in the .proto files, by service name."""
    return {
        service.name: [m.name for m in service.methods]
        for file in (stock_pb2.DESCRIPTOR, admin_pb2.DESCRIPTOR)
        for service in file.services_by_name.values()
    }
