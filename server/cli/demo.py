"""``flashstock demo``: a flash sale on a local cluster of its own, shown as it happens."""

from __future__ import annotations

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
) -> None:
    """A flash sale on a local cluster of its own (etcd, Redis, 3 nodes): 20,000 buyers, 1,000 units,
    the owner of the SKU's shard drained half-way, an oversell check, then Redis reconciled against
    the ledger."""
    from flashstock.server.local.demo import DemoPlan, run_demo

    if mode not in ("fast", "durable"):
        raise typer.BadParameter("mode must be fast or durable", param_hint="--mode")
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
    )
    raise typer.Exit(run_demo(plan, console))
