"""``flashstock serve``: run a node; its flags are the node's settings."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from flashstock.server._config import load_config, setting_help
from flashstock.server.cli.common import err_console

SERVE_HELP = "Run a flashstock node. Settings: flags > FLASHSTOCK_* env > config file > defaults."
"""``serve``'s help line."""


def _serve(**flags: Any) -> None:
    config_file = flags.pop("config", None)
    try:
        config = load_config(flags, config_file=config_file)
    except ValueError as exc:
        err_console.print(f"[red]flashstock serve: bad setting:[/] {exc}")
        raise typer.Exit(2) from None
    from flashstock.server._node import serve

    raise typer.Exit(serve(config))


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
                    kind | None,
                    typer.Option(help=f"{help_text} (env {env}; default {default!r})", show_default=False),
                ],
            )
        )
    _serve.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    _serve.__annotations__ = {p.name: p.annotation for p in params}
    return _serve
