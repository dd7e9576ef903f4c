"""Degraded mode on a real node: reads from a snapshot at most degraded_read_max_age_ms old, writes never.

Real nodes (one serving worker each, each on a Redis of its own):

- started with ``--degrade``: GetStock (and GetSku, ListSkus) asked again
  within the max age give the figures read first, even after a Deduct
  took a unit (the Deduct itself goes to Redis: it decrements); once the
  max age passed, the new figures;
- started without it (and not shedding): every read shows the last Deduct;
  the file ``<data_dir>/degrade`` switches degraded mode on at runtime, and
  removing it off again;
- the reconcile duty pauses while degraded mode is on by hand, and resumes;
- a read the snapshot can answer is answered even while the worker is full
  (its max_in_flight taken by Deducts waiting on a Redis paused for writes),
  where Deducts and a read the snapshot cannot answer are shed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Iterator

import grpc
import pytest
import redis as redis_py

from flashstock.client import AdminClient, Outcome, StockClient
from flashstock.server._node import DEGRADE_FILE
from flashstock.server.local.procs import NodeProcess, RedisServer
from flashstock.v1 import stock_pb2, stock_pb2_grpc
from tests.helpers import eventually

pytestmark = pytest.mark.slow

MAX_AGE_MS = 3000


@pytest.fixture(scope="module")
def degraded() -> Iterator[NodeProcess]:
    """A node of one worker switched to degraded mode by hand."""
    with RedisServer() as server:
        args = ["--degrade", "--degraded-read-max-age-ms", str(MAX_AGE_MS), "--reconcile-interval-s", "0.2"]
        with NodeProcess(server.url, workers=1, extra_args=args) as node:
            yield node


CAP = 2


@pytest.fixture(scope="module")
def degraded_capped() -> Iterator[tuple[RedisServer, NodeProcess]]:
    """A node of one worker, degraded by hand, that takes at most CAP StockService calls at a time."""
    with RedisServer() as server:
        args = ["--degrade", "--degraded-read-max-age-ms", "30000", "--max-in-flight", str(CAP)]
        with NodeProcess(server.url, workers=1, extra_args=args) as node:
            yield server, node


@pytest.fixture(scope="module")
def normal() -> Iterator[NodeProcess]:
    """A node of one worker with the default settings (not degraded unless it sheds or its file says so)."""
    with RedisServer() as server:
        args = ["--degraded-read-max-age-ms", str(MAX_AGE_MS), "--reconcile-interval-s", "0.2"]
        with NodeProcess(server.url, workers=1, extra_args=args) as node:
            yield node


def _log(node: NodeProcess) -> str:
    """All the node wrote to stderr so far."""
    assert node.log_path is not None
    return node.log_path.read_text(errors="replace")


def _new_sku(node: NodeProcess, stock: int = 10) -> str:
    sku = f"deg-{uuid.uuid4().hex[:8]}"
    with AdminClient(addresses=[node.address]) as admin:
        admin.put_sku(sku, stock)
    return sku


def test_reads_come_from_the_snapshot_within_the_max_age_and_deducts_never(degraded):
    sku = _new_sku(degraded)
    with StockClient(addresses=[degraded.address]) as stock, AdminClient(addresses=[degraded.address]) as admin:
        level = stock.get_stock(sku)
        sku_seen = admin.get_sku(sku)
        page = admin.list_skus(prefix=sku)
        assert level.available == 10 and sku_seen.available == 10 and page.skus[0].available == 10

        first, second = stock.deduct(sku, "u1"), stock.deduct(sku, "u2")
        assert (first.outcome, first.stock_left) == (Outcome.OK, 9)
        assert (second.outcome, second.stock_left) == (Outcome.OK, 8)  # a Deduct goes to Redis, always

        # Within the max age: the snapshot's figures, though two units were taken meanwhile.
        assert stock.get_stock(sku) == level
        assert admin.get_sku(sku) == sku_seen
        assert admin.list_skus(prefix=sku) == page
        # Another key is read afresh.
        assert admin.list_skus(prefix=sku, page_size=5).skus[0].available == 8

        # Once the max age passed: the figures of now.
        eventually(lambda: stock.get_stock(sku).available == 8, timeout=MAX_AGE_MS / 1000 * 3)
        eventually(lambda: admin.get_sku(sku).available == 8, timeout=MAX_AGE_MS / 1000 * 3)
        eventually(lambda: admin.list_skus(prefix=sku).skus[0].available == 8, timeout=MAX_AGE_MS / 1000 * 3)


def _read_after_deduct_is_cached(stock: StockClient, sku: str) -> bool:
    before = stock.get_stock(sku)
    assert stock.deduct(sku, f"u-{uuid.uuid4().hex[:6]}").outcome is Outcome.OK
    return stock.get_stock(sku) == before


def test_without_degraded_mode_every_read_shows_the_last_deduct_and_the_file_switches_it(normal):
    sku = _new_sku(normal, stock=1000)
    flag = normal.data_dir / DEGRADE_FILE
    with StockClient(addresses=[normal.address]) as stock:
        for left in range(999, 994, -1):
            assert stock.deduct(sku, f"u{left}").stock_left == left
            assert stock.get_stock(sku).available == left

        flag.touch()
        try:
            # Within a second or so the node sees the file: a read after a Deduct gives the figures before it.
            eventually(lambda: _read_after_deduct_is_cached(stock, sku), timeout=10)
        finally:
            flag.unlink()
        # Off again by itself once the file is gone: reads show each Deduct at once, the duties resume.
        eventually(lambda: not _read_after_deduct_is_cached(stock, sku), timeout=10)
        eventually(
            lambda: "non-core duties resumed (reconcile, sale figures into the ledger)" in _log(normal), timeout=10
        )
        assert (
            "non-core duties paused (reconcile, sale figures into the ledger): the node is in degraded mode by hand"
            in _log(normal)
        )
        for _ in range(3):
            taken = stock.deduct(sku, f"u-{uuid.uuid4().hex[:6]}")
            assert stock.get_stock(sku).available == taken.stock_left


def test_the_reconcile_duty_pauses_while_degraded_by_hand(degraded):
    eventually(lambda: "degraded mode on (switched on by hand)" in _log(degraded), timeout=10)
    eventually(
        lambda: (
            "non-core duties paused (reconcile, sale figures into the ledger): the node is in degraded mode by hand"
            in _log(degraded)
        ),
        timeout=10,
    )
    assert "non-core duties resumed" not in _log(degraded)


async def _code_of(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_a_read_the_snapshot_answers_is_answered_while_the_worker_sheds(degraded_capped):
    server, node = degraded_capped
    kept, unread = _new_sku(node), _new_sku(node)
    r = redis_py.Redis.from_url(server.url)
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = stock_pb2_grpc.StockServiceStub(channel)
        level = await stub.GetStock(stock_pb2.GetStockRequest(sku_id=kept), timeout=5)  # now in the snapshot
        assert level.available == 10
        assert r.client_pause(3000, all=False)  # writes (every stock script) wait: Deducts fill the worker
        try:
            fillers = [
                asyncio.create_task(
                    _code_of(
                        stub.Deduct(
                            stock_pb2.DeductRequest(sku_id=kept, user_id=f"u{i}", qty=1, request_id=f"fill-{i}"),
                            timeout=20,
                        )
                    )
                )
                for i in range(CAP + 1)
            ]
            # The worker is full once a Deduct past CAP is shed.
            first, _ = await asyncio.wait(fillers, return_when=asyncio.FIRST_COMPLETED)
            assert next(iter(first)).result() is grpc.StatusCode.RESOURCE_EXHAUSTED
            # Full: another Deduct, and a read the snapshot cannot answer, are shed ...
            extra = stub.Deduct(stock_pb2.DeductRequest(sku_id=kept, user_id="x", qty=1, request_id="x"), timeout=5)
            assert await _code_of(extra) is grpc.StatusCode.RESOURCE_EXHAUSTED
            fresh = stub.GetStock(stock_pb2.GetStockRequest(sku_id=unread), timeout=5)
            assert await _code_of(fresh) is grpc.StatusCode.RESOURCE_EXHAUSTED
            # ... but the read the snapshot holds is answered, from it.
            again = await stub.GetStock(stock_pb2.GetStockRequest(sku_id=kept), timeout=5)
            assert again == level
            assert all(not task.done() for task in fillers if task not in first)  # still full meanwhile
        finally:
            r.client_unpause()
        codes = await asyncio.gather(*fillers)
    assert codes.count(grpc.StatusCode.OK) == CAP
