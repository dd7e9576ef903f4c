"""The alert rules and the dashboard's queries, run by a real Prometheus on a real node's metrics.

promtool's unit tests (tests/unit/test_alert_rules.py) feed the rules series
written by hand; here Debian's ``prometheus`` scrapes a node's metrics
endpoint once a second and evaluates deploy/prometheus/alerts.yml: every rule
evaluates without error on what a node really exports, none fires on a
healthy node, the dashboard's queries run, and a node killed with SIGKILL
turns ``FlashstockNodeDown`` pending (its ``for:`` keeps it from firing for a
minute; the unit tests check that it then fires).
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flashstock.client import AdminClient, StockClient
from flashstock.server.local.procs import NodeProcess, RedisServer, free_port, stop_family
from tests.helpers import eventually
from tests.helpers.deploy import ALERTS, dashboard_exprs, prometheus_tool

pytestmark = pytest.mark.timeout(120)


class Prometheus:
    """A Prometheus server of the test's own: its HTTP API on a free loopback port."""

    def __init__(self, folder: Path, metrics_port: int) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": "flashstock", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
            ],
        }
        config_path = folder / "prometheus.yml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        self.log_path = folder / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    prometheus_tool("prometheus"),
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: the reply's ``data``."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/{path}{query}", timeout=5) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def rules(self) -> list[dict[str, Any]]:
        """Every alerting rule with its health and last evaluation."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts pending or firing now."""
        return list(self.api("alerts")["alerts"])

    def stop(self) -> None:
        stop_family(self.proc, timeout=10)


@pytest.fixture
def node_with_metrics(tmp_path: Path) -> Iterator[tuple[NodeProcess, int]]:
    """A Redis and one node serving its metrics on a free port."""
    metrics_port = free_port()
    with (
        RedisServer() as redis_server,
        NodeProcess(
            redis_server.url,
            data_dir=tmp_path / "node",
            extra_args=("--metrics-port", str(metrics_port), "--reconcile-interval-s", "1"),
        ) as node,
    ):
        yield node, metrics_port


@pytest.fixture
def prometheus(tmp_path: Path, node_with_metrics: tuple[NodeProcess, int]) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path, node_with_metrics[1])
    try:
        yield server
    finally:
        server.stop()


def _all_evaluated_ok(rules: list[dict[str, Any]]) -> bool:
    # A rule not evaluated yet has the zero time as its lastEvaluation.
    return bool(rules) and all(
        rule["health"] == "ok" and not rule["lastEvaluation"].startswith("0001-") for rule in rules
    )


def test_rules_and_dashboard_run_on_a_real_node_and_node_down_turns_pending(
    prometheus: Prometheus, node_with_metrics: tuple[NodeProcess, int]
) -> None:
    node, _ = node_with_metrics
    eventually(
        lambda: prometheus.api("query", query='up{job="flashstock"}')["result"],
        until=lambda result: len(result) == 1 and result[0]["value"][1] == "1",
        timeout=30,
        retry_on=(OSError,),
    )
    # Sales while Prometheus watches: the persister's lag rises in its rate.
    with AdminClient(addresses=node.address) as admin, StockClient(addresses=node.address) as stock:
        admin.put_sku("watched", 100)
        for i in range(20):
            stock.deduct("watched", f"u{i}", 1)
    p99 = "histogram_quantile(0.99, sum by (le) (rate(flashstock_persister_lag_seconds_bucket[1m])))"
    eventually(
        lambda: prometheus.api("query", query=p99)["result"],
        until=lambda result: bool(result) and result[0]["value"][1] not in ("NaN", "+Inf"),
        timeout=30,
    )

    # Every rule evaluates on the node's real series without an error (a vector
    # matching mistake shows only here), and none is pending or firing.
    rules = eventually(prometheus.rules, until=_all_evaluated_ok, timeout=30)
    assert {rule["name"] for rule in rules} >= {"FlashstockNodeDown", "FlashstockReconcileDifferences"}
    eventually(lambda: prometheus.api("query", query="flashstock_reconcile_passes_total")["result"], timeout=30)
    assert prometheus.alerts() == []

    # Every dashboard query runs (Grafana's variables as Grafana fills them);
    # the node's own figures are there.
    for expr in dashboard_exprs().values():
        if expr.startswith("label_values("):
            continue
        expr = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        prometheus.api("query", query=expr)  # asserts status success
    for expr in ("flashstock_owned_shards", "flashstock_persister_backlog_entries", "flashstock_rebuilds_total"):
        assert prometheus.api("query", query=expr)["result"], expr

    # The node dies: its scrape fails, and the down alert is pending for it.
    node.kill()
    pending = eventually(
        prometheus.alerts,
        until=lambda alerts: any(a["labels"]["alertname"] == "FlashstockNodeDown" for a in alerts),
        timeout=30,
    )
    (down,) = [a for a in pending if a["labels"]["alertname"] == "FlashstockNodeDown"]
    assert down["state"] == "pending"
    assert down["labels"]["severity"] == "critical"
    assert down["labels"]["job"] == "flashstock"
