"""``flashstock board``: serve the live board of a sale (:mod:`flashstock.server.board`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Annotated

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
    redis_tls_ca: RedisTlsCaOption = None,
    redis_tls_cert: RedisTlsCertOption = None,
    redis_tls_key: RedisTlsKeyOption = None,
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
    node_tls = NodeTls(tls_ca or "", tls_cert or "", tls_key or "") if tls_ca or tls_cert else None
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
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        exit_error("board", f"--host/--port: cannot listen on {host}:{port}: {exc}")
    raise typer.Exit(asyncio.run(_serve(sources, sock)))


async def _serve(sources: object, sock: socket.socket) -> int:
    import uvicorn

    from flashstock.server.board import BoardSources, Collector, create_app

    assert isinstance(sources, BoardSources)
    app = create_app(Collector(sources))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if server.started:
        host, port = sock.getsockname()[:2]
        print(f"{READY_LINE} http://{host}:{port}/", flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0
