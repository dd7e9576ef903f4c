"""``flashstock bench-cluster``: failover time, 1 node vs 3 nodes, etcd writes at steady state.

One command starts its own clusters (:class:`~._localcluster.LocalCluster`:
etcd, Redis, nodes, a shared SQLite ledger, on loopback) and ``client_procs``
load processes (the load generator of ``flashstock bench``, :mod:`._bench`),
and measures three figures:

1. **throughput, 1 node vs 3 nodes.** The same load (``buyers`` coroutines
   over ``client_procs`` processes, one SKU per process, the SKUs in shards
   that the 3-node map gives to different nodes) against a 1-node cluster,
   then against a 3-node cluster with load process ``k`` calling node
   ``k % 3``: successful deductions/s of each, their ratio, and CPU per
   process group (nodes, Redis, etcd, load, the bench itself). Two clusters
   rather than one cluster loaded on one node or on all: a node of a 3-node
   cluster that takes all the calls still has only a third of the shards'
   duties (persister, reaper), so it is neither the 1-node case nor the
   3-node one.
2. **etcd writes at steady state**, on the 3-node cluster once every shard
   is owned and fenced: etcd's write counters (``/metrics``: puts, deletes,
   txns, raft proposals committed) and its lease keepalives, per second,
   over ``idle_seconds`` without load and over the 3-node throughput window.
3. **failover time**, on the 3-node cluster, ``runs`` times: a victim
   (node 0, 1, 2, 0 ...) is killed with SIGKILL, after a random pause of up
   to one keepalive interval (TTL/3) so that the kills land at every point
   of the victim's keepalive cycle; the bench polls each of the
   victim's shards' meta hash in Redis every 20 ms until a new owner's
   fence is there (an epoch above the victim's, written by ``fence.lua``
   with Redis's clock in ``owned_ms``). A run's time is ``owned_ms`` minus
   the kill's wall time: of the last shard ("all shards moved") and of the
   first. Expected: between TTL - TTL/3 (the lease was refreshed just before
   the kill) and TTL + 0.5 s (refreshed just after it, and etcd's expiry
   check runs every 500 ms), plus the claim and the fence. Meanwhile a light paced load (``failover_rate`` deductions/s)
   runs against the survivors. The victim is then started again and the
   next run waits until every shard is owned as the map says and fenced.
   At the end, the units handed out are checked against the OK answers
   and Redis is reconciled against the ledger (``flashstock reconcile``'s
   check): every deduction made around the kills is in the ledger once.

Exit code: 0 when measured, 1 when a consistency check failed (units handed
out vs OK answers, or Redis vs ledger), 2 when it could not run, 130 on
Ctrl-C. Every process started is stopped on the way out, also on Ctrl-C,
SIGTERM and errors; the temporary folder is removed (``--dir`` is kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from flashstock.server.bench.node import (
    _INF,
    NOISY_REST_PERCENT,
    _Cpu,
    _cpu_cell,
    _latency_ms,
    _LoadProcs,
    _merge,
    _outcome_names,
    _sleep_until,
    _split,
    percentile,
    sigterm_as_interrupt,
)

PARTS = ("failover", "throughput", "etcd")
"""The parts ``--skip`` can leave out."""

ETCD_EXPIRY_CHECK_S = 0.5
"""etcd (3.4) revokes expired leases from a loop that runs every 500 ms, so a
lease outlives its TTL by up to this much."""

POLL_S = 0.02
"""How often the failover watch reads the victim's shards in Redis."""

ETCD_COUNTERS = {
    "puts": "etcd_mvcc_put_total",
    "deletes": "etcd_mvcc_delete_total",
    "txns": "etcd_mvcc_txn_total",
    "proposals_committed": "etcd_server_proposals_committed_total",
    "lease_keepalives": "etcd_debugging_lease_renewed_total",
    "leases_expired": "etcd_debugging_server_lease_expired_total",
    "ranges": "etcd_mvcc_range_total",
}
"""etcd's counters the bench reads, by the name it reports them under. Lease
keepalives are not raft proposals in etcd 3.4 (the leader renews a lease in
memory); ``etcd_debugging_lease_renewed_total`` counts them."""

ETCD_GAUGES = {"keys": "etcd_debugging_mvcc_keys_total"}
"""etcd's gauges the bench reads: their value at the end of a window."""

ETCD_WRITES = ("puts", "deletes", "txns", "proposals_committed")
"""The counters that are writes (what steady state should not make)."""

META_FIELDS = ("epoch", "owner", "owned_ms")
"""The fields of a shard's meta hash the failover watch reads (set by ``fence.lua``)."""


@dataclass(frozen=True)
class ClusterBenchPlan:
    """What ``flashstock bench-cluster`` runs."""

    runs: int = 20
    """Failover runs (kills)."""
    lease_ttl_s: int = 5
    """The nodes' lease TTL, seconds (the product default)."""
    buyers: int = 64
    """Concurrent buyer coroutines of the throughput phases, over all load processes."""
    seconds: float = 5.0
    """Measured length of each throughput phase."""
    warmup: float = 1.5
    """Unmeasured seconds before each throughput phase."""
    idle_seconds: float = 10.0
    """Length of the idle etcd window."""
    client_procs: int = 3
    """Load-generating processes (one SKU each; process ``k`` calls node ``k % nodes``)."""
    failover_rate: float = 300.0
    """Paced deductions/s against the survivors during each failover run (0: none)."""
    shards: int = 64
    """The clusters' shard count."""
    seed: int = 1
    """Seed of the random pause before each kill."""
    skip: frozenset[str] = frozenset()
    """Parts left out: ``failover``, ``throughput``, ``etcd``."""
    json_out: str | None = None
    """Also write the figures to this JSON file."""
    folder: str | None = None
    """Where the clusters live (kept); None: a temporary folder, removed at the end."""

    def problems(self) -> list[str]:
        """What is wrong with the plan, each naming its option."""
        out = []
        if self.runs < 1:
            out.append("--runs must be >= 1")
        if self.lease_ttl_s < 1:
            out.append("--lease-ttl-s must be >= 1")
        if self.buyers < 1:
            out.append("--buyers must be >= 1")
        if self.client_procs < 1 or self.client_procs > self.buyers:
            out.append("--client-procs must be 1 to --buyers")
        if self.seconds <= 0 or self.warmup < 0 or self.idle_seconds <= 0:
            out.append("--seconds and --idle-seconds must be > 0, --warmup >= 0")
        if self.failover_rate < 0:
            out.append("--failover-rate must be >= 0")
        if not 3 <= self.shards <= 16384:
            out.append("--shards must be 3-16384")
        unknown = set(self.skip) - set(PARTS)
        if unknown:
            out.append(f"--skip takes {', '.join(PARTS)}, not {', '.join(sorted(unknown))}")
        if set(PARTS) <= set(self.skip):
            out.append("--skip leaves nothing to measure")
        return out

    def runs_part(self, part: str) -> bool:
        """True unless ``part`` is skipped."""
        return part not in self.skip


# -- pure helpers -----------------------------------------------------------------


def parse_skip(values: Iterable[str]) -> frozenset[str]:
    """``--skip`` values, each one part or a comma-separated list: the parts named (unchecked)."""
    return frozenset(p.strip().lower() for v in values for p in v.split(",") if p.strip())


def parse_metrics(text: str, names: Iterable[str]) -> dict[str, float]:
    """Each named metric's value in Prometheus text format, summed over its label sets.

    A metric absent from ``text`` is absent from the result.
    """
    wanted = set(names)
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name not in wanted:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def counter_rates(before: Mapping[str, float], after: Mapping[str, float], seconds: float) -> dict[str, float | None]:
    """Per second change of each counter in ``after`` (None when ``before`` lacks it or ``seconds`` <= 0)."""
    out: dict[str, float | None] = {}
    for name, value in after.items():
        prev = before.get(name)
        out[name] = None if prev is None or seconds <= 0 else round((value - prev) / seconds, 3)
    return out


def spread(values: Sequence[float]) -> dict[str, float]:
    """min, p50, p99, max and mean of ``values`` (NaN for each when empty); p50/p99 are nearest-rank."""
    if not values:
        return {k: math.nan for k in ("min", "p50", "p99", "max", "mean")}
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "p50": percentile(ordered, 0.5),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
        "mean": round(sum(ordered) / len(ordered), 1),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` rounded to 3 places; None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


@dataclass(frozen=True)
class ShardFence:
    """A shard's last fence, as its meta hash in Redis holds it."""

    epoch: int
    """The epoch the last owner raised it to."""
    owner: str
    """That owner's node id."""
    owned_ms: int
    """When its fence ran, unix ms on Redis's clock."""


def parse_fence(values: Sequence[str | bytes | None]) -> ShardFence | None:
    """The fence from ``HMGET meta epoch owner owned_ms``; None if a field is missing or malformed."""
    if len(values) != len(META_FIELDS) or any(v is None for v in values):
        return None
    epoch, owner, owned_ms = (v.decode() if isinstance(v, bytes) else str(v) for v in values)
    try:
        return ShardFence(int(epoch), owner, int(owned_ms))
    except ValueError:
        return None


def moved(
    victim: str, epochs_before: Mapping[int, int], fences: Mapping[int, ShardFence | None]
) -> dict[int, ShardFence]:
    """The victim's shards that a new owner has fenced: an epoch above the victim's, another owner."""
    out = {}
    for shard, epoch in epochs_before.items():
        fence = fences.get(shard)
        if fence is not None and fence.epoch > epoch and fence.owner != victim:
            out[shard] = fence
    return out


def failover_ms(kill_ms: float, fences: Mapping[int, ShardFence]) -> tuple[float, float]:
    """(first shard moved, all shards moved): ms from the kill to the earliest and the latest new fence."""
    if not fences:
        raise ValueError("no shard has moved")
    times = [f.owned_ms for f in fences.values()]
    return round(min(times) - kill_ms, 1), round(max(times) - kill_ms, 1)


def unsettled(
    expected: Mapping[int, str], owners: Mapping[int, tuple[str, int]], fences: Mapping[int, ShardFence | None]
) -> list[int]:
    """Shards not yet where the map puts them, with that owner's fence in Redis.

    ``expected``: shard -> node (:func:`~flashstock.lockmgr.assign`);
    ``owners``: shard -> (node, epoch) from etcd; ``fences``: from Redis.
    """
    out = []
    for shard, node in sorted(expected.items()):
        owner = owners.get(shard)
        fence = fences.get(shard)
        if owner is None or owner[0] != node or fence is None or (fence.owner, fence.epoch) != owner:
            out.append(shard)
    return out


def keepalive_interval_s(lease_ttl_s: int) -> float:
    """How often a node refreshes its lease: a third of the TTL, as :class:`~flashstock.lockmgr.SessionConfig` does."""
    from flashstock.lockmgr import SessionConfig

    return SessionConfig(ttl=lease_ttl_s).interval_s


def expected_window_ms(lease_ttl_s: int) -> tuple[float, float]:
    """When a killed node's shards should move, in ms from the kill: its lease was refreshed up to one
    keepalive interval before the kill, and etcd revokes it up to ``ETCD_EXPIRY_CHECK_S`` after it expires."""
    return (
        round((lease_ttl_s - keepalive_interval_s(lease_ttl_s)) * 1000, 1),
        round((lease_ttl_s + ETCD_EXPIRY_CHECK_S) * 1000, 1),
    )


def victims(runs: int, nodes: int) -> list[int]:
    """The node killed in each run: 0, 1, ..., nodes - 1, 0, ..."""
    return [i % nodes for i in range(runs)]


def skus_by_node(prefix: str, count: int, placement: Mapping[int, str], nodes: Sequence[str], shards: int) -> list[str]:
    """``count`` SKU ids, the ``k``-th in a shard that ``placement`` gives to ``nodes[k % len(nodes)]``,
    no two in one shard (so their calls do not share a coalesced script call)."""
    from flashstock.lockmgr import shard_of

    if count > shards:
        raise ValueError(f"{count} SKUs cannot have {shards} shards to themselves")
    out: list[str] = []
    used: set[int] = set()
    for k in range(count):
        node = nodes[k % len(nodes)]
        for j in range(100_000):
            sku = f"{prefix}{k}-{j}"
            shard = shard_of(sku, shards)
            if shard not in used and placement.get(shard) == node:
                out.append(sku)
                used.add(shard)
                break
        else:
            raise ValueError(f"no free shard of {node} found for SKU {k}")
    return out


def handed_out_check(handed_out: int, ok_answers: int, errors: int) -> str | None:
    """Why the units handed out do not fit the answers, or None.

    Every OK answer is a unit handed out; a call that failed (timeout,
    connection cut) may have taken effect too, so up to ``errors`` more.
    """
    if handed_out < ok_answers:
        return f"{handed_out} units handed out for {ok_answers} OK answers: deductions lost"
    if handed_out > ok_answers + errors:
        return f"{handed_out} units handed out for {ok_answers} OK answers and {errors} failed calls: oversell"
    return None


def limit_note(one: Mapping[str, Any], three: Mapping[str, Any], cores: int) -> str:
    """A sentence on what limits the deductions/s, from the two throughput phases' figures."""
    c1, c3 = one["cpu_percent"], three["cpu_percent"]
    capacity = 100 * cores
    busy = min(c1["machine"], c3["machine"])

    def per_ok(cpu: Mapping[str, Any], phase: Mapping[str, Any]) -> float:
        return cpu["nodes"] / 100 * 1e6 / phase["ok_per_s"] if phase["ok_per_s"] else math.nan

    # The busiest process of the 1-node run: its serving worker, which can use one core at most.
    top = max(c1.get("nodes_per_process") or [c1["nodes"]])
    groups = (
        f"nodes {c1['nodes']:.0f}% → {c3['nodes']:.0f}%, load processes {c1['load']:.0f}% → {c3['load']:.0f}%, "
        f"Redis {c1['redis']:.0f}% → {c3['redis']:.0f}%, etcd {c1['etcd']:.0f}% → {c3['etcd']:.0f}%; "
        f"node CPU per deduction {per_ok(c1, one):.0f} µs → {per_ok(c3, three):.0f} µs"
    )
    worker = (
        f"The 1-node run is also bound by its busiest process ({top:.0f}% of a core; a process uses one core at most), "
        "where 3 nodes serve the calls in three."
    )
    if busy >= 0.9 * capacity:
        return (
            f"CPU-bound: both runs kept the machine's {cores} cores busy ({c1['machine']:.0f}% and "
            f"{c3['machine']:.0f}% of {capacity}%), shared by nodes, Redis, etcd and the load generator, so two more "
            f"nodes bring no more CPU, only more processes to share it ({groups}). {worker}"
        )
    return (
        f"Not CPU-bound ({c1['machine']:.0f}% and {c3['machine']:.0f}% of {capacity}% busy): the closed loop of "
        f"{one.get('buyers', '?')} buyers and the calls' latency set the rate ({groups}). {worker}"
    )


def disturbed(cpu: Mapping[str, Any]) -> bool:
    """True when processes other than the bench's used more than ``NOISY_REST_PERCENT`` of a core."""
    return cpu.get("rest", 0.0) > NOISY_REST_PERCENT


# -- the run ------------------------------------------------------------------------


class _ClusterRun:
    """One bench-cluster run: load processes, then a 1-node and a 3-node cluster in turn."""

    SKU_LOAD = "bench-load-"
    SKU_FAILOVER = "bench-failover-"

    def __init__(self, plan: ClusterBenchPlan, console: Console, stack: contextlib.ExitStack, folder: Path) -> None:
        self.plan = plan
        self.console = console
        self.stack = stack
        self.folder = folder
        plan_figures = {
            k: (sorted(v) if isinstance(v, frozenset) else v)
            for k, v in asdict(plan).items()
            if k not in ("json_out", "folder")
        }
        self.figures: dict[str, Any] = {"plan": plan_figures}
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=4,
        )
        from flashstock.lockmgr import assign

        self.random = random.Random(plan.seed)
        self.node_ids = [f"node-{i}" for i in range(3)]
        # The map every node computes with all three live: the SKUs are placed by it.
        self.placement = assign(plan.shards, self.node_ids)
        self.load_skus = skus_by_node(self.SKU_LOAD, plan.client_procs, self.placement, self.node_ids, plan.shards)
        self.failover_skus = skus_by_node(self.SKU_FAILOVER, 3, self.placement, self.node_ids, plan.shards)

    # -- set-up --------------------------------------------------------------------

    def start_loads(self) -> None:
        task = self.progress.add_task(f"start {self.plan.client_procs} load process(es)", total=None, info="")
        self.loads = _LoadProcs(self.plan.client_procs)
        self.stack.callback(self.loads.stop)
        self.loads.wait_ready()
        self.progress.update(task, total=1, completed=1)

    def cluster(self, stack: contextlib.ExitStack, name: str, nodes: int) -> Any:
        """A cluster of ``nodes`` in ``name``/, up and settled; ``stack`` stops it."""
        from flashstock.server.local.cluster import LocalCluster

        task = self.progress.add_task(f"{name}: start etcd, Redis, {nodes} node(s)", total=None, info="")
        cluster = LocalCluster(
            self.folder / name,
            nodes=nodes,
            shards=self.plan.shards,
            lease_ttl_s=self.plan.lease_ttl_s,
            # Stops, and restarts between runs, need not wait 5 s for calls in flight.
            extra_node_args=("--grace-s", "1"),
        )
        stack.enter_context(cluster)
        self.progress.update(task, total=1, completed=1, info=", ".join(cluster.node_addresses))
        self.settle(cluster, f"{name}: every shard owned and fenced")
        return cluster

    def settle(self, cluster: Any, description: str, timeout: float = 90.0, keep: bool = True) -> float:
        """Wait until every node is live and every shard owned as the map says, with its fence in Redis;
        the seconds it took. ``keep``: leave its line in the progress display."""
        task = self.progress.add_task(description, total=cluster.shards, info="")
        started = time.monotonic()

        async def wait() -> None:
            import redis.asyncio as aioredis

            from flashstock.lockmgr import etcd_client, read_view

            etcd = etcd_client(cluster.etcd_endpoint, access=cluster.etcd_access())
            r = aioredis.Redis.from_url(
                cluster.redis_url, decode_responses=True, **cluster.redis_tls().kwargs(cluster.redis_url)
            )
            try:
                while True:
                    view = await read_view(etcd, cluster.cluster)
                    fences = await _read_fences(r, range(cluster.shards))
                    owners = {s: (o.node, o.epoch) for s, o in view.owners.items()}
                    left = unsettled(view.desired(), owners, fences)
                    live = set(view.nodes) == set(cluster.node_ids)
                    self.progress.update(
                        task, completed=cluster.shards - len(left), info=f"{len(view.nodes)} node(s) live"
                    )
                    if live and not left:
                        return
                    if time.monotonic() - started > timeout:
                        desired = view.desired()
                        detail = "; ".join(
                            f"shard {s}: map {desired[s]}, etcd {_owner_text(owners.get(s))}, "
                            f"Redis {_fence_text(fences.get(s))}"
                            for s in left[:6]
                        )
                        raise RuntimeError(
                            f"{description}: not settled within {timeout:.0f} s: {len(left)} shards left ({detail}); "
                            f"live nodes {sorted(view.nodes)}"
                        )
                    await asyncio.sleep(0.1)
            finally:
                await r.aclose()
                await etcd.close()

        asyncio.run(wait())
        if not keep:
            self.progress.remove_task(task)
        return time.monotonic() - started

    def cpu_groups(self, cluster: Any, nodes: Iterable[int] | None = None) -> _Cpu:
        chosen = set(range(cluster.size)) if nodes is None else set(nodes)
        by_role = {p.name: p.pid for p in cluster.processes}
        return _Cpu(
            {
                "nodes": [by_role[cluster.node_ids[i]] for i in sorted(chosen)],
                "redis": [by_role["redis"]],
                "etcd": [by_role["etcd"]],
                "load": self.loads.pids,
                "bench": [os.getpid()],
            }
        )

    def put_skus(self, cluster: Any, skus: Iterable[str]) -> None:
        from flashstock.client import AdminClient, ClientConfig

        with AdminClient(ClientConfig(addresses=cluster.node_addresses, deadline_s=10)) as admin:
            for sku in skus:
                admin.put_sku(sku, 10**12)

    # -- throughput (and etcd under load) ------------------------------------------------

    def throughput(self, cluster: Any, name: str) -> dict[str, Any]:
        """Warm-up, then ``seconds`` of back-to-back Deducts, load process ``k`` on node ``k % nodes``."""
        from flashstock.v1 import stock_pb2

        plan = self.plan
        self.put_skus(cluster, self.load_skus)
        addresses = cluster.node_addresses
        phases = [
            {
                "target": addresses[k % len(addresses)],
                "sku": self.load_skus[k],
                "users": "t",
                "distinct_users": False,
                "requests": None,
                "coroutines": n,
                "connections": 1,
                "rate": None,
            }
            for k, n in enumerate(_split(plan.buyers, plan.client_procs))
        ]
        cpu = self.cpu_groups(cluster)
        task = self.progress.add_task(
            f"{name}: {plan.buyers} buyers, warm-up {plan.warmup:g} s + {plan.seconds:g} s",
            total=plan.warmup + plan.seconds,
            info="",
        )
        start = time.monotonic()
        measure_from = start + plan.warmup
        measure_until = measure_from + plan.seconds
        self.loads.set_clock(measure_from, measure_until, measure_until)
        self.loads.start(phases)

        def tick() -> None:
            self.loads.check_alive()
            elapsed = time.monotonic() - start
            self.progress.update(
                task, completed=min(elapsed, plan.warmup + plan.seconds), info=f"{self.loads.done():,} calls"
            )

        _sleep_until(measure_from, tick)
        cpu_before, etcd_before = cpu.sample(), _etcd_metrics(cluster.etcd_endpoint)
        _sleep_until(measure_until, tick)
        cpu_after, etcd_after = cpu.sample(), _etcd_metrics(cluster.etcd_endpoint)
        r = _merge(self.loads.results())
        wall = measure_until - measure_from
        ok = r["window"].get(stock_pb2.OUTCOME_OK, 0)
        errors = sum(v for k, v in r["window"].items() if isinstance(k, str))
        cpu_percent = _Cpu.percent(cpu_before, cpu_after)
        self.progress.update(task, completed=plan.warmup + plan.seconds, info=f"{ok / wall:,.0f} OK/s")
        return {
            "nodes": cluster.size,
            "targets": [p["target"] for p in phases],
            "skus": self.load_skus,
            "buyers": plan.buyers,
            "ok_per_s": round(ok / wall, 1),
            "calls": sum(r["window"].values()),
            "outcomes": _outcome_names(r["window"]),
            "errors": errors,
            "latency_ms": _latency_ms(r["latencies"]),
            "cpu_percent": cpu_percent,
            "cpu_us_per_ok": {
                g: round(cpu_percent[g] / 100 * 1e6 / (ok / wall), 1) if ok else None
                for g in ("nodes", "redis", "etcd", "load")
            },
            "disturbed": disturbed(cpu_percent),
            "etcd": {**_etcd_window(etcd_before, etcd_after, wall), "cpu_percent": cpu_percent},
        }

    # -- etcd at rest ----------------------------------------------------------------------

    def etcd_idle(self, cluster: Any) -> dict[str, Any]:
        plan = self.plan
        task = self.progress.add_task(f"etcd: {plan.idle_seconds:g} s idle", total=plan.idle_seconds, info="")
        cpu = self.cpu_groups(cluster)
        start = time.monotonic()
        cpu_before, before = cpu.sample(), _etcd_metrics(cluster.etcd_endpoint)
        _sleep_until(
            start + plan.idle_seconds,
            lambda: self.progress.update(task, completed=min(plan.idle_seconds, time.monotonic() - start)),
        )
        cpu_after, after = cpu.sample(), _etcd_metrics(cluster.etcd_endpoint)
        wall = cpu_after["_wall"] - cpu_before["_wall"]
        self.progress.update(task, completed=plan.idle_seconds)
        out = _etcd_window(before, after, wall)
        out["cpu_percent"] = _Cpu.percent(cpu_before, cpu_after)
        return out

    # -- failover --------------------------------------------------------------------------

    def failover(self, cluster: Any) -> dict[str, Any]:
        plan = self.plan
        self.put_skus(cluster, self.failover_skus)
        task = self.progress.add_task(
            f"failover: {plan.runs} kill -9 runs, lease TTL {plan.lease_ttl_s} s", total=plan.runs, info=""
        )
        runs: list[dict[str, Any]] = []
        self.figures["failover_runs"] = runs  # what a failed run leaves in --json

        async def all_runs() -> None:
            import redis.asyncio as aioredis

            from flashstock.lockmgr import etcd_client

            etcd = etcd_client(cluster.etcd_endpoint, access=cluster.etcd_access())
            r = aioredis.Redis.from_url(
                cluster.redis_url, decode_responses=True, **cluster.redis_tls().kwargs(cluster.redis_url)
            )
            try:
                for n, victim in enumerate(victims(plan.runs, cluster.size)):
                    run = await self._failover_run(cluster, victim, etcd, r)
                    runs.append(run)
                    self.progress.update(
                        task,
                        completed=n + 1,
                        info=f"run {n + 1}: {cluster.node_ids[victim]}, all {run['all_ms'] / 1000:.2f} s, "
                        f"first {run['first_ms'] / 1000:.2f} s",
                    )
                    await asyncio.to_thread(cluster.start_node, victim)
                    run["settle_s"] = round(
                        await asyncio.to_thread(
                            self.settle,
                            cluster,
                            f"run {n + 1}: {cluster.node_ids[victim]} back, shards settling",
                            90.0,
                            False,
                        ),
                        2,
                    )
            finally:
                await r.aclose()
                await etcd.close()

        asyncio.run(all_runs())
        del self.figures["failover_runs"]
        return self._failover_figures(cluster, runs)

    async def _failover_run(self, cluster: Any, victim: int, etcd: Any, r: Any) -> dict[str, Any]:
        from flashstock.lockmgr import live_nodes, owners

        plan = self.plan
        victim_id = cluster.node_ids[victim]
        epochs = {s: o.epoch for s, o in (await owners(etcd, cluster.cluster)).items() if o.node == victim_id}
        if not epochs:
            raise RuntimeError(f"{victim_id} owns no shard before its kill")
        survivors = [i for i in range(cluster.size) if i != victim]
        cpu = self.cpu_groups(cluster, survivors)
        loaded = plan.failover_rate > 0
        if loaded:
            self._start_failover_load(cluster, survivors)
        # The runs keep a steady cadence, so without this pause each victim would die at about the same
        # point of its keepalive cycle every time, and the runs would sample one lease age per node.
        await asyncio.sleep(0.3 + self.random.uniform(0, keepalive_interval_s(plan.lease_ttl_s)))
        cpu_before = cpu.sample()
        sent = time.time()
        await asyncio.to_thread(cluster.kill, victim)
        kill_ms = sent * 1000
        kill_call_ms = round((time.time() - sent) * 1000, 1)
        gone_ms: float | None = None
        done: dict[int, ShardFence] = {}
        deadline = time.monotonic() + 4 * plan.lease_ttl_s + 30
        next_at = time.monotonic()
        while True:
            fences, nodes = await asyncio.gather(_read_fences(r, epochs), live_nodes(etcd, cluster.cluster))
            if gone_ms is None and victim_id not in nodes:
                gone_ms = time.time() * 1000
            done = moved(victim_id, epochs, fences)
            if len(done) == len(epochs):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"failover of {victim_id}: {len(epochs) - len(done)} of its {len(epochs)} shards "
                    "not fenced by a new "
                    f"owner within {4 * plan.lease_ttl_s + 30} s of its kill"
                )
            next_at += POLL_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        cpu_after = cpu.sample()
        load = await asyncio.to_thread(self._stop_failover_load) if loaded else None
        claims = [
            o.since_ms for s, o in (await owners(etcd, cluster.cluster)).items() if s in epochs and o.node != victim_id
        ]
        first_ms, all_ms = failover_ms(kill_ms, done)
        return {
            "victim": victim_id,
            "shards": len(epochs),
            "kill_ms": round(kill_ms),
            "kill_call_ms": kill_call_ms,
            "first_ms": first_ms,
            "all_ms": all_ms,
            "lease_gone_seen_ms": round(gone_ms - kill_ms, 1) if gone_ms is not None else None,
            "first_claim_ms": round(min(claims) - kill_ms, 1) if claims else None,
            "last_claim_ms": round(max(claims) - kill_ms, 1) if claims else None,
            "new_owners": sorted({f.owner for f in done.values()}),
            "cpu_percent": _Cpu.percent(cpu_before, cpu_after),
            "load": load,
        }

    def _start_failover_load(self, cluster: Any, survivors: Sequence[int]) -> None:
        plan = self.plan
        procs = plan.client_procs
        self.loads.set_clock(0.0, _INF, _INF)
        self.loads.start(
            [
                {
                    "target": cluster.node_addresses[survivors[k % len(survivors)]],
                    "sku": self.failover_skus[k % len(self.failover_skus)],
                    "users": "f",
                    "distinct_users": False,
                    "requests": None,
                    "coroutines": 8,
                    "connections": 1,
                    "rate": plan.failover_rate / procs,
                }
                for k in range(procs)
            ]
        )

    def _stop_failover_load(self) -> dict[str, Any]:
        from flashstock.v1 import stock_pb2

        self.loads.set_clock(stop_at=0.0)
        r = _merge(self.loads.results())
        return {
            "calls": sum(r["totals"].values()),
            "ok": r["totals"].get(stock_pb2.OUTCOME_OK, 0),
            "errors": sum(v for k, v in r["totals"].items() if isinstance(k, str)),
            "outcomes": _outcome_names(r["totals"]),
        }

    def _failover_figures(self, cluster: Any, runs: list[dict[str, Any]]) -> dict[str, Any]:
        plan = self.plan
        low, bound = expected_window_ms(plan.lease_ttl_s)
        out: dict[str, Any] = {
            "lease_ttl_s": plan.lease_ttl_s,
            "bound_ms": bound,
            "expected_from_ms": low,
            "runs": runs,
        }
        for name in ("all_ms", "first_ms", "lease_gone_seen_ms", "first_claim_ms", "last_claim_ms"):
            out[name] = spread([run[name] for run in runs if run[name] is not None])
        out["over_bound"] = sum(1 for run in runs if run["all_ms"] > out["bound_ms"])
        machine = [run["cpu_percent"]["machine"] for run in runs]
        rest = [run["cpu_percent"]["rest"] for run in runs]
        out["cpu"] = {
            "machine_mean": round(sum(machine) / len(machine), 1),
            "rest_max": max(rest),
            "disturbed_runs": sum(1 for x in rest if x > NOISY_REST_PERCENT),
        }
        if plan.failover_rate > 0:
            out["load"] = self._consistency(cluster, runs)
        return out

    def _consistency(self, cluster: Any, runs: list[dict[str, Any]]) -> dict[str, Any]:
        """Units handed out vs the OK answers, and Redis reconciled against the ledger."""
        import redis as redis_py

        from flashstock.client import AdminClient, ClientConfig
        from flashstock.server.duties.reconcile import reconcile
        from flashstock.server.ledger.reports import open_for_reading

        ok = sum(run["load"]["ok"] for run in runs)
        errors = sum(run["load"]["errors"] for run in runs)
        with AdminClient(ClientConfig(addresses=cluster.node_addresses, deadline_s=10)) as admin:
            handed = sum(s.held + s.confirmed for s in (admin.get_sku(sku) for sku in self.failover_skus))
        task = self.progress.add_task("failover: reconcile Redis with the ledger", total=None, info="")
        client = redis_py.Redis.from_url(
            cluster.redis_url, decode_responses=True, **cluster.redis_tls().kwargs(cluster.redis_url)
        )
        ledger = open_for_reading(cluster.ledger_url)
        try:
            rec = reconcile(client, ledger, cluster.shards, wait_s=30)
        finally:
            client.close()
            ledger.close()
        self.progress.update(
            task, total=1, completed=1, info="agree" if rec.ok else f"{len(rec.differences)} differences"
        )
        return {
            "rate": self.plan.failover_rate,
            "calls": sum(run["load"]["calls"] for run in runs),
            "ok": ok,
            "errors": errors,
            "handed_out": handed,
            "handed_out_problem": handed_out_check(handed, ok, errors),
            "reconciled": rec.ok,
            "reconcile_differences": [str(d) for d in rec.differences],
            "reconcile_unsettled": {str(k): v for k, v in rec.unsettled.items()},
            "skus_reconciled": len(rec.redis),
        }

    # -- the whole run ---------------------------------------------------------------------------

    def run(self) -> int:
        plan = self.plan
        import platform

        import grpc

        self.figures["machine"] = {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        }
        self.figures["date"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
        with self.progress:
            self.start_loads()
            if plan.runs_part("throughput"):
                with contextlib.ExitStack() as stack:
                    one = self.cluster(stack, "one-node", 1)
                    self.figures["one_node"] = self.throughput(one, "1 node")
            with contextlib.ExitStack() as stack:
                three = self.cluster(stack, "three-nodes", 3)
                if plan.runs_part("etcd"):
                    self.figures["etcd_idle"] = self.etcd_idle(three)
                if plan.runs_part("throughput") or plan.runs_part("etcd"):
                    self.figures["three_nodes"] = self.throughput(three, "3 nodes")
                if plan.runs_part("failover"):
                    self.figures["failover"] = self.failover(three)
        return self.report()

    # -- report ---------------------------------------------------------------------------------

    def report(self) -> int:
        f = self.figures
        problems: list[str] = []
        if "failover" in f:
            self.console.print(self._failover_table(f["failover"]))
            for line in self._failover_lines(f["failover"]):
                self.console.print(line)
            load = f["failover"].get("load")
            if load:
                if load["handed_out_problem"]:
                    problems.append(load["handed_out_problem"])
                if not load["reconciled"]:
                    problems.append(
                        f"Redis and the ledger disagree after the failovers: {load['reconcile_differences'][:3]}"
                    )
        if "one_node" in f:
            one, three = f["one_node"], f["three_nodes"]
            f["ratio_3_to_1"] = ratio(three["ok_per_s"], one["ok_per_s"])
            f["limit"] = limit_note(one, three, os.cpu_count() or 1)
            self.console.print(self._throughput_table(one, three, f["ratio_3_to_1"]))
            self.console.print(f"[bold]What limits it:[/] {f['limit']}")
            for name, phase in (("1 node", one), ("3 nodes", three)):
                if phase["disturbed"]:
                    self.console.print(
                        f"[yellow]warning:[/] during the {name} phase, processes other than the bench's used "
                        f"{phase['cpu_percent']['rest']:.0f}% of a core: the rates are disturbed"
                    )
        if "etcd_idle" in f:
            self.console.print(self._etcd_table(f["etcd_idle"], f["three_nodes"]["etcd"]))
        for p in problems:
            self.console.print(f"[bold red]FAIL:[/] {p}")
        f["problems"] = problems
        if self.plan.json_out:
            with open(self.plan.json_out, "w") as out:
                json.dump(f, out, indent=2, default=str)
                out.write("\n")
            self.console.print(f"figures written to {self.plan.json_out}")
        return 1 if problems else 0

    def _failover_table(self, fo: dict[str, Any]) -> Table:
        t = Table(
            "seconds from the kill",
            "p50",
            "p99",
            "max",
            "min",
            title=f"Failover: {len(fo['runs'])} runs, kill -9 of one of 3 nodes, lease TTL {fo['lease_ttl_s']} s",
        )

        def row(label: str, s: dict[str, float], bold: bool = False) -> None:
            cells = [f"{s[k] / 1000:.2f}" if not math.isnan(s[k]) else "-" for k in ("p50", "p99", "max", "min")]
            t.add_row(f"[bold]{label}[/]" if bold else label, *(f"[bold]{c}[/]" if bold else c for c in cells))

        row("all its shards moved", fo["all_ms"], bold=True)
        row("first shard moved", fo["first_ms"], bold=True)
        row("  node key gone (bench saw)", fo["lease_gone_seen_ms"])
        row("  first claim in etcd", fo["first_claim_ms"])
        row("  last claim in etcd", fo["last_claim_ms"])
        bound = f"{fo['bound_ms'] / 1000:.2f}"
        t.add_row("expected: TTL - TTL/3 .. TTL + 0.5 s", "", "", bound, f"{fo['expected_from_ms'] / 1000:.2f}")
        return t

    def _failover_lines(self, fo: dict[str, Any]) -> list[str]:
        shards = [run["shards"] for run in fo["runs"]]
        cpu = fo["cpu"]
        lines = [
            (
                f"{fo['over_bound']} of {len(fo['runs'])} runs over the bound; "
                f"{min(shards)}–{max(shards)} shards moved "
                f"per run; machine CPU during the runs {cpu['machine_mean']:.0f}% of a core on average, others' up to "
                f"{cpu['rest_max']:.0f}%"
            ),
        ]
        if cpu["disturbed_runs"]:
            lines.append(
                f"[yellow]warning:[/] {cpu['disturbed_runs']} run(s) disturbed: "
                f"others used > {NOISY_REST_PERCENT:.0f}% of a core"
            )
        load = fo.get("load")
        if load:
            lines.append(
                f"background load, {load['rate']:g}/s on the survivors: {load['ok']:,} OK, {load['errors']:,} errors, "
                f"{load['handed_out']:,} units handed out"
                + (
                    " [green](= OK answers)[/]"
                    if not load["handed_out_problem"]
                    else f" [red]({load['handed_out_problem']})[/]"
                )
            )
            lines.append(
                f"Redis vs ledger after the runs ({load['skus_reconciled']} SKUs): "
                + (
                    "[green]agree[/]"
                    if load["reconciled"]
                    else f"[red]{len(load['reconcile_differences'])} differences[/]"
                )
            )
        return lines

    def _throughput_table(self, one: dict[str, Any], three: dict[str, Any], ratio_3_1: float | None) -> Table:
        plan = self.plan
        t = Table(
            "figure",
            "1 node",
            "3 nodes",
            title=(
                f"Throughput: {plan.buyers} buyers in {plan.client_procs} load process(es), one SKU each, "
                f"{plan.seconds:g} s measured; on 3 nodes process k calls node k mod 3"
            ),
        )
        t.add_row("successful deductions/s", f"{one['ok_per_s']:,.0f}", f"{three['ok_per_s']:,.0f}")
        t.add_row("ratio 3 nodes / 1 node", "1", f"[bold]{ratio_3_1:.2f}[/]" if ratio_3_1 is not None else "-")
        for q in ("p50", "p99", "p999"):
            t.add_row(f"latency {q} (ms)", f"{one['latency_ms'][q]:.2f}", f"{three['latency_ms'][q]:.2f}")
        t.add_row("errors", str(one["errors"]), str(three["errors"]))
        c1, c3 = one["cpu_percent"], three["cpu_percent"]
        for group, label in (
            ("nodes", "nodes"),
            ("redis", "Redis"),
            ("etcd", "etcd"),
            ("load", "load procs"),
            ("bench", "bench"),
        ):
            t.add_row(f"CPU % of a core: {label}", _cpu_cell(c1, group), _cpu_cell(c3, group))
        cores = os.cpu_count() or 1
        t.add_row(f"CPU % of a core: machine ({cores} cores)", f"{c1['machine']:.0f}", f"{c3['machine']:.0f}")
        t.add_row("  of which others'", f"{max(0.0, c1['rest']):.0f}", f"{max(0.0, c3['rest']):.0f}")
        u1, u3 = one["cpu_us_per_ok"], three["cpu_us_per_ok"]
        for group, label in (("nodes", "nodes"), ("redis", "Redis"), ("load", "load procs")):
            t.add_row(f"CPU µs per deduction: {label}", _us(u1[group]), _us(u3[group]))
        return t

    def _etcd_table(self, idle: dict[str, Any], loaded: dict[str, Any]) -> Table:
        t = Table(
            "etcd, per second",
            f"idle ({idle['seconds']:.1f} s)",
            f"under load ({loaded['seconds']:.1f} s)",
            title="etcd at steady state: 3 nodes, every shard owned",
        )
        for name in ETCD_COUNTERS:
            label = name.replace("_", " ")
            if name in ETCD_WRITES:
                label = f"[bold]{label}[/]"
            t.add_row(label, _rate(idle["per_s"].get(name)), _rate(loaded["per_s"].get(name)))
        t.add_row("puts + deletes + txns", _rate(idle["writes_per_s"]), _rate(loaded["writes_per_s"]))
        t.add_row("keys (at the end)", _count(idle["gauges"].get("keys")), _count(loaded["gauges"].get("keys")))
        cpu_idle, cpu_loaded = idle.get("cpu_percent"), loaded.get("cpu_percent")
        if cpu_idle and cpu_loaded:
            t.add_row("etcd CPU, % of a core", f"{cpu_idle['etcd']:.1f}", f"{cpu_loaded['etcd']:.1f}")
        return t


def _owner_text(owner: tuple[str, int] | None) -> str:
    return "no owner" if owner is None else f"{owner[0]} epoch {owner[1]}"


def _fence_text(fence: ShardFence | None) -> str:
    return "no fence" if fence is None else f"{fence.owner} epoch {fence.epoch}"


def _us(value: float | None) -> str:
    return f"{value:,.0f}" if value else "-"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


async def _read_fences(r: Any, shards: Iterable[int]) -> dict[int, ShardFence | None]:
    """Each shard's fence from its meta hash, in one pipelined round trip."""
    from flashstock.server.store.keys import ShardKeys

    chosen = list(shards)
    async with r.pipeline(transaction=False) as pipe:
        for shard in chosen:
            pipe.hmget(ShardKeys(shard).meta, *META_FIELDS)
        replies = await pipe.execute()
    return {shard: parse_fence(values) for shard, values in zip(chosen, replies, strict=True)}


def _etcd_metrics(endpoint: str) -> dict[str, float]:
    """etcd's counters and gauges the bench reads, from its ``/metrics``."""
    import urllib.request

    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return parse_metrics(text, [*ETCD_COUNTERS.values(), *ETCD_GAUGES.values()])


def _etcd_window(before: Mapping[str, float], after: Mapping[str, float], seconds: float) -> dict[str, Any]:
    """The etcd figures of one window: counters per second (by the bench's names), gauges at its end."""
    rates = counter_rates(before, after, seconds)
    per_s = {name: rates.get(metric) for name, metric in ETCD_COUNTERS.items()}
    writes = [per_s[n] for n in ("puts", "deletes", "txns")]
    return {
        "seconds": round(seconds, 2),
        "per_s": per_s,
        "writes_per_s": None if any(w is None for w in writes) else round(sum(w for w in writes if w is not None), 3),
        "gauges": {name: after.get(metric) for name, metric in ETCD_GAUGES.items()},
        "deltas": {
            name: (after[m] - before[m]) if m in after and m in before else None for name, m in ETCD_COUNTERS.items()
        },
    }


def run_cluster_bench(plan: ClusterBenchPlan, console: Console) -> int:
    """Run the cluster bench; returns the exit code (see the module's docstring)."""
    from flashstock.server.local.procs import ProcessError

    problems = plan.problems()
    if problems:
        for p in problems:
            console.print(f"[red]flashstock bench-cluster:[/] {p}")
        return 2

    with contextlib.ExitStack() as stack:
        sigterm_as_interrupt(stack)
        if plan.folder is None:
            folder = Path(tempfile.mkdtemp(prefix="flashstock-bench-cluster-"))
            stack.callback(shutil.rmtree, folder, True)
        else:
            folder = Path(plan.folder).expanduser().resolve()
            taken = [n for n in ("one-node", "three-nodes") if (folder / n).exists()]
            if taken:
                console.print(
                    f"[red]flashstock bench-cluster:[/] --dir {folder} holds {', '.join(taken)} already: "
                    "give a new folder"
                )
                return 2
        run: _ClusterRun | None = None
        try:
            run = _ClusterRun(plan, console, stack, folder)
            return run.run()
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopping every process the bench started[/]")
            return 130
        except ProcessError as exc:
            console.print(f"[red]flashstock bench-cluster: cannot start:[/] {exc}")
            return 2
        except Exception as exc:  # noqa: BLE001 - report, then stop everything
            console.print(f"[red]flashstock bench-cluster failed:[/] {type(exc).__name__}: {exc}")
            if run is not None and plan.json_out:
                run.figures["error"] = f"{type(exc).__name__}: {exc}"
                with open(plan.json_out, "w") as out:
                    json.dump(run.figures, out, indent=2, default=str)
                    out.write("\n")
                console.print(f"the figures measured so far are in {plan.json_out}")
            if plan.folder is not None:
                console.print(f"logs in {folder}")
            return 2
    raise AssertionError("unreachable")
