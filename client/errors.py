"""The one error tree of flashstock, and its one mapping to gRPC status codes.

Every error flashstock raises descends from :class:`FlashstockError`. The
API's errors (first part of the tree) travel between node and client as gRPC
statuses; the coordination and ledger branches are raised inside a node (or
an operator command) and never sent: a node that meets one in a call answers
UNKNOWN ("internal error").

::

    FlashstockError                 UNKNOWN (also any error not in the table)
    ├── InvalidArgument             INVALID_ARGUMENT  .violations
    │   └── QtyAboveMax             INVALID_ARGUMENT  .sku (the node's name: a client sees InvalidArgument)
    ├── NotFound                    NOT_FOUND
    │   └── SkuNotFound             NOT_FOUND         .sku
    ├── FailedPrecondition          FAILED_PRECONDITION
    │   ├── StockBelowHandedOut     FAILED_PRECONDITION .sku .handed_out
    │   ├── RequestIdReused         FAILED_PRECONDITION .request_id
    │   └── UnreadableSku           FAILED_PRECONDITION .sku (the node's name: a client sees FailedPrecondition)
    ├── Overloaded                  RESOURCE_EXHAUSTED .retry_after
    ├── Unavailable                 UNAVAILABLE       .retry_after
    ├── DeadlineExceeded            DEADLINE_EXCEEDED
    ├── Unauthenticated             UNAUTHENTICATED
    ├── PermissionDenied            PERMISSION_DENIED
    │   └── AdmissionTokenRefused   PERMISSION_DENIED .sku (the SKU needs a valid admission token)
    │
    │   flashstock.lockmgr: coordination (etcd), inside a node
    ├── SettingMismatch             .setting .node_value .bound_value .where
    ├── CoordinationError
    │   ├── ShardCountMismatch      .stored .requested
    │   ├── LeaseLost
    │   └── NodeIdTaken             .node
    │
    │   flashstock.server.ledger: the SQL ledger, inside a node or a command
    └── LedgerError                 the message names the setting or file to fix
        ├── Fenced                  .shard .epoch     a newer owner's epoch is recorded
        └── StaleGeneration         .shard            a rebuild began since the entries were read

Business outcomes (sold out, limit, ...) are not errors: they are values in
the reply (:class:`~flashstock.client.Outcome`).

The server turns an error into a status with :func:`to_status` (rich details:
``ErrorInfo`` with the reason and the fields, ``BadRequest`` field violations,
``RetryInfo``); the client turns a status back into the same error with
:func:`from_status`. Both read :data:`STATUS_TABLE`. Cancellation is not an
error here: ``asyncio.CancelledError`` passes through untouched.

This module depends on nothing else of flashstock, so that every package
(the client, :mod:`flashstock.lockmgr`, the node) can root its errors here
without an import cycle; a unit test (``tests/unit/test_import_graph.py``)
keeps it so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict, Unpack

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "flashstock.io"
"""``ErrorInfo.domain`` of every flashstock error."""

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request (``google.rpc.BadRequest.FieldViolation``)."""

    field: str
    """The field's name in the request."""
    description: str
    """What is wrong with it."""


class _Where(TypedDict, total=False):
    """What an error concerns: the keyword arguments every error takes."""

    sku: str | None
    shard: int | None
    epoch: int | None


class FlashstockError(Exception):
    """The root of every error flashstock raises."""

    reason: ClassVar[str] = "UNKNOWN"
    """A stable name of the error kind, sent as ``ErrorInfo.reason``."""

    def __init__(
        self,
        message: str,
        *,
        sku: str | None = None,
        shard: int | None = None,
        epoch: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        """What went wrong, for a person."""
        self.sku = sku
        """The SKU concerned, when there is one."""
        self.shard = shard
        """The shard concerned, when there is one."""
        self.epoch = epoch
        """The ownership epoch concerned, when there is one."""

    def _fields(self) -> dict[str, str]:
        out = {}
        for name in ("sku", "shard", "epoch"):
            value = getattr(self, name)
            if value is not None:
                out[name] = str(value)
        return out


class InvalidArgument(FlashstockError):
    """The request is malformed; nothing was done."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: Sequence[FieldViolation] = (), **kw: Unpack[_Where]) -> None:
        super().__init__(message, **kw)
        self.violations = tuple(violations)
        """Each bad field and what is wrong with it."""


class NotFound(FlashstockError):
    """A thing the request names does not exist."""

    reason = "NOT_FOUND"


class SkuNotFound(NotFound):
    """The SKU is not defined (``sku put`` it first)."""

    reason = "SKU_NOT_FOUND"


class FailedPrecondition(FlashstockError):
    """The system is not in a state in which the request can be done."""

    reason = "FAILED_PRECONDITION"


class StockBelowHandedOut(FailedPrecondition):
    """An adjustment would take the stock below the units handed out."""

    reason = "STOCK_BELOW_HANDED_OUT"

    def __init__(self, message: str, handed_out: int = 0, **kw: Unpack[_Where]) -> None:
        super().__init__(message, **kw)
        self.handed_out = handed_out
        """Units held + confirmed: the floor of the stock."""

    def _fields(self) -> dict[str, str]:
        return {**super()._fields(), "handed_out": str(self.handed_out)}


class RequestIdReused(FailedPrecondition):
    """The request id took effect before with other arguments."""

    reason = "REQUEST_ID_REUSED"

    def __init__(self, message: str, request_id: str = "", **kw: Unpack[_Where]) -> None:
        super().__init__(message, **kw)
        self.request_id = request_id
        """The request id that was reused."""

    def _fields(self) -> dict[str, str]:
        return {**super()._fields(), "request_id": self.request_id}


class _Retryable(FlashstockError):
    def __init__(self, message: str, retry_after: float = 0.0, **kw: Unpack[_Where]) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        """Seconds to wait before sending the same request again."""


class Overloaded(_Retryable):
    """The node sheds load; retry the same request after ``retry_after``."""

    reason = "OVERLOADED"


class Unavailable(_Retryable):
    """The node or its Redis cannot serve now; retry with the same request id."""

    reason = "UNAVAILABLE"


class DeadlineExceeded(FlashstockError):
    """The deadline passed; the request may or may not have taken effect:
    retry it with the same request id to learn which."""

    reason = "DEADLINE_EXCEEDED"


class Unauthenticated(FlashstockError):
    """The call carries no valid credentials."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(FlashstockError):
    """The caller may not make this call."""

    reason = "PERMISSION_DENIED"


class AdmissionTokenRefused(PermissionDenied):
    """The SKU takes Deduct and Hold only with a valid admission token for the user and SKU, and the call
    carried none, or an expired, forged or foreign one (the message says which). Nothing was taken:
    the gateway gets the user a fresh token and sends again."""

    reason = "ADMISSION_TOKEN_REFUSED"


STATUS_TABLE: dict[type[FlashstockError], grpc.StatusCode] = {
    FlashstockError: grpc.StatusCode.UNKNOWN,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    SkuNotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    StockBelowHandedOut: grpc.StatusCode.FAILED_PRECONDITION,
    RequestIdReused: grpc.StatusCode.FAILED_PRECONDITION,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    AdmissionTokenRefused: grpc.StatusCode.PERMISSION_DENIED,
}
"""Each error class and the gRPC status code it travels as."""

_BY_REASON = {cls.reason: cls for cls in STATUS_TABLE}
_BY_CODE = {code: cls for cls, code in reversed(list(STATUS_TABLE.items()))}
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Codes a client retries, with the same request id (and RESOURCE_EXHAUSTED when a node shed the call:
:class:`Overloaded` with a retry delay)."""


def status_code_of(error: FlashstockError) -> grpc.StatusCode:
    """The status code ``error`` travels as (its nearest class in the table)."""
    for cls in type(error).__mro__:
        if cls in STATUS_TABLE:
            return STATUS_TABLE[cls]
    return grpc.StatusCode.UNKNOWN


def to_status(error: FlashstockError) -> status_pb2.Status:
    """``error`` as a ``google.rpc.Status`` with its rich details: what a node sends.

    The code is :func:`status_code_of` ``error``; the details are an
    ``ErrorInfo`` (domain :data:`ERROR_DOMAIN`, the error's ``reason``, its
    fields such as ``sku``, ``shard``, ``epoch`` as metadata), plus a
    ``BadRequest`` for :class:`InvalidArgument` and a ``RetryInfo`` for
    :class:`Unavailable` and :class:`Overloaded`. A servicer aborts with it::

        status = grpc_status.rpc_status.to_status(to_status(error))
        await context.abort(status.code, status.details, status.trailing_metadata)
    """
    code = status_code_of(error)
    status = status_pb2.Status(code=code.value[0], message=error.message)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error._fields())
    status.details.add().Pack(info)
    if isinstance(error, InvalidArgument) and error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        status.details.add().Pack(bad)
    if isinstance(error, _Retryable):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


def from_status(
    code: grpc.StatusCode, message: str, trailing_metadata: Iterable[tuple[str, str | bytes]] | None
) -> FlashstockError:
    """The error a failed call's status stands for (the inverse of :func:`to_status`): what a client raises.

    ``code``, ``message`` and ``trailing_metadata`` are a failed call's
    (``grpc.RpcError.code()``, ``.details()``, ``.trailing_metadata()``);
    the details travel in its ``grpc-status-details-bin`` entry. A status
    without flashstock details (a proxy's, or grpc's own) maps by its code
    alone; an unknown code maps to :class:`FlashstockError`.
    """
    status = None
    for key, value in trailing_metadata or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
    cls = _BY_CODE.get(code, FlashstockError)
    fields: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_after = 0.0
    for detail in status.details if status is not None else ():
        # Unpack returns False, and unpacks nothing, for a detail of another type.
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            if info.domain == ERROR_DOMAIN and info.reason in _BY_REASON:
                cls = _BY_REASON[info.reason]
                fields = dict(info.metadata)
        elif detail.Unpack(bad):
            violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Unpack(retry):
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    kw: dict[str, Any] = {
        "sku": fields.get("sku"),
        "shard": int(fields["shard"]) if "shard" in fields else None,
        "epoch": int(fields["epoch"]) if "epoch" in fields else None,
    }
    if issubclass(cls, InvalidArgument):
        kw["violations"] = violations
    elif issubclass(cls, _Retryable):
        kw["retry_after"] = retry_after
    elif issubclass(cls, StockBelowHandedOut):
        kw["handed_out"] = int(fields.get("handed_out", 0))
    elif issubclass(cls, RequestIdReused):
        kw["request_id"] = fields.get("request_id", "")
    return cls(message or code.name, **kw)


__all__ = [
    "ERROR_DOMAIN",
    "RETRYABLE_CODES",
    "STATUS_TABLE",
    "AdmissionTokenRefused",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "FlashstockError",
    "InvalidArgument",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "RequestIdReused",
    "SkuNotFound",
    "StockBelowHandedOut",
    "Unauthenticated",
    "Unavailable",
    "from_status",
    "status_code_of",
    "to_status",
]
