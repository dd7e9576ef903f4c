"""The ``flashstock`` command: serve a node, steer SKUs, run the demo and the benchmark.

Admin commands use only the public client API (:mod:`flashstock.client`).
The operator commands on the ledger (``ledger``, ``reconcile``, ``sales``)
read their settings like ``serve`` (flags > ``FLASHSTOCK_*`` env > config file)
and talk to Redis and the ledger directly.
"""

from __future__ import annotations

import csv
import inspect
import json
import re
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Column, Table

from flashstock.client import AdminClient, ClientConfig, FlashstockError, InvalidArgument, Mode, Sku

from flashstock.server.cli.cluster import cluster_app, nodes_app, shards_app
from flashstock.server._config import NodeConfig, ledger_url, load_config, setting_help

app = typer.Typer(
    help="flashstock: a gRPC stock service for flash sales. Every unit of a hot item, handed out exactly once.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
sku_app = typer.Typer(help="Define SKUs and steer their sale (AdminService).", no_args_is_help=True)
app.add_typer(sku_app, name="sku")
ledger_app = typer.Typer(help="The SQL ledger: migrate its schema, show its state.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")
sales_app = typer.Typer(help="Sales figures, from the ledger.", no_args_is_help=True)
app.add_typer(sales_app, name="sales")
app.add_typer(nodes_app, name="nodes")
app.add_typer(shards_app, name="shards")
app.add_typer(cluster_app, name="cluster")

console = Console()
err_console = Console(stderr=True)

AddrOption = Annotated[
    str,
    typer.Option("--addr", envvar="FLASHSTOCK_ADDR", help="Node address(es), host:port, comma-separated."),
]
AdminEtcdOption = Annotated[
    str,
    typer.Option(
        "--etcd",
        envvar="FLASHSTOCK_ETCD",
        help="Call the nodes registered in etcd instead of --addr: etcd endpoints, host:port, comma-separated.",
    ),
]
AdminClusterOption = Annotated[
    str,
    typer.Option("--cluster", envvar="FLASHSTOCK_CLUSTER", help="With --etcd: the cluster whose nodes to call."),
]


# -- serve -------------------------------------------------------------------


def _serve(**flags: Any) -> None:
    config_file = flags.pop("config", None)
    try:
        config = load_config(flags, config_file=config_file)
    except ValueError as exc:
        err_console.print(f"[red]flashstock serve: bad setting:[/] {exc}")
        raise typer.Exit(2) from None
    from flashstock.server._node import serve

    raise typer.Exit(serve(config))


def _build_serve_command() -> None:
    """``serve``'s flags are built from NodeConfig, so --help lists every setting."""
    params = [
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Optional[str],
                typer.Option(help="TOML config file (top-level keys, or a table named flashstock). Env: FLASHSTOCK_CONFIG."),
            ],
        )
    ]
    for name, (default, help_text) in setting_help().items():
        kind = type(default)
        env = f"FLASHSTOCK_{name.upper()}"
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    Optional[kind],
                    typer.Option(help=f"{help_text} (env {env}; default {default!r})", show_default=False),
                ],
            )
        )
    _serve.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    _serve.__annotations__ = {p.name: p.annotation for p in params}
    app.command(
        "serve",
        help="Run a flashstock node. Settings: flags > FLASHSTOCK_* env > config file > defaults.",
    )(_serve)


_build_serve_command()


# -- sku ---------------------------------------------------------------------


def _admin(addr: str, etcd: str = "", cluster: str = "flashstock") -> AdminClient:
    try:
        if etcd and addr != "127.0.0.1:50051":
            raise ValueError("give --addr or --etcd, not both")
        config = ClientConfig(etcd=etcd, cluster=cluster) if etcd else ClientConfig(addresses=addr)
        admin = AdminClient(replace(config, deadline_s=10, discovery_timeout_s=3))
    except ValueError as exc:
        err_console.print(f"[red]{'--etcd' if etcd else '--addr'}:[/] {exc}")
        raise typer.Exit(2) from None
    try:
        admin.start()  # with --etcd: find the nodes, or say why not
    except FlashstockError as exc:
        admin.close()
        _fail(exc)
    return admin


def _fail(exc: FlashstockError) -> None:
    err_console.print(f"[red]error:[/] {exc.message}")
    if isinstance(exc, InvalidArgument):
        for v in exc.violations:
            err_console.print(f"  {v.field}: {v.description}")
    raise typer.Exit(1)


def parse_time_ms(value: str | None, now_ms: int | None = None) -> int:
    """A sale time: unix ms, ISO-8601 (``2026-11-25T20:00:00+00:00``), ``+90s`` / ``+5m`` / ``+2h``, or ``0``."""
    if value is None or value in ("", "0"):
        return 0
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    match = re.fullmatch(r"\+(\d+(?:\.\d+)?)([smh])", value)
    if match:
        return now_ms + int(float(match[1]) * {"s": 1000, "m": 60_000, "h": 3_600_000}[match[2]])
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not unix ms, ISO-8601 or +N[s|m|h]") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return int(moment.timestamp() * 1000)


def _when(ms: int) -> str:
    return "-" if ms == 0 else datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="seconds")


def _sku_table(skus: list[Sku]) -> Table:
    table = Table("sku", "shard", "total", "available", "held", "confirmed", "limit", "max/req", "window", "mode", "state")
    for s in skus:
        state = "paused" if s.paused else ("sold out" if s.available <= 0 else "on sale")
        window = f"{_when(s.sale_start_ms)} → {_when(s.sale_end_ms)}"
        table.add_row(
            s.sku_id,
            str(s.shard),
            str(s.total),
            str(s.available),
            str(s.held),
            str(s.confirmed),
            str(s.per_user_limit or "-"),
            str(s.max_per_request or "-"),
            window,
            s.mode.name.lower(),
            state,
        )
    return table


@sku_app.command("put")
def sku_put(
    sku_id: Annotated[str, typer.Argument(help="The SKU id.")],
    stock: Annotated[int, typer.Option(help="Units to put on sale.")],
    limit: Annotated[int, typer.Option(help="Most units per user (held + confirmed); 0 = no limit.")] = 0,
    max_per_request: Annotated[int, typer.Option(help="Most units per request; 0 = the per-user limit.")] = 0,
    start: Annotated[Optional[str], typer.Option(help="Sale opens: unix ms, ISO-8601 or +N[s|m|h]; default now.")] = None,
    end: Annotated[Optional[str], typer.Option(help="Sale closes: unix ms, ISO-8601 or +N[s|m|h]; default never.")] = None,
    mode: Annotated[str, typer.Option(help="fast | durable.")] = "fast",
    request_id: Annotated[Optional[str], typer.Option(help="Idempotency key; default a new one.")] = None,
    addr: AddrOption = "127.0.0.1:50051",
    etcd: AdminEtcdOption = "",
    cluster: AdminClusterOption = "flashstock",
) -> None:
    """Define a SKU (defining it again restarts its sale)."""
    if mode not in ("fast", "durable"):
        raise typer.BadParameter("mode must be fast or durable", param_hint="--mode")
    with _admin(addr, etcd, cluster) as admin:
        try:
            result = admin.put_sku(
                sku_id,
                stock,
                per_user_limit=limit,
                max_per_request=max_per_request,
                sale_start_ms=parse_time_ms(start),
                sale_end_ms=parse_time_ms(end),
                mode=Mode.DURABLE if mode == "durable" else Mode.FAST,
                request_id=request_id,
            )
        except FlashstockError as exc:
            _fail(exc)
    console.print(_sku_table([result.sku]))


@sku_app.command("get")
def sku_get(
    sku_id: Annotated[str, typer.Argument(help="The SKU id.")],
    addr: AddrOption = "127.0.0.1:50051",
    etcd: AdminEtcdOption = "",
    cluster: AdminClusterOption = "flashstock",
) -> None:
    """Show one SKU."""
    with _admin(addr, etcd, cluster) as admin:
        try:
            console.print(_sku_table([admin.get_sku(sku_id)]))
        except FlashstockError as exc:
            _fail(exc)


@sku_app.command("ls")
def sku_ls(
    prefix: Annotated[str, typer.Option(help="Only SKUs whose id starts with this.")] = "",
    addr: AddrOption = "127.0.0.1:50051",
    etcd: AdminEtcdOption = "",
    cluster: AdminClusterOption = "flashstock",
) -> None:
    """List SKUs."""
    with _admin(addr, etcd, cluster) as admin:
        try:
            skus = admin.all_skus(prefix)
        except FlashstockError as exc:
            _fail(exc)
    console.print(_sku_table(skus) if skus else "no SKUs")


@sku_app.command("adjust", context_settings={"ignore_unknown_options": True})  # lets "-200" be the delta
def sku_adjust(
    sku_id: Annotated[str, typer.Argument(help="The SKU id.")],
    delta: Annotated[int, typer.Argument(help="Units to add (+N) or take away (-N).")],
    request_id: Annotated[Optional[str], typer.Option(help="Idempotency key; default a new one.")] = None,
    addr: AddrOption = "127.0.0.1:50051",
    etcd: AdminEtcdOption = "",
    cluster: AdminClusterOption = "flashstock",
) -> None:
    """Add or take away stock, never below the units handed out."""
    with _admin(addr, etcd, cluster) as admin:
        try:
            console.print(_sku_table([admin.adjust_stock(sku_id, delta, request_id=request_id).sku]))
        except FlashstockError as exc:
            _fail(exc)


@sku_app.command("pause")
def sku_pause(
    sku_id: Annotated[str, typer.Argument(help="The SKU id.")],
    addr: AddrOption = "127.0.0.1:50051",
    etcd: AdminEtcdOption = "",
    cluster: AdminClusterOption = "flashstock",
) -> None:
    """Stop a SKU's sale: every attempt gets NOT_ON_SALE."""
    with _admin(addr, etcd, cluster) as admin:
        try:
            console.print(_sku_table([admin.pause_sku(sku_id).sku]))
        except FlashstockError as exc:
            _fail(exc)


@sku_app.command("resume")
def sku_resume(
    sku_id: Annotated[str, typer.Argument(help="The SKU id.")],
    addr: AddrOption = "127.0.0.1:50051",
    etcd: AdminEtcdOption = "",
    cluster: AdminClusterOption = "flashstock",
) -> None:
    """Resume a paused SKU's sale."""
    with _admin(addr, etcd, cluster) as admin:
        try:
            console.print(_sku_table([admin.resume_sku(sku_id).sku]))
        except FlashstockError as exc:
            _fail(exc)


# -- ledger, reconcile, sales ---------------------------------------------------

ConfigOption = Annotated[
    Optional[str],
    typer.Option("--config", help="TOML config file, as for serve. Env: FLASHSTOCK_CONFIG.", show_default=False),
]
LedgerOption = Annotated[
    Optional[str],
    typer.Option(
        "--ledger",
        help="Ledger URL, as for serve (env FLASHSTOCK_LEDGER); default the SQLite file in --data-dir.",
        show_default=False,
    ),
]
DataDirOption = Annotated[
    Optional[str],
    typer.Option("--data-dir", help="The node's data folder, as for serve (env FLASHSTOCK_DATA_DIR).", show_default=False),
]


def _settings(command: str, config_file: str | None, **flags: Any) -> NodeConfig:
    """The settings as ``serve`` reads them; a bad one ends the command (exit 2)."""
    try:
        return load_config(flags, config_file=config_file)
    except ValueError as exc:
        _exit_error(command, f"bad setting: {exc}")


def _exit_error(command: str, message: str, code: int = 2) -> NoReturn:
    from rich.text import Text

    err_console.print(Text.assemble((f"flashstock {command}: ", "red"), " ".join(message.split())), soft_wrap=True)
    raise typer.Exit(code)


def _ledger_failure(command: str, config: NodeConfig, exc: Exception) -> NoReturn:
    """One line naming the setting: the ledger URL, or the data folder it came from."""
    import sqlalchemy as sa

    if isinstance(exc, sa.exc.SQLAlchemyError):
        orig = getattr(exc, "orig", None)  # the driver's error, which a DBAPIError wraps
        message = f"ledger: {orig if orig is not None else exc}"
    else:
        message = str(exc)
    if not config.ledger:
        message += f" [ledger unset: the embedded SQLite file of data_dir {config.data_dir}]"
    _exit_error(command, message)


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

    settings = _settings("ledger upgrade", config, ledger=ledger, data_dir=data_dir)
    url = ledger_url(settings)
    try:
        before, after = checked_upgrade(url)
    except (LedgerError, sa.exc.SQLAlchemyError) as exc:
        _ledger_failure("ledger upgrade", settings, exc)
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
    all_shards: Annotated[bool, typer.Option("--all-shards", help="Also the shards with nothing persisted yet.")] = False,
) -> None:
    """Show the ledger's schema revision and identity (ledger_id) and, per shard, the persister's cursor
    and the rebuilds.

    Exit code 0 at this flashstock's revision, 1 when `ledger upgrade` is due,
    2 when the ledger cannot be read.
    """
    import sqlalchemy as sa

    from flashstock.server.ledger import HEAD, LedgerError
    from flashstock.server.ledger.reports import ledger_counts, open_for_reading, probe, shard_status

    settings = _settings("ledger status", config, ledger=ledger, data_dir=data_dir)
    url = ledger_url(settings)
    shown = _shown_url(url)
    try:
        found = probe(url)
        if not found.exists:
            raise LedgerError(f"ledger: there is no ledger at {shown} (a node or `flashstock ledger upgrade` creates it)")
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
        _ledger_failure("ledger status", settings, exc)
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
                _when(st.cursor_ms),
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


@app.command("reconcile")
def reconcile(
    redis_url: Annotated[
        Optional[str], typer.Option(help="Redis holding the stock, as for serve (env FLASHSTOCK_REDIS_URL).", show_default=False)
    ] = None,
    shards: Annotated[
        Optional[int], typer.Option(help="Logical shards of the cluster, as for serve (env FLASHSTOCK_SHARDS; default 64).", show_default=False)
    ] = None,
    ledger: LedgerOption = None,
    data_dir: DataDirOption = None,
    sku: Annotated[Optional[str], typer.Option(help="Only this SKU; default every SKU of either side.")] = None,
    wait: Annotated[float, typer.Option(help="Most seconds to wait for the persister to catch up with the Redis logs.")] = 10.0,
    config: ConfigOption = None,
) -> None:
    """Compare each SKU's stock in Redis with the ledger: put, held, confirmed, left.

    Waits until the ledger holds every log entry the Redis figures rest on
    (up to --wait seconds), then prints both sides. Exit code 0 when they
    agree, 1 on any difference (a SKU on one side only included), 2 when it
    cannot run.
    """
    from flashstock.server.cli.reconcile import run_reconcile

    if wait < 0:
        raise typer.BadParameter("must be >= 0", param_hint="--wait")
    settings = _settings("reconcile", config, redis_url=redis_url, shards=shards, ledger=ledger, data_dir=data_dir)
    code = run_reconcile(
        settings.redis_url,
        ledger_url(settings),
        settings.shards,
        console,
        sku_id=sku,
        wait_s=wait,
        err_console=err_console,
    )
    raise typer.Exit(code)


class ReportFormat(StrEnum):
    """Output formats of ``sales report``."""

    table = "table"
    csv = "csv"
    json = "json"


REPORT_FIELDS = (
    "sku",
    "shard",
    "sale",
    "mode",
    "total",
    "sold",
    "held",
    "left",
    "buyers",
    "holds",
    "holds_confirmed",
    "holds_expired",
    "holds_released",
    "holds_open",
    "first_sale",
    "last_sale",
)
"""The columns of ``sales report --format csv`` and the keys of its JSON objects."""


def _local_time(ms: int) -> str:
    return "-" if ms == 0 else datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _iso_utc(ms: int) -> str | None:
    return None if ms == 0 else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def report_rows(sales: list[Any]) -> list[dict[str, Any]]:
    """``sales report``'s rows (:class:`~flashstock.server.ledger.reports.SkuSales`) as plain dicts."""
    return [
        {
            "sku": s.sku_id,
            "shard": s.shard,
            "sale": s.sale,
            "mode": s.mode,
            "total": s.total,
            "sold": s.sold,
            "held": s.held,
            "left": s.left,
            "buyers": s.buyers,
            "holds": s.holds,
            "holds_confirmed": s.holds_confirmed,
            "holds_expired": s.holds_expired,
            "holds_released": s.holds_released,
            "holds_open": s.holds_open,
            "first_sale": _iso_utc(s.first_sale_ms),
            "last_sale": _iso_utc(s.last_sale_ms),
        }
        for s in sales
    ]


@sales_app.command("report")
def sales_report(
    sku: Annotated[Optional[str], typer.Option(help="Only this SKU; default every SKU in the ledger.")] = None,
    format: Annotated[ReportFormat, typer.Option("--format", help="table (for people), csv or json (for programs).")] = ReportFormat.table,
    ledger: LedgerOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Per SKU, its current sale from the ledger: units sold, buyers, holds confirmed / expired / released,
    first and last sale (csv and json: ISO-8601, UTC).

    Reads the ledger only. Sold = confirmed units; buyers = distinct users with
    confirmed or held units; holds are counted by what became of them.
    """
    import sqlalchemy as sa

    from flashstock.server.ledger import LedgerError
    from flashstock.server.ledger.reports import open_for_reading
    from flashstock.server.ledger.reports import sales_report as query

    settings = _settings("sales report", config, ledger=ledger, data_dir=data_dir)
    try:
        opened = open_for_reading(ledger_url(settings))
        try:
            sales = query(opened.engine, sku_id=sku)
        finally:
            opened.close()
    except (LedgerError, sa.exc.SQLAlchemyError) as exc:
        _ledger_failure("sales report", settings, exc)
    if sku is not None and not sales:
        _exit_error("sales report", f"sku: {sku!r} is not in the ledger", code=1)
    rows = report_rows(sales)
    if format is ReportFormat.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if format is ReportFormat.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=REPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
        return
    if not rows:
        console.print("no SKUs in the ledger")
        return
    table = Table(
        "sku",
        *(Column(name, justify="right") for name in ("put", "sold", "held", "left", "buyers", "holds", "confirmed", "expired", "released")),
        "first sale",
        "last sale",
        title="sales: the current sale of each SKU, from the ledger",
        caption=(
            "sold = units confirmed; buyers = users with units confirmed or held; "
            "holds taken, and what became of them"
        ),
        box=box.HORIZONTALS,
        pad_edge=False,
        collapse_padding=True,
    )
    for sale in sales:
        table.add_row(
            sale.sku_id,
            *(f"{n:,}" for n in (sale.total, sale.sold, sale.held, sale.left, sale.buyers, sale.holds,
                                 sale.holds_confirmed, sale.holds_expired, sale.holds_released)),
            _local_time(sale.first_sale_ms),
            _local_time(sale.last_sale_ms),
        )
    console.print(table)


# -- demo and bench ------------------------------------------------------------


@app.command("demo")
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
    plan = DemoPlan(buyers=buyers, users=users, stock=stock, limit=limit, retry_share=retry_share,
                    concurrency=concurrency, nodes=nodes, drain=drain, workers=workers, seed=seed, mode=mode)
    raise typer.Exit(run_demo(plan, console))


@app.command("bench")
def bench(
    buyers: Annotated[int, typer.Option(help="Concurrent async buyers.")] = 64,
    seconds: Annotated[float, typer.Option(help="Length of each measured phase.")] = 5.0,
    workers: Annotated[int, typer.Option(help="Node worker processes (the echo server gets as many).")] = 1,
    client_procs: Annotated[int, typer.Option(help="Load-generating processes.")] = 1,
    records: Annotated[int, typer.Option(help="Deductions recorded for the memory figure.")] = 20_000,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
    warmup: Annotated[float, typer.Option(help="Unmeasured seconds before each throughput phase.")] = 1.5,
    sale_stock: Annotated[int, typer.Option(help="Units of the sale phase's SKU.")] = 5_000,
    soldout_seconds: Annotated[float, typer.Option(help="Length of the sold-out phase, seconds.")] = 2.0,
    connections: Annotated[
        int, typer.Option(help="gRPC connections per load process; 0 = 1, or 4 per worker when workers > 1.")
    ] = 0,
) -> None:
    """Deduct throughput and latency against a bare grpc.aio echo, measured in one run.

    Also Redis memory per recorded deduction, a sale with an oversell check,
    and the Redis calls made while refusing a sold-out SKU. Exit code 0
    whatever the figures, 1 when the oversell check fails, 2 when it could
    not run. See benchmarks/README.md.
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
    )
    raise typer.Exit(run_bench(plan, console))


@app.command("bench-cluster")
def bench_cluster(
    runs: Annotated[int, typer.Option(help="Failover runs: kill -9 of a node (0, 1, 2, 0 ...), each.")] = 20,
    lease_ttl_s: Annotated[int, typer.Option(help="The nodes' lease TTL, seconds.")] = 5,
    buyers: Annotated[int, typer.Option(help="Concurrent async buyers of the throughput phases.")] = 64,
    seconds: Annotated[float, typer.Option(help="Length of each measured throughput phase.")] = 5.0,
    warmup: Annotated[float, typer.Option(help="Unmeasured seconds before each throughput phase.")] = 1.5,
    idle_seconds: Annotated[float, typer.Option(help="Length of the idle etcd window.")] = 10.0,
    client_procs: Annotated[int, typer.Option(help="Load-generating processes (one SKU each).")] = 3,
    failover_rate: Annotated[float, typer.Option(help="Paced deductions/s on the survivors during failover (0: none).")] = 300.0,
    skip: Annotated[
        Optional[list[str]],
        typer.Option(metavar="PART", help="Leave a part out: failover, throughput or etcd (repeat, or comma-separated)."),
    ] = None,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
    folder: Annotated[
        Optional[str], typer.Option("--dir", help="Keep the clusters' folders and logs here (default: a temporary folder, removed).")
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


def main() -> None:
    """Entry point of the ``flashstock`` console script."""
    app()


if __name__ == "__main__":
    main()
