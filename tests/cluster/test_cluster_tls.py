"""A whole local cluster on TLS: etcd, Redis, the nodes and the board, every link encrypted and authenticated.

``LocalCluster(tls=True)`` makes a CA, server and client certificates and
random passwords in its folder; etcd serves mutual TLS with auth enabled,
Redis serves only mutual TLS to its ACL user, the nodes serve mutual TLS on
gRPC and metrics, the board its page on https. A client with the operator's certificate finds the nodes
through etcd (as the etcd user ``operator``) and deducts; the ledger gets it.
A caller without a certificate is refused. No password is on a command line
or in a log.
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from flashstock.client import AdminClient, ClientConfig, Outcome, StockClient, Unavailable
from flashstock.server.cli.app import app
from flashstock.server.ledger import Ledger
from flashstock.server.local.cluster import LocalCluster
from tests.helpers import eventually

pytestmark = pytest.mark.slow  # a whole cluster: etcd, Redis, two nodes, the board


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("tls-cluster"), nodes=2, shards=8, tls=True, board=True) as cluster:
        yield cluster


def test_a_deduct_through_mutual_tls_reaches_the_ledger(tls_cluster, sku):
    assert tls_cluster.redis_url.startswith("rediss://flashstock:")
    config = tls_cluster.operator_config()
    with AdminClient(config) as admin, StockClient(config) as stock:
        assert sorted(admin.addresses) == sorted(tls_cluster.node_addresses)
        admin.put_sku(sku, 3)
        result = stock.deduct(sku, "buyer-1", 2, request_id="tls-deduct-1")
        assert result.outcome is Outcome.OK
    ledger = Ledger(tls_cluster.ledger_url)
    try:
        found = eventually(lambda: ledger.deductions_of(["tls-deduct-1"], sku), until=bool, timeout=15)
        assert found["tls-deduct-1"]["qty"] == 2 and found["tls-deduct-1"]["user_id"] == "buyer-1"
    finally:
        ledger.close()


def test_callers_without_the_clusters_certificates_are_refused(tls_cluster, sku):
    no_cert = ClientConfig(addresses=tls_cluster.node_addresses, deadline_s=1.5, attempt_timeout_s=0.5)
    with StockClient(no_cert) as stock, pytest.raises(Unavailable):
        stock.deduct(sku, "buyer-2", 1)
    ca_only = dataclasses.replace(no_cert, tls_ca=tls_cluster.client_tls()["tls_ca"])
    with StockClient(ca_only) as stock, pytest.raises(Unavailable):
        stock.deduct(sku, "buyer-2", 1)


def test_status_the_board_and_the_cli_reach_everything_over_tls(tls_cluster):
    status = tls_cluster.status()
    assert status.ok, status
    tls = tls_cluster.tls
    assert tls is not None
    context = ssl.create_default_context(cafile=str(tls.ca))
    context.load_cert_chain(str(tls.client("operator").cert), str(tls.client("operator").key))
    with urllib.request.urlopen(f"https://127.0.0.1:{tls_cluster.metrics_ports[0]}/metrics", context=context) as r:
        assert b"flashstock_" in r.read()

    # The board's own page is on https with the cluster's certificate: a browser trusting its CA opens it.
    assert tls_cluster.board_url.startswith("https://127.0.0.1:")
    page_context = ssl.create_default_context(cafile=str(tls.ca))

    def board() -> dict:
        with urllib.request.urlopen(f"{tls_cluster.board_url}api/state", timeout=5, context=page_context) as r:
            return json.loads(r.read())

    snapshot = eventually(board, until=lambda s: len(s["nodes"]) == 2 and not s["problems"], timeout=20)
    assert all(n["health"] == "SERVING" and n["metrics_ok"] for n in snapshot["nodes"]), snapshot

    env = {"COLUMNS": "250", "NO_COLOR": "1", **tls.operator_env()}
    result = CliRunner().invoke(
        app, ["shards", "ls", "--etcd", tls_cluster.etcd_endpoint, "--cluster", tls_cluster.cluster], env=env
    )
    assert result.exit_code == 0 and "node-0" in result.output, result.output


def test_no_password_shows_on_a_command_line_or_in_a_log(tls_cluster):
    tls = tls_cluster.tls
    assert tls is not None
    secrets = [tls.redis_password, *(tls.etcd_password(u) for u in ("root", "node", "operator"))]
    for record in tls_cluster.processes:
        argv = " ".join(psutil.Process(record.pid).cmdline())
        assert not any(s in argv for s in secrets), record.name
        assert not any(s in Path(record.log).read_text(errors="replace") for s in secrets), record.log
    printed = CliRunner().invoke(app, ["cluster", "status", "--dir", str(tls_cluster.folder)])
    assert not any(s in printed.output for s in secrets), printed.output
