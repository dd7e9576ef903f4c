"""``flashstock sku``: define SKUs and steer their sale, through the public admin client.

Uses only :mod:`flashstock.client`: what an operator can do here, any
program can do with :class:`~flashstock.client.AdminClient`.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Annotated, NoReturn

import typer
from rich.table import Table

from flashstock.client import AdminClient, ClientConfig, FlashstockError, InvalidArgument, Mode, Sku, SkuDefinition
from flashstock.server.cli.common import (
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    TokenFileOption,
    TokenOption,
    console,
    err_console,
    etcd_access,
    etcd_access_options,
    format_duration_ms,
    local_iso,
    parse_duration_ms,
    parse_time_ms,
)
from flashstock.server.money import format_amount, minor_units

sku_app = typer.Typer(help="Define SKUs and steer their sale (AdminService).", no_args_is_help=True)

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


def _admin(
    addr: str,
    etcd: str = "",
    cluster: str = "flashstock",
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
) -> AdminClient:
    """A started admin client of ``--addr`` or ``--etcd`` (over TLS with ``--tls-*``); exit 2 on a bad
    address or TLS file, 1 when no node is found."""
    try:
        if etcd and addr != "127.0.0.1:50051":
            raise ValueError("give --addr or --etcd, not both")
        config = ClientConfig(etcd=etcd, cluster=cluster) if etcd else ClientConfig(addresses=addr)
        config = replace(
            config,
            deadline_s=10,
            discovery_timeout_s=3,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            token=token,
            token_file=token_file,
        )
        if etcd:
            access = etcd_access("sku")
            config = replace(
                config,
                etcd_tls_ca=access.ca,
                etcd_tls_cert=access.cert,
                etcd_tls_key=access.key,
                etcd_user=access.user,
                etcd_password=access.password,
            )
        admin = AdminClient(config)
    except ValueError as exc:
        if str(exc).startswith(("tls_", "token")):  # name the flag: tls_cert is --tls-cert
            message = re.sub(r"\b(tls_\w+|token_file|token)\b", lambda m: "--" + m[0].replace("_", "-"), str(exc))
            err_console.print(f"[red]error:[/] {message}")
        else:
            err_console.print(f"[red]{'--etcd' if etcd else '--addr'}:[/] {exc}")
        raise typer.Exit(2) from None
    try:
        admin.start()  # with --etcd: find the nodes, or say why not
    except FlashstockError as exc:
        admin.close()
        _fail(exc)
    return admin


def _fail(exc: FlashstockError) -> NoReturn:
    """Say what the node refused (each field's violation too), and end the command (exit 1)."""
    err_console.print(f"[red]error:[/] {exc.message}")
    if isinstance(exc, InvalidArgument):
        for v in exc.violations:
            err_console.print(f"  {v.field}: {v.description}")
    raise typer.Exit(1)


def _goals(s: Sku) -> str:
    """The sale's goals in a few words (``-`` for none)."""
    parts = [
        f"{s.goal_units} units" if s.goal_units else "",
        f"sold out in {format_duration_ms(s.goal_sellout_ms)}" if s.goal_sellout_ms else "",
        f"{s.goal_buyers} buyers" if s.goal_buyers else "",
    ]
    return ", ".join(p for p in parts if p) or "-"


def _guards(s: Sku) -> str:
    """The SKU's anti-scalping settings in a few words (``-`` for none)."""
    parts = [f"{s.user_rate_per_s}/s per user" if s.user_rate_per_s else "", "token" if s.require_token else ""]
    return ", ".join(p for p in parts if p) or "-"


def _sku_table(skus: list[Sku]) -> Table:
    table = Table(
        "sku",
        "shard",
        "total",
        "available",
        "held",
        "confirmed",
        "limit",
        "max/req",
        "window",
        "goals",
        "price",
        "guards",
        "mode",
        "state",
    )
    for s in skus:
        state = "paused" if s.paused else ("sold out" if s.available <= 0 else "on sale")
        window = f"{local_iso(s.sale_start_ms)} → {local_iso(s.sale_end_ms)}"
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
            _goals(s),
            format_amount(s.unit_price_minor, s.currency),
            _guards(s),
            s.mode.name.lower(),
            state,
        )
    return table


@sku_app.command("put")
@etcd_access_options
def sku_put(
    sku_id: Annotated[str, typer.Argument(help="The SKU id.")],
    stock: Annotated[int, typer.Option(help="Units to put on sale.")],
    limit: Annotated[int, typer.Option(help="Most units per user (held + confirmed); 0 = no limit.")] = 0,
    max_per_request: Annotated[int, typer.Option(help="Most units per request; 0 = the per-user limit.")] = 0,
    start: Annotated[str | None, typer.Option(help="Sale opens: unix ms, ISO-8601 or +N[s|m|h]; default now.")] = None,
    end: Annotated[str | None, typer.Option(help="Sale closes: unix ms, ISO-8601 or +N[s|m|h]; default never.")] = None,
    mode: Annotated[str, typer.Option(help="fast | durable.")] = "fast",
    goal_units: Annotated[int, typer.Option(help="Goal: units to sell (at most --stock); 0 = none.")] = 0,
    goal_sellout: Annotated[
        str | None,
        typer.Option(help="Goal: sell out within this long of the sale's start: N[ms|s|m|h] (30s, 5m); default none."),
    ] = None,
    goal_buyers: Annotated[int, typer.Option(help="Goal: distinct buyers (at most --stock); 0 = none.")] = 0,
    price: Annotated[
        str | None,
        typer.Option(help="Unit price in major units (19.99), exact to the currency's decimals; needs --currency."),
    ] = None,
    currency: Annotated[str, typer.Option(help="ISO 4217 code of --price (EUR, JPY, KWD).")] = "",
    user_rate: Annotated[
        int,
        typer.Option(
            help="Most Deduct/Hold/BatchDeduct attempts one user may make per second, across nodes (past it: "
            "RATE_LIMITED); 0 = no cap."
        ),
    ] = 0,
    require_token: Annotated[
        bool,
        typer.Option(
            help="Deduct and Hold need the gateway's admission token for the user and SKU (flashstock admission token)."
        ),
    ] = False,
    request_id: Annotated[str | None, typer.Option(help="Idempotency key; default a new one.")] = None,
    addr: AddrOption = "127.0.0.1:50051",
    etcd: AdminEtcdOption = "",
    cluster: AdminClusterOption = "flashstock",
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Define a SKU (defining it again restarts its sale), with the sale's goals and unit price if given."""
    if mode not in ("fast", "durable"):
        raise typer.BadParameter("mode must be fast or durable", param_hint="--mode")
    currency = currency.strip().upper()  # "eur" means EUR; the node checks the code itself
    if price is not None and not currency:
        raise typer.BadParameter("a price needs its --currency", param_hint="--price")
    try:
        price_minor = minor_units(price, currency) if price is not None else 0
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--price") from None
    try:
        sellout_ms = parse_duration_ms(goal_sellout)
    except typer.BadParameter as exc:
        raise typer.BadParameter(exc.message, param_hint="--goal-sellout") from None
    with _admin(addr, etcd, cluster, tls_ca, tls_cert, tls_key, token, token_file) as admin:
        try:
            definition = SkuDefinition(
                sku_id,
                stock,
                per_user_limit=limit,
                max_per_request=max_per_request,
                sale_start_ms=parse_time_ms(start),
                sale_end_ms=parse_time_ms(end),
                mode=Mode.DURABLE if mode == "durable" else Mode.FAST,
                goal_units=goal_units,
                goal_sellout_ms=sellout_ms,
                goal_buyers=goal_buyers,
                unit_price_minor=price_minor,
                currency=currency,
                user_rate_per_s=user_rate,
                require_token=require_token,
            )
            result = admin.put_sku(definition, request_id=request_id)
        except FlashstockError as exc:
            _fail(exc)
    console.print(_sku_table([result.sku]))


@sku_app.command("get")
@etcd_access_options
def sku_get(
    sku_id: Annotated[str, typer.Argument(help="The SKU id.")],
    addr: AddrOption = "127.0.0.1:50051",
    etcd: AdminEtcdOption = "",
    cluster: AdminClusterOption = "flashstock",
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Show one SKU."""
    with _admin(addr, etcd, cluster, tls_ca, tls_cert, tls_key, token, token_file) as admin:
        try:
            console.print(_sku_table([admin.get_sku(sku_id)]))
        except FlashstockError as exc:
            _fail(exc)


@sku_app.command("ls")
@etcd_access_options
def sku_ls(
    prefix: Annotated[str, typer.Option(help="Only SKUs whose id starts with this.")] = "",
    addr: AddrOption = "127.0.0.1:50051",
    etcd: AdminEtcdOption = "",
    cluster: AdminClusterOption = "flashstock",
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """List SKUs."""
    with _admin(addr, etcd, cluster, tls_ca, tls_cert, tls_key, token, token_file) as admin:
        try:
            skus = admin.all_skus(prefix)
        except FlashstockError as exc:
            _fail(exc)
    console.print(_sku_table(skus) if skus else "no SKUs")


@sku_app.command("adjust", context_settings={"ignore_unknown_options": True})  # lets "-200" be the delta
@etcd_access_options
def sku_adjust(
    sku_id: Annotated[str, typer.Argument(help="The SKU id.")],
    delta: Annotated[int, typer.Argument(help="Units to add (+N) or take away (-N).")],
    request_id: Annotated[str | None, typer.Option(help="Idempotency key; default a new one.")] = None,
    addr: AddrOption = "127.0.0.1:50051",
    etcd: AdminEtcdOption = "",
    cluster: AdminClusterOption = "flashstock",
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Add or take away stock, never below the units handed out."""
    with _admin(addr, etcd, cluster, tls_ca, tls_cert, tls_key, token, token_file) as admin:
        try:
            console.print(_sku_table([admin.adjust_stock(sku_id, delta, request_id=request_id).sku]))
        except FlashstockError as exc:
            _fail(exc)


@sku_app.command("pause")
@etcd_access_options
def sku_pause(
    sku_id: Annotated[str, typer.Argument(help="The SKU id.")],
    addr: AddrOption = "127.0.0.1:50051",
    etcd: AdminEtcdOption = "",
    cluster: AdminClusterOption = "flashstock",
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Stop a SKU's sale: every attempt gets NOT_ON_SALE."""
    with _admin(addr, etcd, cluster, tls_ca, tls_cert, tls_key, token, token_file) as admin:
        try:
            console.print(_sku_table([admin.pause_sku(sku_id).sku]))
        except FlashstockError as exc:
            _fail(exc)


@sku_app.command("resume")
@etcd_access_options
def sku_resume(
    sku_id: Annotated[str, typer.Argument(help="The SKU id.")],
    addr: AddrOption = "127.0.0.1:50051",
    etcd: AdminEtcdOption = "",
    cluster: AdminClusterOption = "flashstock",
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Resume a paused SKU's sale."""
    with _admin(addr, etcd, cluster, tls_ca, tls_cert, tls_key, token, token_file) as admin:
        try:
            console.print(_sku_table([admin.resume_sku(sku_id).sku]))
        except FlashstockError as exc:
            _fail(exc)
