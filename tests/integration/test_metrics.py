"""A node's metrics endpoint, scraped over HTTP as Prometheus would: the figures of every worker.

The node runs two serving workers and its duties process; calls come over
many connections (each lands on one worker, SO_REUSEPORT), from a caller
that knows only the node's address (:class:`Stranger`). What each worker
counted is read from its own snapshot file alone (the node's
``<data_dir>/metrics/<node id>/worker-<i>.json``), so the test knows both
served calls, and that the endpoint shows their sum, no more and no less.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from flashstock.server._serving_metrics import serving_folder
from flashstock.server.local.procs import NodeProcess, RedisServer, free_port
from tests.helpers import aeventually, eventually
from tests.helpers.stranger import Stranger

STOCK = "flashstock.v1.StockService"
_ids = itertools.count()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis of the test's own (a Redis is bound to the ledger of the first node on it)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def metered(redis_server: RedisServer) -> Iterator[tuple[NodeProcess, int]]:
    """A fresh node of two workers and a duties process, with its metrics endpoint."""
    port = free_port()
    with NodeProcess(redis_server.url, workers=2, extra_args=["--metrics-port", str(port)]) as node:
        yield node, port


def scrape(port: int) -> list[Metric]:
    """The node's metrics endpoint, parsed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return list(text_string_to_metric_families(reply.read().decode()))


def total(families: Iterable[Metric], sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` whose labels include ``labels``."""
    return sum(
        s.value
        for family in families
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def figures_folder(node: NodeProcess) -> Path:
    return serving_folder(str(node.data_dir), node.address)


def deducts_by_worker(node: NodeProcess) -> dict[int, int]:
    """Deduct calls answered OK, as each worker's own snapshot file says (workers that answered any)."""
    counts = {}
    for path in figures_folder(node).glob("worker-*.json"):
        snapshot = json.loads(path.read_bytes())
        n = sum(
            rpc["handled"].get("OK", 0)
            for rpc in snapshot["rpcs"]
            if rpc["service"] == STOCK and rpc["method"] == "Deduct"
        )
        if n:
            counts[snapshot["worker"]] = n
    return counts


async def deduct_over_fresh_connections(node: NodeProcess, calls: int, sku: str) -> None:
    """``calls`` deductions of ``sku`` at once, over 16 new connections (spread over the workers by the kernel)."""
    stranger = Stranger([node.address], connections=16)
    try:
        replies = await asyncio.gather(
            *(
                stranger.call("Deduct", sku_id=sku, user_id=f"u{next(_ids)}", qty=1, request_id=f"r{next(_ids)}")
                for _ in range(calls)
            )
        )
        assert {stranger.outcome(r) for r in replies} == {"OUTCOME_OK"}
    finally:
        await stranger.close()


async def test_the_endpoint_sums_the_calls_of_both_workers(metered):
    node, port = metered
    stranger = Stranger([node.address])
    await stranger.call("PutSku", sku_id="metered", stock=100_000, request_id="put-metered")
    not_found = 0
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stranger.call("GetStock", sku_id="no-such-sku")
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        not_found += 1
    await stranger.close()

    sent = 0
    for _ in range(10):  # each round's 16 connections all landing on one worker: 2 ** -15
        await deduct_over_fresh_connections(node, 50, "metered")
        sent += 50
        by_worker = await aeventually(
            lambda: deducts_by_worker(node), until=lambda d, sent=sent: sum(d.values()) == sent
        )
        if len(by_worker) >= 2:
            break
    assert sorted(by_worker) == [0, 1], f"Deducts answered per worker: {by_worker}"

    deduct = {"grpc_service": STOCK, "grpc_method": "Deduct"}
    get_stock = {"grpc_service": STOCK, "grpc_method": "GetStock"}
    # The workers flush once a second: the endpoint catches up within one interval.
    families = await aeventually(
        lambda: scrape(port),
        until=lambda f: (
            total(f, "grpc_server_handled_total", grpc_code="OK", **deduct) == sent
            and total(f, "grpc_server_handled_total", grpc_code="NOT_FOUND", **get_stock) == not_found
        ),
    )
    assert total(families, "grpc_server_handled_total", **deduct) == sent
    assert total(families, "grpc_server_started_total", grpc_type="unary", **deduct) == sent
    assert total(families, "grpc_server_handling_seconds_count", grpc_type="unary", **deduct) == sent
    assert total(families, "grpc_server_handling_seconds_bucket", le="+Inf", **deduct) == sent
    assert 0 < total(families, "grpc_server_handling_seconds_sum", **deduct) < sent * 10
    assert total(families, "grpc_server_handled_total", **get_stock) == not_found
    assert total(families, "grpc_server_handling_seconds_count", **get_stock) == not_found
    assert total(families, "grpc_server_handled_total", grpc_method="PutSku", grpc_code="OK") == 1
    assert total(families, "flashstock_rpcs_in_flight", **deduct) == 0
    assert total(families, "flashstock_rpcs_in_flight") == 0
    # Every deduction went to Redis in some batch of the coalescer.
    assert total(families, "flashstock_coalesced_batch_size_sum") == sent
    assert 0 < total(families, "flashstock_coalesced_batch_size_count") <= sent
    # Each worker's own CPU and memory, by its index.
    for worker in ("0", "1"):
        assert total(families, "flashstock_worker_cpu_seconds_total", worker=worker) > 0
        assert total(families, "flashstock_worker_resident_memory_bytes", worker=worker) > 1_000_000


def test_build_info_process_figures_and_duty_metrics_are_served(metered):
    node, port = metered
    families = {f.name: f for f in scrape(port)}
    (info,) = families["flashstock_build_info"].samples
    assert info.value == 1
    assert info.labels["version"] and info.labels["python"].count(".") == 2 and info.labels["grpcio"]
    # The process that serves the endpoint (the duties process).
    assert total(families.values(), "process_cpu_seconds_total") > 0
    assert total(families.values(), "process_resident_memory_bytes") > 0
    for name in (
        "flashstock_persisted_entries",
        "flashstock_persister_lag_seconds",
        "flashstock_persister_backlog_entries",
        "flashstock_reconcile_differences",
        "flashstock_owned_shards",
        "flashstock_fenced_writes",
    ):
        assert name in families, name
    eventually(lambda: total(scrape(port), "flashstock_reconcile_passes_total") > 0, timeout=30)


def test_a_clean_stop_removes_the_figures_folder(redis_server):
    port = free_port()
    node = NodeProcess(redis_server.url, workers=2, extra_args=["--metrics-port", str(port)])
    with node:
        folder = figures_folder(node)
        eventually(lambda: sorted(p.name for p in folder.iterdir()) == ["worker-0.json", "worker-1.json"])
        node.stop()
        assert not folder.exists()
        assert not folder.parent.exists()  # metrics/, left empty


async def test_one_process_node_counts_its_calls_too(redis_server):
    port = free_port()
    with NodeProcess(
        redis_server.url, workers=1, extra_args=["--metrics-port", str(port), "--no-duties-process"]
    ) as node:
        stranger = Stranger([node.address])
        try:
            with pytest.raises(grpc.aio.AioRpcError):
                await stranger.call("GetStock", sku_id="none-here")
        finally:
            await stranger.close()
        families = await aeventually(
            lambda: scrape(port), until=lambda f: total(f, "grpc_server_handled_total", grpc_code="NOT_FOUND") == 1
        )
        assert total(families, "flashstock_worker_cpu_seconds_total", worker="0") > 0


async def test_serving_metrics_off_counts_no_rpcs(redis_server):
    port = free_port()
    with NodeProcess(
        redis_server.url, workers=2, extra_args=["--metrics-port", str(port), "--no-serving-metrics"]
    ) as node:
        stranger = Stranger([node.address])
        try:
            with pytest.raises(grpc.aio.AioRpcError):
                await stranger.call("GetStock", sku_id="none-here")
        finally:
            await stranger.close()
        families = {f.name: f for f in scrape(port)}
        assert "grpc_server_handled" not in families
        assert "flashstock_build_info" in families and "flashstock_owned_shards" in families
        assert not serving_folder(str(node.data_dir), node.address).exists()
