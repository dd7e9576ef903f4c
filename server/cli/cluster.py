"""The operator's commands of a cluster: ``nodes`` and ``shards`` (in etcd), ``cluster`` (a local one).

``nodes ls``, ``shards ls`` and ``shards map`` show what etcd holds: the live
nodes, each shard's owner and epoch, and where :func:`~flashstock.lockmgr.assign`
wants each shard (``desired``). The changing commands (``move``, ``pin``,
``unpin``, ``drain``, ``undrain``, ``rebalance``) each write one etcd
transaction. They first print the moves the change causes: the shards whose
desired owner differs between ``assign()`` of the overrides now and of the
overrides changed; ``--dry-run`` stops there and writes nothing. Nodes act on
a change themselves (they watch the overrides); ``shards move`` also waits
until the new owner holds the shard.

The decisions are pure functions of a :class:`ClusterView` (one read of
etcd), tested without etcd; the etcd calls are the thin part around them.

Exit codes: 0 done; 1 refused or not done (a shard out of range, an unknown
or drained node without ``--force``, the cluster not initialised, a move not
done in time); 2 cannot run (etcd unreachable, a malformed option).

``cluster up / status / down`` run a whole cluster on this machine in one
folder (:class:`~flashstock.server.local.cluster.LocalCluster`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flashstock.lockmgr import (
    ClusterKeys,
    CoordinationError,
    NodeInfo,
    Overrides,
    ShardOwner,
    assign,
    drain,
    etcd_client,
    live_nodes,
    moves,
    owners,
    pin,
    read_overrides,
    shard_ranges,
    undrain,
    unpin,
)

if TYPE_CHECKING:
    import aetcd

    from flashstock.server.local.cluster import ClusterStatus, LocalCluster, StopOutcome

nodes_app = typer.Typer(help="The cluster's live nodes, as registered in etcd.", no_args_is_help=True)
shards_app = typer.Typer(
    help="Shard owners in etcd, and the operator's overrides: move, pin, drain, rebalance.", no_args_is_help=True
)
cluster_app = typer.Typer(
    help="A whole cluster on this machine, in one folder: etcd, Redis, N nodes and their ledger.", no_args_is_help=True
)

console = Console()
err_console = Console(stderr=True)

ETCD_TIMEOUT_S = 3.0
"""How long each etcd call may take before the command says etcd cannot be reached."""

MOVE_POLL_S = 0.2
"""How often ``shards move`` looks at the shard's owner while it waits."""

EtcdOption = Annotated[
    str,
    typer.Option("--etcd", envvar="FLASHSTOCK_ETCD", help="etcd endpoints, host:port, comma-separated."),
]
ClusterOption = Annotated[
    str,
    typer.Option("--cluster", envvar="FLASHSTOCK_CLUSTER", help="The cluster's name (etcd prefix /flashstock/<cluster>/)."),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print the shard moves the change would cause; write nothing.")
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Also for a node that is not live (or is drained) now.")
]
ShardArgument = Annotated[int, typer.Argument(help="The shard number.", show_default=False)]
NodeArgument = Annotated[str, typer.Argument(help="The node id.", show_default=False)]
DirOption = Annotated[
    Path,
    typer.Option("--dir", envvar="FLASHSTOCK_CLUSTER_DIR", help="The local cluster's folder."),
]

DEFAULT_ETCD = "127.0.0.1:2379"
DEFAULT_CLUSTER = "flashstock"
DEFAULT_FOLDER = "flashstock-cluster"
"""Where ``cluster up`` puts a local cluster unless told otherwise (the process modules load only when used)."""


# -- what etcd says, and what a change would do (pure) -------------------------------------


class Refused(Exception):
    """A command refused: the message says why and what to do instead."""


@dataclass(frozen=True)
class ClusterView:
    """One reading of a cluster in etcd: the input of every ``nodes`` and ``shards`` command."""

    cluster: str
    """The cluster's name."""
    shards: int
    """Its shard count."""
    nodes: Mapping[str, NodeInfo]
    """The live nodes, by id."""
    owners: Mapping[int, ShardOwner]
    """The owned shards' owners (unowned shards are absent)."""
    overrides: Overrides
    """The pins and drains."""

    def desired(self, overrides: Overrides | None = None) -> dict[int, str]:
        """Where :func:`assign` puts each shard, with ``overrides`` (default: the current ones)."""
        chosen = self.overrides if overrides is None else overrides
        return assign(self.shards, self.nodes, chosen.pins, chosen.drains)

    def moves_if(self, overrides: Overrides) -> dict[int, tuple[str | None, str | None]]:
        """The shards whose desired owner changes should the overrides become ``overrides``."""
        return moves(self.desired(), self.desired(overrides))

    def owned_count(self, node: str) -> int:
        """How many shards ``node`` owns."""
        return sum(1 for o in self.owners.values() if o.node == node)


def with_pin(overrides: Overrides, shard: int, node: str) -> Overrides:
    """``overrides`` with ``shard`` pinned to ``node``."""
    return Overrides({**overrides.pins, shard: node}, overrides.drains)


def without_pin(overrides: Overrides, shard: int) -> Overrides:
    """``overrides`` without the pin of ``shard``."""
    return Overrides({s: n for s, n in overrides.pins.items() if s != shard}, overrides.drains)


def without_pins(overrides: Overrides) -> Overrides:
    """``overrides`` with no pin at all (the drains stay)."""
    return Overrides({}, overrides.drains)


def with_drain(overrides: Overrides, node: str) -> Overrides:
    """``overrides`` with ``node`` drained."""
    return Overrides(overrides.pins, overrides.drains | {node})


def without_drain(overrides: Overrides, node: str) -> Overrides:
    """``overrides`` with ``node`` not drained."""
    return Overrides(overrides.pins, overrides.drains - {node})


def check_shard(view: ClusterView, shard: int) -> None:
    """Refuse a shard outside ``0 .. shards-1``."""
    if not 0 <= shard < view.shards:
        raise Refused(f"shard {shard} is out of range: cluster {view.cluster!r} has shards 0-{view.shards - 1}")


def check_node(view: ClusterView, node: str, force: bool, *, to_own: bool) -> None:
    """Refuse a node that is not live (a typo?) unless ``force``; with ``to_own``, also a drained one.

    A pin to a drained node is ignored by :func:`assign`, so the shard would not go there.
    """
    if force:
        return
    if node not in view.nodes:
        live = ", ".join(sorted(view.nodes)) or "none"
        raise Refused(f"node {node!r} is not live in cluster {view.cluster!r} (live: {live}); --force to go ahead anyway")
    if to_own and node in view.overrides.drains:
        raise Refused(
            f"node {node!r} is drained, so a pin to it is ignored: `flashstock shards undrain {node}` first, "
            "or --force to pin anyway"
        )


def shard_state(view: ClusterView, shard: int, desired: Mapping[int, str]) -> str:
    """``""`` when the shard's owner is its desired owner, else ``moving`` (or ``unowned``)."""
    owner = view.owners.get(shard)
    if owner is None:
        return "unowned"
    return "" if owner.node == desired.get(shard) else "moving"


# -- tables -------------------------------------------------------------------------------


def local_time(ms: int) -> str:
    """Unix ms as local time, to the second (``-`` for 0)."""
    return "-" if ms <= 0 else datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


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


def shards_table(view: ClusterView) -> Table:
    """``shards ls``: each shard's owner, epoch and claim time, its pin and its desired owner."""
    desired = view.desired()
    table = Table(
        "shard", "owner", "epoch", "since", "pinned to", "desired", "state", title=f"shards of cluster {view.cluster}"
    )
    for shard in range(view.shards):
        owner = view.owners.get(shard)
        state = shard_state(view, shard, desired)
        table.add_row(
            str(shard),
            owner.node if owner else "-",
            str(owner.epoch) if owner else "-",
            local_time(owner.since_ms) if owner else "-",
            view.overrides.pins.get(shard, "-"),
            desired.get(shard, "-"),
            Text(state, style="yellow") if state else "",
        )
    return table


def map_table(view: ClusterView) -> Table:
    """``shards map``: per node, the shards it owns (as ranges), how many, their epochs, since when."""
    table = Table("node", "shards", "count", "epochs", "since", title=f"shard map of cluster {view.cluster}")
    by_node: dict[str, list[ShardOwner]] = {node: [] for node in view.nodes}
    for owner in view.owners.values():
        by_node.setdefault(owner.node, []).append(owner)
    for node in sorted(by_node):
        owned = by_node[node]
        epochs = sorted(o.epoch for o in owned)
        table.add_row(
            node if node in view.nodes else Text(f"{node} (not live)", style="yellow"),
            shard_ranges(o.shard for o in owned),
            str(len(owned)),
            "-" if not epochs else (str(epochs[0]) if epochs[0] == epochs[-1] else f"{epochs[0]}-{epochs[-1]}"),
            local_time(min((o.since_ms for o in owned), default=0)),
        )
    unowned = [s for s in range(view.shards) if s not in view.owners]
    if unowned:
        table.add_row(Text("(unowned)", style="yellow"), shard_ranges(unowned), str(len(unowned)), "-", "-")
    return table


def moves_table(planned: Mapping[int, tuple[str | None, str | None]]) -> Table:
    """The shards a change moves: from its desired owner now to the one after."""
    table = Table("shard", "from", "to", title=f"{len(planned)} shard move(s)")
    for shard, (old, new) in sorted(planned.items()):
        table.add_row(str(shard), old or "-", new or "-")
    return table


# -- etcd -------------------------------------------------------------------------------------


async def read_view(client: aetcd.Client, cluster: str) -> ClusterView:
    """Read the cluster's shard count, live nodes, owners and overrides; refuse an uninitialised cluster."""
    stored = await client.get(ClusterKeys(cluster).shards.encode())
    if stored is None:
        raise Refused(
            f"cluster {cluster!r} is not initialised in etcd (no {ClusterKeys(cluster).shards}): "
            "check --cluster and --etcd, or start the cluster's first node"
        )
    return ClusterView(
        cluster,
        int(stored.value),
        await live_nodes(client, cluster),
        await owners(client, cluster),
        await read_overrides(client, cluster),
    )


async def remove_pins(client: aetcd.Client, view: ClusterView) -> None:
    """Delete every pin in one transaction, if the pins are still the ones ``view`` read."""
    keys = ClusterKeys(view.cluster)
    found = await client.get_prefix(keys.pins.encode())
    names = {kv.key.decode()[len(keys.pins):]: kv.value.decode() for kv in found}
    if {int(s): node for s, node in names.items() if s.isdigit()} != dict(view.overrides.pins):
        raise Refused("the pins changed while planning the rebalance; run it again")
    prefix = keys.pins.encode()
    end = _prefix_end(prefix)
    tx = client.transactions
    ok, _ = await client.transaction(
        compare=[
            # Only in an initialised cluster (as every override write).
            tx.version(keys.shards) > 0,
            # No pin written since the read: the moves printed are the moves made.
            tx.mod(prefix, end) < found.header.revision + 1,
        ],
        success=[tx.delete(prefix, end)],
        failure=[],
    )
    if not ok:
        raise Refused("the pins changed while planning the rebalance; run it again")


def _prefix_end(prefix: bytes) -> bytes:
    # The end of etcd's range of every key starting with prefix (prefix ends in "/").
    return prefix[:-1] + bytes([prefix[-1] + 1])


async def wait_for_owner(client: aetcd.Client, cluster: str, shard: int, node: str, wait_s: float) -> ShardOwner | None:
    """The shard's owner once it is ``node``, polling for up to ``wait_s``; the last owner seen (or None) if not."""
    deadline = time.monotonic() + wait_s
    while True:
        owner = (await owners(client, cluster)).get(shard)
        if (owner is not None and owner.node == node) or time.monotonic() >= deadline:
            return owner
        await asyncio.sleep(MOVE_POLL_S)


def _exit(command: str, message: str, code: int) -> NoReturn:
    err_console.print(Text.assemble((f"flashstock {command}: ", "red"), " ".join(message.split())), soft_wrap=True)
    raise typer.Exit(code)


def run_etcd(command: str, etcd: str, cluster: str, work: Callable[[Any], Awaitable[int | None]]) -> None:
    """Run ``work(client)`` on a fresh etcd client, closed after; map failures to one line and an exit code."""
    from aetcd.exceptions import ClientError

    async def main() -> int | None:
        ClusterKeys(cluster)  # a malformed name: ValueError, before any connection
        client = etcd_client(etcd, timeout=ETCD_TIMEOUT_S)
        try:
            return await work(client)
        finally:
            await client.close()

    try:
        code = asyncio.run(main())
    except (Refused, CoordinationError) as exc:
        _exit(command, str(exc), 1)
    except ValueError as exc:
        _exit(command, str(exc), 2)
    except (ClientError, OSError) as exc:
        _exit(command, f"etcd at {etcd} cannot be reached ({type(exc).__name__}: {exc})", 2)
    if code:
        raise typer.Exit(code)


def _print_plan(view: ClusterView, changed: Overrides, dry_run: bool) -> None:
    planned = view.moves_if(changed)
    if planned:
        console.print(moves_table(planned))
    else:
        console.print("no shard moves")
    if dry_run:
        console.print("dry run: nothing written")


async def _change(
    view: ClusterView, changed: Overrides, dry_run: bool, write: Callable[[], Awaitable[Any]], done: str
) -> bool:
    """Print the moves the overrides ``changed`` cause; unless ``dry_run``, ``write`` them and
    print ``done``. True when written."""
    _print_plan(view, changed, dry_run)
    if dry_run:
        return False
    await write()
    console.print(done)
    return True


# -- nodes ---------------------------------------------------------------------------------


@nodes_app.command("ls")
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


# -- shards: reading ---------------------------------------------------------------------------


@shards_app.command("ls")
def shards_ls(etcd: EtcdOption = DEFAULT_ETCD, cluster: ClusterOption = DEFAULT_CLUSTER) -> None:
    """List every shard: owner, epoch, since when, pin, desired owner; flag the moving ones."""

    async def work(client: Any) -> None:
        view = await read_view(client, cluster)
        console.print(shards_table(view))
        desired = view.desired()
        states = [shard_state(view, s, desired) for s in range(view.shards)]
        console.print(
            f"{view.shards} shard(s): {states.count('moving')} moving, {states.count('unowned')} unowned, "
            f"{len(view.overrides.pins)} pinned, {len(view.nodes)} live node(s)"
        )

    run_etcd("shards ls", etcd, cluster, work)


@shards_app.command("map")
def shards_map(etcd: EtcdOption = DEFAULT_ETCD, cluster: ClusterOption = DEFAULT_CLUSTER) -> None:
    """Per node: the shards it owns (as ranges), how many, their epochs, since when."""

    async def work(client: Any) -> None:
        console.print(map_table(await read_view(client, cluster)))

    run_etcd("shards map", etcd, cluster, work)


# -- shards: changing -----------------------------------------------------------------------------


@shards_app.command("move")
def shards_move(
    shard: ShardArgument,
    node: NodeArgument,
    wait: Annotated[float, typer.Option(help="Seconds to wait for NODE to own the shard; 0 = do not wait.")] = 15.0,
    force: ForceOption = False,
    dry_run: DryRunOption = False,
    etcd: EtcdOption = DEFAULT_ETCD,
    cluster: ClusterOption = DEFAULT_CLUSTER,
) -> None:
    """Move SHARD to NODE: pin it there, then wait until NODE owns it (exit 1 if not in time)."""
    if wait < 0:
        raise typer.BadParameter("must be >= 0", param_hint="--wait")

    async def work(client: Any) -> int:
        view = await read_view(client, cluster)
        check_shard(view, shard)
        check_node(view, node, force, to_own=True)
        write = partial(pin, client, cluster, shard, node)
        if not await _change(view, with_pin(view.overrides, shard, node), dry_run, write, f"shard {shard} pinned to {node}"):
            return 0
        return await _await_move(client, view, shard, node, wait)

    run_etcd("shards move", etcd, cluster, work)


async def _await_move(client: Any, view: ClusterView, shard: int, node: str, wait: float) -> int:
    before = view.owners.get(shard)
    if wait == 0:
        return 0
    with console.status(f"waiting up to {wait:g} s for {node} to own shard {shard}"):
        owner = await wait_for_owner(client, view.cluster, shard, node, wait)
    if owner is not None and owner.node == node:
        was = f" (was {before.node}, epoch {before.epoch})" if before and before.epoch != owner.epoch else ""
        console.print(f"shard {shard}: owned by {node}, epoch {owner.epoch}{was}")
        return 0
    now = f"{owner.node}, epoch {owner.epoch}" if owner else "nobody"
    err_console.print(
        f"flashstock shards move: shard {shard} is not owned by {node} after {wait:g} s (owner now: {now}); "
        f"the pin stays (`flashstock shards unpin {shard}` removes it)",
        soft_wrap=True,
    )
    return 1


@shards_app.command("pin")
def shards_pin(
    shard: ShardArgument,
    node: NodeArgument,
    force: ForceOption = False,
    dry_run: DryRunOption = False,
    etcd: EtcdOption = DEFAULT_ETCD,
    cluster: ClusterOption = DEFAULT_CLUSTER,
) -> None:
    """Pin SHARD to NODE: NODE owns it whenever it is live and not drained."""

    async def work(client: Any) -> None:
        view = await read_view(client, cluster)
        check_shard(view, shard)
        check_node(view, node, force, to_own=True)
        write = partial(pin, client, cluster, shard, node)
        await _change(view, with_pin(view.overrides, shard, node), dry_run, write, f"shard {shard} pinned to {node}")

    run_etcd("shards pin", etcd, cluster, work)


@shards_app.command("unpin")
def shards_unpin(
    shard: ShardArgument,
    dry_run: DryRunOption = False,
    etcd: EtcdOption = DEFAULT_ETCD,
    cluster: ClusterOption = DEFAULT_CLUSTER,
) -> None:
    """Remove SHARD's pin: the rendezvous hash decides its owner again."""

    async def work(client: Any) -> None:
        view = await read_view(client, cluster)
        check_shard(view, shard)
        if shard not in view.overrides.pins:
            console.print(f"shard {shard} is not pinned: nothing to do")
            return
        write = partial(unpin, client, cluster, shard)
        await _change(view, without_pin(view.overrides, shard), dry_run, write, f"shard {shard} unpinned")

    run_etcd("shards unpin", etcd, cluster, work)


@shards_app.command("drain")
def shards_drain(
    node: NodeArgument,
    force: ForceOption = False,
    dry_run: DryRunOption = False,
    etcd: EtcdOption = DEFAULT_ETCD,
    cluster: ClusterOption = DEFAULT_CLUSTER,
) -> None:
    """Drain NODE: its shards go to the other live nodes; it keeps running."""

    async def work(client: Any) -> None:
        view = await read_view(client, cluster)
        check_node(view, node, force, to_own=False)
        if node in view.overrides.drains:
            console.print(f"node {node} is drained already: nothing to do")
            return
        write = partial(drain, client, cluster, node)
        await _change(view, with_drain(view.overrides, node), dry_run, write, f"node {node} drained")

    run_etcd("shards drain", etcd, cluster, work)


@shards_app.command("undrain")
def shards_undrain(
    node: NodeArgument,
    dry_run: DryRunOption = False,
    etcd: EtcdOption = DEFAULT_ETCD,
    cluster: ClusterOption = DEFAULT_CLUSTER,
) -> None:
    """End NODE's drain: it takes its share of the shards again."""

    async def work(client: Any) -> None:
        view = await read_view(client, cluster)
        if node not in view.overrides.drains:
            console.print(f"node {node} is not drained: nothing to do")
            return
        write = partial(undrain, client, cluster, node)
        await _change(view, without_drain(view.overrides, node), dry_run, write, f"node {node} undrained")

    run_etcd("shards undrain", etcd, cluster, work)


@shards_app.command("rebalance")
def shards_rebalance(
    dry_run: DryRunOption = False,
    etcd: EtcdOption = DEFAULT_ETCD,
    cluster: ClusterOption = DEFAULT_CLUSTER,
) -> None:
    """Remove every pin (in one transaction): the rendezvous hash decides every shard. Drains stay."""

    async def work(client: Any) -> None:
        view = await read_view(client, cluster)
        if not view.overrides.pins:
            console.print("no shard is pinned: nothing to do")
            return
        write = partial(remove_pins, client, view)
        await _change(view, without_pins(view.overrides), dry_run, write, f"{len(view.overrides.pins)} pin(s) removed")

    run_etcd("shards rebalance", etcd, cluster, work)


# -- cluster: a local one ------------------------------------------------------------------------------


class LedgerKind(StrEnum):
    """The ledger of a local cluster."""

    sqlite = "sqlite"
    postgresql = "postgresql"


def _load(command: str, folder: Path) -> LocalCluster:
    from flashstock.server.local.cluster import LocalCluster

    try:
        return LocalCluster.load(folder)
    except FileNotFoundError:
        _exit(command, f"no cluster recorded in {folder} (no cluster.json): check --dir", 2)
    except (ValueError, TypeError, KeyError) as exc:
        _exit(command, f"{folder}/cluster.json is not a cluster record: {exc!r}", 2)


def _processes_table(cluster: LocalCluster) -> Table:
    table = Table("name", "pid", "address", "log", title=f"cluster {cluster.cluster} in {cluster.folder}")
    for p in cluster.processes:
        table.add_row(p.name, str(p.pid), p.address, p.log)
    return table


def _usage(cluster: LocalCluster) -> str:
    etcd = f"--etcd {cluster.etcd_endpoint} --cluster {cluster.cluster}"
    folder = f"--dir {cluster.folder}"
    return "\n".join(
        [
            f"etcd {cluster.etcd_endpoint}, redis {cluster.redis_url}, ledger {cluster.ledger_url}",
            "",
            f"  export FLASHSTOCK_ETCD={cluster.etcd_endpoint} FLASHSTOCK_CLUSTER={cluster.cluster}",
            f"  flashstock nodes ls {etcd}",
            f"  flashstock shards ls {etcd}",
            f"  flashstock shards map {etcd}",
            f"  flashstock sku put hot-sku --stock 1000 {etcd}",
            f"  flashstock cluster status {folder}",
            f"  flashstock cluster down {folder}",
        ]
    )


@cluster_app.command("up")
def cluster_up(
    nodes: Annotated[int, typer.Option(help="How many nodes.", min=1)] = 3,
    folder: DirOption = Path(DEFAULT_FOLDER),
    ledger: Annotated[
        LedgerKind, typer.Option(help="One SQLite file shared by the nodes, or a PostgreSQL server.")
    ] = LedgerKind.sqlite,
    shards: Annotated[int, typer.Option(help="Logical shards of the cluster (fixed once its etcd has it).", min=1)] = 64,
    lease_ttl_s: Annotated[int, typer.Option(help="The nodes' etcd lease TTL, seconds.", min=1)] = 5,
    workers: Annotated[int, typer.Option(help="Worker processes per node.", min=0)] = 1,
    cluster: Annotated[str, typer.Option("--cluster", help="The cluster's name in etcd.")] = DEFAULT_CLUSTER,
) -> None:
    """Start etcd, Redis and NODES nodes on loopback (free ports), all in one folder; they keep running."""
    from flashstock.server.local.cluster import LocalCluster
    from flashstock.server.local.procs import ProcessError

    local = LocalCluster(folder, nodes=nodes, ledger=ledger.value, shards=shards, lease_ttl_s=lease_ttl_s,
                         workers=workers, cluster=cluster)
    try:
        with console.status(f"starting etcd, redis and {nodes} node(s) in {local.folder}"):
            local.up()
    except (ProcessError, ValueError) as exc:
        _exit("cluster up", str(exc), 1)
    console.print(_processes_table(local))
    console.print(_usage(local), soft_wrap=True, highlight=False)


@cluster_app.command("status")
def cluster_status(folder: DirOption = Path(DEFAULT_FOLDER)) -> None:
    """Each recorded process alive or not; each node's health check and shards owned (exit 1 unless all are well)."""
    local = _load("cluster status", folder)
    status = local.status()
    console.print(_status_table(local, status))
    if status.etcd_error:
        console.print(f"shards owned: unknown ({status.etcd_error})", soft_wrap=True)
    raise typer.Exit(0 if status.ok else 1)


def _status_table(local: LocalCluster, status: ClusterStatus) -> Table:
    table = Table("name", "pid", "state", "address", "health", "shards",
                  title=f"cluster {local.cluster} in {local.folder}: {status.state}")
    for p in status.processes:
        state = Text(p.state, style="green" if p.state == "running" else "red")
        shards = "-" if p.shards is None else str(p.shards)
        table.add_row(p.name, str(p.pid), state, p.address, p.health or "-", shards if p.role == "node" else "")
    return table


@cluster_app.command("down")
def cluster_down(
    folder: DirOption = Path(DEFAULT_FOLDER),
    purge: Annotated[bool, typer.Option("--purge", help="Also remove the folder (data and logs).")] = False,
) -> None:
    """Stop the recorded processes (nodes, then Redis, etcd, PostgreSQL); keep data and logs unless --purge."""
    local = _load("cluster down", folder)
    with console.status("stopping"):
        outcomes = local.down(purge=purge)
    console.print(_outcomes_table(outcomes))
    console.print(f"removed {local.folder}" if purge else f"cluster down; data and logs kept in {local.folder}")


def _outcomes_table(outcomes: list[StopOutcome]) -> Table:
    table = Table("name", "pid", "outcome")
    for o in outcomes:
        table.add_row(o.name, str(o.pid), o.outcome)
    return table
