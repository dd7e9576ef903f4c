"""The board reaches nodes whose certificate names a service, not the address it dials.

In Kubernetes the board dials each node at its pod IP, while the nodes'
certificate names the Service (``flashstock-node``). A real node serves TLS
on gRPC and metrics with such a certificate (trustme); a board given
``--tls-server-name`` reads its health and ``/metrics``, one without it sees
the node unreachable (the handshake checks the name), so the option is what
makes the difference.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from flashstock.server.local.procs import BoardProcess, NodeProcess, RedisServer, free_port
from tests.helpers import eventually

SERVICE_NAME = "flashstock-node"


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, NodeProcess, int, str]]:
    """A Redis, and a node serving TLS on gRPC and metrics with a certificate naming only SERVICE_NAME."""
    folder = tmp_path_factory.mktemp("server-name")
    ca = trustme.CA()
    cert = ca.issue_cert(SERVICE_NAME)
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "node.pem", folder / "node-key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    metrics_port = free_port()
    tls = ("--tls-cert", str(cert_path), "--tls-key", str(key_path))
    with (
        RedisServer() as server,
        NodeProcess(
            server.url, extra_args=(*tls, "--metrics-port", str(metrics_port), "--stats-interval-ms", "0")
        ) as node,
    ):
        yield server, node, metrics_port, str(ca_path)


def node_row(board: BoardProcess) -> dict[str, Any]:
    """The board's row of its one node ({} before its first reading)."""
    with urllib.request.urlopen(board.url + "api/state", timeout=5) as reply:
        rows = json.load(reply)["nodes"]
    return rows[0] if rows else {}  # type: ignore[no-any-return]


@pytest.mark.parametrize("server_name", [SERVICE_NAME, ""], ids=["with-server-name", "without"])
def test_the_board_checks_the_name_the_certificate_carries(tls_node, server_name: str) -> None:
    server, node, metrics_port, ca = tls_node
    args = ["--tls-ca", ca, *(["--tls-server-name", server_name] if server_name else [])]
    nodes = [f"{node.address}=127.0.0.1:{metrics_port}"]
    with BoardProcess(server.url, nodes=nodes, interval_s=0.2, extra_args=args) as board:
        if server_name:
            row = eventually(lambda: node_row(board), until=lambda r: r.get("health") == "SERVING" and r["metrics_ok"])
            assert row["address"] == node.address
        else:
            # The address dialled (127.0.0.1) is not in the certificate: no handshake, for gRPC and HTTPS alike.
            row = eventually(lambda: node_row(board), until=lambda r: r.get("health") == "unreachable")
            assert row["metrics_ok"] is False
