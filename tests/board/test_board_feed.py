"""``flashstock board`` as a process, read over HTTP: the snapshot of a sale, one reader for every viewer, bad settings.

A real Redis and node (with its metrics port) of this module's own; the
sale's units are taken through the node, and its per-second figures are
written per the Redis contract (tests.helpers.sale_figures).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py

from flashstock.client import AdminClient, StockClient
from flashstock.server.local.procs import BoardProcess, NodeProcess, RedisServer, free_port
from tests.helpers import command_calls, eventually
from tests.helpers.sale_figures import write_second


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[RedisServer, NodeProcess, int]]:
    """A Redis and a node serving its metrics on the returned port."""
    metrics_port = free_port()
    with (
        RedisServer() as server,
        # The tests write the sale's figures themselves, to the number: the node counts none of its own.
        NodeProcess(server.url, extra_args=("--metrics-port", str(metrics_port), "--stats-interval-ms", "0")) as node,
    ):
        yield server, node, metrics_port


@pytest.fixture(scope="module")
def board(stack: tuple[RedisServer, NodeProcess, int]) -> Iterator[BoardProcess]:
    """The board over the module's Redis and node, polling every 0.2 s."""
    server, node, metrics_port = stack
    with BoardProcess(server.url, nodes=[f"{node.address}=127.0.0.1:{metrics_port}"], interval_s=0.2) as b:
        yield b


def state(board: BoardProcess) -> dict[str, Any]:
    """The board's latest snapshot."""
    with urllib.request.urlopen(board.url + "api/state", timeout=5) as reply:
        return json.load(reply)  # type: ignore[no-any-return]


def sku_entry(board: BoardProcess, sku: str) -> dict[str, Any] | None:
    return next((s for s in state(board)["skus"] if s["sku"] == sku), None)


def test_the_snapshot_shows_a_sale_and_its_node(
    stack: tuple[RedisServer, NodeProcess, int], board: BoardProcess
) -> None:
    server, node, _ = stack
    sku = "board-feed-1"
    with AdminClient(addresses=node.address) as admin, StockClient(addresses=node.address) as stock:
        admin.put_sku(sku, 100)
        for i in range(30):
            stock.deduct(sku, f"u{i}")
    second = int(time.time())
    redis = redis_py.Redis.from_url(server.url)
    for s in range(second - 3, second + 3):
        write_second(
            redis,
            sku,
            s,
            outcomes={"ok": 10, "sold_out": 30},
            units=10,
            visitors=[f"u{i}" for i in range(40)],
            buyers=[f"u{i}" for i in range(10)],
        )
    entry = eventually(lambda: sku_entry(board, sku), until=lambda e: e is not None and e["attempts_per_s"] > 0)
    assert (entry["left"], entry["sold"], entry["total"]) == (70, 30, 100)
    assert entry["attempts_per_s"] == pytest.approx(40.0)
    assert entry["sold_per_s"] == pytest.approx(10.0)
    assert entry["pv"] == 6 * 40
    assert (entry["uv"], entry["buyers"]) == (40, 10)
    assert entry["conversion_ok_attempts"] == pytest.approx(0.25)
    assert entry["conversion_buyers_visitors"] == pytest.approx(0.25)
    assert 0.25 < entry["p50_ms"] <= 0.5
    assert entry["sellout"]["projected_s"] == pytest.approx(7.0)
    [row] = state(board)["nodes"]
    assert (row["address"], row["health"], row["metrics_ok"]) == (node.address, "SERVING", True)
    assert state(board)["problems"] == []


def _open_viewers(board: BoardProcess, count: int) -> list[socket.socket]:
    viewers = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", board.port), timeout=5)
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: board\r\nAccept: text/event-stream\r\n\r\n")
        viewers.append(sock)
    return viewers


def _polls(board: BoardProcess) -> int:
    return int(state(board)["polls"])


def _reads_per_poll(board: BoardProcess, redis: redis_py.Redis, polls: int = 10) -> float:
    """Redis PFCOUNT calls per board poll, over ``polls`` polls."""
    first, before = _polls(board), command_calls(redis)
    last = eventually(lambda: _polls(board), until=lambda p: p >= first + polls, timeout=20)
    after = command_calls(redis)
    return (after.get("pfcount", 0) - before.get("pfcount", 0)) / (last - first)


def test_a_hundred_viewers_cost_redis_no_more_than_one(
    stack: tuple[RedisServer, NodeProcess, int], board: BoardProcess
) -> None:
    server, _, _ = stack
    redis = redis_py.Redis.from_url(server.url)
    eventually(lambda: state(board)["skus"])  # some SKU is read every poll
    alone = _reads_per_poll(board, redis)
    viewers = _open_viewers(board, 100)
    try:
        eventually(lambda: urllib.request.urlopen(board.url + "healthz").read(), until=lambda b: b"ok 100 viewers" in b)
        crowded = _reads_per_poll(board, redis)
        for sock in viewers:  # and every one of them is fed
            assert b"data: {" in sock.recv(65536)
    finally:
        for sock in viewers:
            sock.close()
    assert alone > 0
    assert crowded == pytest.approx(alone, rel=0.25)
    # Closed pages are forgotten: nothing is kept for them.
    eventually(lambda: urllib.request.urlopen(board.url + "healthz").read(), until=lambda b: b"ok 0 viewers" in b)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--interval", "0"], "--interval"),
        (["--node", "no-port"], "--node"),
        (["--redis-url", "http://127.0.0.1:1"], "--redis-url"),
        (["--etcd", "127.0.0.1:2379", "--node", "127.0.0.1:1"], "--etcd and --node"),
        (["--cluster", "bad/name", "--etcd", "127.0.0.1:2379"], "cluster"),
    ],
)
def test_bad_settings_are_refused_at_start(args: list[str], named: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flashstock.server", "board", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done
    assert named in done.stderr


def test_a_port_in_use_is_refused(board: BoardProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flashstock.server", "board", "--port", str(board.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--host/--port" in done.stderr
