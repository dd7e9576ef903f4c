"""Who may do what: bearer tokens and mTLS identities against real node processes with auth on.

One node takes bearer tokens (HS256, plaintext); another mutual TLS, its
callers' certificates mapped to roles (auth_cert_roles). Each is called by
the client library, by raw gRPC stubs with metadata (a stranger's client),
and by the CLI; wrong settings stop the start naming the setting.
"""

from __future__ import annotations

import asyncio
import http.client
import math
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from flashstock.client import (
    AdminClient,
    ClientConfig,
    PermissionDenied,
    StockClient,
    Unauthenticated,
)
from flashstock.server.bench.node import _load_phase
from flashstock.server.cli.app import app
from flashstock.server.ledger import Ledger, sqlite_url
from flashstock.server.local.cluster import LocalCluster
from flashstock.server.local.procs import NodeProcess, RedisServer, free_port, serve_argv
from flashstock.v1 import admin_pb2, admin_pb2_grpc, stock_pb2
from tests.helpers import eventually
from tests.helpers.processes import QUIET, running_node
from tests.helpers.stranger import Stranger

ISSUER, AUDIENCE = "test-issuer", "flashstock-test"


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "hs256.secret"
    path.write_text("s" * 40 + "\n")
    return path


def token(secret: Path | bytes, sub: str, *roles: str, ttl_s: int = 600, **claims: object) -> str:
    key = secret if isinstance(secret, bytes) else secret.read_bytes().strip()
    now = int(time.time())
    body = {"sub": sub, "roles": list(roles), "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + ttl_s}
    return jwt.encode({**body, **claims}, key, algorithm="HS256")


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


JWT_FLAGS = ("--auth", "on", "--auth-jwt-issuer", ISSUER, "--auth-jwt-audience", AUDIENCE)


@pytest.fixture(scope="module")
def jwt_node(module_redis: RedisServer, secret: Path) -> Iterator[NodeProcess]:
    """A node with auth on, taking HS256 bearer tokens."""
    args = (*JWT_FLAGS, "--auth-jwt-keys", str(secret), *QUIET)
    with running_node(module_redis.url, extra_args=args) as node:
        yield node


@dataclass(frozen=True)
class AuthCerts:
    """One CA's files: the node's certificate, and three callers' (an operator, a buyer by CN, one unmapped)."""

    ca: Path
    node: tuple[Path, Path]
    operator: tuple[Path, Path]
    buyer: tuple[Path, Path]
    unmapped: tuple[Path, Path]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> AuthCerts:
    folder = tmp_path_factory.mktemp("auth-tls")
    ca = trustme.CA(organization_name="authz")

    def write(name: str, cert: trustme.LeafCert) -> tuple[Path, Path]:
        pem, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
        cert.cert_chain_pems[0].write_to_path(str(pem))
        cert.private_key_pem.write_to_path(str(key))
        return pem, key

    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return AuthCerts(
        folder / "ca.pem",
        write("node", ca.issue_cert("127.0.0.1", "localhost")),
        write("operator", ca.issue_cert("ops.authz.example")),
        write("buyer", ca.issue_cert("gw.authz.example", common_name="orders-gateway")),
        write("unmapped", ca.issue_cert("nobody.authz.example")),
    )


@pytest.fixture(scope="module")
def mtls_node(
    module_redis: RedisServer, jwt_node: NodeProcess, certs: AuthCerts, tmp_path_factory
) -> Iterator[NodeProcess]:
    """A node with mutual TLS and auth on: certificates identify callers (by CN, else first SAN)."""
    roles = tmp_path_factory.mktemp("auth-roles") / "cert-roles.toml"
    roles.write_text('"ops.authz.example" = ["operator"]\n"orders-gateway" = ["buyer"]\n')
    args = (
        *("--tls-cert", str(certs.node[0]), "--tls-key", str(certs.node[1]), "--tls-client-ca", str(certs.ca)),
        *("--auth", "on", "--auth-cert-roles", str(roles), *QUIET),
    )
    with running_node(module_redis.url, extra_args=args, ledger=jwt_node.ledger_url) as node:
        yield node


def tls_of(certs: AuthCerts, who: tuple[Path, Path]) -> dict[str, str]:
    return {"tls_ca": str(certs.ca), "tls_cert": str(who[0]), "tls_key": str(who[1])}


def config_of(node: NodeProcess, **settings: object) -> ClientConfig:
    return ClientConfig(addresses=node.address, deadline_s=3, attempt_timeout_s=1, **settings)  # type: ignore[arg-type]


def test_a_call_without_credentials_is_unauthenticated(jwt_node, sku):
    with AdminClient(config_of(jwt_node)) as admin, pytest.raises(Unauthenticated) as refused:
        admin.get_sku(sku)
    assert "no credentials" in refused.value.message and "Bearer" in refused.value.message
    with StockClient(config_of(jwt_node)) as stock, pytest.raises(Unauthenticated):
        stock.deduct(sku, "u1", 1)
    # The node says so in its log (a line per kind of refusal a minute), naming the method and the peer.
    assert eventually(lambda: "refused Deduct from ipv4:127.0.0.1" in jwt_node.log())


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: token(s, "alice", "operator", ttl_s=-120), "expired"),
        (lambda s: token(b"x" * 40, "alice", "operator"), "bad signature"),
        (lambda s: token(s, "alice", "operator", aud="someone-else"), "audience"),
        (lambda s: token(s, "alice", "operator", iss="mallory"), "issuer"),
        (lambda s: "not-a-jwt", "not a JWT"),
    ],
    ids=["expired", "bad-signature", "wrong-audience", "wrong-issuer", "garbage"],
)
def test_a_bad_token_is_unauthenticated_saying_why(jwt_node, secret, sku, make, reason):
    with AdminClient(config_of(jwt_node, token=make(secret))) as admin, pytest.raises(Unauthenticated) as refused:
        admin.get_sku(sku)
    assert reason in refused.value.message, refused.value.message
    assert "Traceback" not in refused.value.message


def test_a_buyer_may_not_put_a_sku_an_operator_may(jwt_node, secret, sku):
    with AdminClient(config_of(jwt_node, token=token(secret, "shop", "buyer"))) as admin:
        with pytest.raises(PermissionDenied) as refused:
            admin.put_sku(sku, 5)
    message = refused.value.message
    assert "jwt:shop" in message and "operator" in message and "holds buyer" in message, message
    with AdminClient(config_of(jwt_node, token=token(secret, "alice", "operator"))) as admin:
        assert admin.put_sku(sku, 5).sku.available == 5
    with StockClient(config_of(jwt_node, token=token(secret, "shop", "buyer"))) as stock:
        assert stock.deduct(sku, "u1", 2).stock_left == 3


def test_the_audit_trail_names_the_identity_that_made_each_change(jwt_node, secret, sku):
    # The authorizer decides who calls; the audit trail records that identity, not "anonymous".
    with AdminClient(config_of(jwt_node, token=token(secret, "carol", "operator"))) as admin:
        admin.put_sku(sku, 7)
    with AdminClient(config_of(jwt_node, token=token(secret, "dave", "admin"))) as admin:
        admin.adjust_stock(sku, 9)
    ledger = Ledger(sqlite_url(jwt_node.data_dir))
    try:
        records = list(reversed(ledger.audit(sku_id=sku, limit=10)))
    finally:
        ledger.close()
    assert [(r.method, r.identity) for r in records] == [("PutSku", "jwt:carol"), ("AdjustStock", "jwt:dave")]
    assert all(r.peer.startswith("ipv4:127.0.0.1:") for r in records), [r.peer for r in records]


def test_a_viewer_may_read_but_not_buy(jwt_node, secret, sku):
    with AdminClient(config_of(jwt_node, token=token(secret, "alice", "operator"))) as admin:
        admin.put_sku(sku, 4)
    viewer = token(secret, "watcher", "viewer")
    with StockClient(config_of(jwt_node, token=viewer)) as stock:
        assert stock.get_stock(sku).available == 4
        with pytest.raises(PermissionDenied) as refused:
            stock.deduct(sku, "u1", 1)
    assert "needs the role buyer or admin" in refused.value.message, refused.value.message
    with AdminClient(config_of(jwt_node, token=viewer)) as admin:
        assert admin.get_sku(sku).available == 4
        with pytest.raises(PermissionDenied):
            admin.pause_sku(sku)


def test_a_token_from_a_file_and_an_admin_may_do_everything(jwt_node, secret, sku, tmp_path):
    path = tmp_path / "token"
    path.write_text(token(secret, "root", "admin") + "\n")
    with AdminClient(config_of(jwt_node, token_file=str(path))) as admin:
        admin.put_sku(sku, 2)
    with StockClient(config_of(jwt_node, token_file=str(path))) as stock:
        assert stock.deduct(sku, "u1", 1).stock_left == 1


def test_raw_grpc_with_metadata_is_judged_the_same(jwt_node, secret, sku):
    with AdminClient(config_of(jwt_node, token=token(secret, "alice", "operator"))) as admin:
        admin.put_sku(sku, 3)
    with grpc.insecure_channel(jwt_node.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.GetSkuRequest(sku_id=sku)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetSku(request, timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "no credentials" in (refused.value.details() or "")
        viewer = (("authorization", f"Bearer {token(secret, 'watcher', 'viewer')}"),)
        assert stub.GetSku(request, timeout=5, metadata=viewer).sku.total == 3
        put = admin_pb2.PutSkuRequest(sku_id=sku, stock=9, request_id="raw-put-1")
        with pytest.raises(grpc.RpcError) as denied:
            stub.PutSku(put, timeout=5, metadata=viewer)
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "PutSku" in (denied.value.details() or "")
        basic = (("authorization", "Basic YWxpY2U6cHc="),)
        with pytest.raises(grpc.RpcError) as wrong_scheme:
            stub.GetSku(request, timeout=5, metadata=basic)
        assert wrong_scheme.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # Health stays open: load balancers and the board call it without credentials.
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_stranger_reads_reflection_without_credentials_and_buys_with_a_token(jwt_node, secret, sku):
    with AdminClient(config_of(jwt_node, token=token(secret, "alice", "operator"))) as admin:
        admin.put_sku(sku, 3)
    stranger = Stranger([jwt_node.address])  # its messages come from reflection, which stays open
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stranger.call("Deduct", sku_id=sku, user_id="u1", qty=1, request_id="s-1")
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    buyer = (("authorization", f"Bearer {token(secret, 'gw', 'buyer')}"),)
    reply = await stranger.call("Deduct", sku_id=sku, user_id="u1", qty=1, request_id="s-1", metadata=buyer)
    assert stranger.outcome(reply) == "OUTCOME_OK" and reply.stock_left == 2


def test_a_mapped_certificate_identity_holds_its_roles(mtls_node, certs, sku):
    with AdminClient(config_of(mtls_node, **tls_of(certs, certs.operator))) as admin:
        assert admin.put_sku(sku, 6).sku.available == 6
    with StockClient(config_of(mtls_node, **tls_of(certs, certs.operator))) as stock:
        with pytest.raises(PermissionDenied) as refused:
            stock.deduct(sku, "u1", 1)
    assert "cert:ops.authz.example" in refused.value.message and "holds operator" in refused.value.message
    # A certificate with a CN is named by it.
    with StockClient(config_of(mtls_node, **tls_of(certs, certs.buyer))) as stock:
        assert stock.deduct(sku, "u1", 1).stock_left == 5
    with AdminClient(config_of(mtls_node, **tls_of(certs, certs.buyer))) as admin:
        with pytest.raises(PermissionDenied) as refused:
            admin.adjust_stock(sku, 1)
    assert "cert:orders-gateway" in refused.value.message, refused.value.message


def test_an_unmapped_certificate_holds_no_role(mtls_node, certs, sku):
    with AdminClient(config_of(mtls_node, **tls_of(certs, certs.unmapped))) as admin:
        with pytest.raises(PermissionDenied) as refused:
            admin.get_sku(sku)
    assert "cert:nobody.authz.example" in refused.value.message and "no role" in refused.value.message


def test_the_bench_load_sends_its_bearer_token_on_every_call(jwt_node, secret, sku):
    with AdminClient(config_of(jwt_node, token=token(secret, "alice", "operator"))) as admin:
        admin.put_sku(sku, 100)
    phase = {
        "target": jwt_node.address,
        "sku": sku,
        "users": "t",
        "distinct_users": False,
        "requests": 20,
        "coroutines": 2,
        "connections": 1,
        "rate": None,
        "tls": None,
        "token": token(secret, "bench-load", "buyer"),
    }
    result = asyncio.run(_load_phase(0, phase, [0.0, math.inf, math.inf], [0]))
    assert result["totals"] == {stock_pb2.OUTCOME_OK: 20}
    result = asyncio.run(_load_phase(0, {**phase, "token": None}, [0.0, math.inf, math.inf], [0]))
    assert result["totals"] == {"UNAUTHENTICATED": 20}


def cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1", **(env or {})})


def test_the_cli_makes_a_key_and_tokens_and_calls_with_them(module_redis, jwt_node, tmp_path, sku):
    made = cli("token", "key", str(tmp_path / "keys"))
    assert made.exit_code == 0, made.output
    key = tmp_path / "keys" / "jwt-hs256.secret"
    assert key.stat().st_mode & 0o777 == 0o600
    args = ("--auth", "on", "--auth-jwt-keys", str(key), "--auth-jwt-issuer", "dev", "--auth-jwt-audience", "fs")
    with running_node(module_redis.url, extra_args=(*args, *QUIET), ledger=jwt_node.ledger_url) as node:
        addr = ("--addr", node.address)
        flags = ("--key", str(key), "--issuer", "dev", "--audience", "fs", "--ttl", "5m")
        operator = cli("token", "make", *flags, "--sub", "alice", "--role", "operator")
        assert operator.exit_code == 0, operator.output
        result = cli("sku", "put", sku, "--stock", "7", *addr, "--token", operator.output.strip())
        assert result.exit_code == 0 and sku in result.output, result.output
        viewer = cli("token", "make", *flags, "--sub", "bob", "--role", "viewer").output.strip()
        result = cli("sku", "get", sku, *addr, env={"FLASHSTOCK_TOKEN": viewer})
        assert result.exit_code == 0 and sku in result.output, result.output
        result = cli("sku", "pause", sku, *addr, env={"FLASHSTOCK_TOKEN": viewer})
        assert result.exit_code == 1 and "may not call AdminService/PauseSku" in result.output, result.output
        result = cli("sku", "get", sku, *addr)
        assert result.exit_code == 1 and "no credentials" in result.output, result.output
        assert "Traceback" not in result.output
    bad_role = cli("token", "make", "--key", str(key), "--sub", "x", "--role", "king")
    assert bad_role.exit_code == 2 and "--role" in bad_role.output, bad_role.output


def start_exit(*flags: str) -> subprocess.CompletedProcess[str]:
    """``flashstock serve`` with ``flags``, run to its exit (no Redis: auth is checked before it)."""
    argv = serve_argv(free_port(), "redis://127.0.0.1:1/0", *flags)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_wrong_auth_settings_stop_the_start_naming_the_setting(secret, certs, tmp_path):
    nothing = start_exit("--auth", "on")
    assert nothing.returncode == 2 and "auth: on, but neither" in nothing.stderr, nothing.stderr
    missing = start_exit(*JWT_FLAGS, "--auth-jwt-keys", str(tmp_path / "nope.secret"))
    assert missing.returncode == 2 and "auth_jwt_keys:" in missing.stderr, missing.stderr
    no_audience = start_exit("--auth", "on", "--auth-jwt-keys", str(secret), "--auth-jwt-issuer", ISSUER)
    assert no_audience.returncode == 2 and "auth_jwt_audience" in no_audience.stderr, no_audience.stderr
    roles = tmp_path / "roles.toml"
    roles.write_text('"someone" = ["king"]\n')
    tls = ("--tls-cert", str(certs.node[0]), "--tls-key", str(certs.node[1]), "--tls-client-ca", str(certs.ca))
    unknown = start_exit(*tls, "--auth", "on", "--auth-cert-roles", str(roles))
    assert unknown.returncode == 2 and "auth_cert_roles:" in unknown.stderr and "king" in unknown.stderr
    no_mtls = start_exit("--auth", "on", "--auth-cert-roles", str(roles))
    assert no_mtls.returncode == 2 and "tls_client_ca" in no_mtls.stderr, no_mtls.stderr
    typo = start_exit("--auth", "yes")
    assert typo.returncode == 2 and "auth:" in typo.stderr, typo.stderr


def test_auth_off_on_a_reachable_host_warns_at_start(module_redis, jwt_node):
    node = NodeProcess(module_redis.url, extra_args=("--host", "0.0.0.0", *QUIET), ledger=jwt_node.ledger_url)
    with node:
        assert "auth is off on 0.0.0.0" in node.log()


DEMO = ("demo", "--auth", "--buyers", "200", "--users", "50", "--stock", "20", "--concurrency", "10")
DEMO_SMALL = ("--nodes", "1", "--no-board", "--review-dir", "")


@pytest.mark.slow
def test_the_demo_runs_with_tls_and_auth_on(monkeypatch):
    # Every link on TLS (Redis rediss:// with its ACL user, etcd with its users, mutual TLS to the nodes,
    # https to the board), and every call with a bearer token the nodes check.
    result = cli(*DEMO, "--tls", "--nodes", "1", "--review-dir", "")  # with the board
    assert result.exit_code == 0 and "all promises held" in result.output, result.output
    # The board's page on https, its address with a viewer's token the board turns into a cookie.
    assert re.search(r"the live board of the sale: https://127\.0\.0\.1:\d+/\?token=ey", result.output), result.output
    assert "auth on:" in result.output and "Redis on rediss://flashstock:***@" in result.output, result.output
    # Its nodes do check: with tokens they cannot verify, the demo's first call is refused.
    import flashstock.server.local.demo as demo

    monkeypatch.setattr(demo, "_demo_token", lambda folder, sub, role: token(b"x" * 40, sub, role))
    refused = cli(*DEMO, *DEMO_SMALL)
    assert refused.exit_code != 0
    assert isinstance(refused.exception, Unauthenticated) or "bad signature" in refused.output, refused.output


def test_a_local_cluster_with_auth_takes_the_tokens_token_make_signs(tmp_path, sku):
    folder = tmp_path / "cluster"
    up = cli("cluster", "up", "--nodes", "1", "--dir", str(folder), "--shards", "4", "--auth", "--board")
    try:
        assert up.exit_code == 0, up.output
        secret = folder / "jwt-hs256.secret"
        assert secret.stat().st_mode & 0o777 == 0o600 and "FLASHSTOCK_TOKEN=$(flashstock token make" in up.output
        address = LocalCluster.load(folder).node_addresses[0]
        made = cli("token", "make", "--key", str(secret), "--sub", "you", "--role", "operator")
        assert made.exit_code == 0, made.output
        put = cli("sku", "put", sku, "--stock", "5", "--addr", address, "--token", made.output.strip())
        assert put.exit_code == 0 and sku in put.output, put.output
        anonymous = cli("sku", "get", sku, "--addr", address)
        assert anonymous.exit_code == 1 and "no credentials" in anonymous.output, anonymous.output
        status = cli("cluster", "status", "--dir", str(folder))  # health stays open
        assert status.exit_code == 0, status.output
        _the_board_opens_with_the_viewer_token_up_printed(LocalCluster.load(folder), up.output)
    finally:
        down = cli("cluster", "down", "--dir", str(folder), "--purge")
    assert down.exit_code == 0, down.output


def _the_board_opens_with_the_viewer_token_up_printed(local: LocalCluster, output: str) -> None:
    """The board of ``cluster up --auth`` needs a token; the address ``up`` printed carries a viewer's."""
    printed = re.search(r"the live board: (\S+)", output)
    assert printed and printed[1].startswith(f"{local.board_url}?token="), output
    address = urllib.parse.urlsplit(printed[1])

    def get(path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", address.port, timeout=5)
        conn.request("GET", path, headers=headers or {})
        reply = conn.getresponse()
        reply.read()
        conn.close()
        return reply

    assert get("/api/state").status == 401 and get("/healthz").status == 200
    opened = get(f"/?{address.query}")
    assert opened.status == 303 and opened.getheader("location") == "/", opened.headers
    cookie = opened.getheader("set-cookie", "").partition(";")[0]
    assert cookie.startswith("flashstock_board_token=")
    assert get("/api/state", {"Cookie": cookie}).status == 200
