"""``flashstock reconcile``: the comparison of :mod:`flashstock.server.duties.reconcile`, shown.

Reads its settings like ``serve`` (flags > ``FLASHSTOCK_*`` env > config
file) and talks to Redis and the ledger directly.
"""

from __future__ import annotations

from typing import Annotated

import redis as redis_py
import sqlalchemy as sa
import typer
from rich import box
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from flashstock.server._config import ledger_url, redis_tls
from flashstock.server.cli import common
from flashstock.server.cli.common import (
    ConfigOption,
    DataDirOption,
    LedgerOption,
    RedisTlsCaOption,
    RedisTlsCertOption,
    RedisTlsKeyOption,
    read_settings,
)
from flashstock.server.duties.reconcile import (
    Difference,
    ReconcileError,
    Reconciliation,
    SkuFigures,
    reconcile,
)
from flashstock.server.ledger import Ledger, LedgerError
from flashstock.server.ledger.reports import open_for_reading
from flashstock.server.store.redis import NO_TLS, RedisTimeouts, RedisTls, blocking_client, masked_url

_SHOWN = ("total", "held", "confirmed", "released", "expired", "available")


def reconcile_table(rec: Reconciliation) -> Table:
    """Both sides of each SKU, one above the other (Redis, then the ledger); differing figures in red.

    The SKU's row names its shard below its id; the check column says "ok"
    or which figures differ (the sale number there too).
    """
    table = Table(
        "sku",
        "side",
        *(Column(f, justify="right") for f in _SHOWN),
        "check",
        title="reconcile: Redis against the ledger",
        caption=(
            "Compared: total, held, confirmed, available and the sale number. Released and expired "
            "are from the ledger only (Redis keeps no counters of them) and not compared."
        ),
        box=box.HORIZONTALS,
        pad_edge=False,
        collapse_padding=True,
    )
    by_sku: dict[str, list[Difference]] = {}
    for diff in rec.differences:
        by_sku.setdefault(diff.sku_id, []).append(diff)

    def cells(row: SkuFigures | None, differing: set[str]) -> list[Text]:
        out = []
        for figure in _SHOWN:
            value = None if row is None else getattr(row, figure)
            if value is None:
                out.append(Text("-", style="dim"))
            else:
                out.append(Text(str(value), style="bold red" if figure in differing else ""))
        return out

    for sku_id in sorted(set(rec.redis) | set(rec.ledger)):
        in_redis, in_ledger = rec.redis.get(sku_id), rec.ledger.get(sku_id)
        diffs = by_sku.get(sku_id, [])
        differing = {d.figure for d in diffs}
        if in_redis is None:
            check = Text("only in the ledger", style="bold red")
        elif in_ledger is None:
            check = Text("only in Redis", style="bold red")
        elif diffs:
            parts = [f"sale {d.redis} ≠ {d.ledger}" if d.figure == "sale" else d.figure for d in diffs]
            check = Text("differs: " + ", ".join(parts), style="bold red")
        else:
            check = Text("ok", style="green")
        shard = (in_redis or in_ledger).shard  # type: ignore[union-attr]
        table.add_row(sku_id, "redis", *cells(in_redis, differing), check)
        table.add_row(Text(f"shard {shard}", style="dim"), "ledger", *cells(in_ledger, differing), "", end_section=True)
    return table


def print_reconciliation(rec: Reconciliation, console: Console) -> None:
    """The table, then a verdict naming each difference."""
    if rec.unsettled:
        shards = ", ".join(f"{s} ({why})" for s, why in sorted(rec.unsettled.items()))
        console.print(
            f"[yellow]after {rec.waited_s:.1f} s, shard(s) still unsettled: {shards}; is a node (its persister) "
            "running? Their figures are compared as they are.",
            soft_wrap=True,
        )
    if not rec.redis and not rec.ledger:
        console.print("no SKUs in Redis or in the ledger")
        return
    console.print(reconcile_table(rec))
    skus = len(set(rec.redis) | set(rec.ledger))
    if rec.ok:
        console.print(f"[green]Redis and the ledger agree on all {skus} SKU(s)")
        return
    differing = sorted({d.sku_id for d in rec.differences})
    console.print(f"[red]{len(rec.differences)} difference(s) in {len(differing)} of {skus} SKU(s):")
    for diff in rec.differences:
        console.print(Text(f"  {diff}", style="red"), soft_wrap=True)


def _error(console: Console, message: str) -> None:
    console.print(Text.assemble(("reconcile: ", "red"), message), soft_wrap=True)


def run_reconcile(
    redis_url: str,
    ledger_url: str,
    shard_count: int,
    console: Console,
    sku_id: str | None = None,
    wait_s: float = 10.0,
    err_console: Console | None = None,
    redis_tls: RedisTls = NO_TLS,
) -> int:
    """Reconcile and print it; the exit code: 0 agreed, 1 differences, 2 could not run."""
    err = err_console or console
    try:
        client = blocking_client(redis_url, RedisTimeouts(connect_s=5, command_s=5), tls=redis_tls)
    except ValueError as exc:
        _error(err, f"redis_url: {exc}")
        return 2
    ledger: Ledger | None = None
    try:
        ledger = open_for_reading(ledger_url)
        client.ping()
        with console.status("reading Redis and the ledger ...") as status:

            def waiting(unsettled: dict[int, str]) -> None:
                status.update(f"waiting for the persister: {len(unsettled)} shard(s) not settled yet ...")

            rec = reconcile(client, ledger, shard_count, sku_id=sku_id, wait_s=wait_s, on_wait=waiting)
    except (LedgerError, ReconcileError) as exc:
        _error(err, str(exc))
        return 2
    except sa.exc.SQLAlchemyError as exc:
        _error(err, f"ledger: cannot read {ledger_url}: {' '.join(str(getattr(exc, 'orig', None) or exc).split())}")
        return 2
    except redis_py.RedisError as exc:
        _error(err, f"redis_url: cannot read Redis at {masked_url(redis_url)}: {exc}")
        return 2
    finally:
        client.close()
        if ledger is not None:
            ledger.close()
    if sku_id is not None and not rec.redis and not rec.ledger:
        _error(err, f"sku: {sku_id!r} is defined neither in Redis nor in the ledger")
        return 2
    print_reconciliation(rec, console)
    return 0 if rec.ok else 1


def reconcile_command(
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis holding the stock, as for serve (env FLASHSTOCK_REDIS_URL).", show_default=False),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            help="Logical shards of the cluster, as for serve (env FLASHSTOCK_SHARDS; default 64).", show_default=False
        ),
    ] = None,
    ledger: LedgerOption = None,
    data_dir: DataDirOption = None,
    sku: Annotated[str | None, typer.Option(help="Only this SKU; default every SKU of either side.")] = None,
    wait: Annotated[
        float, typer.Option(help="Most seconds to wait for the persister to catch up with the Redis logs.")
    ] = 10.0,
    config: ConfigOption = None,
    redis_tls_ca: RedisTlsCaOption = None,
    redis_tls_cert: RedisTlsCertOption = None,
    redis_tls_key: RedisTlsKeyOption = None,
) -> None:
    """Compare each SKU's stock in Redis with the ledger: total, held, confirmed, available.

    Waits until the ledger holds every log entry the Redis figures rest on
    (up to --wait seconds), then prints both sides. Exit code 0 when they
    agree, 1 on any difference (a SKU on one side only included), 2 when it
    cannot run.
    """
    if wait < 0:
        raise typer.BadParameter("must be >= 0", param_hint="--wait")
    settings = read_settings(
        "reconcile",
        config,
        redis_url=redis_url,
        shards=shards,
        ledger=ledger,
        data_dir=data_dir,
        redis_tls_ca=redis_tls_ca,
        redis_tls_cert=redis_tls_cert,
        redis_tls_key=redis_tls_key,
    )
    code = run_reconcile(
        settings.redis_url,
        ledger_url(settings),
        settings.shards,
        common.console,
        sku_id=sku,
        wait_s=wait,
        err_console=common.err_console,
        redis_tls=redis_tls(settings),
    )
    raise typer.Exit(code)
