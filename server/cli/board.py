"""``flashstock board``: serve the live board of a sale (:mod:`flashstock.server.board`).

Two sets of TLS options: ``--tls-*`` are the board's client credentials
towards the nodes; ``--page-tls-*`` its own page's certificate (and, with
``--page-tls-client-ca``, mutual TLS: a browser or curl must present a
certificate that CA signed). ``--auth on`` puts the page behind the nodes'
kind of bearer token (:mod:`flashstock.server.board.access`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flashstock.server.cli.common import (
    DEFAULT_CLUSTER,
    RedisTlsCaOption,
    RedisTlsCertOption,
    RedisTlsKeyOption,
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    etcd_access,
    etcd_access_options,
    exit_error,
)
from flashstock.server.local.procs import BOARD_READY_LINE as READY_LINE

if TYPE_CHECKING:
    from flashstock.server.rpc.authz import Authorizer


@etcd_access_options
def board(
    redis_url: Annotated[
        str, typer.Option("--redis-url", envvar="FLASHSTOCK_REDIS_URL", help="The Redis the nodes use.")
    ] = "redis://127.0.0.1:6379/0",
    etcd: Annotated[
        str,
        typer.Option(
            "--etcd",
            envvar="FLASHSTOCK_ETCD",
            help="etcd endpoints (host:port, comma-separated): watch the cluster's live nodes.",
        ),
    ] = "",
    cluster: Annotated[
        str, typer.Option("--cluster", envvar="FLASHSTOCK_CLUSTER", help="The cluster's name in etcd.")
    ] = DEFAULT_CLUSTER,
    node: Annotated[
        list[str] | None,
        typer.Option(
            "--node",
            help="A node to watch instead of etcd's: its gRPC host:port, and =host:port of its metrics (repeat).",
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Where the page listens.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The page's port (0: any free one).")] = 8080,
    interval: Annotated[float, typer.Option(help="Seconds between readings of the nodes and Redis.")] = 1.0,
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_server_name: Annotated[
        str,
        typer.Option(
            "--tls-server-name",
            envvar="FLASHSTOCK_BOARD_TLS_SERVER_NAME",
            help="The name the nodes' certificate carries, when it does not name the addresses dialled "
            "(pod IPs in Kubernetes); needs --tls-ca.",
        ),
    ] = "",
    redis_tls_ca: RedisTlsCaOption = None,
    redis_tls_cert: RedisTlsCertOption = None,
    redis_tls_key: RedisTlsKeyOption = None,
    page_tls_cert: Annotated[
        str | None,
        typer.Option(
            "--page-tls-cert",
            envvar="FLASHSTOCK_BOARD_TLS_CERT",
            help="PEM certificate (chain) of the page itself: serve it over https (with --page-tls-key).",
            show_default=False,
        ),
    ] = None,
    page_tls_key: Annotated[
        str | None,
        typer.Option(
            "--page-tls-key", envvar="FLASHSTOCK_BOARD_TLS_KEY", help="PEM key of --page-tls-cert.", show_default=False
        ),
    ] = None,
    page_tls_client_ca: Annotated[
        str | None,
        typer.Option(
            "--page-tls-client-ca",
            envvar="FLASHSTOCK_BOARD_TLS_CLIENT_CA",
            help="PEM CA: mutual TLS on the page, every browser or client must present a certificate it signed.",
            show_default=False,
        ),
    ] = None,
    auth: Annotated[
        str,
        typer.Option(
            "--auth",
            envvar="FLASHSTOCK_BOARD_AUTH",
            help="on: the page, /api/state and /events need a bearer token of the role viewer, operator or admin "
            "(Authorization header, or ?token= on the address, kept in a cookie); /healthz stays open.",
        ),
    ] = "off",
    auth_jwt_keys: Annotated[
        str,
        typer.Option(
            "--auth-jwt-keys",
            envvar="FLASHSTOCK_BOARD_AUTH_JWT_KEYS",
            help="Files that verify tokens, comma-separated, as a node's auth_jwt_keys.",
        ),
    ] = "",
    auth_jwt_issuer: Annotated[
        str,
        typer.Option("--auth-jwt-issuer", envvar="FLASHSTOCK_BOARD_AUTH_JWT_ISSUER", help="The iss tokens must carry."),
    ] = "",
    auth_jwt_audience: Annotated[
        str,
        typer.Option(
            "--auth-jwt-audience", envvar="FLASHSTOCK_BOARD_AUTH_JWT_AUDIENCE", help="A value tokens' aud must hold."
        ),
    ] = "",
    auth_jwt_leeway_s: Annotated[
        float, typer.Option("--auth-jwt-leeway-s", help="Clock skew allowed on a token's exp and nbf, seconds.")
    ] = 30.0,
    auth_jwt_roles_claim: Annotated[
        str, typer.Option("--auth-jwt-roles-claim", help="The claim holding a token's roles.")
    ] = "roles",
) -> None:
    """Serve the live board of a sale: stock left, sales and attempts per second, conversion, UV/PV,
    latency, time to sell-out and goals per SKU; the nodes' health and the cluster's alerts."""
    from flashstock.server.board import BoardSources, NodeTls, node_addresses
    from flashstock.server.store.redis import RedisTls, masked_url

    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        exit_error("board", f"--redis-url: {masked_url(redis_url)!r} is not a redis://, rediss:// or unix:// URL")
    redis_tls = RedisTls(redis_tls_ca or "", redis_tls_cert or "", redis_tls_key or "")
    for problem in redis_tls.problems(redis_url):
        exit_error("board", problem.replace("redis_tls_", "--redis-tls-").replace("redis_url", "--redis-url"))
    if bool(tls_cert) != bool(tls_key):
        exit_error("board", "--tls-cert, --tls-key: give both (a client certificate and its key) or neither")
    if tls_server_name and not (tls_ca or tls_cert):
        exit_error("board", "--tls-server-name: needs --tls-ca (the nodes are reached over TLS)")
    node_tls = NodeTls(tls_ca or "", tls_cert or "", tls_key or "", tls_server_name) if tls_ca or tls_cert else None
    if not 0.1 <= interval <= 60:
        exit_error("board", f"--interval: {interval} is not between 0.1 and 60 seconds")
    if not 0 <= port < 65536:
        exit_error("board", f"--port: {port} is not a TCP port")
    if etcd and node:
        exit_error("board", "--etcd and --node: give one, the nodes come from etcd or from the list")
    try:
        nodes = node_addresses(node or [])
        if etcd:
            from flashstock.lockmgr import ClusterKeys, grpc_target

            ClusterKeys(cluster)
            for endpoint in etcd.split(","):
                grpc_target(endpoint)
    except ValueError as exc:
        exit_error("board", str(exc))
    sources = BoardSources(
        redis_url=redis_url,
        nodes=nodes,
        etcd=etcd,
        cluster=cluster,
        interval_s=interval,
        redis_tls=redis_tls,
        etcd_access=etcd_access("board"),
        node_tls=node_tls,
    )
    page_tls = _page_tls(page_tls_cert or "", page_tls_key or "", page_tls_client_ca or "")
    authorizer = _authorizer(
        auth, auth_jwt_keys, auth_jwt_issuer, auth_jwt_audience, auth_jwt_leeway_s, auth_jwt_roles_claim
    )
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        exit_error("board", f"--host/--port: cannot listen on {host}:{port}: {exc}")
    _warn_if_open(host, bool(page_tls), authorizer is not None)
    raise typer.Exit(asyncio.run(_serve(sources, sock, page_tls, authorizer)))


_PAGE_TLS_NAMES = {"tls_client_ca": "--page-tls-client-ca", "tls_cert": "--page-tls-cert", "tls_key": "--page-tls-key"}


def _page_tls(cert: str, key: str, client_ca: str) -> dict[str, Any]:
    """uvicorn's ``ssl_*`` settings of the page's own TLS ({} for plain HTTP); a bad file ends the command."""
    from flashstock.server._tls import TlsFiles

    files = TlsFiles(cert, key, client_ca)
    for problem in files.problems():
        exit_error("board", re.sub(r"\btls_(client_ca|cert|key)\b", lambda m: _PAGE_TLS_NAMES[m[0]], problem))
    if not files.on:
        return {}
    settings: dict[str, Any] = {"ssl_certfile": cert, "ssl_keyfile": key}
    if client_ca:
        settings.update(ssl_ca_certs=client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return settings


def _authorizer(
    auth: str, keys: str, issuer: str, audience: str, leeway_s: float, roles_claim: str
) -> Authorizer | None:
    """The page's token check (None with ``--auth off``); bad settings end the command."""
    from flashstock.server.rpc.authz import AuthSettings, split_paths

    settings = AuthSettings(
        auth=auth,
        jwt_keys=split_paths(keys),
        jwt_issuer=issuer,
        jwt_audience=audience,
        jwt_leeway_s=leeway_s,
        jwt_roles_claim=roles_claim,
    )
    if auth == "on" and not settings.jwt_keys:
        exit_error("board", "--auth on: give --auth-jwt-keys (the board takes bearer tokens)")
    try:
        return settings.authorizer()
    except ValueError as exc:
        exit_error("board", re.sub(r"\bauth(_jwt_\w+)?\b", lambda m: "--" + m[0].replace("_", "-"), str(exc)))


def _warn_if_open(host: str, tls: bool, auth: bool) -> None:
    from flashstock.server._tls import is_loopback

    if is_loopback(host):
        return
    if not tls:
        print(
            f"flashstock board: warning: the page is plain HTTP on {host}, which other machines can reach "
            "(give it --page-tls-cert and --page-tls-key)",
            file=sys.stderr,
            flush=True,
        )
    if not auth:
        print(
            f"flashstock board: warning: the page needs no token on {host}, which other machines can reach "
            "(--auth on with --auth-jwt-keys)",
            file=sys.stderr,
            flush=True,
        )


async def _serve(sources: object, sock: socket.socket, page_tls: dict[str, Any], authorizer: Authorizer | None) -> int:
    import uvicorn

    from flashstock.server.board import BoardSources, Collector, create_app

    assert isinstance(sources, BoardSources)
    app = create_app(Collector(sources), authorizer=authorizer, secure=bool(page_tls))
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1, **page_tls)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if server.started:
        host, port = sock.getsockname()[:2]
        print(f"{READY_LINE} {'https' if page_tls else 'http'}://{_url_host(host)}:{port}/", flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
