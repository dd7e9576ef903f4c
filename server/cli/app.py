"""The ``flashstock`` command's root: one Typer app assembling one module per command group.

As etcdctl's ``ctlv3/command/*_command.go``: each group lives in its own
module (:mod:`.serve`, :mod:`.sku`, :mod:`.ledger`, :mod:`.sales`,
:mod:`.audit`, :mod:`.admission`, :mod:`.reconcile`, :mod:`.nodes`, :mod:`.shards`, :mod:`.cluster`,
:mod:`.demo`, :mod:`.board`, :mod:`.bench`, :mod:`.token`, :mod:`.certs`), what several share in :mod:`.common`.
The console script enters through :func:`flashstock.server.cli.main`, which
imports this module only when the server extra is installed.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flashstock.server.cli import version
from flashstock.server.cli.admission import admission_app
from flashstock.server.cli.audit import audit_app
from flashstock.server.cli.bench import bench, bench_cluster
from flashstock.server.cli.board import board
from flashstock.server.cli.certs import certs_app
from flashstock.server.cli.cluster import cluster_app
from flashstock.server.cli.demo import demo
from flashstock.server.cli.ledger import ledger_app
from flashstock.server.cli.nodes import nodes_app
from flashstock.server.cli.reconcile import reconcile_command
from flashstock.server.cli.sales import sales_app
from flashstock.server.cli.serve import SERVE_HELP, serve_command
from flashstock.server.cli.shards import shards_app
from flashstock.server.cli.sku import sku_app
from flashstock.server.cli.token import token_app

app = typer.Typer(
    help="flashstock: a gRPC stock service for flash sales. Every unit of a hot item, handed out exactly once.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
"""The ``flashstock`` command."""


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"flashstock {version()}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print flashstock's version and exit."),
    ] = False,
) -> None:
    pass


# Commands first, then the groups: the order `flashstock --help` lists them in.
app.command("serve", help=SERVE_HELP)(serve_command())
app.command("reconcile")(reconcile_command)
app.command("demo")(demo)
app.command("board")(board)
app.command("bench")(bench)
app.command("bench-cluster")(bench_cluster)
app.add_typer(sku_app, name="sku")
app.add_typer(ledger_app, name="ledger")
app.add_typer(sales_app, name="sales")
app.add_typer(audit_app, name="audit")
app.add_typer(nodes_app, name="nodes")
app.add_typer(shards_app, name="shards")
app.add_typer(cluster_app, name="cluster")
app.add_typer(token_app, name="token")
app.add_typer(admission_app, name="admission")
app.add_typer(certs_app, name="certs")
