"""A node's metrics endpoint, scraped over HTTP as Prometheus would: the figures of every worker.

The node runs two serving workers and its duties process; calls come over
many connections (each lands on one worker, SO_REUSEPORT), from a caller
that knows only the node's address (:class:`Stranger`). What each worker
counted is read from its own multiprocess files alone (the node's
``<data_dir>/metrics`` folder), so the test knows both served calls, and
that the endpoint shows their sum, no more and no less.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from flashstock.server.local.procs import NodeProcess, RedisServer, free_port
from tests.helpers import aeventually, eventually
from tests.helpers.stranger import Stranger

STOCK = "flashstock.v1.StockService"
_ids = itertools.count()


@pytest.fixture(scope="module")
def metered() -> Iterator[tuple[NodeProcess, int]]:
    port = free_port()
    with (
        RedisServer() as redis_server,
        NodeProcess(redis_server.url, workers=2, extra_args=["--metrics-port", str(port)]) as node,
    ):
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


def own_figures(folder: Path, pid: int) -> list[Metric]:
    """What process ``pid`` alone counted: its own multiprocess files, merged by themselves."""
    with tempfile.TemporaryDirectory() as alone:
        for db in folder.glob(f"*_{pid}.db"):
            shutil.copy(db, alone)
        return list(MultiProcessCollector(None, path=alone).collect())


def deducts_by_process(node: NodeProcess) -> dict[int, float]:
    """Deduct calls answered OK, as each of the node's processes counted them (those that answered any)."""
    folder = node.data_dir / "metrics"
    counts = {}
    for process in psutil.Process(node.pid).children():
        n = total(
            own_figures(folder, process.pid),
            "grpc_server_handled_total",
            grpc_service=STOCK,
            grpc_method="Deduct",
            grpc_code="OK",
        )
        if n:
            counts[process.pid] = n
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
    await stranger.close()

    sent = 0
    for _ in range(10):  # each round's 16 connections all landing on one worker: 2 ** -15
        await deduct_over_fresh_connections(node, 50, "metered")
        sent += 50
        if len(deducts_by_process(node)) >= 2:
            break
    by_process = deducts_by_process(node)
    assert len(by_process) == 2, f"Deducts answered per process: {by_process}"
    assert sum(by_process.values()) == sent

    families = scrape(port)
    deduct = {"grpc_service": STOCK, "grpc_method": "Deduct"}
    assert total(families, "grpc_server_handled_total", grpc_code="OK", **deduct) == sent
    assert total(families, "grpc_server_started_total", grpc_type="unary", **deduct) == sent
    assert total(families, "grpc_server_handling_seconds_count", **deduct) == sent
    assert total(families, "grpc_server_handling_seconds_bucket", le="+Inf", **deduct) == sent
    assert total(families, "flashstock_rpcs_in_flight", **deduct) == 0
    # Every deduction went to Redis in some batch of the coalescer.
    assert total(families, "flashstock_coalesced_batch_size_sum") == sent
    assert 0 < total(families, "flashstock_coalesced_batch_size_count") <= sent


async def test_a_refused_call_is_counted_under_its_status_code(metered):
    node, port = metered
    deduct = {"grpc_service": STOCK, "grpc_method": "Deduct"}
    before = total(scrape(port), "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **deduct)
    stranger = Stranger([node.address])
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stranger.call("Deduct", sku_id="metered", user_id="u", qty=0, request_id="zero")
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await stranger.close()
    await aeventually(
        lambda: total(scrape(port), "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **deduct),
        until=lambda n: n == before + 1,
    )


def test_build_info_process_figures_and_duty_metrics_are_served(metered):
    node, port = metered
    families = {f.name: f for f in scrape(port)}
    (info,) = families["flashstock_build_info"].samples
    assert info.value == 1 and info.labels["version"]
    # The node's processes: its supervisor, the duties process and two workers.
    assert total(families.values(), "flashstock_node_processes") == 1 + len(psutil.Process(node.pid).children())
    assert total(families.values(), "flashstock_node_processes") >= 4
    assert total(families.values(), "process_cpu_seconds_total") > 0
    assert total(families.values(), "process_resident_memory_bytes") > 0
    # The duties' figures, from the duties process, beside the workers'.
    for name in (
        "flashstock_persisted_entries",
        "flashstock_persister_lag_seconds",
        "flashstock_persister_backlog_entries",
        "flashstock_reconcile_differences",
        "flashstock_owned_shards",
    ):
        assert name in families, name
    eventually(lambda: total(scrape(port), "flashstock_reconcile_passes_total") > 0, timeout=30)
