"""A worker stops sending to a sick Redis: after Redis timeouts in a row it answers UNAVAILABLE at once,
turns NOT_SERVING, probes, and comes back by itself.

A real node (one worker, redis_timeout_s=0.3, redis_trip_timeouts=3) on a real
Redis whose writes are paused (``CLIENT PAUSE ... WRITE``: every script waits
past the timeout, while the node's pub/sub feed stays connected).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
import redis as redis_py
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flashstock.client import AdminClient, Unavailable
from flashstock.client.errors import from_status
from flashstock.server.local.procs import NodeProcess, RedisServer
from flashstock.v1 import stock_pb2, stock_pb2_grpc
from tests.helpers import eventually

pytestmark = pytest.mark.slow

TRIP_AFTER = 3


@pytest.fixture(scope="module")
def touchy() -> Iterator[tuple[RedisServer, NodeProcess]]:
    with RedisServer() as server:
        args = [
            "--redis-timeout-s",
            "0.3",
            "--redis-trip-timeouts",
            str(TRIP_AFTER),
            "--redis-cooldown-ms",
            "200",
        ]
        with NodeProcess(server.url, workers=1, extra_args=args) as node:
            yield server, node


def _deduct(stub: stock_pb2_grpc.StockServiceStub, sku: str) -> object:
    rid = uuid.uuid4().hex
    try:
        return stub.Deduct(stock_pb2.DeductRequest(sku_id=sku, user_id=rid, qty=1, request_id=rid), timeout=20)
    except grpc.RpcError as exc:
        return exc


def _health(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="flashstock.v1.StockService"), timeout=5
    )
    return int(reply.status)


def test_a_worker_fails_fast_on_a_sick_redis_and_probes_its_way_back(touchy):
    server, node = touchy
    sku = f"sick-{uuid.uuid4().hex[:8]}"
    with AdminClient(addresses=[node.address]) as admin:
        admin.put_sku(sku, 1000)
    r = redis_py.Redis.from_url(server.url)
    with grpc.insecure_channel(node.address) as channel:
        stub = stock_pb2_grpc.StockServiceStub(channel)
        assert isinstance(_deduct(stub, sku), stock_pb2.DeductReply)
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert r.client_pause(60_000, all=False)
        try:
            answers = []
            for _ in range(TRIP_AFTER + 1):
                answers.append(_deduct(stub, sku))
            errors = [from_status(a.code(), a.details() or "", a.trailing_metadata()) for a in answers]
            assert all(isinstance(e, Unavailable) for e in errors), errors
            # The first ones waited for Redis and timed out; then the worker stopped sending.
            assert all("Timeout" in e.message for e in errors[:TRIP_AFTER]), errors
            fast = errors[TRIP_AFTER]
            assert "cool-down" in fast.message and fast.retry_after > 0, fast
            eventually(lambda: _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING)
            # Still paused: still refused at once (the probes keep failing).
            again = _deduct(stub, sku)
            assert again.code() is grpc.StatusCode.UNAVAILABLE and "cool-down" in again.details()
        finally:
            r.client_unpause()
        # Redis answers again: a probe finds it, the worker sends again, health follows.
        eventually(lambda: _health(channel) == health_pb2.HealthCheckResponse.SERVING, timeout=15)
        eventually(lambda: isinstance(_deduct(stub, sku), stock_pb2.DeductReply), timeout=15)
