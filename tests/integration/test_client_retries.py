"""The client's one choke point: retries keep the request id and mark the retry,
spread over addresses, honour the overall deadline, and map errors.

The peer here is a scripted StockService (not a stand-in for Redis, etcd or
SQL): it fails the first calls the way a node does when its Redis is away,
and records what the client sent.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import grpc
import pytest
from grpc_status import rpc_status

from flashstock.client import (
    AsyncStockClient,
    ClientConfig,
    DeadlineExceeded,
    Outcome,
    RetryPolicy,
    SkuNotFound,
    StockClient,
    Unavailable,
    to_status,
)
from flashstock.v1 import stock_pb2, stock_pb2_grpc


class ScriptedNode(stock_pb2_grpc.StockServiceServicer):
    """Answers UNAVAILABLE to the first ``failures`` Deducts, then OK; records every request."""

    def __init__(self, failures: int, error=None) -> None:
        self.failures = failures
        self.error = error or Unavailable("Redis is unreachable", retry_after=0.01)
        self.seen: list[tuple[str, bool]] = []

    async def Deduct(self, request, context):
        self.seen.append((request.request_id, request.retry))
        if len(self.seen) <= self.failures:
            status = rpc_status.to_status(to_status(self.error))
            await context.abort(status.code, status.details, status.trailing_metadata)
        return stock_pb2.DeductReply(outcome=stock_pb2.OUTCOME_OK, stock_left=1)


class ServerThread:
    """A grpc.aio server on a free loopback port, in a thread of its own."""

    def __init__(self, servicer) -> None:
        self.servicer = servicer
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        server = grpc.aio.server()
        stock_pb2_grpc.add_StockServiceServicer_to_server(self.servicer, server)
        server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._stop.wait()
        await server.stop(0)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc_info) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def test_retries_keep_the_request_id_and_are_marked():
    with ServerThread(ScriptedNode(failures=3)) as node:
        with StockClient(ClientConfig(addresses=[node.address])) as client:
            result = client.deduct("sku", "u1", 1, request_id="order-1")
    assert result.outcome is Outcome.OK
    assert node.servicer.seen == [("order-1", False), ("order-1", True), ("order-1", True), ("order-1", True)]


async def test_the_async_client_retries_the_same_way():
    with ServerThread(ScriptedNode(failures=2)) as node:
        async with AsyncStockClient(ClientConfig(addresses=[node.address])) as client:
            result = await client.deduct("sku", "u1", 1)
    assert result.outcome is Outcome.OK
    ids = {rid for rid, _ in node.servicer.seen}
    assert len(ids) == 1 and len(node.servicer.seen) == 3  # a generated id, kept across retries


def test_a_retry_goes_to_the_next_address():
    with ServerThread(ScriptedNode(failures=10**6)) as down, ServerThread(ScriptedNode(failures=0)) as up:
        config = ClientConfig(addresses=[down.address, up.address], retry=RetryPolicy(initial_backoff_s=0.001))
        with StockClient(config) as client:
            for _ in range(4):
                assert client.deduct("sku", "u1", 1).outcome is Outcome.OK
    assert up.servicer.seen and all(retry or rid for rid, retry in up.servicer.seen)


def test_retries_stop_at_the_overall_deadline():
    with ServerThread(ScriptedNode(failures=10**6)) as node:
        config = ClientConfig(addresses=[node.address], deadline_s=0.5, retry=RetryPolicy(max_attempts=1000))
        with StockClient(config) as client, pytest.raises((Unavailable, DeadlineExceeded)):
            client.deduct("sku", "u1", 1)
    assert 1 < len(node.servicer.seen) < 1000


def test_errors_that_are_not_transient_are_not_retried():
    with ServerThread(ScriptedNode(failures=10**6, error=SkuNotFound("no such SKU", sku="sku"))) as node:
        with StockClient(ClientConfig(addresses=[node.address])) as client, pytest.raises(SkuNotFound) as err:
            client.deduct("sku", "u1", 1)
    assert err.value.sku == "sku" and len(node.servicer.seen) == 1
