"""TLS and mutual TLS on a node's ports, with real certificates made here (trustme).

Real node processes: one serving TLS, one mutual TLS (callers must present a
certificate its CA signed), each called by the client library, by a raw gRPC
channel (health) and by the CLI; the metrics port over HTTPS; a certificate
replaced on disk served without a restart; bad files refused at start.
"""

from __future__ import annotations

import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from flashstock.client import AdminClient, ClientConfig, StockClient, Unavailable
from flashstock.server.cli.app import app
from flashstock.server.local.procs import NodeProcess, RedisServer, free_port, serve_argv
from tests.helpers import eventually
from tests.helpers.processes import QUIET, running_node
from tests.helpers.tls import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """The certificates the module's nodes and callers use."""
    return make_certs(tmp_path_factory.mktemp("tls"), "good")


@pytest.fixture(scope="module")
def stranger_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """Certificates of another CA, which the module's nodes do not trust."""
    return make_certs(tmp_path_factory.mktemp("tls-other"), "other")


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def tls_node(module_redis: RedisServer, certs: Certs) -> Iterator[NodeProcess]:
    """A node serving TLS (any caller)."""
    args = ("--tls-cert", str(certs.node_cert), "--tls-key", str(certs.node_key), *QUIET)
    with running_node(module_redis.url, extra_args=args) as node:
        yield node


@dataclass(frozen=True)
class MtlsNode:
    node: NodeProcess
    metrics_port: int


@pytest.fixture(scope="module")
def mtls_node(module_redis: RedisServer, tls_node: NodeProcess, certs: Certs) -> Iterator[MtlsNode]:
    """A node serving mutual TLS, its metrics too (callers need a certificate of ``certs.ca``)."""
    metrics_port = free_port()
    args = (
        *("--tls-cert", str(certs.node_cert), "--tls-key", str(certs.node_key), "--tls-client-ca", str(certs.ca)),
        *("--metrics-port", str(metrics_port), *QUIET),
    )
    with running_node(module_redis.url, extra_args=args, ledger=tls_node.ledger_url) as node:
        yield MtlsNode(node, metrics_port)


@dataclass(frozen=True)
class HealthPortNode:
    node: NodeProcess
    health_port: int


@pytest.fixture(scope="module")
def health_port_node(module_redis: RedisServer, tls_node: NodeProcess, certs: Certs) -> Iterator[HealthPortNode]:
    """Two workers serving mutual TLS, each with the plaintext health-only port (``--health-port``)."""
    health_port = free_port()
    args = (
        *("--tls-cert", str(certs.node_cert), "--tls-key", str(certs.node_key), "--tls-client-ca", str(certs.ca)),
        *("--health-port", str(health_port), *QUIET),
    )
    with running_node(module_redis.url, workers=2, extra_args=args, ledger=tls_node.ledger_url) as node:
        yield HealthPortNode(node, health_port)


def config_of(node: NodeProcess, **tls: object) -> ClientConfig:
    """Client settings of ``node`` giving up soon (a refused handshake is retried as UNAVAILABLE until then)."""
    return ClientConfig(addresses=node.address, deadline_s=1.5, attempt_timeout_s=0.5, **tls)  # type: ignore[arg-type]


def test_a_tls_node_answers_a_client_that_trusts_its_ca(tls_node, certs, sku):
    with AdminClient(config_of(tls_node, tls_ca=str(certs.ca))) as admin:
        admin.put_sku(sku, 5)
    # The CA's bytes do as well as its path.
    with StockClient(config_of(tls_node, tls_ca=certs.ca.read_bytes())) as stock:
        assert stock.deduct(sku, "u1", 2).stock_left == 3


def test_a_tls_node_refuses_plaintext_and_untrusting_callers(tls_node, stranger_certs, sku):
    with AdminClient(config_of(tls_node)) as admin, pytest.raises(Unavailable):
        admin.get_sku(sku)
    with AdminClient(config_of(tls_node, tls_ca=str(stranger_certs.ca))) as admin, pytest.raises(Unavailable):
        admin.get_sku(sku)


def test_health_shares_the_tls_port(tls_node, certs):
    credentials = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    with grpc.secure_channel(tls_node.address, credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_mutual_tls_takes_only_certificates_its_ca_signed(mtls_node, certs, stranger_certs, sku):
    node = mtls_node.node
    with AdminClient(config_of(node, tls_ca=str(certs.ca))) as admin, pytest.raises(Unavailable):
        admin.put_sku(sku, 5)  # no client certificate
    other = {"tls_cert": str(stranger_certs.client_cert), "tls_key": str(stranger_certs.client_key)}
    with AdminClient(config_of(node, tls_ca=str(certs.ca), **other)) as admin, pytest.raises(Unavailable):
        admin.put_sku(sku, 5)  # a certificate of another CA
    mine = {"tls_cert": str(certs.client_cert), "tls_key": str(certs.client_key)}
    with AdminClient(config_of(node, tls_ca=str(certs.ca), **mine)) as admin:
        assert admin.put_sku(sku, 5).sku.available == 5


def _https_get(url: str, context: ssl.SSLContext) -> int:
    with urllib.request.urlopen(url, timeout=5, context=context) as reply:
        return int(reply.status)


def test_the_metrics_port_serves_mutual_tls_too(mtls_node, certs):
    url = f"https://127.0.0.1:{mtls_node.metrics_port}/metrics"
    context = ssl.create_default_context(cafile=str(certs.ca))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        _https_get(url, context)  # no client certificate
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    assert eventually(lambda: _https_get(url, context), retry_on=(urllib.error.URLError, ConnectionError)) == 200


def cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1", **(env or {})})


def test_the_cli_calls_a_mutual_tls_node_with_flags_or_env(mtls_node, certs, sku):
    addr = ("--addr", mtls_node.node.address)
    flags = ("--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key))
    result = cli("sku", "put", sku, "--stock", "7", *addr, *flags)
    assert result.exit_code == 0 and sku in result.output, result.output
    env = {
        "FLASHSTOCK_TLS_CA": str(certs.ca),
        "FLASHSTOCK_TLS_CERT": str(certs.client_cert),
        "FLASHSTOCK_TLS_KEY": str(certs.client_key),
    }
    result = cli("sku", "adjust", sku, "-2", *addr, env=env)
    assert result.exit_code == 0 and sku in result.output, result.output
    result = cli("sku", "get", sku, *addr, "--tls-ca", str(certs.ca))  # no client certificate: refused
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output


def test_the_cli_names_a_missing_tls_file(mtls_node, tmp_path, sku):
    result = cli("sku", "get", sku, "--addr", mtls_node.node.address, "--tls-ca", str(tmp_path / "nope.pem"))
    assert result.exit_code == 2 and "--tls-ca" in result.output, result.output


def test_a_certificate_replaced_on_disk_is_served_without_a_restart(module_redis, tls_node, tmp_path, sku):
    first = make_certs(tmp_path, "first")
    cert, key = tmp_path / "node.pem", tmp_path / "node-key.pem"
    cert.write_bytes(first.node_cert.read_bytes())
    key.write_bytes(first.node_key.read_bytes())
    args = ("--tls-cert", str(cert), "--tls-key", str(key), *QUIET)
    with running_node(module_redis.url, extra_args=args, ledger=tls_node.ledger_url) as node:
        with AdminClient(config_of(node, tls_ca=str(first.ca))) as admin:
            admin.put_sku(sku, 3)
        second = make_certs(tmp_path, "second")
        # Rotation as a deploy tool does it: the key first, then the certificate (a half-done set is skipped).
        key.write_bytes(second.node_key.read_bytes())
        cert.write_bytes(second.node_cert.read_bytes())

        def served_by_second() -> bool:
            try:
                with AdminClient(config_of(node, tls_ca=str(second.ca))) as admin:
                    return admin.get_sku(sku).total == 3
            except Unavailable:
                return False

        assert eventually(served_by_second, timeout=15)
        with AdminClient(config_of(node, tls_ca=str(first.ca))) as admin, pytest.raises(Unavailable):
            admin.get_sku(sku)  # the old certificate is no longer served
        assert "certificate files are served" in node.log()


def start_exit(*flags: str) -> subprocess.CompletedProcess[str]:
    """``flashstock serve`` with ``flags``, run to its exit (no Redis: TLS is checked before it)."""
    argv = serve_argv(free_port(), "redis://127.0.0.1:1/0", *flags)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_bad_tls_files_stop_the_start_naming_the_setting(certs, stranger_certs, tmp_path):
    missing = start_exit("--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(certs.node_key))
    assert missing.returncode == 2 and "tls_cert:" in missing.stderr, missing.stderr
    mismatched = start_exit("--tls-cert", str(certs.node_cert), "--tls-key", str(stranger_certs.node_key))
    assert mismatched.returncode == 2 and "tls_cert, tls_key:" in mismatched.stderr, mismatched.stderr
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    bad_ca = start_exit(
        "--tls-cert", str(certs.node_cert), "--tls-key", str(certs.node_key), "--tls-client-ca", str(garbage)
    )
    assert bad_ca.returncode == 2 and "tls_client_ca:" in bad_ca.stderr, bad_ca.stderr
    lonely = start_exit("--tls-cert", str(certs.node_cert))
    assert lonely.returncode == 2 and "tls_key" in lonely.stderr, lonely.stderr


def test_a_plaintext_node_on_a_reachable_host_warns_at_start(module_redis, tls_node):
    node = NodeProcess(module_redis.url, extra_args=("--host", "0.0.0.0", *QUIET), ledger=tls_node.ledger_url)
    with node:
        assert "serving plaintext on 0.0.0.0" in node.log()


def test_the_server_name_the_certificate_must_carry_can_be_given(tls_node, certs, sku):
    # The node's certificate names 127.0.0.1 and localhost, not wrong.example.
    with AdminClient(config_of(tls_node, tls_ca=str(certs.ca), tls_server_name="localhost")) as admin:
        admin.put_sku(sku, 1)
    wrong = config_of(tls_node, tls_ca=str(certs.ca), tls_server_name="wrong.example")
    with AdminClient(wrong) as admin, pytest.raises(Unavailable):
        admin.get_sku(sku)


def test_the_health_port_answers_plaintext_probes_and_nothing_else(health_port_node, sku):
    address = f"127.0.0.1:{health_port_node.health_port}"
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "flashstock.v1.StockService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        deduct = channel.unary_unary("/flashstock.v1.StockService/Deduct")
        with pytest.raises(grpc.RpcError) as refused:
            deduct(b"", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # The gRPC port itself still takes mutual TLS only.
    with grpc.insecure_channel(health_port_node.node.address) as channel:
        with pytest.raises(grpc.RpcError) as plaintext:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
