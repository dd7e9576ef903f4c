"""``flashstock bench`` and ``bench-cluster``: the measurements of benchmarks/README.md, in one run each."""

from __future__ import annotations

from typing import Annotated

import typer

from flashstock.server.cli.common import console


def bench(
    buyers: Annotated[int, typer.Option(help="Concurrent async buyers.")] = 64,
    seconds: Annotated[float, typer.Option(help="Length of each measured phase.")] = 5.0,
    workers: Annotated[int, typer.Option(help="Node worker processes (the echo server gets as many).")] = 1,
    client_procs: Annotated[int, typer.Option(help="Load-generating processes.")] = 1,
    records: Annotated[int, typer.Option(help="Deductions recorded for the memory figure.")] = 20_000,
    json_out: Annotated[str | None, typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
    warmup: Annotated[float, typer.Option(help="Unmeasured seconds before each throughput phase.")] = 1.5,
    sale_stock: Annotated[int, typer.Option(help="Units of the sale phase's SKU.")] = 5_000,
    soldout_seconds: Annotated[float, typer.Option(help="Length of the sold-out phase, seconds.")] = 2.0,
    connections: Annotated[
        int, typer.Option(help="gRPC connections per load process; 0 = 1, or 4 per worker when workers > 1.")
    ] = 0,
    metrics_rounds: Annotated[
        int,
        typer.Option(
            help="Phases of the node with its metrics (serving, a sale's figures) on, as many off, alternating."
        ),
    ] = 2,
    tls_rounds: Annotated[
        int,
        typer.Option(
            help="Phases of the node in plaintext, as many of a twin serving mutual TLS, alternating; 0 leaves it out."
        ),
    ] = 2,
    auth_rounds: Annotated[
        int,
        typer.Option(
            help="Phases of the node without auth, as many of a twin with auth on (a bearer JWT per call), "
            "alternating; 0 leaves it out."
        ),
    ] = 2,
) -> None:
    """Deduct throughput and latency against a bare grpc.aio echo, measured in one run.

    Also the cost of the metrics (the node with and without its serving
    metrics and a sale's figures, alternating), the cost of mutual TLS (the
    node and a TLS twin, alternating), the cost of auth (the node and a
    twin with auth on, a bearer token per call, alternating), Redis memory per recorded
    deduction, a sale with an oversell check, and the Redis calls made while
    refusing a sold-out SKU. Exit code 0 whatever the figures, 1 when the
    oversell check fails, 2 when it could not run. See benchmarks/README.md.
    """
    from flashstock.server.bench.node import BenchPlan, run_bench

    plan = BenchPlan(
        buyers=buyers,
        seconds=seconds,
        workers=workers,
        client_procs=client_procs,
        records=records,
        json_out=json_out,
        warmup=warmup,
        sale_stock=sale_stock,
        soldout_seconds=soldout_seconds,
        connections=connections,
        metrics_rounds=metrics_rounds,
        tls_rounds=tls_rounds,
        auth_rounds=auth_rounds,
    )
    raise typer.Exit(run_bench(plan, console))


def bench_cluster(
    runs: Annotated[int, typer.Option(help="Failover runs: kill -9 of a node (0, 1, 2, 0 ...), each.")] = 20,
    lease_ttl_s: Annotated[int, typer.Option(help="The nodes' lease TTL, seconds.")] = 5,
    buyers: Annotated[int, typer.Option(help="Concurrent async buyers of the throughput phases.")] = 64,
    seconds: Annotated[float, typer.Option(help="Length of each measured throughput phase.")] = 5.0,
    warmup: Annotated[float, typer.Option(help="Unmeasured seconds before each throughput phase.")] = 1.5,
    idle_seconds: Annotated[float, typer.Option(help="Length of the idle etcd window.")] = 10.0,
    client_procs: Annotated[int, typer.Option(help="Load-generating processes (one SKU each).")] = 3,
    failover_rate: Annotated[
        float, typer.Option(help="Paced deductions/s on the survivors during failover (0: none).")
    ] = 300.0,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PART", help="Leave a part out: failover, throughput or etcd (repeat, or comma-separated)."
        ),
    ] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
    folder: Annotated[
        str | None,
        typer.Option("--dir", help="Keep the clusters' folders and logs here (default: a temporary folder, removed)."),
    ] = None,
) -> None:
    """Failover time, deductions/s on 1 node vs 3 nodes, and etcd writes at steady state, in one run.

    Starts its own clusters (etcd, Redis, nodes, a SQLite ledger) on loopback.
    Exit code 0 when measured, 1 when a consistency check after the
    failovers fails, 2 when it could not run. See benchmarks/README.md.
    """
    from flashstock.server.bench.cluster import ClusterBenchPlan, parse_skip, run_cluster_bench

    plan = ClusterBenchPlan(
        runs=runs,
        lease_ttl_s=lease_ttl_s,
        buyers=buyers,
        seconds=seconds,
        warmup=warmup,
        idle_seconds=idle_seconds,
        client_procs=client_procs,
        failover_rate=failover_rate,
        skip=parse_skip(skip or ()),
        json_out=json_out,
        folder=folder,
    )
    raise typer.Exit(run_cluster_bench(plan, console))
