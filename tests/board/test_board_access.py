"""``flashstock board``'s own page on TLS (mutual TLS too) and behind a viewer's bearer token, as a process.

Real certificates (trustme, :mod:`tests.helpers.tls`), real HS256 tokens,
a real board over the session's Redis; its one node is a port nobody
listens on (the page serves whatever the nodes do). Read with
:mod:`http.client`, which follows no redirect: the ``?token=`` one is looked at.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from flashstock.server.local.procs import BoardProcess, RedisServer, free_port
from tests.helpers.tls import Certs, make_certs

ISSUER, AUDIENCE = "board-test", "flashstock"


def token(secret: Path, sub: str, *roles: str, ttl_s: int = 600) -> str:
    now = int(time.time())
    claims = {"sub": sub, "roles": list(roles), "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret.read_bytes().strip(), algorithm="HS256")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("board-certs"), "board")


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("board-jwt") / "jwt.secret"
    path.write_text("s" * 40 + "\n")
    return path


def page_tls(certs: Certs) -> tuple[str, ...]:
    return ("--page-tls-cert", str(certs.node_cert), "--page-tls-key", str(certs.node_key))


def auth_args(secret: Path) -> tuple[str, ...]:
    return (
        "--auth",
        "on",
        "--auth-jwt-keys",
        str(secret),
        "--auth-jwt-issuer",
        ISSUER,
        "--auth-jwt-audience",
        AUDIENCE,
    )


@pytest.fixture(scope="module")
def board(redis_server: RedisServer, certs: Certs, secret: Path) -> Iterator[BoardProcess]:
    """A board whose page is on TLS and needs a viewer's token."""
    nodes = [f"127.0.0.1:{free_port()}"]
    with BoardProcess(redis_server.url, nodes=nodes, extra_args=(*page_tls(certs), *auth_args(secret))) as b:
        yield b


def trusting(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def get(
    board: BoardProcess, path: str, context: ssl.SSLContext, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPResponse, str]:
    """One GET over https: its status, the response (headers), and its body's first line or all of it."""
    conn = http.client.HTTPSConnection("127.0.0.1", board.port, context=context, timeout=5)
    conn.request("GET", path, headers=headers or {})
    reply = conn.getresponse()
    body = reply.readline().decode() if reply.getheader("content-type", "").startswith("text/event-stream") else ""
    body = body or reply.read().decode()
    conn.close()
    return reply.status, reply, body


def test_the_page_is_served_over_https_and_says_so(board: BoardProcess, certs: Certs) -> None:
    assert board.url.startswith("https://")
    assert f"flashstock board on https://127.0.0.1:{board.port}/" in board.output()
    status, _, body = get(board, "/healthz", trusting(certs.ca))
    assert status == 200 and body.startswith("ok"), body


def test_plaintext_and_a_stranger_ca_are_refused(board: BoardProcess, tmp_path: Path) -> None:
    plain = http.client.HTTPConnection("127.0.0.1", board.port, timeout=5)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain.request("GET", "/healthz")
        plain.getresponse()
    plain.close()
    stranger = make_certs(tmp_path, "stranger")
    with pytest.raises(ssl.SSLCertVerificationError):
        get(board, "/healthz", trusting(stranger.ca))


def test_without_a_token_the_page_state_and_feed_are_refused_and_healthz_is_open(
    board: BoardProcess, certs: Certs
) -> None:
    context = trusting(certs.ca)
    for path in ("/", "/api/state", "/events", "/static/board.js"):
        status, reply, body = get(board, path, context)
        assert status == 401 and "no credentials" in body, (path, status, body)
        assert reply.getheader("www-authenticate", "").startswith("Bearer")
    status, _, body = get(board, "/api/state", context, {"Authorization": "Bearer not-a-jwt"})
    assert status == 401 and "not a JWT" in body, body
    assert get(board, "/healthz", context)[0] == 200


def test_a_buyer_is_forbidden_and_a_viewer_sees_page_state_and_feed(
    board: BoardProcess, certs: Certs, secret: Path
) -> None:
    context = trusting(certs.ca)
    buyer = {"Authorization": f"Bearer {token(secret, 'gateway', 'buyer')}"}
    status, _, body = get(board, "/api/state", context, buyer)
    assert status == 403 and "needs the role viewer" in body and "holds buyer" in body, body
    forged = {"Authorization": f"Bearer {jwt.encode({'sub': 'x'}, 'k' * 40, algorithm='HS256')}"}
    assert get(board, "/api/state", context, forged)[0] == 401
    viewer = {"Authorization": f"Bearer {token(secret, 'alice', 'viewer')}"}
    status, _, page = get(board, "/", context, viewer)
    assert status == 200 and "<html" in page.lower()
    status, _, state = get(board, "/api/state", context, viewer)
    assert status == 200 and "nodes" in json.loads(state)
    status, reply, first = get(board, "/events", context, viewer)
    assert status == 200 and reply.getheader("content-type", "").startswith("text/event-stream")
    assert first.startswith("retry:"), first


def test_a_token_on_the_address_becomes_a_cookie_and_leaves_the_address(
    board: BoardProcess, certs: Certs, secret: Path
) -> None:
    context = trusting(certs.ca)
    viewer = token(secret, "bob", "operator")
    status, reply, _ = get(board, f"/?token={viewer}&sku=hot", context)
    assert status == 303 and reply.getheader("location") == "/?sku=hot"
    cookie = reply.getheader("set-cookie", "")
    assert cookie.startswith(f"flashstock_board_token={viewer};")
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= attributes, cookie
    with_cookie = {"Cookie": f"flashstock_board_token={viewer}"}
    assert get(board, "/", context, with_cookie)[0] == 200
    assert get(board, "/api/state", context, with_cookie)[0] == 200
    # A bad token on the address sets nothing; a buyer's is refused too.
    status, reply, body = get(board, "/?token=junk", context)
    assert status == 401 and reply.getheader("set-cookie") is None, body
    assert get(board, f"/?token={token(secret, 'gw', 'buyer')}", context)[0] == 403
    assert get(board, "/", context, {"Cookie": "flashstock_board_token=junk"})[0] == 401


def test_mutual_tls_refuses_a_client_without_a_certificate(redis_server: RedisServer, certs: Certs) -> None:
    nodes = [f"127.0.0.1:{free_port()}"]
    mutual = (*page_tls(certs), "--page-tls-client-ca", str(certs.ca))
    with BoardProcess(redis_server.url, nodes=nodes, extra_args=mutual) as board:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get(board, "/api/state", trusting(certs.ca))
        status, _, state = get(board, "/api/state", trusting(certs.ca, certs.client_cert, certs.client_key))
        assert status == 200 and "nodes" in json.loads(state)  # auth off: the certificate is enough


def test_bad_page_tls_or_auth_settings_stop_the_board_before_it_serves(certs: Certs, secret: Path) -> None:
    def start(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "flashstock.server", "board", "--node", "127.0.0.1:1", "--port", "0", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    missing = start("--page-tls-cert", str(certs.node_cert) + ".gone", "--page-tls-key", str(certs.node_key))
    assert missing.returncode == 2 and "--page-tls-cert" in missing.stderr and "not a file" in missing.stderr
    mismatched = start("--page-tls-cert", str(certs.node_cert), "--page-tls-key", str(certs.client_key))
    assert mismatched.returncode == 2 and "--page-tls-key" in mismatched.stderr, mismatched.stderr
    keyless = start("--auth", "on")
    assert keyless.returncode == 2 and "--auth-jwt-keys" in keyless.stderr, keyless.stderr
    no_issuer = start("--auth", "on", "--auth-jwt-keys", str(secret))
    assert no_issuer.returncode == 2 and "--auth-jwt-issuer" in no_issuer.stderr, no_issuer.stderr
    assert "flashstock board on" not in missing.stdout + mismatched.stdout + keyless.stdout + no_issuer.stdout


def test_a_plaintext_open_page_on_a_reachable_host_warns(redis_server: RedisServer) -> None:
    nodes = [f"127.0.0.1:{free_port()}"]
    with BoardProcess(redis_server.url, nodes=nodes, extra_args=("--host", "0.0.0.0")) as board:
        out = board.output()
    assert "the page is plain HTTP on 0.0.0.0" in out and "needs no token on 0.0.0.0" in out, out
