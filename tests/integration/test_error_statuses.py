"""Errors travel as gRPC status codes with rich details; a bad request or a lost Redis takes nothing."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from flashstock.client import (
    AdminClient,
    ClientConfig,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Outcome,
    RetryPolicy,
    SkuNotFound,
    StockClient,
    Unavailable,
)
from flashstock.v1 import stock_pb2, stock_pb2_grpc
from tests.helpers import eventually

TOO_LONG = "x" * 129
LONGEST = "x" * 128


def rid() -> str:
    return uuid.uuid4().hex


def fields_of(err: pytest.ExceptionInfo) -> list[str]:
    return sorted(v.field for v in err.value.violations)


@pytest.mark.parametrize(
    ("sku_id", "user_id", "qty", "request_id", "bad"),
    [
        ("", "u1", 1, "r", ["sku_id"]),
        (TOO_LONG, "u1", 1, "r", ["sku_id"]),
        ("中" * 43, "u1", 1, "r", ["sku_id"]),  # 43 characters, 129 bytes
        ("SKU", "", 1, "r", ["user_id"]),
        ("SKU", TOO_LONG, 1, "r", ["user_id"]),
        ("SKU", "u1", 1, TOO_LONG, ["request_id"]),
        ("SKU", "u1", 1, "bad\nid", ["request_id"]),
        ("SKU", "u1", 0, "r", ["qty"]),
        ("SKU", "u1", -1, "r", ["qty"]),
        ("", "", 0, TOO_LONG, ["qty", "request_id", "sku_id", "user_id"]),
    ],
)
def test_bad_deduct_is_invalid_argument_naming_every_bad_field(
    admin, stock, sku, sku_id, user_id, qty, request_id, bad
):
    admin.put_sku(sku, 5)
    sku_id = sku if sku_id == "SKU" else sku_id
    request_id = rid() if request_id == "r" else request_id

    with pytest.raises(InvalidArgument) as err:
        stock.deduct(sku_id, user_id, qty, request_id=request_id)

    assert fields_of(err) == bad
    assert stock.get_stock(sku).available == 5


def test_ids_of_128_bytes_are_accepted(admin, stock):
    sku_id = "s" * 120 + uuid.uuid4().hex[:8]
    admin.put_sku(sku_id, 1)

    r = stock.deduct(sku_id, LONGEST, 1, request_id=uuid.uuid4().hex * 4)

    assert r.outcome is Outcome.OK


def test_bad_hold_and_settle_ids_are_invalid_argument(admin, stock, sku):
    admin.put_sku(sku, 5)
    with pytest.raises(InvalidArgument) as err:
        stock.hold(sku, "u1", 0, ttl_ms=-5)
    assert fields_of(err) == ["qty", "ttl_ms"]
    with pytest.raises(InvalidArgument) as err:
        stock.confirm(sku, TOO_LONG)
    assert fields_of(err) == ["hold_id"]
    with pytest.raises(InvalidArgument) as err:
        stock.release("", "h")
    assert fields_of(err) == ["sku_id"]
    assert stock.get_stock(sku).available == 5


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"stock": -1}, ["stock"]),
        ({"per_user_limit": -1}, ["per_user_limit"]),
        ({"max_per_request": -1}, ["max_per_request"]),
        ({"sale_start_ms": 2_000, "sale_end_ms": 1_000}, ["sale_end_ms"]),
        ({"sale_start_ms": 2_000, "sale_end_ms": 2_000}, ["sale_end_ms"]),
        ({"sale_start_ms": -1}, ["sale_start_ms"]),
    ],
)
def test_bad_put_sku_is_invalid_argument_and_defines_nothing(admin, sku, kwargs, bad):
    kwargs = {"stock": 5, **kwargs}

    with pytest.raises(InvalidArgument) as err:
        admin.put_sku(sku, kwargs.pop("stock"), **kwargs)

    assert fields_of(err) == bad
    with pytest.raises(SkuNotFound):
        admin.get_sku(sku)


def test_put_sku_with_oversized_id_is_invalid_argument(admin):
    with pytest.raises(InvalidArgument) as err:
        admin.put_sku(TOO_LONG, 1)
    assert fields_of(err) == ["sku_id"]


def test_adjust_by_zero_is_invalid_argument(admin, sku):
    admin.put_sku(sku, 5)
    with pytest.raises(InvalidArgument) as err:
        admin.adjust_stock(sku, 0)
    assert fields_of(err) == ["delta"]
    assert admin.get_sku(sku).total == 5


def test_unknown_sku_is_not_found_naming_the_sku(stock, sku):
    for call in (
        lambda: stock.deduct(sku, "u1", 1),
        lambda: stock.hold(sku, "u1", 1),
        lambda: stock.get_stock(sku),
    ):
        with pytest.raises(SkuNotFound) as err:
            call()
        assert isinstance(err.value, NotFound)
        assert err.value.sku == sku


def test_raw_status_is_invalid_argument_with_bad_request_details(node, sku):
    with grpc.insecure_channel(node.address) as channel:
        stub = stock_pb2_grpc.StockServiceStub(channel)
        request = stock_pb2.DeductRequest(sku_id=sku, user_id="u1", qty=0, request_id="")
        with pytest.raises(grpc.RpcError) as err:
            stub.Deduct(request, timeout=5)

    call = err.value
    assert call.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert any(key == "grpc-status-details-bin" for key, _ in call.trailing_metadata())
    status = rpc_status.from_call(call)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad = [error_details_pb2.BadRequest() for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
    assert len(bad) == 1
    next(d for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)).Unpack(bad[0])
    assert sorted(v.field for v in bad[0].field_violations) == ["qty", "request_id"]
    assert all(v.description for v in bad[0].field_violations)


def test_raw_status_of_unknown_sku_is_not_found(node, sku):
    with grpc.insecure_channel(node.address) as channel:
        stub = stock_pb2_grpc.StockServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetStock(stock_pb2.GetStockRequest(sku_id=sku), timeout=5)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


# -- Redis down --------------------------------------------------------------


def _clients(stack, deadline_s=10.0):
    config = ClientConfig(
        addresses=[stack.node.address],
        deadline_s=deadline_s,
        attempt_timeout_s=min(deadline_s, 3.0),
        retry=RetryPolicy(max_backoff_s=0.2),
    )
    return StockClient(config), AdminClient(config)


def test_redis_down_is_unavailable_and_the_node_recovers_when_it_is_back(private_stack, sku):
    stock, admin = _clients(private_stack)
    short, _ = _clients(private_stack, deadline_s=1.0)
    with stock, admin, short:
        admin.put_sku(sku, 5)
        assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK

        private_stack.kill_redis()

        with pytest.raises((Unavailable, DeadlineExceeded)):
            short.deduct(sku, "u2", 1)
        with pytest.raises((Unavailable, DeadlineExceeded)):
            short.get_stock(sku)
        assert private_stack.node.proc.poll() is None, private_stack.node.log()

        private_stack.restart_redis()  # empty: the SKU is gone with the old data
        admin.put_sku(sku, 5)

        r = eventually(
            lambda: stock.deduct(sku, "u2", 1), until=lambda r: r.outcome is Outcome.OK, retry_on=(Unavailable,)
        )
        assert r.stock_left == 4
        assert stock.get_stock(sku).available == 4


def test_deduct_refused_while_redis_is_down_took_nothing(private_stack, sku, tmp_path):
    # Redis with its data on disk, every write synced: what it said it had survives a crash.
    persistent = ["--appendonly", "yes", "--appendfsync", "always"]
    private_stack.restart_redis(folder=tmp_path, extra_args=persistent)
    stock, admin = _clients(private_stack)
    short, _ = _clients(private_stack, deadline_s=1.0)
    with stock, admin, short:
        admin.put_sku(sku, 5)
        assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK
        request_id = rid()

        private_stack.kill_redis()
        with pytest.raises((Unavailable, DeadlineExceeded)):
            short.deduct(sku, "u2", 1, request_id=request_id)
        private_stack.restart_redis(folder=tmp_path, extra_args=persistent)

        level = eventually(lambda: stock.get_stock(sku), retry_on=(Unavailable,))
        assert (level.total, level.available, level.confirmed) == (5, 4, 1)
        # The same request again is a fresh attempt: the first took no effect.
        again = stock.deduct(sku, "u2", 1, request_id=request_id, retry=True)
        assert again.outcome is Outcome.OK
        assert stock.get_stock(sku).available == 3


def test_sold_out_sku_sells_again_after_redis_restarts_empty(private_stack, sku):
    stock, admin = _clients(private_stack)
    with stock, admin:
        admin.put_sku(sku, 1)
        assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK
        assert stock.deduct(sku, "u2", 1).outcome is Outcome.SOLD_OUT

        private_stack.kill_redis()
        private_stack.restart_redis()
        eventually(lambda: admin.put_sku(sku, 3), retry_on=(Unavailable,))

        # The node's memory of the old sell-out must not outlive the data it came from.
        eventually(lambda: stock.deduct(sku, "u2", 1), until=lambda r: r.outcome is Outcome.OK, retry_on=(Unavailable,))
        assert stock.get_stock(sku).available == 2


def _health(address: str, service: str) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
        )


def test_health_follows_redis_while_the_process_stays_serving(private_stack):
    from grpc_health.v1 import health_pb2

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    address, service = private_stack.node.address, "flashstock.v1.StockService"
    assert _health(address, service) == serving

    private_stack.kill_redis()
    eventually(lambda: _health(address, service), until=lambda s: s == not_serving)
    assert _health(address, "") == serving  # the process itself is alive

    private_stack.restart_redis()
    eventually(lambda: _health(address, service), until=lambda s: s == serving)


def test_an_empty_request_id_is_refused_not_replaced(stock, admin, sku):
    admin.put_sku(sku, 5)
    with pytest.raises(InvalidArgument) as err:
        stock.deduct(sku, "u1", 1, request_id="")
    assert [v.field for v in err.value.violations] == ["request_id"]
    assert stock.get_stock(sku).available == 5
