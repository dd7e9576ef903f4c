"""The monitoring files under deploy/ as tests read them, and the Prometheus tools that check them.

- :data:`ALERTS`, :data:`ALERTS_TEST`, :data:`PROMETHEUS_CONFIG`, :data:`DASHBOARD`: their paths.
- :func:`rule_exprs`, :func:`dashboard_exprs`: the PromQL they hold; :func:`metric_names`: the metrics one reads.
- :func:`prometheus_tool`: ``promtool`` or ``prometheus`` from Debian's ``prometheus`` package (scripts/setup.sh
  installs it); without it the test skips, and fails under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "ALERTS",
    "ALERTS_TEST",
    "DASHBOARD",
    "PROMETHEUS_CONFIG",
    "dashboard",
    "dashboard_exprs",
    "metric_names",
    "prometheus_tool",
    "rule_exprs",
]

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
"""The alerting rules."""
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
"""The rules' promtool unit tests."""
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
"""The example Prometheus configuration."""
DASHBOARD = ROOT / "deploy" / "grafana" / "flashstock.json"
"""The Grafana dashboard."""

_PROMQL_WORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "and",
        "or",
        "unless",
        "bool",
        "inf",
        "nan",
    }
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (Grafana variables allowed)."""
    names = set(re.findall(r"label_values\(\s*([a-zA-Z_:][\w:]*)", expr))
    expr = re.sub(r"label_values\([^)]*\)", " ", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\$\w+", " ", expr)  # Grafana variables
    # label lists after by / without / on / ignoring / group_left / group_right
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\boffset\s+\w+", " ", expr)
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        word, call = match.groups()
        if not call and word.lower() not in _PROMQL_WORDS:
            names.add(word)
    return names


def rule_exprs() -> dict[str, str]:
    """alert name → expression, from alerts.yml.

    No YAML library is installed: the file's ``expr:`` values are read as it
    writes them (inline, or a ``>-`` block of more-indented lines); promtool
    checks the file as YAML in the tests below.
    """
    exprs: dict[str, str] = {}
    lines = ALERTS.read_text().splitlines()
    alert = ""
    for i, line in enumerate(lines):
        if m := re.match(r"\s*- alert: (\S+)", line):
            alert = m.group(1)
        elif m := re.match(r"(\s*)expr: (.*)", line):
            indent, value = len(m.group(1)), m.group(2)
            if value.startswith(">"):
                block = []
                for following in lines[i + 1 :]:
                    if following.strip() and len(following) - len(following.lstrip()) <= indent:
                        break
                    block.append(following.strip())
                value = " ".join(block)
            exprs[alert] = value
    return exprs


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard, parsed (it must be valid JSON)."""
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def dashboard_exprs() -> dict[str, str]:
    """Each panel's expressions by "title / refId", and each query variable's query by "$name"."""
    board = dashboard()
    out = {
        f"{panel['title']} / {target['refId']}": target["expr"]
        for panel in board["panels"]
        for target in panel.get("targets", [])
    }
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            out[f"${variable['name']}"] = variable["query"]["query"]
    return out


def prometheus_tool(name: str) -> str:
    """The path of ``promtool`` or ``prometheus``; a skip without it, or a failure under ``CI=true``."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing under CI=true: scripts/setup.sh installs Debian's prometheus package")
        pytest.skip(f"{name} not installed (apt-get install prometheus, or make setup as root)")
    return path
