"""The serving workers' figures: counted per call, written as snapshots, summed for the endpoint.

No sockets: the snapshots are files in a temporary folder, the calls go
through the servicer's one ``_rpc`` wrapper with a stand-in context.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import TimeoutError as RedisTimeoutError

from flashstock.client import InvalidArgument, SkuNotFound
from flashstock.server._metrics import Metrics, served_registry
from flashstock.server._serving_metrics import (
    BATCH_SIZE_BUCKETS,
    RPC_SECONDS_BUCKETS,
    ServingCollector,
    WorkerFigures,
    flush_every,
    merge,
    read_snapshots,
    snapshot_path,
    write_snapshot,
)
from flashstock.server.rpc.admission import Admission, RedisBreaker
from flashstock.server.rpc.authz import Authorizer
from flashstock.server.rpc.servicer import MalformedRequest, _rpc
from flashstock.server.store.redis import flashstock_error

STOCK = "flashstock.v1.StockService"


def figures_of(calls: list[tuple[str, str, float]], batches: tuple[int, ...] = ()) -> WorkerFigures:
    """A worker's figures after ``calls`` of (method, code, seconds) and coalesced ``batches``."""
    figures = WorkerFigures()
    for method, code, seconds in calls:
        figures.rpc((STOCK, method)).end(code, seconds)
    for size in batches:
        figures.batch(size)
    return figures


def scrape(folder: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What a registry of a :class:`ServingCollector` on ``folder`` exposes: sample (name, labels) -> value."""
    registry = CollectorRegistry()
    registry.register(ServingCollector(folder))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labels(method: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"grpc_type": "unary", "grpc_service": STOCK, "grpc_method": method, **more}.items()))


def test_counters_and_histograms_add_over_the_workers(tmp_path: Path):
    a = figures_of([("Deduct", "OK", 0.001), ("Deduct", "OK", 0.003), ("GetStock", "NOT_FOUND", 0.0002)], (1, 3))
    b = figures_of([("Deduct", "OK", 0.0007), ("Deduct", "UNAVAILABLE", 2.0)], (64,))
    write_snapshot(snapshot_path(tmp_path, 0), a.snapshot(0, 1.5, 1000))
    write_snapshot(snapshot_path(tmp_path, 1), b.snapshot(1, 2.5, 2000))
    got = scrape(tmp_path)

    assert got[("grpc_server_started_total", labels("Deduct"))] == 4
    assert got[("grpc_server_handled_total", labels("Deduct", grpc_code="OK"))] == 3
    assert got[("grpc_server_handled_total", labels("Deduct", grpc_code="UNAVAILABLE"))] == 1
    assert got[("grpc_server_handled_total", labels("GetStock", grpc_code="NOT_FOUND"))] == 1
    assert got[("grpc_server_handling_seconds_count", labels("Deduct"))] == 4
    assert got[("grpc_server_handling_seconds_sum", labels("Deduct"))] == pytest.approx(2.0047)
    # Cumulative buckets: 0.7 ms and 1 ms (a bound holds its own value) by 1 ms; 3 ms by 5 ms; 2 s by 2.5 s.
    bucket = {le: got[("grpc_server_handling_seconds_bucket", labels("Deduct", le=le))] for le in ("0.0005", "0.001")}
    assert bucket == {"0.0005": 0, "0.001": 2}
    assert got[("grpc_server_handling_seconds_bucket", labels("Deduct", le="0.005"))] == 3
    assert got[("grpc_server_handling_seconds_bucket", labels("Deduct", le="1.0"))] == 3
    assert got[("grpc_server_handling_seconds_bucket", labels("Deduct", le="2.5"))] == 4
    assert got[("grpc_server_handling_seconds_bucket", labels("Deduct", le="+Inf"))] == 4
    in_flight = (("grpc_method", "Deduct"), ("grpc_service", STOCK))
    assert got[("flashstock_rpcs_in_flight", in_flight)] == 0
    assert got[("flashstock_coalesced_batch_size_count", ())] == 3
    assert got[("flashstock_coalesced_batch_size_sum", ())] == 68
    assert got[("flashstock_coalesced_batch_size_bucket", (("le", "2.0"),))] == 1
    assert got[("flashstock_coalesced_batch_size_bucket", (("le", "4.0"),))] == 2
    assert got[("flashstock_worker_cpu_seconds_total", (("worker", "0"),))] == 1.5
    assert got[("flashstock_worker_resident_memory_bytes", (("worker", "1"),))] == 2000
    assert got[("flashstock_degraded", (("worker", "0"),))] == 0


def test_calls_started_and_not_answered_are_in_flight(tmp_path: Path):
    figures = figures_of([("Deduct", "OK", 0.001)])
    figures.rpc((STOCK, "Deduct"))
    figures.rpc((STOCK, "Deduct"))
    write_snapshot(snapshot_path(tmp_path, 0), figures.snapshot(0, 0.0, 0))
    got = scrape(tmp_path)
    assert got[("flashstock_rpcs_in_flight", (("grpc_method", "Deduct"), ("grpc_service", STOCK)))] == 2
    assert got[("grpc_server_started_total", labels("Deduct"))] == 3
    assert got[("grpc_server_handling_seconds_count", labels("Deduct"))] == 1


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"version": 1, "worker": 3, "rpcs": [',  # half written (no reader sees one: os.replace; still no crash)
        b"\xff\xfe not json",
        b'{"version": 99, "worker": 3, "rpcs": []}',
        b"[1, 2, 3]",
        b'{"version": 1, "worker": 3, "rpcs": [{"service": "s", "method": "m", "started": "many"}]}',
    ],
    ids=["empty", "half-written", "not-utf8", "other-version", "not-a-map", "wrong-field"],
)
def test_a_file_that_is_no_snapshot_is_skipped_and_the_others_still_count(tmp_path: Path, content: bytes):
    write_snapshot(snapshot_path(tmp_path, 0), figures_of([("Deduct", "OK", 0.001)]).snapshot(0, 1.0, 1))
    snapshot_path(tmp_path, 3).write_bytes(content)
    assert [s["worker"] for s in read_snapshots(tmp_path)] == [0]
    got = scrape(tmp_path)
    assert got[("grpc_server_handled_total", labels("Deduct", grpc_code="OK"))] == 1
    assert ("flashstock_worker_cpu_seconds_total", (("worker", "3"),)) not in got


def test_a_missing_folder_or_a_temporary_file_gives_nothing(tmp_path: Path):
    assert read_snapshots(tmp_path / "never-made") == []
    (tmp_path / ".worker-0.json.42.tmp").write_text(json.dumps(WorkerFigures().snapshot(0, 0.0, 0)))
    assert read_snapshots(tmp_path) == []
    assert not any(name.startswith("grpc_server_handled") for name, _ in scrape(tmp_path))


def test_writing_a_snapshot_leaves_no_temporary_file(tmp_path: Path):
    path = snapshot_path(tmp_path, 2)
    for n in range(3):
        write_snapshot(path, figures_of([("Deduct", "OK", 0.001)] * n).snapshot(2, 0.0, 0))
    assert [p.name for p in tmp_path.iterdir()] == ["worker-2.json"]
    assert merge(read_snapshots(tmp_path)).rpcs[(STOCK, "Deduct")].started == 2


def test_buckets_span_half_a_millisecond_to_ten_seconds():
    assert RPC_SECONDS_BUCKETS[0] == 0.0005 and RPC_SECONDS_BUCKETS[-1] == 10.0
    assert list(RPC_SECONDS_BUCKETS) == sorted(RPC_SECONDS_BUCKETS)
    assert BATCH_SIZE_BUCKETS[-1] == 64


async def test_the_flusher_writes_every_interval_and_once_more_when_stopped(tmp_path: Path):
    figures = WorkerFigures()
    path = snapshot_path(tmp_path, 1)
    flusher = asyncio.create_task(flush_every(figures, path, 1, interval_s=0.01))
    while not path.exists():
        await asyncio.sleep(0.005)
    figures.rpc((STOCK, "Deduct")).end("OK", 0.001)
    flusher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flusher
    (snapshot,) = read_snapshots(tmp_path)
    assert snapshot["worker"] == 1 and snapshot["rpcs"][0]["handled"] == {"OK": 1}
    assert snapshot["cpu_seconds"] > 0 and snapshot["rss_bytes"] > 0


# -- the _rpc wrapper ------------------------------------------------------------


class Aborted(Exception):
    """What the stand-in context's abort raises (grpc.aio's raises its own)."""


class Context:
    """A stand-in for grpc.aio's servicer context: abort records the status and raises."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.code = code
        raise Aborted(details)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"


class Service:
    SERVICE = STOCK

    def __init__(
        self, figures: WorkerFigures | None, admission: Admission | None = None, breaker: RedisBreaker | None = None
    ) -> None:
        self.figures = figures
        self.admission = admission
        self.breaker = breaker
        self.authorizer: Authorizer | None = None
        self.entered = 0
        """Calls that reached the method (past admission and breaker)."""
        self.gate = asyncio.Event()

    @_rpc
    async def Deduct(self, request: Any, context: Any) -> str:
        self.entered += 1
        if request == "wait":
            await self.gate.wait()
        if request == "redis timeout":
            try:
                raise RedisTimeoutError("Timeout reading from redis")
            except RedisTimeoutError as exc:
                mapped = flashstock_error(exc)
                assert mapped is not None
                raise mapped from exc
        if request == "missing":
            raise SkuNotFound("no such SKU", sku="x")
        if request == "bad":
            raise InvalidArgument("bad")
        if request == "bug":
            raise RuntimeError("a bug")
        if request == "cancel":
            raise asyncio.CancelledError
        return "reply"


async def call(service: Service, request: Any) -> None:
    try:
        await service.Deduct(request, Context())
    except (Aborted, asyncio.CancelledError):
        pass


async def test_every_call_is_counted_under_its_status_code():
    figures = WorkerFigures()
    service = Service(figures)
    for request in ("ok", "ok", "missing", "bad", "bug", "cancel", MalformedRequest("flashstock.v1.X", "truncated")):
        await call(service, request)
    tally = figures.rpcs[(STOCK, "Deduct")]
    assert tally.started == 7
    assert tally.handled == {"OK": 2, "NOT_FOUND": 1, "INVALID_ARGUMENT": 2, "UNKNOWN": 1, "CANCELLED": 1}
    assert sum(tally.buckets) == 7 and tally.seconds > 0


async def test_the_wrapper_answers_the_same_without_figures():
    service = Service(None)
    assert await service.Deduct("ok", Context()) == "reply"
    context = Context()
    with pytest.raises(Aborted):
        await service.Deduct("missing", context)
    assert context.code is grpc.StatusCode.NOT_FOUND


async def test_a_call_past_max_in_flight_is_shed_before_the_method_and_counted_as_resource_exhausted():
    figures = WorkerFigures()
    service = Service(figures, Admission(max_in_flight=1))
    waiting = asyncio.create_task(service.Deduct("wait", Context()))
    await asyncio.sleep(0)  # the first call is in the method now
    context = Context()
    with pytest.raises(Aborted, match="max_in_flight"):
        await service.Deduct("ok", context)
    assert context.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert service.entered == 1  # the shed call never reached the method
    service.gate.set()
    assert await waiting == "reply"
    assert await service.Deduct("ok", Context()) == "reply"  # room again: the first call was let go
    assert figures.rpcs[(STOCK, "Deduct")].handled == {"OK": 2, "RESOURCE_EXHAUSTED": 1}


async def test_redis_timeouts_in_a_row_open_the_breaker_and_an_answer_resets_the_streak():
    opened = []
    breaker = RedisBreaker(trip_after=2, cooldown_s=60)
    breaker.on_open = lambda: opened.append(True)
    service = Service(None, breaker=breaker)
    await call(service, "redis timeout")
    assert await service.Deduct("ok", Context()) == "reply"  # resets the streak
    await call(service, "redis timeout")
    assert not breaker.is_open and not opened
    await call(service, "redis timeout")
    assert breaker.is_open and opened == [True]
    entered = service.entered
    context = Context()
    with pytest.raises(Aborted, match="cool-down"):
        await service.Deduct("ok", context)
    assert context.code is grpc.StatusCode.UNAVAILABLE and service.entered == entered
    breaker.close()
    assert await service.Deduct("ok", Context()) == "reply"


async def test_an_unauthorized_call_is_refused_before_admission_and_counted_under_its_code():
    figures = WorkerFigures()
    service = Service(figures, Admission(max_in_flight=1))
    service.authorizer = Authorizer(None, {"gw": frozenset({"viewer"})})
    context = Context()
    with pytest.raises(Aborted, match="no client certificate"):
        await service.Deduct("ok", context)  # the stand-in context carries no credentials
    assert context.code is grpc.StatusCode.UNAUTHENTICATED and service.entered == 0
    assert service.admission is not None and service.admission.in_flight == 0
    assert figures.rpcs[(STOCK, "Deduct")].handled == {"UNAUTHENTICATED": 1}


def test_the_endpoint_serves_the_duties_build_info_and_process_figures(tmp_path: Path):
    write_snapshot(snapshot_path(tmp_path, 0), figures_of([("Deduct", "OK", 0.001)]).snapshot(0, 1.0, 1))
    metrics = Metrics()
    metrics.owned_shards.set(7)
    text = generate_latest(served_registry(tmp_path, metrics)).decode()
    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["flashstock_owned_shards"].value == 7
    assert samples["flashstock_build_info"].value == 1
    assert set(samples["flashstock_build_info"].labels) == {"version", "python", "grpcio"}
    assert samples["process_cpu_seconds_total"].value > 0
    assert samples["grpc_server_handled_total"].value == 1
    # Twice in one process (a second node in a test): a registry of its own each time.
    without = generate_latest(served_registry(None, metrics)).decode()
    assert "grpc_server_handled_total" not in without and "flashstock_owned_shards" in without
