"""``flashstock serve``: run a node; its flags are the node's settings."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.text import Text

from flashstock.server._config import (
    NodeConfig,
    etcd_endpoints,
    load_config,
    node_name,
    read_config,
    setting_help,
    start_problems,
    tls_files,
    unknown_env_vars,
)
from flashstock.server._cpus import read_cpu_budget
from flashstock.server.cli.common import console, err_console
from flashstock.server.store.redis import masked_url

SERVE_HELP = "Run a flashstock node. Settings: flags > FLASHSTOCK_* env > config file > defaults."
"""``serve``'s help line."""


def _serve(**flags: Any) -> None:
    config_file = flags.pop("config", None)
    if flags.pop("check_config", False):
        raise typer.Exit(_check(flags, config_file))
    try:
        config = load_config(flags, config_file=config_file)
    except ValueError as exc:
        err_console.print(f"[red]flashstock serve: bad setting:[/] {exc}")
        raise typer.Exit(2) from None
    warnings = [
        f"{name} is set but is no setting (misspelt?): ignored; `flashstock serve --check-config` refuses it"
        for name in unknown_env_vars(os.environ)
    ]
    from flashstock.server._node import serve

    raise typer.Exit(serve(config, warnings))


def _check(flags: dict[str, Any], config_file: str | None) -> int:
    """``serve --check-config``: every problem a start would find before connecting to anything; 0 or 2."""
    config, problems = read_config(flags, config_file=config_file)
    problems.extend(f"{name}: no setting has this name (misspelt?)" for name in unknown_env_vars(os.environ))
    problems.extend(start_problems(config))
    problems = list(dict.fromkeys(problems))
    if problems:
        err_console.print(
            Text.assemble(("flashstock serve --check-config: ", "red"), f"{len(problems)} bad setting(s)"),
            soft_wrap=True,
        )
        for problem in problems:
            err_console.print(Text(f"  {problem}"), soft_wrap=True)
        return 2
    console.print(Text(f"config ok: {config_summary(config)}"), soft_wrap=True)
    return 0


def config_summary(config: NodeConfig) -> str:
    """One line: what a node of ``config`` would be (the passwords masked)."""
    budget = read_cpu_budget()
    workers = f"workers {config.workers}" if config.workers else f"workers 0 = {budget.workers} (from {budget.source})"
    endpoints = etcd_endpoints(config)
    parts = [
        f"node {node_name(config, config.port)} on {config.host}:{config.port}",
        f"metrics on {config.metrics_port}" if config.metrics_port else "metrics off",
        *([f"health on {config.health_port} (plaintext)"] if config.health_port else []),
        workers,
        f"shards {config.shards}",
        f"redis {masked_url(config.redis_url)}",
        f"ledger {masked_url(config.ledger) if config.ledger else f'embedded SQLite in {config.data_dir}'}",
        f"etcd {','.join(endpoints)} cluster {config.cluster}" if endpoints else "standalone (no etcd)",
        "TLS" if tls_files(config).on else "plaintext",
        f"auth {config.auth}",
    ]
    return ", ".join(parts)


def serve_command() -> Callable[..., None]:
    """The ``serve`` command, its flags built from NodeConfig so that --help lists every setting."""
    params = [
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                str | None,
                typer.Option(
                    help="TOML config file (top-level keys, or a table named flashstock). Env: FLASHSTOCK_CONFIG."
                ),
            ],
        ),
        inspect.Parameter(
            "check_config",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[
                bool,
                typer.Option(
                    "--check-config",
                    help="Check every setting as a start would (values, ranges, URLs, the files they name, the data "
                    "folder) without connecting to anything, binding a port or creating a folder; print 'config ok' "
                    "and exit 0, or name every bad setting (an unknown FLASHSTOCK_* variable too) and exit 2.",
                ),
            ],
        ),
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
                    kind | None,
                    typer.Option(help=f"{help_text} (env {env}; default {default!r})", show_default=False),
                ],
            )
        )
    _serve.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    _serve.__annotations__ = {p.name: p.annotation for p in params}
    return _serve
