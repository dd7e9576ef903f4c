"""The public surface is small and pinned, and every RPC has its typed wrapper."""

import inspect

import flashstock.client as client
import flashstock.client.errors as errors
import flashstock.lockmgr as lockmgr
from flashstock.client import (
    AdminClient,
    AsyncAdminClient,
    AsyncStockClient,
    DeductionState,
    Mode,
    Outcome,
    StockClient,
)
from flashstock.client._transport import rpc_names
from flashstock.v1 import admin_pb2, stock_pb2


def test_client_exports():
    assert client.__all__ == [
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
    assert all(hasattr(client, name) for name in client.__all__)


def test_lockmgr_exports():
    assert lockmgr.__all__ == [
        "DEFAULT_SESSION",
        "DEFAULT_SHARDS",
        "NO_ACCESS",
        "ClusterKeys",
        "ClusterView",
        "CoordinationError",
        "EtcdAccess",
        "EtcdSession",
        "LeaseLost",
        "NodeIdTaken",
        "NodeInfo",
        "Overrides",
        "SessionConfig",
        "SettingMismatch",
        "ShardCountMismatch",
        "ShardLease",
        "ShardOwner",
        "assign",
        "audit_records",
        "auth_refusal",
        "check_id",
        "claim",
        "drain",
        "etcd_client",
        "forget_audit_records",
        "grpc_target",
        "init_cluster",
        "live_nodes",
        "moves",
        "owner_compare",
        "owners",
        "pin",
        "read_overrides",
        "read_view",
        "release",
        "remove_pins",
        "shard_of",
        "shard_ranges",
        "stable_hash",
        "undrain",
        "unpin",
        "wait_for_owner",
        "watch_nodes",
        "watch_overrides",
        "watch_owners",
    ]
    assert all(hasattr(lockmgr, name) for name in lockmgr.__all__)
    for name in lockmgr.__all__:
        obj = getattr(lockmgr, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, name


def test_public_names_have_docstrings():
    for name in client.__all__:
        obj = getattr(client, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, name


def test_the_error_tree_is_a_public_module():
    # Everything the client exports of it, and the mapping a service in front of flashstock needs.
    from_errors = {name for name in client.__all__ if getattr(client, name) is getattr(errors, name, None)}
    assert from_errors <= set(errors.__all__)
    assert {"to_status", "from_status", "STATUS_TABLE", "FlashstockError", "FieldViolation"} <= set(errors.__all__)
    assert client.to_status is errors.to_status and client.from_status is errors.from_status


def test_all_grpc_calls_present():
    rpcs = rpc_names()
    for service, clients in (
        ("StockService", (AsyncStockClient, StockClient)),
        ("AdminService", (AsyncAdminClient, AdminClient)),
    ):
        for cls in clients:
            assert set(cls.RPCS) == set(rpcs[service]), cls
            for method in cls.RPCS.values():
                assert callable(getattr(cls, method)), (cls, method)
    for cls in (AsyncStockClient, AsyncAdminClient):
        for method in cls.RPCS.values():
            assert inspect.iscoroutinefunction(getattr(cls, method))


def test_enums_match_the_proto():
    assert {o.name: o.value for o in Outcome} == {
        n.removeprefix("OUTCOME_"): v for n, v in stock_pb2.Outcome.items() if v
    }
    assert {s.name: s.value for s in DeductionState} == {
        n.removeprefix("DEDUCTION_STATE_"): v for n, v in stock_pb2.DeductionState.items()
    }
    assert {m.name: m.value for m in Mode} == {n.removeprefix("MODE_"): v for n, v in admin_pb2.Mode.items() if v}


def test_every_proto_field_is_documented():
    from pathlib import Path

    for proto in (Path(__file__).parents[2] / "protos").rglob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            is_field = (
                stripped.endswith(";") and "=" in stripped and not stripped.startswith(("syntax", "option", "//"))
            )
            if is_field:
                assert lines[i - 1].strip().startswith("//"), f"{proto.name}:{i + 1} undocumented: {stripped}"
