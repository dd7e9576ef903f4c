"""``flashstock shards``: shard owners in etcd, and the operator's overrides (move, pin, drain, rebalance).

``shards ls`` and ``shards map`` show what etcd holds: each shard's owner and
epoch, and where :func:`~flashstock.lockmgr.assign` wants each shard
(``desired``). The changing commands (``move``, ``pin``, ``unpin``, ``drain``,
``undrain``, ``rebalance``) each write one etcd transaction, through
:mod:`flashstock.lockmgr`, with the change's audit record in it (who: the
OS user and host; the nodes copy it into the ledger's audit trail). They first print the moves the change causes: the
shards whose desired owner differs between ``assign()`` of the overrides now
and of the overrides changed (:meth:`~flashstock.lockmgr.ClusterView.moves_if`);
``--dry-run`` stops there and writes nothing. Nodes act on a change
themselves (they watch the overrides); ``shards move`` also waits until the
new owner holds the shard.

The decisions are pure functions of a :class:`~flashstock.lockmgr.ClusterView`
(one read of etcd), tested without etcd; this module adds the checks that
refuse a mistyped shard or node, and the tables.

Exit codes: 0 done; 1 refused or not done (a shard out of range, an unknown
or drained node without ``--force``, the cluster not initialised, a move not
done in time); 2 cannot run (etcd unreachable, a malformed option).
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from flashstock.lockmgr import (
    ClusterView,
    Overrides,
    ShardOwner,
    drain,
    pin,
    read_view,
    remove_pins,
    shard_ranges,
    undrain,
    unpin,
    wait_for_owner,
)
from flashstock.server.cli.common import (
    DEFAULT_CLUSTER,
    DEFAULT_ETCD,
    ClusterOption,
    EtcdOption,
    Refused,
    console,
    err_console,
    etcd_access,
    etcd_access_options,
    local_time,
    run_etcd,
)
from flashstock.server.ledger import shard_change_record

shards_app = typer.Typer(
    help="Shard owners in etcd, and the operator's overrides: move, pin, drain, rebalance.", no_args_is_help=True
)

MOVE_POLL_S = 0.2
"""How often ``shards move`` looks at the shard's owner while it waits."""

DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print the shard moves the change would cause; write nothing.")
]
ForceOption = Annotated[bool, typer.Option("--force", help="Also for a node that is not live (or is drained) now.")]
ShardArgument = Annotated[int, typer.Argument(help="The shard number.", show_default=False)]
NodeArgument = Annotated[str, typer.Argument(help="The node id.", show_default=False)]


# -- checks that refuse a mistake ------------------------------------------------------------


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
        raise Refused(
            f"node {node!r} is not live in cluster {view.cluster!r} (live: {live}); --force to go ahead anyway"
        )
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


# -- the audit record of a change ------------------------------------------------------------------


def operator_identity(etcd_user: str | None = None) -> tuple[str, str]:
    """Who makes a shard change, and from where: ``(identity, peer)``.

    The etcd user when the CLI signs in to etcd (etcd's auth then vouches
    for it), else the OS user at this host; the peer is this host.
    """
    host = socket.gethostname()
    if etcd_user:
        return f"etcd:{etcd_user}", host
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = "unknown"
    return f"os:{user}@{host}", host


def audit_record(command: str, **args: object) -> bytes:
    """The audit record a shard change writes in its own etcd transaction (``shards.<command>``).

    Who: the etcd user of the command's ``--etcd-user``, when given (etcd's
    auth vouches for it), else the OS user.
    """
    identity, peer = operator_identity(etcd_access(f"shards {command}").user)
    record = shard_change_record(int(time.time() * 1000), identity, peer, f"shards.{command}", args)
    return json.dumps(record, sort_keys=True).encode()


# -- a change: its moves printed, then written ---------------------------------------------------


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


async def _remove_pins(client: Any, view: ClusterView) -> None:
    pins = {str(shard): node for shard, node in sorted(view.overrides.pins.items())}
    if not await remove_pins(client, view.cluster, view.overrides.pins, audit_record("rebalance", pins=pins)):
        raise Refused("the pins changed while planning the rebalance; run it again")


# -- shards: reading ---------------------------------------------------------------------------


@shards_app.command("ls")
@etcd_access_options
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
@etcd_access_options
def shards_map(etcd: EtcdOption = DEFAULT_ETCD, cluster: ClusterOption = DEFAULT_CLUSTER) -> None:
    """Per node: the shards it owns (as ranges), how many, their epochs, since when."""

    async def work(client: Any) -> None:
        console.print(map_table(await read_view(client, cluster)))

    run_etcd("shards map", etcd, cluster, work)


# -- shards: changing -----------------------------------------------------------------------------


@shards_app.command("move")
@etcd_access_options
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
        audit = audit_record("move", shard=shard, node=node, force=force)
        write = partial(pin, client, cluster, shard, node, audit)
        done = f"shard {shard} pinned to {node}"
        if not await _change(view, view.overrides.with_pin(shard, node), dry_run, write, done):
            return 0
        return await _await_move(client, view, shard, node, wait)

    run_etcd("shards move", etcd, cluster, work)


async def _await_move(client: Any, view: ClusterView, shard: int, node: str, wait: float) -> int:
    before = view.owners.get(shard)
    if wait == 0:
        return 0
    with console.status(f"waiting up to {wait:g} s for {node} to own shard {shard}"):
        owner = await wait_for_owner(client, view.cluster, shard, node, wait, poll_s=MOVE_POLL_S)
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
@etcd_access_options
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
        write = partial(pin, client, cluster, shard, node, audit_record("pin", shard=shard, node=node, force=force))
        await _change(view, view.overrides.with_pin(shard, node), dry_run, write, f"shard {shard} pinned to {node}")

    run_etcd("shards pin", etcd, cluster, work)


@shards_app.command("unpin")
@etcd_access_options
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
        write = partial(unpin, client, cluster, shard, audit_record("unpin", shard=shard))
        await _change(view, view.overrides.without_pin(shard), dry_run, write, f"shard {shard} unpinned")

    run_etcd("shards unpin", etcd, cluster, work)


@shards_app.command("drain")
@etcd_access_options
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
        write = partial(drain, client, cluster, node, audit_record("drain", node=node, force=force))
        await _change(view, view.overrides.with_drain(node), dry_run, write, f"node {node} drained")

    run_etcd("shards drain", etcd, cluster, work)


@shards_app.command("undrain")
@etcd_access_options
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
        write = partial(undrain, client, cluster, node, audit_record("undrain", node=node))
        await _change(view, view.overrides.without_drain(node), dry_run, write, f"node {node} undrained")

    run_etcd("shards undrain", etcd, cluster, work)


@shards_app.command("rebalance")
@etcd_access_options
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
        await _change(
            view,
            view.overrides.without_pins(),
            dry_run,
            partial(_remove_pins, client, view),
            f"{len(view.overrides.pins)} pin(s) removed",
        )

    run_etcd("shards rebalance", etcd, cluster, work)
