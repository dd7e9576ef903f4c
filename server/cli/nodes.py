"""``flashstock nodes``: the cluster's live nodes, as registered in etcd (:func:`~flashstock.lockmgr.read_view`)."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from flashstock.lockmgr import ClusterView, read_view
from flashstock.server.cli.common import (
    DEFAULT_CLUSTER,
    DEFAULT_ETCD,
    ClusterOption,
    EtcdOption,
    console,
    etcd_access_options,
    local_time,
    run_etcd,
)

nodes_app = typer.Typer(help="The cluster's live nodes, as registered in etcd.", no_args_is_help=True)


def nodes_table(view: ClusterView) -> Table:
    """``nodes ls``: each live node, its lease, the shards it owns, whether it is drained."""
    table = Table("node", "address", "started", "lease", "shards", "drained", title=f"nodes of cluster {view.cluster}")
    for node in sorted(view.nodes.values(), key=lambda n: n.node):
        drained = node.node in view.overrides.drains
        table.add_row(
            node.node,
            node.address,
            local_time(node.started_ms),
            f"{node.lease:x}",
            str(view.owned_count(node.node)),
            Text("yes", style="yellow") if drained else "no",
        )
    return table


@nodes_app.command("ls")
@etcd_access_options
def nodes_ls(etcd: EtcdOption = DEFAULT_ETCD, cluster: ClusterOption = DEFAULT_CLUSTER) -> None:
    """List the live nodes: address, start time, lease, shards owned, drained or not."""

    async def work(client: Any) -> None:
        view = await read_view(client, cluster)
        if view.nodes:
            console.print(nodes_table(view))
        else:
            console.print(f"no live nodes in cluster {cluster!r}")
        gone = sorted(view.overrides.drains - set(view.nodes))
        if gone:
            console.print(f"drained but not live: {', '.join(gone)}")

    run_etcd("nodes ls", etcd, cluster, work)
