"""``flashstock bench``'s TLS part against a real node: its certificates and its load's channels.

A node serving mutual TLS with the certificates the bench makes (``openssl``),
called by the bench's own load loop over TLS with the bench's client
certificate: every call answered OK and taken from the node's stock.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from flashstock.client import AdminClient, ClientConfig
from flashstock.server.bench.node import _load_phase
from flashstock.server.local.certs import MtlsFiles, make_mtls_files
from flashstock.server.local.procs import NodeProcess, RedisServer
from flashstock.v1 import stock_pb2
from tests.helpers.processes import QUIET, running_node


@pytest.fixture(scope="module")
def bench_certs(tmp_path_factory: pytest.TempPathFactory) -> MtlsFiles:
    return make_mtls_files(Path(tmp_path_factory.mktemp("bench-tls")))


@pytest.fixture(scope="module")
def mtls_node(bench_certs: MtlsFiles) -> Iterator[NodeProcess]:
    """A node as the bench's TLS twin runs it: mutual TLS with the bench's certificates."""
    c = bench_certs
    args = ("--tls-cert", str(c.node_cert), "--tls-key", str(c.node_key), "--tls-client-ca", str(c.ca), *QUIET)
    with RedisServer() as redis_server, running_node(redis_server.url, extra_args=args) as node:
        yield node


def test_bench_load_calls_a_mutual_tls_node_with_its_client_certificate(
    mtls_node: NodeProcess, bench_certs: MtlsFiles, sku: str
) -> None:
    c = bench_certs
    tls = {"ca": str(c.ca), "cert": str(c.client_cert), "key": str(c.client_key)}
    config = ClientConfig(
        addresses=mtls_node.address, deadline_s=10, tls_ca=tls["ca"], tls_cert=tls["cert"], tls_key=tls["key"]
    )
    with AdminClient(config) as admin:
        admin.put_sku(sku, 1_000)
    phase = {
        "target": mtls_node.address,
        "sku": sku,
        "users": "t",
        "distinct_users": False,
        "requests": 40,
        "coroutines": 4,
        "connections": 2,
        "rate": None,
        "tls": tls,
    }
    ctrl, progress = [0.0, math.inf, math.inf], [0]
    result = asyncio.run(_load_phase(0, phase, ctrl, progress))
    assert result["totals"] == {stock_pb2.OUTCOME_OK: 40}
    with AdminClient(config) as admin:
        assert admin.get_sku(sku).available == 960
