"""The review's page: ``index.html`` (inline CSS, no scripts, nothing fetched) and its PNG plots beside it.

The plots are drawn with matplotlib's object API (``Figure``, rendered by
Agg): no pyplot state, no display. A part the ledger did not record is said
in words instead of drawn.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from flashstock.server.ledger.review import Review

PLOT_SIZE_IN = (8.0, 3.2)
PLOT_DPI = 100
"""Every plot is 800 × 320 pixels."""

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: .2em .8em; text-align: left; border-bottom: 1px solid #eee; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.met { color: #17803d; font-weight: 600; } .missed { color: #b42318; font-weight: 600; } .none { color: #777; }
img { max-width: 100%; } .note { color: #777; font-style: italic; }
"""


def _utc(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _n(value: int | None) -> str:
    return "not recorded" if value is None else f"{value:,}"


def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    sign, ms = ("-" if ms < 0 else ""), abs(ms)
    return f"{sign}{ms / 1000:,.3f} s"


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # units, attempts, buyers: whole numbers
    return fig, ax


def _plots(result: Review, folder: Path) -> dict[str, Path]:
    """Draw the plots the figures allow; returns them by name."""
    out: dict[str, Path] = {}

    def save(name: str, fig: Figure) -> None:
        path = folder / f"{name}.png"
        fig.savefig(path, format="png", dpi=PLOT_DPI)
        out[name] = path

    start_s = result.start_ms / 1000
    xs = [s.second - start_s for s in result.seconds]
    x_label = "seconds since the sale's start"
    if result.seconds:
        fig, ax = _figure("Units sold per second, and cumulative", x_label, "units / s")
        ax.bar(xs, [s.sold for s in result.seconds], width=0.9, align="edge", color="#4c78a8", label="sold / s")
        twin = ax.twinx()
        # Cumulative at the end of each second, from 0 at the start of the first.
        twin.plot(
            [xs[0], *(x + 1 for x in xs)],
            [0, *(s.sold_cumulative for s in result.seconds)],
            color="#f58518",
            label="cumulative",
        )
        twin.set_ylim(bottom=0)
        twin.set_ylabel("units sold")
        fig.legend(loc="outside upper right", fontsize=8)
        save("sold", fig)
        if result.definition is not None and result.stock_steps:
            fig, ax = _figure("Stock over time", x_label, "units left")
            ax.step(
                [0.0, *((at - result.start_ms) / 1000 for at, _ in result.stock_steps), xs[-1] + 1],
                [result.definition.total, *(n for _, n in result.stock_steps), result.stock_steps[-1][1]],
                where="post",
                color="#54a24b",
            )
            ax.set_ylim(bottom=0)
            if result.sellout_ms is not None:
                ax.axvline((result.sellout_ms - result.start_ms) / 1000, color="#b42318", ls="--", label="sold out")
                ax.legend(fontsize=8)
            save("stock", fig)
    if result.recorded_figures:
        fig, ax = _figure("Attempts per second (PV)", x_label, "attempts / s")
        ax.plot(xs, [s.figures["attempts"] if s.figures else 0 for s in result.seconds], color="#4c78a8")
        save("attempts", fig)
        fig, ax = _figure("Refusals by reason, per second", x_label, "attempts / s")
        for reason in _refusal_reasons(result):
            ax.plot(xs, [s.figures[f"o_{reason}"] if s.figures else 0 for s in result.seconds], label=reason)
        ax.legend(fontsize=8)
        save("refusals", fig)
    stages = [
        ("attempts", result.attempts),
        ("distinct users who tried", result.users),
        ("units taken", result.taken),
        ("holds confirmed", result.holds["confirmed"]),
        ("holds expired", result.holds["expired"]),
        ("holds released", result.holds["released"]),
    ]
    known = [(name, n) for name, n in stages if n is not None]
    fig, ax = _figure("The funnel", "", "")
    ax.barh([name for name, _ in known][::-1], [n for _, n in known][::-1], color="#72b7b2")
    for i, (_, n) in enumerate(known[::-1]):
        ax.annotate(f"{n:,}", (n, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    save("funnel", fig)
    if result.buyer_units:
        histogram = result.units_per_buyer
        fig, ax = _figure("Units per buyer", "units handed out to the buyer", "buyers")
        limit = result.per_user_limit or 0
        colors = ["#b42318" if limit and units >= limit else "#b279a2" for units in histogram]
        ax.bar(list(histogram), list(histogram.values()), color=colors)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if limit:
            ax.axvline(limit + 0.5, color="#b42318", ls="--", label=f"per-user limit {limit} (red: at it)")
            ax.legend(fontsize=8)
        save("buyers", fig)
    return out


def _refusal_reasons(result: Review) -> list[str]:
    from flashstock.server.ledger.review import REFUSALS

    refused = result.refusals() or {}
    return [r for r in REFUSALS if refused.get(r)] or ["sold_out"]


def _rows(rows: list[tuple[str, str]]) -> str:
    return "\n".join(f"<tr><th>{html.escape(k)}</th><td class=n>{html.escape(v)}</td></tr>" for k, v in rows)


def _image(plots: dict[str, Path], name: str, alt: str, missing: str) -> str:
    if name in plots:
        return f'<p><img src="{plots[name].name}" alt="{html.escape(alt)}"></p>'
    return f'<p class="note">{html.escape(missing)}</p>'


_GOAL_NAMES = {"units": "units sold", "sellout_ms": "time to sell out", "buyers": "distinct buyers"}


def _goal_rows(result: Review) -> str:
    lines = []
    for g in result.goals:
        if g.target is None:
            verdict, css = ("not recorded" if result.definition is None else "no goal"), "none"
        elif g.met:
            verdict, css = "met", "met"
        else:
            verdict, css = "missed", "missed"
        if g.name == "sellout_ms":
            target, actual = _duration(g.target), ("not sold out" if g.actual is None else _duration(g.actual))
            by = "" if g.by is None else f"{_duration(abs(g.by))} {'ahead' if g.by >= 0 else 'late'}"
        else:
            target, actual = _n(g.target) if g.target is not None else "-", _n(g.actual)
            by = "" if g.by is None else f"{g.by:+,}"
        lines.append(
            f"<tr><th>{_GOAL_NAMES[g.name]}</th><td class=n>{html.escape(target)}</td>"
            f"<td class=n>{html.escape(actual)}</td><td class={css}>{verdict}</td>"
            f"<td class=n>{html.escape(by)}</td></tr>"
        )
    return "\n".join(lines)


def write_page(result: Review, folder: Path) -> Path:
    """Write index.html and its plots into ``folder``; returns index.html's path."""
    plots = _plots(result, folder)
    d = result.definition
    no_def = "not recorded (the ledger keeps the definition of the current sale only)"
    if result.sellout_ms is not None:
        sellout = f"{_duration(result.time_to_sellout_ms)} after the start ({_utc(result.sellout_ms)})"
    else:
        sellout = "not sold out" if d is not None else no_def
    refused = result.refusals()
    peak_u, peak_a = result.peak_units_per_s, result.peak_attempts_per_s
    summary = _rows(
        [
            ("units sold", f"{result.sold:,}"),
            (
                "sales amount",
                result.amount or ("no unit price given" if d is not None else no_def),
            ),
            ("units put on sale", f"{d.total:,}" if d is not None else no_def),
            ("time to sell out", sellout),
            ("distinct buyers (exact)", f"{result.buyers:,}"),
            ("peak units taken / s", "-" if peak_u is None else f"{peak_u[0]:,} (at {_utc(peak_u[1] * 1000)})"),
            (
                "peak attempts / s",
                "not recorded" if peak_a is None else f"{peak_a[0]:,} (at {_utc(peak_a[1] * 1000)})",
            ),
            ("sale start", f"{_utc(result.start_ms)} ({result.start_from})"),
            ("sale window end", f"{_utc(result.end_ms)} ({result.end_from})"),
        ]
    )
    conversion = []
    if result.attempts:
        conversion.append(("OK ÷ attempts", f"{(result.ok or 0) / result.attempts:.2%}"))
    if result.users:
        conversion.append(("buyers ÷ distinct users who tried", f"{result.buyers / result.users:.2%}"))
    funnel = _rows(
        [
            ("attempts (PV)", _n(result.attempts)),
            ("distinct users who tried (UV, approximate)", _n(result.users)),
            ("units taken", f"{result.taken:,}"),
            ("holds taken", f"{result.holds['taken']:,}"),
            ("holds confirmed", f"{result.holds['confirmed']:,} ({result.hold_units_confirmed:,} units)"),
            ("holds expired", f"{result.holds['expired']:,}"),
            ("holds released", f"{result.holds['released']:,}"),
            ("holds still open", f"{result.holds['open']:,}"),
            *conversion,
        ]
    )
    refusals = (
        '<p class="note">Not recorded: the ledger holds no per-second figures of this sale.</p>'
        if refused is None
        else "<table>" + _rows([(r, f"{n:,}") for r, n in refused.items()]) + "</table>"
    )
    limit = result.per_user_limit
    buyers_line = (
        f"{result.buyers:,} buyers; per-user limit {limit:,}: {result.at_limit:,} at the limit"
        if limit
        else f"{result.buyers:,} buyers; " + ("no per-user limit" if d is not None else "limit " + no_def)
    )
    if result.incidents:
        incidents = (
            "<table><tr><th>when</th><th>kind</th><th>node</th><th>shard</th><th>detail</th></tr>"
            + "".join(
                f"<tr><td>{_utc(i.at_ms)}</td><td>{html.escape(i.kind)}</td><td>{html.escape(i.node)}</td>"
                f"<td class=n>{'' if i.shard < 0 else i.shard}{' (this SKU)' if i.shard == result.shard else ''}</td>"
                f"<td>{html.escape(i.detail)}</td></tr>"
                for i in result.incidents
            )
            + "</table>"
        )
    else:
        incidents = '<p class="note">No incidents recorded in the sale window.</p>'
    not_recorded = "Not recorded: the ledger holds no per-second figures of this sale."
    title = f"Review of {result.sku_id}, sale {result.sale}"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Shard {result.shard}, {html.escape(result.mode)} mode{"" if result.current_sale else " (an earlier sale)"}.
From the ledger alone; times UTC. Written {_utc(int(datetime.now(tz=UTC).timestamp() * 1000))}.</p>
<h2>Summary</h2><table>{summary}</table>
<h2>Goals</h2>
<table><tr><th>goal</th><th>target</th><th>actual</th><th>verdict</th><th>by</th></tr>{_goal_rows(result)}</table>
<h2>Units sold</h2>{_image(plots, "sold", "units sold per second and cumulative", "No units were taken.")}
<h2>Stock over time</h2>{_image(plots, "stock", "stock over time", "No units were taken." if d else no_def)}
<h2>Attempts</h2>{_image(plots, "attempts", "attempts per second", not_recorded)}
<h2>The funnel</h2><table>{funnel}</table>{_image(plots, "funnel", "the funnel", "")}
<h2>Refusals by reason</h2>{refusals}{_image(plots, "refusals", "refusals by reason per second", "")}
<h2>Units per buyer</h2><p>{html.escape(buyers_line)}</p>{_image(plots, "buyers", "units per buyer", "No buyers.")}
<h2>Incidents in the sale window</h2>{incidents}
<h2>Data</h2><p><a href="review.json">review.json</a> · <a href="seconds.csv">seconds.csv</a> ·
<a href="buyers.csv">buyers.csv</a></p>
</body></html>
"""
    path = folder / "index.html"
    path.write_text(page)
    return path
