"""``flashstock ledger``: migrate the SQL ledger's schema, and show its state.

Reads its settings like ``serve`` (flags > ``FLASHSTOCK_*`` env > config
file) and talks to the ledger directly.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from flashstock.server._config import ledger_url
from flashstock.server.cli.common import (
    ConfigOption,
    DataDirOption,
    LedgerOption,
    console,
    ledger_failure,
    local_iso,
    read_settings,
)

ledger_app = typer.Typer(help="The SQL ledger: migrate its schema, show its state.", no_args_is_help=True)


def _shown_url(url: str) -> str:
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - shown as given
        return url


def _revision(revision: str | None) -> str:
    from flashstock.server.ledger import HEAD

    if revision is None:
        return "none (empty)"
    return f"{revision} (head)" if revision == HEAD else revision


@ledger_app.command("upgrade")
def ledger_upgrade(ledger: LedgerOption = None, data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Run the ledger's schema migrations up to this flashstock's revision.

    Creates a missing SQLite ledger. A file that is not a database, or a
    database holding other tables, is refused untouched (exit 2).
    """
    import sqlalchemy as sa

    from flashstock.server.ledger import LedgerError
    from flashstock.server.ledger.reports import checked_upgrade

    settings = read_settings("ledger upgrade", config, ledger=ledger, data_dir=data_dir)
    url = ledger_url(settings)
    try:
        before, after = checked_upgrade(url)
    except (LedgerError, sa.exc.SQLAlchemyError) as exc:
        ledger_failure("ledger upgrade", settings, exc)
    shown = _shown_url(url)
    if before == after:
        console.print(f"ledger {shown}: schema revision [green]{_revision(after)}[/]; nothing to do", soft_wrap=True)
    else:
        console.print(
            f"ledger {shown}: schema revision [yellow]{_revision(before)}[/] → [green]{_revision(after)}[/]",
            soft_wrap=True,
        )


@ledger_app.command("status")
def ledger_status(
    ledger: LedgerOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    all_shards: Annotated[
        bool, typer.Option("--all-shards", help="Also the shards with nothing persisted yet.")
    ] = False,
) -> None:
    """Show the ledger's schema revision and identity (ledger_id) and, per shard, the persister's cursor and rebuilds.

    Exit code 0 at this flashstock's revision, 1 when `ledger upgrade` is due,
    2 when the ledger cannot be read.
    """
    import sqlalchemy as sa

    from flashstock.server.ledger import HEAD, LedgerError
    from flashstock.server.ledger.reports import ledger_counts, open_for_reading, probe, shard_status

    settings = read_settings("ledger status", config, ledger=ledger, data_dir=data_dir)
    url = ledger_url(settings)
    shown = _shown_url(url)
    try:
        found = probe(url)
        if not found.exists:
            raise LedgerError(
                f"ledger: there is no ledger at {shown} (a node or `flashstock ledger upgrade` creates it)"
            )
        if found.revision != HEAD:
            console.print(
                f"ledger {shown}: schema revision [yellow]{_revision(found.revision)}[/], this flashstock needs "
                f"{HEAD}: run `flashstock ledger upgrade`",
                soft_wrap=True,
            )
            raise typer.Exit(1)
        opened = open_for_reading(url)
        try:
            shards = shard_status(opened.engine)
            n_skus, n_deductions = ledger_counts(opened.engine)
            identity = opened.identity()
        finally:
            opened.close()
    except (LedgerError, sa.exc.SQLAlchemyError) as exc:
        ledger_failure("ledger status", settings, exc)
    console.print(
        f"ledger {shown}: schema revision [green]{_revision(found.revision)}[/]; "
        f"{n_skus:,} SKU(s), {n_deductions:,} deduction(s)",
        soft_wrap=True,
    )
    # The identity nodes bind in Redis and etcd (a node refusing to start names it).
    console.print(f"ledger_id {identity}", soft_wrap=True, highlight=False)
    listed = [st for st in shards if all_shards or st.cursor is not None]
    if listed:
        table = Table("shard", "persisted up to", "log generation", "cursor moved", "rebuilds", "epoch", title="shards")
        for st in listed:
            table.add_row(
                str(st.shard),
                st.cursor or "-",
                "-" if st.cursor_generation is None else str(st.cursor_generation),
                local_iso(st.cursor_ms),
                str(st.rebuilds),
                "-" if st.epoch is None else str(st.epoch),
            )
        console.print(table)
    hidden = len(shards) - len(listed)
    if hidden:
        rebuilds = sorted({st.rebuilds for st in shards if st.cursor is None})
        console.print(
            f"{hidden} more shard(s) with nothing persisted yet (rebuilds: {', '.join(map(str, rebuilds))}); "
            "--all-shards lists them"
        )
    elif not shards:
        console.print("no shard has been persisted or rebuilt yet")
