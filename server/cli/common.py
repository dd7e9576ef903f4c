"""What several command groups share: the consoles, one way to fail, sale times, and the common options.

Exit codes, the same in every group: 0 done; 1 refused or not done (the
message says why); 2 cannot run (a bad setting or option, a store or etcd
that cannot be reached).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import os
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from flashstock.lockmgr import NO_ACCESS, ClusterKeys, CoordinationError, EtcdAccess, auth_refusal, etcd_client
from flashstock.server._config import NodeConfig, load_config, read_password_file

console = Console()
"""Where the commands print their results."""
err_console = Console(stderr=True)
"""Where the commands say why they failed."""


def exit_error(command: str, message: str, code: int = 2) -> NoReturn:
    """Say on one line why ``flashstock <command>`` failed, and end it with ``code``."""
    err_console.print(Text.assemble((f"flashstock {command}: ", "red"), " ".join(message.split())), soft_wrap=True)
    raise typer.Exit(code)


# -- times -------------------------------------------------------------------------------


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


_DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def parse_duration_ms(value: str | None) -> int:
    """A span of time as the sale times' offsets write it: ``N[ms|s|m|h]`` (``30s``, ``1.5m``, ``2h``),
    parts joinable (``1m30s``), or plain ms; ``0`` or none is 0."""
    if value is None or value.strip() in ("", "0"):
        return 0
    text = value.strip()
    if text.isdigit():
        return int(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise typer.BadParameter(f"{value!r} is not a duration: N[ms|s|m|h] (30s, 5m, 1m30s) or ms")
    return round(sum(float(n) * _DURATION_UNITS_MS[u] for n, u in parts))


def format_duration_ms(ms: int) -> str:
    """Ms the way :func:`parse_duration_ms` reads them back: ``90s``, ``5m``, ``2h``, ``1500ms``."""
    for unit in ("h", "m", "s"):
        if ms and ms % _DURATION_UNITS_MS[unit] == 0:
            return f"{ms // _DURATION_UNITS_MS[unit]}{unit}"
    return f"{ms}ms"


def local_time(ms: int) -> str:
    """Unix ms as local time, to the second (``-`` for 0)."""
    return "-" if ms <= 0 else datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def local_iso(ms: int) -> str:
    """Unix ms as local ISO-8601 with its UTC offset, to the second (``-`` for 0)."""
    return "-" if ms == 0 else datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="seconds")


# -- a node's settings: ledger, reconcile, sales -----------------------------------------------

ConfigOption = Annotated[
    str | None,
    typer.Option("--config", help="TOML config file, as for serve. Env: FLASHSTOCK_CONFIG.", show_default=False),
]
LedgerOption = Annotated[
    str | None,
    typer.Option(
        "--ledger",
        help="Ledger URL, as for serve (env FLASHSTOCK_LEDGER); default the SQLite file in --data-dir.",
        show_default=False,
    ),
]
DataDirOption = Annotated[
    str | None,
    typer.Option(
        "--data-dir", help="The node's data folder, as for serve (env FLASHSTOCK_DATA_DIR).", show_default=False
    ),
]


def read_settings(command: str, config_file: str | None, **flags: Any) -> NodeConfig:
    """The settings as ``serve`` reads them; a bad one ends the command (exit 2)."""
    try:
        return load_config(flags, config_file=config_file)
    except ValueError as exc:
        exit_error(command, f"bad setting: {exc}")


def ledger_failure(command: str, config: NodeConfig, exc: Exception) -> NoReturn:
    """One line naming the setting: the ledger URL, or the data folder it came from."""
    import sqlalchemy as sa

    orig = getattr(exc, "orig", None)  # the driver's own error, which names the cause
    if isinstance(exc, sa.exc.SQLAlchemyError):
        message = f"ledger: {orig if orig is not None else exc}"
    else:
        message = str(exc)
    if not config.ledger:
        message += f" [ledger unset: the embedded SQLite file of data_dir {config.data_dir}]"
    exit_error(command, message)


# -- TLS to the nodes ---------------------------------------------------------------------------

TlsCaOption = Annotated[
    str | None,
    typer.Option(
        "--tls-ca",
        envvar="FLASHSTOCK_TLS_CA",
        help="PEM CA certificate(s) of the nodes' certificates: call them over TLS.",
        show_default=False,
    ),
]
TlsCertOption = Annotated[
    str | None,
    typer.Option(
        "--tls-cert",
        envvar="FLASHSTOCK_TLS_CERT",
        help="PEM client certificate, for nodes with mutual TLS (with --tls-key).",
        show_default=False,
    ),
]
TlsKeyOption = Annotated[
    str | None,
    typer.Option("--tls-key", envvar="FLASHSTOCK_TLS_KEY", help="PEM private key of --tls-cert.", show_default=False),
]


# -- credentials for nodes with auth on --------------------------------------------------------

TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="FLASHSTOCK_TOKEN",
        help="Bearer token (JWT) for nodes with auth on (flashstock token make).",
        show_default=False,
    ),
]
TokenFileOption = Annotated[
    str | None,
    typer.Option(
        "--token-file",
        envvar="FLASHSTOCK_TOKEN_FILE",
        help="A file holding the bearer token, instead of --token.",
        show_default=False,
    ),
]

RedisTlsCaOption = Annotated[
    str | None,
    typer.Option(
        "--redis-tls-ca",
        envvar="FLASHSTOCK_REDIS_TLS_CA",
        help="PEM CA of a rediss:// Redis's certificate.",
        show_default=False,
    ),
]
RedisTlsCertOption = Annotated[
    str | None,
    typer.Option(
        "--redis-tls-cert",
        envvar="FLASHSTOCK_REDIS_TLS_CERT",
        help="PEM client certificate for a rediss:// Redis (with --redis-tls-key).",
        show_default=False,
    ),
]
RedisTlsKeyOption = Annotated[
    str | None,
    typer.Option(
        "--redis-tls-key", envvar="FLASHSTOCK_REDIS_TLS_KEY", help="PEM key of --redis-tls-cert.", show_default=False
    ),
]


# -- a cluster in etcd: nodes, shards ----------------------------------------------------------

ETCD_TIMEOUT_S = 3.0
"""How long each etcd call may take before the command says etcd cannot be reached."""

DEFAULT_ETCD = "127.0.0.1:2379"
"""The etcd of ``--etcd`` unless told otherwise."""
DEFAULT_CLUSTER = "flashstock"
"""The cluster of ``--cluster`` unless told otherwise."""

EtcdOption = Annotated[
    str,
    typer.Option("--etcd", envvar="FLASHSTOCK_ETCD", help="etcd endpoints, host:port, comma-separated."),
]
ClusterOption = Annotated[
    str,
    typer.Option(
        "--cluster", envvar="FLASHSTOCK_CLUSTER", help="The cluster's name (etcd prefix /flashstock/<cluster>/)."
    ),
]


_ETCD_ACCESS_OPTIONS = {
    "etcd_tls_ca": ("--etcd-tls-ca", "PEM CA of etcd's server certificate: reach etcd over TLS."),
    "etcd_tls_cert": ("--etcd-tls-cert", "PEM client certificate for etcd (with --etcd-tls-key)."),
    "etcd_tls_key": ("--etcd-tls-key", "PEM private key of --etcd-tls-cert."),
    "etcd_user": ("--etcd-user", "etcd user (etcd auth enabled); its password: FLASHSTOCK_ETCD_PASSWORD."),
    "etcd_password_file": ("--etcd-password-file", "File whose first line is --etcd-user's password."),
}
_etcd_access_given: contextvars.ContextVar[dict[str, str | None] | None] = contextvars.ContextVar(
    "etcd_access", default=None
)


def etcd_access_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the ``--etcd-tls-*``, ``--etcd-user`` and ``--etcd-password-file`` options.

    Their values reach :func:`etcd_access` (and so :func:`run_etcd`) of the
    call; the password is read from ``FLASHSTOCK_ETCD_PASSWORD`` or the file,
    never from a flag, so it shows in no process list.
    """
    extra = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                str | None, typer.Option(flag, envvar=f"FLASHSTOCK_{name.upper()}", help=help, show_default=False)
            ],
        )
        for name, (flag, help) in _ETCD_ACCESS_OPTIONS.items()
    ]

    @functools.wraps(command)
    def with_access(*args: Any, **kwargs: Any) -> Any:
        token = _etcd_access_given.set({name: kwargs.pop(name, None) for name in _ETCD_ACCESS_OPTIONS})
        try:
            return command(*args, **kwargs)
        finally:
            _etcd_access_given.reset(token)

    signature = inspect.signature(command, eval_str=True)
    with_access.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *extra]
    )
    with_access.__annotations__ = {p.name: p.annotation for p in with_access.__signature__.parameters.values()}  # type: ignore[attr-defined]
    with_access.__annotations__["return"] = signature.return_annotation
    return with_access


def etcd_access(command: str) -> EtcdAccess:
    """The etcd TLS files and user of this command's options (exit 2 naming the option when unusable)."""
    given = _etcd_access_given.get() or {}
    if not any(given.values()):
        return NO_ACCESS
    password = os.environ.get("FLASHSTOCK_ETCD_PASSWORD", "")
    try:
        if given.get("etcd_password_file"):
            password = read_password_file(given["etcd_password_file"] or "", "--etcd-password-file")
    except ValueError as exc:
        exit_error(command, str(exc))
    access = EtcdAccess(
        given.get("etcd_tls_ca") or "",
        given.get("etcd_tls_cert") or "",
        given.get("etcd_tls_key") or "",
        given.get("etcd_user") or "",
        password,
    )
    problems = access.problems()
    if problems:
        exit_error(command, re.sub(r"\betcd_\w+", lambda m: "--" + m[0].replace("_", "-"), "; ".join(problems)))
    return access


def etcd_refusal(exc: BaseException, access: EtcdAccess, cluster: str) -> tuple[str, int] | None:
    """What to say, and the exit code, when etcd refused the caller (auth), else None."""
    refusal = auth_refusal(exc, access.user, ClusterKeys(cluster).prefix)
    if refusal is None:
        return None
    kind, reason = refusal
    if kind == "permission":
        reason = reason.replace("without an etcd user", "without an etcd user (--etcd-user)")
        return f"{reason} (see the README: etcd users and roles)", 1
    if kind == "no user":
        return f"{reason}: give --etcd-user and FLASHSTOCK_ETCD_PASSWORD (or --etcd-password-file)", 2
    return reason, 2


class Refused(Exception):
    """A command refused: the message says why and what to do instead."""


def run_etcd(command: str, etcd: str, cluster: str, work: Callable[[Any], Awaitable[int | None]]) -> None:
    """Run ``work(client)`` on a fresh etcd client, closed after; map failures to one line and an exit code."""
    from aetcd.exceptions import ClientError

    access = etcd_access(command)

    async def main() -> int | None:
        ClusterKeys(cluster)  # a malformed name: ValueError, before any connection
        client = etcd_client(etcd, timeout=ETCD_TIMEOUT_S, access=access)
        try:
            return await work(client)
        finally:
            await client.close()

    try:
        code = asyncio.run(main())
    except (Refused, CoordinationError) as exc:
        exit_error(command, str(exc), 1)
    except ValueError as exc:
        exit_error(command, str(exc), 2)
    except (ClientError, OSError) as exc:
        refusal = etcd_refusal(exc, access, cluster)
        if refusal:
            exit_error(command, *refusal)
        exit_error(command, f"etcd at {etcd} cannot be reached ({type(exc).__name__}: {exc})", 2)
    if code:
        raise typer.Exit(code)
