"""``flashstock demo``: a flash sale on a local cluster of its own, shown as it happens."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from flashstock.server.cli.common import console


def demo(
    buyers: Annotated[int, typer.Option(help="Simulated buyers (attempts before retries).")] = 20_000,
    users: Annotated[int, typer.Option(help="Distinct users among them.")] = 5_000,
    stock: Annotated[int, typer.Option(help="Units on sale.")] = 1_000,
    limit: Annotated[int, typer.Option(help="Per-user limit.")] = 2,
    retry_share: Annotated[float, typer.Option(help="Share of buyers who send their request again.")] = 0.1,
    concurrency: Annotated[int, typer.Option(help="Buyers in flight at once.")] = 200,
    nodes: Annotated[int, typer.Option(help="Nodes of the demo's local cluster.")] = 3,
    drain: Annotated[bool, typer.Option(help="Drain the node owning the SKU's shard half-way through.")] = True,
    workers: Annotated[int, typer.Option(help="Worker processes per node.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed of the crowd.")] = 7,
    mode: Annotated[str, typer.Option(help="The SKU's mode: fast | durable (replies wait for the ledger).")] = "fast",
    board: Annotated[bool, typer.Option(help="Run the live board of the sale and print its address.")] = True,
    start_in: Annotated[
        float | None,
        typer.Option(
            help="Seconds between the board's address and the sale's start [default: 5 on a terminal, else 0]."
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(help="Buyers per second until sold out, 0 = unpaced [default: 200 on a terminal, else 0]."),
    ] = None,
    linger: Annotated[float, typer.Option(help="Seconds the cluster and its board stay up after the sale.")] = 0.0,
    review_dir: Annotated[
        str, typer.Option(help="Where the sale's review is written ('' = none).")
    ] = "flashstock-demo-review",
    auth: Annotated[
        bool,
        typer.Option(
            help="Nodes with auth on (an HS256 secret made for the demo): the sale's calls carry bearer tokens."
        ),
    ] = False,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls/--no-tls", help="TLS on every link: the cluster of cluster up --tls, buyers with certificates."
        ),
    ] = False,
) -> None:
    """A flash sale on a local cluster of its own (etcd, Redis, 3 nodes): 20,000 buyers, 1,000 units,
    the owner of the SKU's shard drained half-way, an oversell check, then Redis reconciled against
    the ledger; the live board shows it, and its review is written at the end."""
    from flashstock.server.local.demo import DemoPlan, run_demo

    if mode not in ("fast", "durable"):
        raise typer.BadParameter("mode must be fast or durable", param_hint="--mode")
    if (start_in is not None and start_in < 0) or linger < 0:
        raise typer.BadParameter("give 0 or more seconds", param_hint="--start-in/--linger")
    if rate is not None and rate < 0:
        raise typer.BadParameter("give 0 (unpaced) or more buyers per second", param_hint="--rate")
    if nodes < 1:
        raise typer.BadParameter("give at least one node", param_hint="--nodes")
    plan = DemoPlan(
        buyers=buyers,
        users=users,
        stock=stock,
        limit=limit,
        retry_share=retry_share,
        concurrency=concurrency,
        nodes=nodes,
        drain=drain,
        workers=workers,
        seed=seed,
        mode=mode,
        board=board,
        start_in_s=(5.0 if board and sys.stdout.isatty() else 0.0) if start_in is None else start_in,
        linger_s=linger,
        rate=(200.0 if sys.stdout.isatty() else 0.0) if rate is None else rate,
        review_dir=review_dir,
        auth=auth,
        tls=tls,
    )
    raise typer.Exit(run_demo(plan, console))
