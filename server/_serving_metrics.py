"""The serving workers' figures: counted in memory, flushed to a file, summed on scrape.

Each serving worker keeps its own tallies in plain ints (:class:`WorkerFigures`):
a call costs a dict lookup, a few additions and one bisect, no lock and no
I/O (prometheus-client's multiprocess mode, an mmap write under a lock per
counter and per bucket, cost about 300 us of CPU a call; see
benchmarks/README.md). A background task of each worker (:func:`flush_every`)
writes them once a second, and once more on shutdown, as one JSON snapshot
file, atomically (a temporary file, then ``os.replace``), into the node's
folder: ``<data_dir>/metrics/<node id>/worker-<i>.json``
(:func:`serving_folder`). The supervisor empties that folder at every start
(an earlier run's counts would add to this one's) and removes it at a clean
stop.

The process that serves ``/metrics`` reads every snapshot on each scrape
and sums them (:class:`ServingCollector`): the figures lag the calls by up
to one flush interval. A file that cannot be read or is not a snapshot is
skipped. A worker that died keeps its last snapshot: its counts stay in
the sums (counters never go back), and the node stops as a whole anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import quote

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

RPC_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""``grpc_server_handling_seconds``: 0.5 ms to 10 s (a deduction answers in about 1 ms)."""

BATCH_SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
"""``flashstock_coalesced_batch_size``: up to the coalescer's largest batch (64)."""

FLUSH_INTERVAL_S = 1.0
"""How often a worker writes its snapshot: the most the endpoint's figures lag behind."""

SNAPSHOT_VERSION = 1
"""The snapshot file's format; a file of another is skipped."""

GRPC_TYPE = "unary"
"""Every flashstock RPC is unary (the ``grpc_type`` label)."""


class RpcTally:
    """One RPC method's figures in one worker: bound once, bumped on every call."""

    __slots__ = ("started", "handled", "buckets", "seconds")

    def __init__(self) -> None:
        self.started = 0
        self.handled: dict[str, int] = {}
        """Calls answered, by status code name (``OK``, ``NOT_FOUND``, ...)."""
        self.buckets = [0] * (len(RPC_SECONDS_BUCKETS) + 1)
        """Calls per handling-time bucket, not cumulative; the last is above the largest bound."""
        self.seconds = 0.0
        """Handling time of the answered calls, summed."""

    def end(self, code: str, seconds: float) -> None:
        """A call started on this tally was answered with ``code`` after ``seconds``."""
        self.handled[code] = self.handled.get(code, 0) + 1
        # bisect_left: a time equal to a bound falls in that bound's bucket (Prometheus's le).
        self.buckets[bisect_left(RPC_SECONDS_BUCKETS, seconds)] += 1
        self.seconds += seconds


@dataclass
class WorkerFigures:
    """What one serving worker counts; written out by :func:`flush_every`."""

    rpcs: dict[tuple[str, str], RpcTally] = field(default_factory=dict)
    """Per (service, method)."""
    batch_buckets: list[int] = field(default_factory=lambda: [0] * (len(BATCH_SIZE_BUCKETS) + 1))
    """Coalesced batches per size bucket, not cumulative."""
    batch_items: int = 0
    """Deductions sent in coalesced batches, summed."""
    degraded: bool = False
    """The worker serves reads from its snapshot now (rpc/degrade.py); set by the node once a second."""
    shed_at: float | None = None
    """When the worker last shed a call by its own caps (unix seconds; None: never), set by the node once a
    second: how the duties' process learns that the node sheds (duties/pause.py)."""

    def rpc(self, key: tuple[str, str]) -> RpcTally:
        """The tally of ``key`` = (service, method); a call is counted started here."""
        tally = self.rpcs.get(key)
        if tally is None:
            tally = self.rpcs[key] = RpcTally()
        tally.started += 1
        return tally

    def batch(self, size: int) -> None:
        """The coalescer sent ``size`` deductions in one script call."""
        self.batch_buckets[bisect_left(BATCH_SIZE_BUCKETS, size)] += 1
        self.batch_items += size

    def snapshot(self, worker: int, cpu_seconds: float, rss_bytes: int) -> dict[str, Any]:
        """The figures as a JSON-able value (read from the event loop's thread: no call runs meanwhile)."""
        return {
            "version": SNAPSHOT_VERSION,
            "worker": worker,
            "pid": os.getpid(),
            "rpcs": [
                {
                    "service": service,
                    "method": method,
                    "started": t.started,
                    "handled": dict(t.handled),
                    "buckets": list(t.buckets),
                    "seconds": t.seconds,
                }
                for (service, method), t in self.rpcs.items()
            ],
            "batch_buckets": list(self.batch_buckets),
            "batch_items": self.batch_items,
            "cpu_seconds": cpu_seconds,
            "rss_bytes": rss_bytes,
            "degraded": self.degraded,
            "shed_at": self.shed_at,
        }


# -- the folder and the files -------------------------------------------------


def serving_folder(data_dir: str, node: str) -> Path:
    """The folder of one node's snapshots: ``<data_dir>/metrics/<node id, %-quoted>``."""
    return Path(data_dir).expanduser().resolve() / "metrics" / quote(node, safe="")


def fresh_folder(folder: Path) -> None:
    """Make ``folder`` empty: an earlier run's snapshots would add their counts to this one's."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)


def remove_folder(folder: Path) -> None:
    """Remove ``folder`` and its snapshots, and ``metrics/`` above it once no other node's folder is left."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()  # only when empty


def snapshot_path(folder: Path, worker: int) -> Path:
    """Where worker ``worker`` writes its snapshot."""
    return folder / f"worker-{worker}.json"


def write_snapshot(path: Path, snapshot: dict[str, Any]) -> None:
    """Write ``snapshot`` so that a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(json.dumps(snapshot, separators=(",", ":")).encode())
    os.replace(tmp, path)


def _own_usage() -> tuple[float, int]:
    """This process's CPU seconds (user + system) and resident memory, in bytes."""
    times = os.times()
    try:
        with open("/proc/self/statm", "rb") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return times.user + times.system, rss


async def flush_every(figures: WorkerFigures, path: Path, worker: int, interval_s: float = FLUSH_INTERVAL_S) -> None:
    """Write ``figures`` to ``path`` every ``interval_s`` seconds until cancelled, and once more then."""
    path.parent.mkdir(parents=True, exist_ok=True)

    async def flush() -> None:
        cpu, rss = _own_usage()
        data = figures.snapshot(worker, cpu, rss)  # in the loop's thread: a consistent copy
        await asyncio.to_thread(write_snapshot, path, data)

    try:
        while True:
            try:
                await flush()
            except OSError as exc:
                log.warning("could not write the serving figures to %s: %s", path, exc)
            await asyncio.sleep(interval_s)
    finally:
        # Stopping (cancelled): the last calls' figures, written at once, in this thread (a few kB).
        with contextlib.suppress(OSError):
            cpu, rss = _own_usage()
            write_snapshot(path, figures.snapshot(worker, cpu, rss))


# -- reading and summing --------------------------------------------------------


class BadSnapshot(ValueError):
    """A file that is no snapshot of this format."""


def _ints(value: Any, length: int) -> list[int]:
    if not isinstance(value, list) or len(value) != length or not all(isinstance(n, int) for n in value):
        raise BadSnapshot(f"expected {length} integers, got {value!r:.80}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadSnapshot(f"expected a number, got {value!r:.80}")
    return float(value)


def parse_snapshot(data: bytes) -> dict[str, Any]:
    """A snapshot read from ``data``, its shape checked (:class:`BadSnapshot` otherwise)."""
    try:
        snap = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadSnapshot(str(exc)) from None
    if not isinstance(snap, dict) or snap.get("version") != SNAPSHOT_VERSION:
        raise BadSnapshot("not a snapshot of this version")
    if not isinstance(snap.get("worker"), int) or not isinstance(snap.get("rpcs"), list):
        raise BadSnapshot("no worker or rpcs")
    for rpc in snap["rpcs"]:
        if (
            not isinstance(rpc, dict)
            or not isinstance(rpc.get("service"), str)
            or not isinstance(rpc.get("method"), str)
        ):
            raise BadSnapshot("an rpc without service or method")
        _number(rpc.get("started"))
        _number(rpc.get("seconds"))
        _ints(rpc.get("buckets"), len(RPC_SECONDS_BUCKETS) + 1)
        handled = rpc.get("handled")
        if not isinstance(handled, dict) or not all(isinstance(n, int) for n in handled.values()):
            raise BadSnapshot("handled is no map of counts")
    _ints(snap.get("batch_buckets"), len(BATCH_SIZE_BUCKETS) + 1)
    for name in ("batch_items", "cpu_seconds", "rss_bytes"):
        _number(snap.get(name))
    if not isinstance(snap.setdefault("degraded", False), bool):
        raise BadSnapshot("degraded is no boolean")
    if snap.setdefault("shed_at", None) is not None:
        _number(snap["shed_at"])
    return snap


def read_snapshots(folder: Path) -> list[dict[str, Any]]:
    """Every worker's snapshot in ``folder``; a missing, unreadable or malformed file is left out."""
    out = []
    try:
        paths = sorted(folder.glob("worker-*.json"))
    except OSError:
        return []
    for path in paths:
        try:
            out.append(parse_snapshot(path.read_bytes()))
        except (OSError, BadSnapshot) as exc:
            log.debug("serving figures: %s skipped: %s", path, exc)
    return out


@dataclass
class RpcSums:
    """One method's figures summed over the workers."""

    started: int = 0
    handled: dict[str, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(RPC_SECONDS_BUCKETS) + 1))
    seconds: float = 0.0

    @property
    def in_flight(self) -> int:
        """Started and not yet answered (as of each worker's last snapshot)."""
        return self.started - sum(self.handled.values())


@dataclass
class NodeSums:
    """Every worker's figures summed (:func:`merge`)."""

    rpcs: dict[tuple[str, str], RpcSums] = field(default_factory=dict)
    batch_buckets: list[int] = field(default_factory=lambda: [0] * (len(BATCH_SIZE_BUCKETS) + 1))
    batch_items: int = 0
    workers: dict[int, tuple[float, int]] = field(default_factory=dict)
    """Per worker index: its CPU seconds and resident bytes."""
    degraded: dict[int, bool] = field(default_factory=dict)
    """Per worker index: in degraded mode (rpc/degrade.py)."""


def merge(snapshots: Iterable[dict[str, Any]]) -> NodeSums:
    """Add up the workers' snapshots (as :func:`read_snapshots` returns them)."""
    sums = NodeSums()
    for snap in snapshots:
        for rpc in snap["rpcs"]:
            key = (rpc["service"], rpc["method"])
            into = sums.rpcs.get(key)
            if into is None:
                into = sums.rpcs[key] = RpcSums()
            into.started += rpc["started"]
            for code, n in rpc["handled"].items():
                into.handled[code] = into.handled.get(code, 0) + n
            into.buckets = [a + b for a, b in zip(into.buckets, rpc["buckets"], strict=True)]
            into.seconds += rpc["seconds"]
        sums.batch_buckets = [a + b for a, b in zip(sums.batch_buckets, snap["batch_buckets"], strict=True)]
        sums.batch_items += snap["batch_items"]
        sums.workers[snap["worker"]] = (float(snap["cpu_seconds"]), int(snap["rss_bytes"]))
        sums.degraded[snap["worker"]] = bool(snap.get("degraded", False))
    return sums


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    out = []
    running = 0
    for bound, n in zip((*bounds, float("inf")), counts, strict=True):
        running += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
    return out


def families(sums: NodeSums) -> Iterator[Metric]:
    """The Prometheus metric families of ``sums``."""
    rpc_labels = ["grpc_type", "grpc_service", "grpc_method"]
    started = CounterMetricFamily("grpc_server_started", "RPCs started on the server.", labels=rpc_labels)
    handled = CounterMetricFamily(
        "grpc_server_handled",
        "RPCs completed on the server, whatever their status (grpc_code: the status code's name, e.g. OK, NOT_FOUND).",
        labels=[*rpc_labels, "grpc_code"],
    )
    handling = HistogramMetricFamily(
        "grpc_server_handling_seconds", "Time from an RPC's start to its answer on the server.", labels=rpc_labels
    )
    in_flight = GaugeMetricFamily(
        "flashstock_rpcs_in_flight",
        "RPCs started and not yet answered (as of each worker's last flush).",
        labels=["grpc_service", "grpc_method"],
    )
    for (service, method), s in sorted(sums.rpcs.items()):
        labels = [GRPC_TYPE, service, method]
        started.add_metric(labels, s.started)
        for code, n in sorted(s.handled.items()):
            handled.add_metric([*labels, code], n)
        handling.add_metric(labels, _cumulative(RPC_SECONDS_BUCKETS, s.buckets), s.seconds)
        in_flight.add_metric([service, method], s.in_flight)
    yield from (started, handled, handling, in_flight)
    batches = HistogramMetricFamily(
        "flashstock_coalesced_batch_size",
        "Deductions sent to Redis together, in one script call (store/coalesce.py).",
    )
    if any(sums.batch_buckets):
        batches.add_metric([], _cumulative(BATCH_SIZE_BUCKETS, sums.batch_buckets), sums.batch_items)
    yield batches
    cpu = CounterMetricFamily(
        "flashstock_worker_cpu_seconds", "User and system CPU time of each serving worker.", labels=["worker"]
    )
    rss = GaugeMetricFamily(
        "flashstock_worker_resident_memory_bytes", "Resident memory of each serving worker.", labels=["worker"]
    )
    degraded = GaugeMetricFamily(
        "flashstock_degraded",
        "1 while a serving worker is in degraded mode (reads from a snapshot: it sheds, or an operator said so).",
        labels=["worker"],
    )
    for worker, (seconds, resident) in sorted(sums.workers.items()):
        cpu.add_metric([str(worker)], seconds)
        rss.add_metric([str(worker)], resident)
        degraded.add_metric([str(worker)], 1.0 if sums.degraded.get(worker) else 0.0)
    yield from (cpu, rss, degraded)


class ServingCollector(Collector):
    """The serving workers' figures, read from their snapshots in ``folder`` and summed on every scrape."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def collect(self) -> Iterable[Metric]:
        """The sums of the snapshots there now."""
        return families(merge(read_snapshots(self.folder)))

    def describe(self) -> Iterable[Metric]:
        """The families, without samples (no file read at registration)."""
        return families(NodeSums())


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


class BuildInfoCollector(Collector):
    """``flashstock_build_info{version,python,grpcio} 1``."""

    def __init__(self) -> None:
        self._labels = [_version("flashstock"), platform.python_version(), _version("grpcio")]

    def collect(self) -> Iterable[Metric]:
        """The one sample."""
        info = GaugeMetricFamily(
            "flashstock_build_info",
            "The running flashstock's version, and those of Python and grpcio under it (always 1).",
            labels=["version", "python", "grpcio"],
        )
        info.add_metric(self._labels, 1)
        yield info
