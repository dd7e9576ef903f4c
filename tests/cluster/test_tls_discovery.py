"""A client that finds the nodes in etcd calls them over TLS too.

A real cluster node serving mutual TLS registers itself in etcd; a client
configured with ``etcd`` and the CA (and its own certificate) calls it, and
one without a certificate is refused. etcd itself is reached in plaintext
(its TLS is other work).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flashstock.client import AsyncAdminClient, AsyncStockClient, ClientConfig, Outcome, Unavailable
from flashstock.server.local.procs import RedisServer
from tests.helpers.processes import QUIET, running_node
from tests.helpers.tls import make_certs

pytest_plugins = ["tests.helpers.etcd"]


async def test_a_client_calls_the_nodes_it_finds_in_etcd_over_mutual_tls(
    etcd_server, cluster_name, tmp_path: Path, sku
):
    certs = make_certs(tmp_path, "cluster")
    tls = ("--tls-cert", str(certs.node_cert), "--tls-key", str(certs.node_key), "--tls-client-ca", str(certs.ca))
    cluster = ("--etcd", etcd_server.endpoint, "--cluster", cluster_name)
    with RedisServer() as redis_server, running_node(redis_server.url, extra_args=(*tls, *cluster, *QUIET)) as node:
        config = ClientConfig(
            etcd=[etcd_server.endpoint],
            cluster=cluster_name,
            tls_ca=str(certs.ca),
            tls_cert=str(certs.client_cert),
            tls_key=str(certs.client_key),
        )
        async with AsyncAdminClient(config) as admin, AsyncStockClient(config) as stock:
            assert admin.addresses == (node.address,)
            await admin.put_sku(sku, 3)
            assert (await stock.deduct(sku, "u1", 1)).outcome is Outcome.OK
        no_cert = ClientConfig(etcd=[etcd_server.endpoint], cluster=cluster_name, tls_ca=str(certs.ca), deadline_s=1.5)
        async with AsyncStockClient(no_cert) as stock:
            with pytest.raises(Unavailable):
                await stock.deduct(sku, "u2", 1)
