"""The board in a real headless browser (Debian's chromium driven by pytest-playwright), as an operator sees it.

- During a sale, units taken through a real node: the page's stock-left
  figure falls, the sold and attempts curves move; a screenshot is saved
  (``build/artifacts/board.png``).
- The page on https behind auth: refused without a token, opened by a
  viewer's ``?token=`` on its address, which leaves the address as a cookie.
- A cluster (etcd, Redis, nodes): Redis lost → the page says so and recovers
  when it is back; the same for etcd; a node killed mid-sale → its row turns
  unhealthy.

The per-second figures are written per the Redis contract
(tests.helpers.sale_figures) beside the real deductions.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest
from playwright.sync_api import Browser, Page, expect

from flashstock.client import AdminClient, StockClient
from flashstock.server.local.procs import BoardProcess, NodeProcess, RedisServer, free_port
from tests.helpers.cluster import CLUSTER, ClusterStack
from tests.helpers.failpoints import KillNode
from tests.helpers.tls import make_certs

pytestmark = pytest.mark.slow

T = TypeVar("T")

WAIT_MS = 15_000
"""How long the page may take to show a change (its board polls every 0.3 s)."""


def _number(page: Page, selector: str, attribute: str) -> float:
    value = page.locator(selector).get_attribute(attribute)
    return float(value) if value else 0.0


class Crowd:
    """Buyers taking units through a node, one every few ms (the node counts the sale's figures itself)."""

    def __init__(self, node_address: str, redis_url: str, sku: str) -> None:
        self._address, self._redis_url, self._sku = node_address, redis_url, sku
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.taken = 0

    def __enter__(self) -> Crowd:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with StockClient(addresses=self._address) as stock:
            i = 0
            while not self._stop.is_set():
                user = f"buyer-{i}"
                result = stock.deduct(self._sku, user)
                self.taken += result.outcome.name == "OK"
                i += 1
                self._stop.wait(0.02)


def test_during_a_sale_stock_left_falls_and_the_curves_move(page: Page, artifacts: Path) -> None:
    metrics_port = free_port()
    sku = "board-browser-hot"
    with (
        RedisServer() as server,
        NodeProcess(server.url, extra_args=("--metrics-port", str(metrics_port))) as node,
        BoardProcess(server.url, nodes=[f"{node.address}=127.0.0.1:{metrics_port}"], interval_s=0.3) as board,
    ):
        with AdminClient(addresses=node.address) as admin:
            admin.put_sku(
                sku,
                2_000,
                goal_units=1_000,
                goal_sellout_ms=600_000,
                goal_buyers=500,
                unit_price_minor=1_999,
                currency="EUR",
            )
        page.goto(board.url)
        left = page.locator(f'[data-testid="sku-left"][data-sku="{sku}"]')
        expect(left).to_have_attribute("data-value", "2000", timeout=WAIT_MS)
        expect(page.locator('[data-testid="node-row"]')).to_have_attribute("data-health", "SERVING")
        with Crowd(node.address, server.url, sku):
            expect(left).not_to_have_attribute("data-value", "2000", timeout=WAIT_MS)
            first = _number(page, f'[data-testid="sku-left"][data-sku="{sku}"]', "data-value")
            charts = f'[data-testid="sku-charts"][data-sku="{sku}"]'
            page.wait_for_function(
                """([sel, first]) => {
                    const left = document.querySelector(`[data-testid="sku-left"]${sel}`);
                    const box = document.querySelector(`[data-testid="sku-charts"]${sel}`);
                    return Number(left.dataset.value) < first
                        && Number(box.dataset.maxSoldRate) > 0 && Number(box.dataset.maxAttemptRate) > 0;
                }""",
                arg=[f'[data-sku="{sku}"]', first],
                timeout=WAIT_MS,
            )
            points = _number(page, charts, "data-points")
            page.wait_for_function(
                "([sel, n]) => Number(document.querySelector(sel).dataset.points) > n",
                arg=[charts, points],
                timeout=WAIT_MS,
            )
            assert page.locator(f'[data-testid="sku-conv-ok"][data-sku="{sku}"]').inner_text() != "–"
            goals_box = page.locator(f'[data-testid="sku-goals"][data-sku="{sku}"]')
            expect(goals_box.locator('[data-testid="goal-units"]')).to_have_attribute("data-state", "open")
            expect(goals_box.locator('[data-testid="goal-buyers"]')).to_be_visible()
            expect(goals_box.locator('[data-testid="goal-sellout"]')).to_be_visible()
            expect(page.locator(f'[data-testid="sku-amount"][data-sku="{sku}"]')).to_contain_text("EUR")
            assert page.locator(f"{charts} canvas").count() >= 2  # uPlot drew both charts
            shot = artifacts / "board.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"board screenshot: {shot}")
        assert shot.stat().st_size > 0


def test_the_https_page_behind_auth_opens_with_a_token_on_its_address(browser: Browser, tmp_path: Path) -> None:
    certs = make_certs(tmp_path, "board-browser")
    secret = tmp_path / "jwt.secret"
    secret.write_text("b" * 40 + "\n")
    now = int(time.time())
    claims = {"sub": "alice", "roles": ["viewer"], "iss": "bb", "aud": "flashstock", "iat": now, "exp": now + 600}
    viewer = jwt.encode(claims, secret.read_bytes().strip(), algorithm="HS256")
    page_tls = ("--page-tls-cert", str(certs.node_cert), "--page-tls-key", str(certs.node_key))
    auth = (
        "--auth",
        "on",
        "--auth-jwt-keys",
        str(secret),
        "--auth-jwt-issuer",
        "bb",
        "--auth-jwt-audience",
        "flashstock",
    )
    context = browser.new_context(ignore_https_errors=True)  # the test's CA is not the browser's
    with (
        RedisServer() as server,
        BoardProcess(
            server.url, nodes=[f"127.0.0.1:{free_port()}"], interval_s=0.3, extra_args=(*page_tls, *auth)
        ) as board,
    ):
        try:
            page = context.new_page()
            refused = page.goto(board.url)
            assert refused is not None and refused.status == 401
            page.goto(f"{board.url}?token={viewer}")
            assert page.url == board.url  # the token left the address bar
            # The page's feed (/events) and files came through with the cookie alone.
            expect(page.locator('[data-testid="node-row"]')).to_have_count(1, timeout=WAIT_MS)
            assert page.evaluate("document.cookie") == ""  # HttpOnly: the page's scripts cannot read it
            assert [c["name"] for c in context.cookies() if c["secure"]] == ["flashstock_board_token"]
        finally:
            context.close()


# -- a cluster: Redis, etcd and a node lost -------------------------------------------------------


def off_loop(work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` on a thread of its own: Playwright's sync API runs an event loop in the test's
    thread, and the cluster's readers call ``asyncio.run``."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work, *args).result()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStack]:
    """Two nodes, etcd and Redis of this module's own; its tests break them in file order."""
    stack = ClusterStack(tmp_path_factory.mktemp("board"), 2)
    off_loop(stack.up)
    try:
        yield stack
    finally:
        print(stack.logs())
        off_loop(stack.down)


@pytest.fixture(scope="module")
def cluster_board(cluster: ClusterStack) -> Iterator[BoardProcess]:
    """The board over the cluster, its nodes found through etcd."""
    with BoardProcess(cluster.redis_url, etcd=cluster.endpoints, cluster=CLUSTER, interval_s=0.3) as board:
        yield board


def test_the_page_says_when_redis_is_lost_and_recovers(
    page: Page, cluster: ClusterStack, cluster_board: BoardProcess
) -> None:
    page.goto(cluster_board.url)
    expect(page.locator('[data-testid="node-row"][data-health="SERVING"]')).to_have_count(2, timeout=WAIT_MS)
    problems = page.locator('[data-testid="problems"]')
    expect(problems).to_be_hidden()
    # The nodes registered their metrics addresses in etcd, and the board read them there.
    with urllib.request.urlopen(cluster_board.url + "api/state", timeout=5) as reply:
        nodes = json.load(reply)["nodes"]
    assert sorted(n["metrics"] for n in nodes) == sorted(f"127.0.0.1:{p}" for p in cluster.metrics_ports)
    assert all(n["metrics_ok"] and n["owned_shards"] > 0 for n in nodes)
    off_loop(cluster.kill_process, "redis")
    try:
        expect(problems).to_be_visible(timeout=WAIT_MS)
        expect(problems).to_contain_text("redis unreachable")
    finally:
        off_loop(cluster.start_process, "redis")
    expect(problems).to_be_hidden(timeout=30_000)


def test_the_page_says_when_etcd_is_lost_and_recovers(
    page: Page, cluster: ClusterStack, cluster_board: BoardProcess
) -> None:
    page.goto(cluster_board.url)
    problems = page.locator('[data-testid="problems"]')
    expect(page.locator('[data-testid="node-row"]')).to_have_count(2, timeout=WAIT_MS)
    off_loop(cluster.stop_process, "etcd")
    try:
        expect(problems).to_contain_text("etcd unreachable", timeout=WAIT_MS)
        # The nodes last seen are still shown, and still probed.
        expect(page.locator('[data-testid="node-row"]')).to_have_count(2)
    finally:
        off_loop(cluster.start_process, "etcd")
    expect(problems).to_be_hidden(timeout=30_000)
    expect(page.locator('[data-testid="node-row"][data-registered="true"]')).to_have_count(2, timeout=30_000)


def test_a_node_killed_mid_sale_turns_its_row_unhealthy(
    page: Page, cluster: ClusterStack, cluster_board: BoardProcess
) -> None:
    off_loop(cluster.wait_owners, {0, 1})
    sku = "board-browser-cluster"
    with AdminClient(cluster.client_config()) as admin:
        admin.put_sku(sku, 100_000)
    page.goto(cluster_board.url)
    victim = cluster.node_ids[1]
    row = page.locator(f'[data-testid="node-row"][data-node="{victim}"]')
    expect(row).to_have_attribute("data-health", "SERVING", timeout=WAIT_MS)
    with Crowd(cluster.node_addresses[0], cluster.redis_url, sku):
        left = page.locator(f'[data-testid="sku-left"][data-sku="{sku}"]')
        expect(left).not_to_have_attribute("data-value", "100000", timeout=WAIT_MS)
        off_loop(KillNode(cluster, 1).inject)
        expect(row).to_have_attribute("data-health", "unreachable", timeout=WAIT_MS)
        expect(page.locator('[data-testid="alerts"] li[data-kind="health"]')).to_contain_text(victim)
        # Its lease expires: it leaves etcd's registry, and stays on the board, red.
        expect(row).to_have_attribute("data-registered", "false", timeout=WAIT_MS)
        survivor = page.locator(f'[data-testid="node-row"][data-node="{cluster.node_ids[0]}"]')
        expect(survivor).to_have_attribute("data-health", "SERVING")
