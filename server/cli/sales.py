"""``flashstock sales``: sales figures, from the ledger.

Reads its settings like ``serve`` (flags > ``FLASHSTOCK_*`` env > config
file) and reads the ledger only: ``report`` prints the current sales,
``review`` writes the review of one sale as a folder (HTML, PNG, JSON, CSV).
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Column, Table

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

sales_app = typer.Typer(help="Sales figures, from the ledger.", no_args_is_help=True)


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
    "confirmed",
    "held",
    "available",
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


def _iso_utc(ms: int) -> str | None:
    return None if ms == 0 else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def report_rows(sales: list[Any]) -> list[dict[str, Any]]:
    """``sales report``'s rows (:class:`~flashstock.server.ledger.reports.SkuSales`) as plain dicts."""
    return [
        {
            "sku": s.sku_id,
            "shard": s.shard,
            "sale": s.sale,
            "mode": s.mode,
            "total": s.total,
            "confirmed": s.confirmed,
            "held": s.held,
            "available": s.available,
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
    sku: Annotated[str | None, typer.Option(help="Only this SKU; default every SKU in the ledger.")] = None,
    format: Annotated[
        ReportFormat, typer.Option("--format", help="table (for people), csv or json (for programs).")
    ] = ReportFormat.table,
    ledger: LedgerOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Per SKU, its current sale from the ledger: units confirmed, held and available, buyers,
    holds confirmed / expired / released, first and last sale (csv and json: ISO-8601, UTC).

    Reads the ledger only. Confirmed = units sold for good; buyers = distinct
    users with confirmed or held units; holds are counted by what became of them.
    """
    import sqlalchemy as sa

    from flashstock.server.ledger import LedgerError
    from flashstock.server.ledger.reports import open_for_reading
    from flashstock.server.ledger.reports import sales_report as query

    settings = read_settings("sales report", config, ledger=ledger, data_dir=data_dir)
    try:
        opened = open_for_reading(ledger_url(settings))
        try:
            sales = query(opened.engine, sku_id=sku)
        finally:
            opened.close()
    except (LedgerError, sa.exc.SQLAlchemyError) as exc:
        ledger_failure("sales report", settings, exc)
    if sku is not None and not sales:
        exit_error("sales report", f"sku: {sku!r} is not in the ledger", code=1)
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
        *(
            Column(name, justify="right")
            for name in (
                "total",
                "confirmed",
                "held",
                "available",
                "buyers",
                "holds",
                "holds confirmed",
                "holds expired",
                "holds released",
            )
        ),
        "first sale",
        "last sale",
        title="sales: the current sale of each SKU, from the ledger",
        caption=(
            "confirmed = units sold for good; buyers = users with units confirmed or held; "
            "holds taken, and what became of them"
        ),
        box=box.HORIZONTALS,
        pad_edge=False,
        collapse_padding=True,
    )
    for sale in sales:
        table.add_row(
            sale.sku_id,
            *(
                f"{n:,}"
                for n in (
                    sale.total,
                    sale.confirmed,
                    sale.held,
                    sale.available,
                    sale.buyers,
                    sale.holds,
                    sale.holds_confirmed,
                    sale.holds_expired,
                    sale.holds_released,
                )
            ),
            local_time(sale.first_sale_ms),
            local_time(sale.last_sale_ms),
        )
    console.print(table)


def _folder_name(sku: str) -> str:
    """A SKU id as part of a folder name: path separators and the like replaced."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in sku)


@sales_app.command("review")
def sales_review(
    sku: Annotated[str, typer.Option(help="The SKU whose sale to review.", show_default=False)],
    sale: Annotated[
        int | None, typer.Option(help="The sale number (earlier sales: < the SKU's current one); default its current.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="The folder to write; default ./review-<sku>-<sale>/.", show_default=False),
    ] = None,
    ledger: LedgerOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Write the review of a SKU's sale, from the ledger alone: index.html with PNG plots beside it,
    review.json, seconds.csv and buyers.csv; prints index.html's path.

    Units sold and the sales amount, sold per second and cumulative, stock over
    time, time to sell out, peak rates, the funnel (attempts, distinct users,
    units taken, holds confirmed / expired / released), refusals by reason
    over time, units per buyer against the limit, the goals met or missed, and
    the incidents of the sale window. Parts the ledger does not hold (per-second
    figures not written yet) say "not recorded".
    """
    import contextlib

    import sqlalchemy as sa

    from flashstock.server.ledger import LedgerError
    from flashstock.server.ledger.reports import open_for_reading
    from flashstock.server.ledger.review import read_sale, review, write_review

    settings = read_settings("sales review", config, ledger=ledger, data_dir=data_dir)
    progress = console.status if console.is_terminal else (lambda _text: contextlib.nullcontext())
    try:
        with progress("reading the sale from the ledger"):
            opened = open_for_reading(ledger_url(settings))
            try:
                records = read_sale(opened.engine, sku, sale)
            finally:
                opened.close()
    except (LedgerError, sa.exc.SQLAlchemyError) as exc:
        ledger_failure("sales review", settings, exc)
    if records is None:
        exit_error("sales review", f"sku: {sku!r} is not in the ledger", code=1)
    if sale is not None and not 1 <= sale <= records.sku.sale:
        exit_error(
            "sales review", f"sale: {sku!r} has had sales 1 to {records.sku.sale}; there is no sale {sale}", code=1
        )
    folder = out if out is not None else Path(f"review-{_folder_name(sku)}-{records.sale}")
    try:
        with progress("drawing the review"):
            page = write_review(review(records), folder)
    except OSError as exc:
        exit_error("sales review", f"--out: cannot write {folder}: {exc.strerror or exc}", code=2)
    console.print(str(page.resolve()), soft_wrap=True, highlight=False)
