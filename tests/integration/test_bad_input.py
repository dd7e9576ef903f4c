"""Bad input from a stranger is refused with INVALID_ARGUMENT, changes nothing, and cannot flood the log.

Driven from outside: raw gRPC stubs (and raw bytes) against a node of this
module's own, on its own Redis (one test flushes it).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import grpc
import pytest
import redis as redis_py

from flashstock.server.local.procs import NodeProcess, RedisServer
from flashstock.server.rpc.validate import MAX_QTY, MAX_STOCK, MAX_TIME_MS
from flashstock.v1 import admin_pb2, admin_pb2_grpc, stock_pb2, stock_pb2_grpc
from tests.helpers import eventually, stacks, varint
from tests.helpers.processes import QUIET, running_node

# This module's own Redis, in place of the session's: assigned, so a test's
# parameter of the same name shadows no import.
redis_server = stacks.redis_server

DEDUCT = "/flashstock.v1.StockService/Deduct"
TWELVE_HOURS_MS = 12 * 3600 * 1000


@pytest.fixture(scope="module")
def node(redis_server: RedisServer) -> Iterator[NodeProcess]:
    """The only node on this module's Redis."""
    with running_node(redis_server.url, workers=1, extra_args=QUIET) as n:
        yield n


@pytest.fixture(scope="module")
def channel(node: NodeProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(node.address) as ch:
        yield ch


@pytest.fixture
def admin(channel: grpc.Channel) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel)


@pytest.fixture
def stock(channel: grpc.Channel) -> stock_pb2_grpc.StockServiceStub:
    return stock_pb2_grpc.StockServiceStub(channel)


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[redis_py.Redis]:
    client = redis_py.Redis.from_url(redis_server.url)
    yield client
    client.close()


def rid() -> str:
    return uuid.uuid4().hex


def new_sku(tag: str = "bad") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}"


def code_of(call, request) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        call(request, timeout=10)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def put(admin, sku_id: str, **fields) -> admin_pb2.Sku:  # type: ignore[no-untyped-def]
    return admin.PutSku(admin_pb2.PutSkuRequest(sku_id=sku_id, request_id=rid(), **fields), timeout=10).sku


def node_log(node: NodeProcess) -> str:
    assert node.log_path is not None
    return node.log_path.read_text(errors="replace")


MALFORMED = {
    "bad UTF-8 in sku_id": b"\x0a\x02\xff\xfe" + b"\x18\x01",
    "truncated": stock_pb2.DeductRequest(sku_id="s", user_id="u", qty=1, request_id="r").SerializeToString()[:-2],
    "huge length prefix": b"\x0a" + varint(2**31) + b"abc",
}


def test_malformed_bytes_are_invalid_argument_and_logged_once_per_kind(node, channel):
    raw = channel.unary_unary(DEDUCT, request_serializer=None, response_deserializer=None)
    answers = []
    for kind, data in MALFORMED.items():
        for _ in range(40):
            with pytest.raises(grpc.RpcError) as err:
                raw(data, timeout=10)
            answers.append((kind, err.value.code(), err.value.details()))

    assert {(kind, code) for kind, code, _ in answers} == {
        (kind, grpc.StatusCode.INVALID_ARGUMENT) for kind in MALFORMED
    }
    assert all(details.startswith("malformed request: not a flashstock.v1.DeductRequest") for _, _, details in answers)
    assert not any("DecodeError" in details for _, _, details in answers)
    text = node_log(node)
    assert "Traceback" not in text
    lines = re.findall(r"malformed Deduct request: (.*) \(\d+ more", text)
    # 120 bad requests of at most 3 kinds: one line per kind.
    assert 1 <= len(lines) <= len(MALFORMED) and len(lines) == len(set(lines))


@pytest.mark.parametrize(
    "fields",
    [
        {"sale_start_ms": 10**17},
        {"sale_end_ms": 2**62},
        {"sale_start_ms": -1},
        {"stock": MAX_STOCK + 1},
        {"per_user_limit": 2**63 - 1},
        {"max_per_request": MAX_QTY + 1},
        {"mode": 99},
        {"mode": -1},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_put_outside_a_fields_range_is_refused_and_defines_nothing(admin, fields):
    sku_id = new_sku()

    code = code_of(admin.PutSku, admin_pb2.PutSkuRequest(sku_id=sku_id, request_id=rid(), **{"stock": 1, **fields}))

    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(admin.GetSku, admin_pb2.GetSkuRequest(sku_id=sku_id)) is grpc.StatusCode.NOT_FOUND


def test_adjust_cannot_lift_the_total_past_the_most_a_sku_may_hold(admin):
    sku_id = new_sku()
    put(admin, sku_id, stock=MAX_STOCK - 5)

    too_far = admin_pb2.AdjustStockRequest(sku_id=sku_id, delta=6, request_id=rid())
    assert code_of(admin.AdjustStock, too_far) is grpc.StatusCode.INVALID_ARGUMENT
    assert admin.GetSku(admin_pb2.GetSkuRequest(sku_id=sku_id)).sku.total == MAX_STOCK - 5

    up_to = admin.AdjustStock(admin_pb2.AdjustStockRequest(sku_id=sku_id, delta=5, request_id=rid()))
    assert up_to.sku.total == up_to.sku.available == MAX_STOCK


def test_a_hold_past_the_nodes_longest_is_refused(admin, stock):
    # The node runs with the default request_ttl_s (a day): its longest hold is 12 h.
    sku_id = new_sku()
    put(admin, sku_id, stock=5)

    too_long = stock_pb2.HoldRequest(sku_id=sku_id, user_id="u", qty=1, request_id=rid(), ttl_ms=TWELVE_HOURS_MS + 1)
    assert code_of(stock.Hold, too_long) is grpc.StatusCode.INVALID_ARGUMENT
    longest = stock.Hold(
        stock_pb2.HoldRequest(sku_id=sku_id, user_id="u", qty=1, request_id=rid(), ttl_ms=TWELVE_HOURS_MS)
    )
    assert longest.outcome == stock_pb2.OUTCOME_OK
    assert longest.deduction.expires_at_ms - longest.deduction.taken_at_ms == TWELVE_HOURS_MS


@pytest.mark.parametrize(
    "request_fields",
    [{"page_size": 1001}, {"prefix": "p" * 129}, {"prefix": "a\x00"}, {"prefix": "b", "page_token": "a"}],
    ids=["page_size", "long_prefix", "control_prefix", "token_outside_prefix"],
)
def test_bad_list_requests_are_invalid_argument(admin, request_fields):
    assert code_of(admin.ListSkus, admin_pb2.ListSkusRequest(**request_fields)) is grpc.StatusCode.INVALID_ARGUMENT


def test_one_unreadable_sku_never_breaks_a_listing(admin, redis, node):
    # What an older node left in Redis: a time written as a float, and a
    # value that is no number at all.
    tag = new_sku("lst")
    floaty, broken, fine = f"{tag}-a", f"{tag}-b", f"{tag}-c"
    for sku_id in (floaty, broken, fine):
        put(admin, sku_id, stock=3)
    shards = {s.sku_id: s.shard for s in admin.ListSkus(admin_pb2.ListSkusRequest(prefix=tag)).skus}
    redis.hset(f"fs:{{s{shards[floaty]}}}:k:{floaty}", "start", "1e+17")
    redis.hset(f"fs:{{s{shards[broken]}}}:k:{broken}", "lim", "garbage")

    listed = admin.ListSkus(admin_pb2.ListSkusRequest(prefix=tag))

    assert [s.sku_id for s in listed.skus] == [floaty, fine]
    assert listed.skus[0].sale_start_ms == 10**17
    assert code_of(admin.GetSku, admin_pb2.GetSkuRequest(sku_id=broken)) is grpc.StatusCode.FAILED_PRECONDITION
    assert admin.GetSku(admin_pb2.GetSkuRequest(sku_id=floaty)).sku.sale_start_ms == 10**17
    assert "Traceback" not in node_log(node)


def test_the_largest_allowed_values_survive_a_rebuild(admin, redis, node):
    sku_id = new_sku("max")
    before = put(
        admin,
        sku_id,
        stock=MAX_STOCK,
        per_user_limit=MAX_STOCK,
        max_per_request=MAX_QTY,
        sale_start_ms=MAX_TIME_MS - 1,
        sale_end_ms=MAX_TIME_MS,
        mode=admin_pb2.MODE_DURABLE,
    )
    assert (before.sale_start_ms, before.sale_end_ms, before.total) == (MAX_TIME_MS - 1, MAX_TIME_MS, MAX_STOCK)

    redis.flushall()  # every shard gone: the node rebuilds them from the ledger

    got = eventually(
        lambda: admin.GetSku(admin_pb2.GetSkuRequest(sku_id=sku_id), timeout=10).sku,
        timeout=30,
        retry_on=(grpc.RpcError,),
    )
    listed = eventually(lambda: admin.ListSkus(admin_pb2.ListSkusRequest(prefix=sku_id), timeout=10).skus, timeout=30)
    assert got == before and list(listed) == [before]
    stored = redis.hgetall(f"fs:{{s{before.shard}}}:k:{sku_id}")
    assert not [v for v in stored.values() if b"e+" in v]
    assert "Traceback" not in node_log(node)


def test_a_batch_of_bad_items_is_invalid_argument_however_many_violations(stock):
    # 64 items, each with a bad id, a bad qty and (but the first) the SKU of
    # another item: 193 violations. The answer must stay small
    # enough for a client to take (gRPC refuses metadata past 8 KiB).
    items = [stock_pb2.BatchItem(sku_id="中" * 200, qty=-1) for _ in range(64)]
    request = stock_pb2.BatchDeductRequest(user_id="u" * 300, request_id="r" * 300, items=items)
    for _ in range(20):
        with pytest.raises(grpc.RpcError) as err:
            stock.BatchDeduct(request, timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "(the first 16 of 193 violations)" in err.value.details()
