"""A node sheds StockService calls past its max_in_flight at once, and they take nothing.

A real node (one serving worker, max_in_flight=4) on a real Redis whose writes
are paused (``CLIENT PAUSE ... WRITE``: every stock script waits), driven by
raw concurrent gRPC calls (not the client, which would retry them): four calls
wait on Redis, the others are refused with RESOURCE_EXHAUSTED and a RetryInfo
before the pause ends; they left no record in Redis or the ledger, a resend of
one takes its unit, and the node serves normally after the load. The client
library retries such an answer by itself.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import Iterator

import grpc
import pytest
import redis as redis_py
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from flashstock.client import (
    AdminClient,
    AsyncStockClient,
    ClientConfig,
    Outcome,
    Overloaded,
    RetryPolicy,
)
from flashstock.client.errors import from_status
from flashstock.server.ledger import Ledger, sqlite_url
from flashstock.server.local.procs import NodeProcess, RedisServer, free_port
from flashstock.server.rpc.admission import RETRY_MAX_S, RETRY_MIN_S
from flashstock.v1 import stock_pb2, stock_pb2_grpc
from tests.helpers import eventually

pytestmark = pytest.mark.slow

CAP = 4
CALLS = 40
PAUSE_MS = 1500


@pytest.fixture(scope="module")
def capped() -> Iterator[tuple[RedisServer, NodeProcess, int]]:
    """A Redis of its own and a node of one worker that takes at most CAP calls at a time."""
    metrics_port = free_port()
    with RedisServer() as server:
        args = ["--max-in-flight", str(CAP), "--metrics-port", str(metrics_port)]
        with NodeProcess(server.url, workers=1, extra_args=args) as node:
            yield server, node, metrics_port


def _handled(metrics_port: int, code: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        families = list(text_string_to_metric_families(reply.read().decode()))
    return sum(
        s.value
        for family in families
        for s in family.samples
        if s.name == "grpc_server_handled_total"
        and s.labels.get("grpc_method") == "Deduct"
        and s.labels.get("grpc_code") == code
    )


def _recorded_ids(r: redis_py.Redis, sku: str) -> set[str]:
    """Every request id with a first answer recorded in Redis for ``sku``."""
    ids: set[str] = set()
    for key in r.scan_iter(match=f"fs:*:r:*:{sku}"):
        ids |= {k.decode() for k in r.hkeys(key)}
    return ids


async def _deduct(stub: stock_pb2_grpc.StockServiceStub, sku: str, rid: str, done: list[str]) -> tuple[str, object]:
    """One raw Deduct: (request id, the reply or the grpc error); ``done`` gets the id when it is answered."""
    try:
        reply = await stub.Deduct(
            stock_pb2.DeductRequest(sku_id=sku, user_id=f"u-{rid}", qty=1, request_id=rid), timeout=20
        )
        result: object = reply
    except grpc.aio.AioRpcError as exc:
        result = exc
    done.append(rid)
    return rid, result


async def _fill(stub: stock_pb2_grpc.StockServiceStub, sku: str) -> list[asyncio.Task[tuple[str, object]]]:
    """Send 2 x CAP raw Deducts while Redis is paused; return once the first is answered, shed: the worker
    is full then (its CAP admitted calls wait for Redis), and stays full until the pause ends."""
    tasks = [asyncio.create_task(_deduct(stub, sku, uuid.uuid4().hex, [])) for _ in range(2 * CAP)]
    first, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    _, res = next(iter(first)).result()
    assert isinstance(res, grpc.aio.AioRpcError) and res.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, res
    return tasks


async def test_calls_past_the_cap_are_shed_at_once_and_take_nothing(capped):
    server, node, metrics_port = capped
    sku = f"shed-{uuid.uuid4().hex[:8]}"
    with AdminClient(addresses=[node.address]) as admin:
        admin.put_sku(sku, 1000)
    r = redis_py.Redis.from_url(server.url)
    shed_before = _handled(metrics_port, "RESOURCE_EXHAUSTED")
    ids = [uuid.uuid4().hex for _ in range(CALLS)]
    done: list[str] = []
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = stock_pb2_grpc.StockServiceStub(channel)
        await channel.channel_ready()
        assert r.client_pause(PAUSE_MS, all=False)  # writes (every stock script) wait
        try:
            calls = [asyncio.create_task(_deduct(stub, sku, rid, done)) for rid in ids]
            # While the worker is full, operators and health checks are still answered.
            sku_now = await asyncio.to_thread(lambda: AdminClient(addresses=[node.address]).get_sku(sku))
            assert sku_now.total == 1000
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="flashstock.v1.StockService"), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            results = dict(await asyncio.gather(*calls))
        finally:
            r.client_unpause()

    ok = {rid for rid, res in results.items() if isinstance(res, stock_pb2.DeductReply)}
    shed = {
        rid
        for rid, res in results.items()
        if isinstance(res, grpc.aio.AioRpcError) and res.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    }
    assert ok | shed == set(ids), {rid: res for rid, res in results.items() if rid not in ok | shed}
    assert CAP <= len(ok) < CALLS and shed
    assert all(results[rid].outcome == stock_pb2.OUTCOME_OK for rid in ok)
    # Refused at once: every shed call was answered before any admitted one (those wait for Redis).
    assert set(done[: len(shed)]) == shed
    for rid in shed:
        exc = results[rid]
        error = from_status(exc.code(), exc.details() or "", exc.trailing_metadata())
        assert isinstance(error, Overloaded)
        assert RETRY_MIN_S <= error.retry_after <= RETRY_MAX_S
        assert "max_in_flight" in error.message and "retry" in error.message

    # Units handed out == OK answers; a shed id left no record in Redis nor in the ledger.
    level = await asyncio.to_thread(lambda: AdminClient(addresses=[node.address]).get_sku(sku))
    assert level.total - level.available == len(ok)
    recorded = _recorded_ids(r, sku)
    assert ok <= recorded and not shed & recorded
    ledger = Ledger(sqlite_url(node.data_dir))
    try:
        eventually(lambda: set(ledger.deductions_of(ok, sku)) == ok)
        assert not ledger.deductions_of(shed, sku)
    finally:
        ledger.close()

    # The worker counted each shed call as RESOURCE_EXHAUSTED.
    eventually(lambda: _handled(metrics_port, "RESOURCE_EXHAUSTED") - shed_before == len(shed), timeout=15)

    # After the load the node serves normally: a shed id, sent again, takes its unit now (it took none before).
    async with AsyncStockClient(ClientConfig(addresses=[node.address])) as client:
        again = await client.deduct(sku, f"u-{min(shed)}", 1, request_id=min(shed))
        assert again.outcome is Outcome.OK and again.deduction is not None
        fresh = await asyncio.gather(*(client.deduct(sku, f"v{i}", 1) for i in range(CAP)))
        assert all(x.outcome is Outcome.OK for x in fresh)


async def test_the_client_retries_a_shed_call_and_succeeds(capped):
    server, node, _ = capped
    sku = f"shed-{uuid.uuid4().hex[:8]}"
    with AdminClient(addresses=[node.address]) as admin:
        admin.put_sku(sku, 1000)
    r = redis_py.Redis.from_url(server.url)
    config = ClientConfig(addresses=[node.address], deadline_s=20, retry=RetryPolicy(max_attempts=1000))
    async with grpc.aio.insecure_channel(node.address) as channel, AsyncStockClient(config) as client:
        stub = stock_pb2_grpc.StockServiceStub(channel)
        assert r.client_pause(PAUSE_MS, all=False)
        try:
            # Fill the worker with raw calls, then ask through the client: it is shed, waits, and retries.
            fillers = await _fill(stub, sku)
            result = await client.deduct(sku, "patient", 1, request_id="patient-1")
        finally:
            r.client_unpause()
        await asyncio.gather(*fillers)
    assert result.outcome is Outcome.OK
    assert "patient-1" in _recorded_ids(r, sku)


async def test_a_shed_answer_surfaces_as_overloaded_when_the_client_gives_up(capped):
    server, node, _ = capped
    sku = f"shed-{uuid.uuid4().hex[:8]}"
    with AdminClient(addresses=[node.address]) as admin:
        admin.put_sku(sku, 1000)
    r = redis_py.Redis.from_url(server.url)
    config = ClientConfig(addresses=[node.address], deadline_s=20, retry=RetryPolicy(max_attempts=2))
    async with grpc.aio.insecure_channel(node.address) as channel, AsyncStockClient(config) as client:
        stub = stock_pb2_grpc.StockServiceStub(channel)
        assert r.client_pause(PAUSE_MS, all=False)
        try:
            fillers = await _fill(stub, sku)
            with pytest.raises(Overloaded) as raised:
                await client.deduct(sku, "impatient", 1, request_id="impatient-1")
        finally:
            r.client_unpause()
        await asyncio.gather(*fillers)
    assert raised.value.retry_after > 0
    assert "impatient-1" not in _recorded_ids(r, sku)
