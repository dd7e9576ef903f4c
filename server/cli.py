"""The ``flashstock`` command: serve a node, steer SKUs, run the demo and the benchmark.

Admin commands use only the public client API (:mod:`flashstock.client`).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import sys
import time
from datetime import datetime
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from flashstock.client import AdminClient, ClientConfig, FlashstockError, InvalidArgument, Mode, Sku

from ._config import load_config, setting_help

app = typer.Typer(
    help="flashstock: a gRPC stock service for flash sales. Every unit of a hot item, handed out exactly once.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
sku_app = typer.Typer(help="Define SKUs and steer their sale (AdminService).", no_args_is_help=True)
app.add_typer(sku_app, name="sku")

console = Console()
err_console = Console(stderr=True)

AddrOption = Annotated[
    str,
    typer.Option("--addr", envvar="FLASHSTOCK_ADDR", help="Node address(es), host:port, comma-separated."),
]


# -- serve -------------------------------------------------------------------


def _serve(**flags: Any) -> None:
    config_file = flags.pop("config", None)
    try:
        config = load_config(flags, config_file=config_file)
    except ValueError as exc:
        err_console.print(f"[red]flashstock serve: bad setting:[/] {exc}")
        raise typer.Exit(2) from None
    from ._node import serve

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
                    Optional[kind],  # type: ignore[valid-type]
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


def _admin(addr: str) -> AdminClient:
    try:
        return AdminClient(ClientConfig(addresses=addr, deadline_s=10))
    except ValueError as exc:
        err_console.print(f"[red]--addr:[/] {exc}")
        raise typer.Exit(2) from None


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
) -> None:
    """Define a SKU (defining it again restarts its sale)."""
    if mode not in ("fast", "durable"):
        raise typer.BadParameter("mode must be fast or durable", param_hint="--mode")
    with _admin(addr) as admin:
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
def sku_get(sku_id: Annotated[str, typer.Argument(help="The SKU id.")], addr: AddrOption = "127.0.0.1:50051") -> None:
    """Show one SKU."""
    with _admin(addr) as admin:
        try:
            console.print(_sku_table([admin.get_sku(sku_id)]))
        except FlashstockError as exc:
            _fail(exc)


@sku_app.command("ls")
def sku_ls(
    prefix: Annotated[str, typer.Option(help="Only SKUs whose id starts with this.")] = "",
    addr: AddrOption = "127.0.0.1:50051",
) -> None:
    """List SKUs."""
    with _admin(addr) as admin:
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
) -> None:
    """Add or take away stock, never below the units handed out."""
    with _admin(addr) as admin:
        try:
            console.print(_sku_table([admin.adjust_stock(sku_id, delta, request_id=request_id).sku]))
        except FlashstockError as exc:
            _fail(exc)


@sku_app.command("pause")
def sku_pause(sku_id: Annotated[str, typer.Argument(help="The SKU id.")], addr: AddrOption = "127.0.0.1:50051") -> None:
    """Stop a SKU's sale: every attempt gets NOT_ON_SALE."""
    with _admin(addr) as admin:
        try:
            console.print(_sku_table([admin.pause_sku(sku_id).sku]))
        except FlashstockError as exc:
            _fail(exc)


@sku_app.command("resume")
def sku_resume(sku_id: Annotated[str, typer.Argument(help="The SKU id.")], addr: AddrOption = "127.0.0.1:50051") -> None:
    """Resume a paused SKU's sale."""
    with _admin(addr) as admin:
        try:
            console.print(_sku_table([admin.resume_sku(sku_id).sku]))
        except FlashstockError as exc:
            _fail(exc)


# -- demo and bench ------------------------------------------------------------


@app.command("demo")
def demo(
    buyers: Annotated[int, typer.Option(help="Simulated buyers (attempts before retries).")] = 20_000,
    users: Annotated[int, typer.Option(help="Distinct users among them.")] = 5_000,
    stock: Annotated[int, typer.Option(help="Units on sale.")] = 1_000,
    limit: Annotated[int, typer.Option(help="Per-user limit.")] = 2,
    retry_share: Annotated[float, typer.Option(help="Share of buyers who send their request again.")] = 0.1,
    concurrency: Annotated[int, typer.Option(help="Buyers in flight at once.")] = 200,
    workers: Annotated[int, typer.Option(help="Node worker processes.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed of the crowd.")] = 7,
) -> None:
    """A flash sale on a Redis and a node of its own: 20,000 buyers, 1,000 units, an oversell check."""
    from ._demo import DemoPlan, run_demo

    plan = DemoPlan(buyers=buyers, users=users, stock=stock, limit=limit, retry_share=retry_share,
                    concurrency=concurrency, workers=workers, seed=seed)
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
    from ._bench import BenchPlan, run_bench

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


def main() -> None:
    """Entry point of the ``flashstock`` console script."""
    app()


if __name__ == "__main__":
    main()
