"""``flashstock cluster up / status / down``: a whole cluster on this machine, in one folder.

The processes are :class:`~flashstock.server.local.cluster.LocalCluster`'s;
the process modules load only when a command runs.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from flashstock.server.cli.common import DEFAULT_CLUSTER, console, exit_error
from flashstock.server.cli.token import DEV_AUDIENCE, DEV_ISSUER, SECRET_NAME, dev_token, write_secret

if TYPE_CHECKING:
    from flashstock.server.local.cluster import ClusterStatus, LocalCluster, StopOutcome

cluster_app = typer.Typer(
    help="A whole cluster on this machine, in one folder: etcd, Redis, N nodes and their ledger.", no_args_is_help=True
)

DEFAULT_FOLDER = "flashstock-cluster"
"""Where ``cluster up`` puts a local cluster unless told otherwise."""

DirOption = Annotated[
    Path,
    typer.Option("--dir", envvar="FLASHSTOCK_CLUSTER_DIR", help="The local cluster's folder."),
]


class LedgerKind(StrEnum):
    """The ledger of a local cluster."""

    sqlite = "sqlite"
    postgresql = "postgresql"


def _load(command: str, folder: Path) -> LocalCluster:
    from flashstock.server.local.cluster import LocalCluster

    try:
        return LocalCluster.load(folder)
    except FileNotFoundError:
        exit_error(command, f"no cluster recorded in {folder} (no cluster.json): check --dir", 2)
    except (ValueError, TypeError, KeyError) as exc:
        exit_error(command, f"{folder}/cluster.json is not a cluster record: {exc!r}", 2)


def _processes_table(cluster: LocalCluster) -> Table:
    table = Table("name", "pid", "address", "log", title=f"cluster {cluster.cluster} in {cluster.folder}")
    for p in cluster.processes:
        table.add_row(p.name, str(p.pid), p.address, p.log)
    return table


def _usage(cluster: LocalCluster, auth: bool = False) -> str:
    from flashstock.server.store.redis import masked_url

    etcd = f"--etcd {cluster.etcd_endpoint} --cluster {cluster.cluster}"
    folder = f"--dir {cluster.folder}"
    secret = cluster.folder / SECRET_NAME
    tls = cluster.tls
    exports = [f"  export {k}={v}" for k, v in tls.operator_env().items()] if tls else []
    return "\n".join(
        [
            f"etcd {cluster.etcd_endpoint}, redis {masked_url(cluster.redis_url)}, ledger {cluster.ledger_url}",
            *([f"the live board: {_board_address(cluster, auth)}"] if cluster.board_url else []),
            *(
                [f"TLS everywhere: certificates and passwords in {tls.folder} (the CLI as etcd user operator)"]
                if tls
                else []
            ),
            "",
            f"  export FLASHSTOCK_ETCD={cluster.etcd_endpoint} FLASHSTOCK_CLUSTER={cluster.cluster}",
            *exports,
            f"  flashstock nodes ls {etcd}",
            f"  flashstock shards ls {etcd}",
            f"  flashstock shards map {etcd}",
            *(
                [f"  export FLASHSTOCK_TOKEN=$(flashstock token make --key {secret} --sub you --role admin)"]
                if auth
                else []
            ),
            f"  flashstock sku put hot-sku --stock 1000 {etcd}",
            f"  flashstock cluster status {folder}",
            f"  flashstock cluster down {folder}",
        ]
    )


BOARD_TOKEN_TTL_S = 12 * 3600
"""How long the viewer's token on ``cluster up --auth``'s board address opens the board."""


def _board_address(cluster: LocalCluster, auth: bool) -> str:
    """The board's page; with auth on, with a viewer's token (12 h) the board turns into a cookie."""
    if not (auth and cluster.board_auth_args):
        return cluster.board_url
    token = dev_token(cluster.folder / SECRET_NAME, "board-viewer", ["viewer"], BOARD_TOKEN_TTL_S)
    return f"{cluster.board_url}?token={token}"


def local_folder(folder: Path) -> Path:
    """The local cluster's folder as :class:`LocalCluster` resolves it."""
    return Path(folder).expanduser().resolve()


def _auth_args(folder: Path) -> tuple[str, ...]:
    """The nodes' flags of ``cluster up --auth``; its secret kept if the folder has one (tokens stay good)."""
    secret = folder / SECRET_NAME
    if not secret.exists():
        try:
            write_secret(secret)
        except OSError as exc:
            exit_error("cluster up", f"--auth: cannot write {secret}: {exc}")
    return (
        *("--auth", "on", "--auth-jwt-keys", str(secret)),
        *("--auth-jwt-issuer", DEV_ISSUER, "--auth-jwt-audience", DEV_AUDIENCE),
    )


@cluster_app.command("up")
def cluster_up(
    nodes: Annotated[int, typer.Option(help="How many nodes.", min=1)] = 3,
    folder: DirOption = Path(DEFAULT_FOLDER),
    ledger: Annotated[
        LedgerKind, typer.Option(help="One SQLite file shared by the nodes, or a PostgreSQL server.")
    ] = LedgerKind.sqlite,
    shards: Annotated[
        int, typer.Option(help="Logical shards of the cluster (fixed once its etcd has it).", min=1)
    ] = 64,
    lease_ttl_s: Annotated[int, typer.Option(help="The nodes' etcd lease TTL, seconds.", min=1)] = 5,
    workers: Annotated[int, typer.Option(help="Worker processes per node.", min=0)] = 1,
    cluster: Annotated[str, typer.Option("--cluster", help="The cluster's name in etcd.")] = DEFAULT_CLUSTER,
    board: Annotated[
        bool, typer.Option("--board/--no-board", help="Also run the live board of the sale (flashstock board).")
    ] = False,
    auth: Annotated[
        bool,
        typer.Option(
            "--auth",
            help="Nodes with auth on, taking HS256 bearer tokens signed with FOLDER/jwt-hs256.secret (made if "
            "missing): make them with flashstock token make --key FOLDER/jwt-hs256.secret.",
        ),
    ] = False,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls/--no-tls",
            help="Everything on TLS: a dev CA and certificates in DIR/tls, mutual TLS on the nodes, Redis (an ACL "
            "user) and etcd (auth on); kept when the folder's cluster starts again.",
        ),
    ] = False,
) -> None:
    """Start etcd, Redis and NODES nodes on loopback (free ports), all in one folder; they keep running."""
    from flashstock.server.local.cluster import LocalCluster
    from flashstock.server.local.procs import ProcessError

    local = LocalCluster(
        folder,
        nodes=nodes,
        ledger=ledger.value,
        shards=shards,
        lease_ttl_s=lease_ttl_s,
        workers=workers,
        cluster=cluster,
        board=board,
        extra_node_args=_auth_args(local_folder(folder)) if auth else (),
        tls=tls,
    )
    try:
        with console.status(f"starting etcd, redis and {nodes} node(s) in {local.folder}"):
            local.up()
    except (ProcessError, ValueError) as exc:
        exit_error("cluster up", str(exc), 1)
    console.print(_processes_table(local))
    console.print(_usage(local, auth), soft_wrap=True, highlight=False)


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
    table = Table(
        "name",
        "pid",
        "state",
        "address",
        "health",
        "shards",
        title=f"cluster {local.cluster} in {local.folder}: {status.state}",
    )
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
