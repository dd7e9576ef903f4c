"""The alert rules and the dashboard under deploy/ are checked, not just kept.

``promtool`` (Debian's ``prometheus`` package, installed by scripts/setup.sh)
checks the rules' syntax, runs their unit tests (deploy/prometheus/alerts_test.yml:
each alert fires on a faulty node's series and not on a healthy one's), and
parses every PromQL expression of the Grafana dashboard. Without promtool the
tests skip locally, and fail under CI=true. The metric names both use must be
ones a node exports: a renamed metric fails here, not on a silent dashboard.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from prometheus_client import Metric

import flashstock.server.duties.salefigures  # noqa: F401 - registers the per-SKU metrics, as in every node
from flashstock.server._metrics import served_registry
from tests.helpers.deploy import (
    ALERTS,
    ALERTS_TEST,
    PROMETHEUS_CONFIG,
    dashboard,
    dashboard_exprs,
    metric_names,
    prometheus_tool,
    rule_exprs,
)

# Series that come from outside the node: Prometheus's own scrape health, and
# the blackbox exporter's gRPC health probe (the node exports no health metric).
EXTERNAL_METRICS = frozenset({"up", "probe_success"})

# Sample-name suffixes prometheus-client exposes for each metric type.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exported_names() -> set[str]:
    """Every sample name a node's metrics endpoint exposes (labelled metrics included before their first use):
    the duties', the serving workers' (summed from their snapshots: none here), build_info and process_*."""
    families: list[Metric] = list(served_registry(Path("/nonexistent-serving-figures")).collect())
    return {family.name + suffix for family in families for suffix in _SUFFIXES[family.type]}


def promtool() -> str:
    """The promtool executable (a skip without it; a failure under CI=true)."""
    return prometheus_tool("promtool")


def test_metric_name_parser_finds_metrics_and_nothing_else():
    expr = (
        'sum by (instance, le) (rate(a_bucket{x=~"y|z",le!="1"}[$__rate_interval])) / on(instance) group_left(v) '
        "b_total offset 5m > 0.5 and up unless label_values(c_gauge, instance)"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "up", "c_gauge"}


def test_every_alert_rule_is_read():
    alerts = re.findall(r"^\s*- alert: (\S+)$", ALERTS.read_text(), re.MULTILINE)
    exprs = rule_exprs()
    assert sorted(exprs) == sorted(alerts)
    assert len(alerts) >= 9
    assert all(exprs.values())


def test_every_metric_in_rules_and_dashboard_is_exported():
    known = exported_names() | EXTERNAL_METRICS
    used = {
        **{f"alert {k}": v for k, v in rule_exprs().items()},
        **{f"panel {k}": v for k, v in dashboard_exprs().items()},
    }
    unknown = {where: sorted(metric_names(expr) - known) for where, expr in used.items() if metric_names(expr) - known}
    assert not unknown, f"metrics no node exports: {unknown}"
    assert all(metric_names(expr) for expr in used.values())


def test_dashboard_panels_read_the_templated_datasource():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [panel for panel in board["panels"] if panel["type"] != "row"]
    assert panels
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    tool = promtool()
    checked = subprocess.run([tool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([tool, "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_accepts_the_example_prometheus_config():
    checked = subprocess.run([promtool(), "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_parses_every_dashboard_expression(tmp_path: Path):
    tool = promtool()
    # Grafana's variables, as Grafana would fill them in.
    fill = {"$__rate_interval": "1m", "$instance": ".*", "$sku": ".*"}
    rules = []
    for i, expr in enumerate(dashboard_exprs().values()):
        if expr.startswith("label_values("):
            continue
        for variable, value in fill.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.json"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    checked = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
