"""flashstock's client library: typed stubs for order, cart and payment services.

::

    from flashstock.client import AsyncStockClient, Outcome

    async with AsyncStockClient(addresses="10.0.0.5:50051,10.0.0.6:50051") as stock:
        result = await stock.deduct("sku-42", user_id="u-7", qty=1, request_id=order_id)
        if result.outcome in (Outcome.OK, Outcome.DUPLICATE):
            ...

To call the live nodes registered in etcd instead of fixed addresses, and
follow them as they join and leave::

    AsyncStockClient(ClientConfig(etcd="10.0.0.2:2379", cluster="prod"))

:class:`StockClient` and :class:`AdminClient` are the blocking twins.
Errors are the :class:`FlashstockError` tree (drawn in
:mod:`flashstock.client.errors`); business outcomes are values.
:func:`to_status` and :func:`from_status` map an error to a gRPC status and
back, with the one table a node and a client share: a service of your own
in front of flashstock can answer with the same statuses.
"""

from ._admission import AdmissionKey, admission_token, read_admission_key, token_problem
from ._async import AsyncAdminClient, AsyncStockClient
from ._config import CHANNEL_OPTIONS, ClientConfig, RetryPolicy
from ._sync import AdminClient, StockClient
from ._types import (
    AdminResult,
    BatchItem,
    BatchItemResult,
    BatchResult,
    Deduction,
    DeductionState,
    DeductResult,
    HoldResult,
    Mode,
    Outcome,
    SettleResult,
    Sku,
    SkuDefinition,
    SkuPage,
    StockLevel,
)
from .errors import (
    AdmissionTokenRefused,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    FlashstockError,
    InvalidArgument,
    NotFound,
    Overloaded,
    PermissionDenied,
    RequestIdReused,
    SkuNotFound,
    StockBelowHandedOut,
    Unauthenticated,
    Unavailable,
    from_status,
    to_status,
)

__all__ = [
    "CHANNEL_OPTIONS",
    "AdminClient",
    "AdminResult",
    "AdmissionKey",
    "AdmissionTokenRefused",
    "AsyncAdminClient",
    "AsyncStockClient",
    "BatchItem",
    "BatchItemResult",
    "BatchResult",
    "ClientConfig",
    "DeadlineExceeded",
    "Deduction",
    "DeductionState",
    "DeductResult",
    "FailedPrecondition",
    "FieldViolation",
    "FlashstockError",
    "HoldResult",
    "InvalidArgument",
    "Mode",
    "NotFound",
    "Outcome",
    "Overloaded",
    "PermissionDenied",
    "RequestIdReused",
    "RetryPolicy",
    "SettleResult",
    "Sku",
    "SkuDefinition",
    "SkuNotFound",
    "SkuPage",
    "StockBelowHandedOut",
    "StockClient",
    "StockLevel",
    "Unauthenticated",
    "Unavailable",
    "admission_token",
    "from_status",
    "read_admission_key",
    "to_status",
    "token_problem",
]
