"""``flashstock audit ls``: the audit trail of admin changes, from the ledger, newest first.

Every PutSku, AdjustStock, PauseSku and ResumeSku that took effect, and every
shard pin, unpin, drain, undrain and rebalance, with who made it, from
where, when, its arguments and (for a SKU) the figures before and after.
Reads the ledger only: the node's (``--ledger`` / ``--data-dir`` / ``--config``,
as ``serve`` reads them) or a local cluster's (``--dir``).
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from flashstock.server._config import ledger_url
from flashstock.server.cli.common import (
    ConfigOption,
    DataDirOption,
    LedgerOption,
    console,
    exit_error,
    ledger_failure,
    local_time,
    read_settings,
)

audit_app = typer.Typer(help="The audit trail of admin changes, from the ledger.", no_args_is_help=True)


class AuditFormat(StrEnum):
    """Output formats of ``audit ls``."""

    table = "table"
    json = "json"


_SPAN = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SPAN_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def since_ms(value: str, now_ms: int) -> int:
    """``--since``: a span back from ``now_ms`` (``90s``, ``30m``, ``1h``, ``2d``, ``1h30m``), or an
    ISO-8601 time (``2026-11-25T20:00``, local time unless it gives an offset); as unix ms."""
    text = value.strip()
    parts = _SPAN.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        return now_ms - round(sum(float(n) * _SPAN_MS[u] for n, u in parts))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither a span back from now (90s, 30m, 1h, 2d, 1h30m) nor an ISO-8601 time "
            "(2026-11-25T20:00, 2026-11-25T20:00:00+00:00)",
            param_hint="--since",
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return int(moment.timestamp() * 1000)


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) and (not value or " " in value) else str(value)


def args_text(args: dict[str, Any]) -> str:
    """A call's arguments on one line: ``name=value``, leaving out the SKU (a column of its own) and
    the zero / empty values a request leaves unset."""
    return " ".join(
        f"{name}={_shown(value)}"
        for name, value in args.items()
        if name != "sku_id" and value not in (0, "", False, None, "MODE_UNSPECIFIED")
    )


def change_text(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """What a change did to a SKU's figures: ``total 5→8, available 3→6``; a new SKU's figures as
    ``new: total 5, ...``; ``-`` for a shard change or one that changed no figure."""
    if after is None:
        return "-"
    if before is None:
        shown = ("total", "available", "paused", "mode")
        return "new: " + ", ".join(f"{n} {_shown(after[n])}" for n in shown if n in after)
    names = [n for n in after if before.get(n) != after[n]] + [n for n in before if n not in after]
    if not names:
        return "-"
    return ", ".join(f"{n} {_shown(before.get(n, '-'))}→{_shown(after.get(n, '-'))}" for n in names)


def _cluster_ledger(folder: Path) -> str:
    from flashstock.server.local.cluster import LocalCluster

    try:
        return LocalCluster.load(folder).ledger_url
    except FileNotFoundError:
        exit_error("audit ls", f"no cluster recorded in {folder} (no cluster.json): check --dir", 2)
    except (ValueError, TypeError, KeyError) as exc:
        exit_error("audit ls", f"{folder}/cluster.json is not a cluster record: {exc!r}", 2)


@audit_app.command("ls")
def audit_ls(
    sku: Annotated[str | None, typer.Option(help="Only the changes of this SKU.", show_default=False)] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only changes since: a span back from now (30m, 1h, 2d, 1h30m) or an ISO-8601 time.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Show at most this many (the newest).")] = 100,
    format: Annotated[
        AuditFormat,
        typer.Option("--format", help="table (for people) or json (for programs: one object per line)."),
    ] = AuditFormat.table,
    cluster_dir: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            envvar="FLASHSTOCK_CLUSTER_DIR",
            help="A local cluster's folder (`flashstock cluster up`): read its ledger.",
            show_default=False,
        ),
    ] = None,
    ledger: LedgerOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """The admin changes, newest first: when, who, from where, what, and what it did to the SKU.

    json prints one object per line (JSON Lines), newest first, each with
    ``at_ms``, ``identity``, ``peer``, ``method``, ``sku_id``, ``shard``,
    ``args``, ``before``, ``after`` (the SKU's figures; null for a new SKU's
    before, and for a shard change) and ``source``.
    """
    import sqlalchemy as sa

    from flashstock.server.ledger import LedgerError
    from flashstock.server.ledger.reports import open_for_reading

    since_at = None if since is None else since_ms(since, int(time.time() * 1000))
    settings = read_settings("audit ls", config, ledger=ledger, data_dir=data_dir)
    # A ledger or data folder named here wins over a cluster folder that may come from the environment.
    use_cluster = cluster_dir is not None and ledger is None and data_dir is None
    url = _cluster_ledger(cluster_dir) if use_cluster and cluster_dir is not None else ledger_url(settings)
    try:
        opened = open_for_reading(url)
        try:
            records = opened.audit(sku_id=sku, since_ms=since_at, limit=limit)
        finally:
            opened.close()
    except (LedgerError, sa.exc.SQLAlchemyError) as exc:
        ledger_failure("audit ls", settings, exc)
    if format is AuditFormat.json:
        for r in records:
            sys.stdout.write(json.dumps(r.as_json(), sort_keys=True) + "\n")
        return
    if not records:
        console.print(
            "no admin changes recorded" + (f" for SKU {sku}" if sku else "") + (" in that time" if since else "")
        )
        return
    table = Table(
        "when",
        "who",
        "from",
        "what",
        "sku / shard",
        "arguments",
        "change",
        title="audit: admin changes, newest first",
        box=box.HORIZONTALS,
        pad_edge=False,
        collapse_padding=True,
    )
    for r in records:
        target = r.sku_id if r.sku_id is not None else ("-" if r.shard is None else f"shard {r.shard}")
        table.add_row(
            local_time(r.at_ms),
            r.identity,
            r.peer,
            r.method,
            target,
            args_text(r.args),
            change_text(r.before, r.after),
        )
    console.print(table)
