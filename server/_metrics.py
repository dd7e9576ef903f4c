"""The node's Prometheus metrics, in one place.

Served over HTTP on ``metrics_port``, when the port is set, by the process
that runs the node's duties (:meth:`Node.duties_run_in`: the duties process,
or worker 0 without one).

A node of several processes (``workers`` > 1 or ``duties_process``) keeps
its figures in prometheus-client's multiprocess mode: its supervisor gives
every process :data:`MULTIPROC_ENV`, a folder made fresh for the node run
(:func:`fresh_multiprocess_folder`), before the processes start (the mode
is chosen when prometheus-client is imported); each process writes its own
files there, and the serving process merges them all on every scrape
(:func:`served_registry`). Counters and histograms add up over the
processes. Each gauge says how it merges (``multiprocess_mode``), and why.

The multiprocess collector gives no ``process_*`` figures: :class:`NodeCollector`
gives them for the whole node (its supervisor and every process under it,
summed), with ``flashstock_build_info``.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from time import perf_counter
from typing import Final

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The environment variable that puts prometheus-client in multiprocess mode (a folder per node run)."""

RPC_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""``grpc_server_handling_seconds``: 0.5 ms to 10 s (a deduction answers in about 1 ms; the default starts at 5 ms)."""

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
"""``flashstock_coalesced_batch_size``: up to the coalescer's largest batch (64)."""


def _registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


_RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

_DUTY_GAUGE: Final = "livemax"
"""How a duty's gauge merges over a node's processes: only the process that runs the duties sets it, the
others hold 0, and these figures are never negative, so the largest is its value ("mostrecent" would
hide a gauge not yet set); "live": a duties process that is gone no longer reports one."""


@dataclass
class Metrics:
    """Every metric a node reports."""

    registry: CollectorRegistry = field(default_factory=_registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.persisted = Counter("flashstock_persisted_entries", "Log entries written to the ledger.", registry=r)
        self.persister_errors = Counter("flashstock_persister_errors", "Persister rounds that failed.", registry=r)
        self.persister_lag = Histogram(
            "flashstock_persister_lag_seconds",
            "Time from a log entry's creation (its stream id) to its ledger commit.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.persister_backlog = Gauge(
            "flashstock_persister_backlog_entries",
            "Log entries not yet in the ledger.",
            registry=r,
            multiprocess_mode=_DUTY_GAUGE,
        )
        self.rebuilds = Counter(
            "flashstock_rebuilds", "Shard rebuilds from the ledger, by result.", ["result"], registry=r
        )
        self.durable_timeouts = Counter(
            "flashstock_durable_timeouts", "Durable replies that gave up waiting for the ledger.", registry=r
        )
        self.fenced_writes = Counter(
            "flashstock_fenced_writes",
            "Duty writes refused because a newer owner's epoch is stored (this node was paused or cut off), "
            "by store (redis, ledger) and duty (persister, reaper, warden, claim).",
            ["store", "duty"],
            registry=r,
        )
        self.reconcile_passes = Counter(
            "flashstock_reconcile_passes", "Comparisons of Redis with the ledger over this node's shards.", registry=r
        )
        self.reconcile_differences = Gauge(
            "flashstock_reconcile_differences",
            "Figures on which Redis and the ledger disagree, in the last comparison of this node's settled shards "
            "(0 is the only good value).",
            registry=r,
            multiprocess_mode=_DUTY_GAUGE,
        )
        self.reconcile_unsettled = Gauge(
            "flashstock_reconcile_unsettled_shards",
            "Shards left out of the last comparison: their log moved while reading (the persister was behind).",
            registry=r,
            multiprocess_mode=_DUTY_GAUGE,
        )
        self.owned_shards = Gauge(
            "flashstock_owned_shards",
            "Shards whose duties this node runs.",
            registry=r,
            multiprocess_mode=_DUTY_GAUGE,
        )
        self.shard_claims = Counter("flashstock_shard_claims", "Shards this node claimed (etcd).", registry=r)
        self.shard_releases = Counter(
            "flashstock_shard_releases", "Shards this node gave up, by why.", ["why"], registry=r
        )
        self.etcd_session_losses = Counter(
            "flashstock_etcd_session_losses",
            "etcd sessions (leases) this node lost; it stopped its duties.",
            registry=r,
        )
        # The serving side: every worker counts its own calls; the node's figures are their sums.
        self.rpc_started = Counter(
            "grpc_server_started",
            "RPCs started on the server.",
            _RPC_LABELS,
            registry=r,
        )
        self.rpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, whatever their status (grpc_code: the status code's name, e.g. OK, "
            "INVALID_ARGUMENT).",
            (*_RPC_LABELS, "grpc_code"),
            registry=r,
        )
        self.rpc_handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its answer on the server.",
            _RPC_LABELS,
            buckets=RPC_SECONDS_BUCKETS,
            registry=r,
        )
        # livesum: the node's calls in flight are the sum over its live workers; a worker
        # that died has none in flight any more (its supervisor marks it dead).
        self.rpcs_in_flight = Gauge(
            "flashstock_rpcs_in_flight",
            "RPCs started and not yet answered.",
            ("grpc_service", "grpc_method"),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.coalesced_batch = Histogram(
            "flashstock_coalesced_batch_size",
            "Deductions sent to Redis together, in one script call (store/coalesce.py).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )

    def rpc_meter(self, service: str, method: str) -> RpcMeter:
        """The figures of one unary RPC method, its label values bound once."""
        return RpcMeter(self, service, method)


class RpcMeter:
    """Counts and times the calls of one RPC method (label lookups done once, not per call)."""

    def __init__(self, metrics: Metrics, service: str, method: str) -> None:
        labels = ("unary", service, method)
        self._metrics = metrics
        self._labels = labels
        self._started = metrics.rpc_started.labels(*labels)
        self._in_flight = metrics.rpcs_in_flight.labels(service, method)
        self._handling = metrics.rpc_handling.labels(*labels)
        self._handled: dict[str, Counter] = {}

    def begin(self) -> float:
        """A call started; returns its start time (for :meth:`end`)."""
        self._started.inc()
        self._in_flight.inc()
        return perf_counter()

    def end(self, started: float, code: str) -> None:
        """The call begun at ``started`` was answered with status ``code`` (a ``grpc.StatusCode`` name)."""
        self._handling.observe(perf_counter() - started)
        self._in_flight.dec()
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = self._metrics.rpc_handled.labels(*self._labels, code)
        handled.inc()


METRICS = Metrics()
"""The process's metrics."""


def _build_version() -> str:
    try:
        return version("flashstock")
    except PackageNotFoundError:
        return "unknown"


class NodeCollector(Collector):
    """``flashstock_build_info`` and the ``process_*`` figures of the node's ``processes``, summed.

    Summed, since the multiprocess collector has no per-process figures and
    a node is one unit to its operator: ``rate(process_cpu_seconds_total)``
    is the CPU of all its processes, ``process_resident_memory_bytes`` their
    memory; ``process_start_time_seconds`` is the earliest start,
    ``process_max_fds`` the limit of one process (they share it).
    """

    def __init__(self, processes: Callable[[], Iterable[psutil.Process]]) -> None:
        self._processes = processes
        self._version = _build_version()

    def collect(self) -> Iterable[Metric]:
        """The figures, read now."""
        info = GaugeMetricFamily("flashstock_build_info", "The running flashstock's version.", labels=["version"])
        info.add_metric([self._version], 1)
        yield info
        cpu = rss = vms = 0.0
        fds = count = 0
        start = float("inf")
        for process in self._processes():
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    memory = process.memory_info()
                    cpu += times.user + times.system
                    rss += memory.rss
                    vms += memory.vms
                    fds += process.num_fds()
                    start = min(start, process.create_time())
                    count += 1
            except psutil.Error:  # gone meanwhile: it no longer counts
                continue
        yield CounterMetricFamily(
            "process_cpu_seconds", "User and system CPU time of the node's processes, in seconds.", value=cpu
        )
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory of the node's processes.", rss)
        yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory of the node's processes.", vms)
        yield GaugeMetricFamily("process_open_fds", "Open file descriptors of the node's processes.", fds)
        yield GaugeMetricFamily(
            "process_max_fds",
            "Most open file descriptors one process may have.",
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
        if count:
            yield GaugeMetricFamily(
                "process_start_time_seconds", "Start of the node's first process, in seconds since the epoch.", start
            )
        yield GaugeMetricFamily("flashstock_node_processes", "Processes of the node (supervisor included).", count)


def _this_process() -> list[psutil.Process]:
    return [psutil.Process()]


def _the_node_processes() -> list[psutil.Process]:
    # In multiprocess mode this process is a child of the node's supervisor, beside its siblings.
    supervisor = psutil.Process(os.getppid())
    return [supervisor, *supervisor.children()]


def fresh_multiprocess_folder(data_dir: str) -> Path:
    """An empty folder for one node run's multiprocess files: ``<data_dir>/metrics``, or a temporary one.

    Emptied first: files of an earlier run (killed, say) would add its
    counts to this one's.
    """
    try:
        folder = Path(data_dir).expanduser().resolve() / "metrics"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="flashstock-metrics-"))
    return folder


def served_registry(whole_node: bool) -> CollectorRegistry:
    """What the metrics endpoint serves: every process's figures, or this process's alone.

    ``whole_node``: this is one process of several (the supervisor gave it
    :data:`MULTIPROC_ENV`); else the node is this one process.
    """
    if not whole_node:
        METRICS.registry.register(NodeCollector(_this_process))
        return METRICS.registry
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ[MULTIPROC_ENV])
    registry.register(NodeCollector(_the_node_processes))
    return registry
