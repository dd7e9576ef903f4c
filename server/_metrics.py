"""The node's Prometheus metrics, in one place.

Served over HTTP on ``metrics_port``, when the port is set, by the process
that runs the node's duties (:meth:`Node.duties_run_in`: the duties process,
or worker 0 without one): the duties' figures below, the serving workers'
(summed from their snapshot files, :mod:`._serving_metrics`), the build's
and that process's own ``process_*`` (:func:`served_registry`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from flashstock.server._serving_metrics import BuildInfoCollector, ServingCollector


def _registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


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
            "flashstock_persister_backlog_entries", "Log entries not yet in the ledger.", registry=r
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
        )
        self.reconcile_unsettled = Gauge(
            "flashstock_reconcile_unsettled_shards",
            "Shards left out of the last comparison: their log moved while reading (the persister was behind).",
            registry=r,
        )
        self.duties_paused = Gauge(
            "flashstock_duties_paused",
            "1 while the node's non-core duties (reconcile, sale figures into the ledger) wait, by why: "
            "by_hand (degraded mode switched on) or shedding (a serving worker shed calls lately).",
            ["reason"],
            registry=r,
        )
        self.owned_shards = Gauge("flashstock_owned_shards", "Shards whose duties this node runs.", registry=r)
        self.shard_claims = Counter("flashstock_shard_claims", "Shards this node claimed (etcd).", registry=r)
        self.shard_releases = Counter(
            "flashstock_shard_releases", "Shards this node gave up, by why.", ["why"], registry=r
        )
        self.etcd_session_losses = Counter(
            "flashstock_etcd_session_losses",
            "etcd sessions (leases) this node lost; it stopped its duties.",
            registry=r,
        )


METRICS = Metrics()
"""The process's metrics."""


class _DutyFigures(Collector):
    """The figures of a :class:`Metrics`, as one collector of another registry."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        """Every duty metric, read now."""
        return self._metrics.registry.collect()


def served_registry(serving_folder: Path | None, metrics: Metrics = METRICS) -> CollectorRegistry:
    """What the metrics endpoint serves (a registry of its own: a process may serve it more than once).

    ``serving_folder``: where the workers write their figures; None: they count none.
    """
    registry = CollectorRegistry()
    registry.register(_DutyFigures(metrics))
    registry.register(BuildInfoCollector())
    ProcessCollector(registry=registry)
    if serving_folder is not None:
        registry.register(ServingCollector(serving_folder))
    return registry
