"""The board's one reader: every ``interval`` it reads the nodes and Redis once and hands the snapshot to every viewer.

::

    collector = Collector(BoardSources(redis_url="redis://127.0.0.1:6379/0", nodes=(NodeAddress("127.0.0.1:50051"),)))
    task = asyncio.create_task(collector.run())
    queue = collector.subscribe()          # the latest snapshot at once, then each new one
    snapshot = await queue.get()

One task per board process does all the reading (:meth:`Collector.run`), so
a hundred open pages cost the nodes, Redis and etcd no more than one: each
viewer gets a ``Queue(maxsize=1)`` whose stale snapshot is replaced, never
queued behind, when a slow viewer has not taken it yet.

Per poll: the nodes (etcd's registry, or the given list); each node's health
(``grpc.health.v1`` Check of the stock service) and ``/metrics``; Redis's
shard count (``fs:config``), each shard's active SKUs, and per SKU its hash,
sale totals, PFCOUNTs and the last seconds' figures, in one pipeline. A
source that fails is named in ``problems`` and the rest is still shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from flashstock.lockmgr import NO_ACCESS, EtcdAccess, etcd_client, read_view, shard_of
from flashstock.server.board.figures import (
    RATE_SECONDS,
    NodeMemory,
    SaleMemory,
    metric_sums,
    node_alerts,
    node_rates,
    sku_figures,
)
from flashstock.server.store.keys import CONFIG_KEY, SKU_INDEX_KEY, ShardKeys
from flashstock.server.store.redis import NO_TLS, RedisTls

log = logging.getLogger(__name__)

STOCK_SERVICE = "flashstock.v1.StockService"
"""The service whose health the board asks each node for."""

MAX_SKUS = 24
"""At most this many SKUs are shown: the most recently tried first, then the index's first ones."""

GONE_HOLD_S = 300.0
"""How long a node that left etcd's registry stays on the board (shown as it answers, unregistered)."""

ACTIVE_WINDOW_S = 3600
"""A SKU tried within this many seconds counts as on sale (active set score)."""


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """A node the board watches: its gRPC address and, when known, its metrics address."""

    address: str
    """``host:port`` of its gRPC service."""
    metrics: str = ""
    """``host:port`` of its ``/metrics`` endpoint (``""``: not read)."""
    node: str = ""
    """Its id (etcd's; the address when given as a list)."""
    registered: bool = True
    """False for a node that left etcd's registry (its lease is gone) and is still shown for a while."""

    @classmethod
    def parse(cls, text: str) -> NodeAddress:
        """``ADDR`` or ``ADDR=METRICS_ADDR`` (``--node``); ValueError naming what is wrong."""
        address, _, metrics = text.partition("=")
        for part in (address, metrics) if metrics else (address,):
            host, sep, port = part.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"--node: {text!r} is not host:port or host:port=metrics_host:metrics_port")
        return cls(address, metrics, address)


@dataclass(frozen=True)
class BoardSources:
    """Where the board reads from, and how often."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """The Redis holding the stock and the sale figures."""
    nodes: Sequence[NodeAddress] = ()
    """The nodes to watch, when not found through etcd."""
    etcd: str = ""
    """etcd endpoints (comma-separated); when set, the nodes are the cluster's live ones."""
    cluster: str = "flashstock"
    """The cluster's name in etcd."""
    interval_s: float = 1.0
    """Seconds between polls."""
    timeout_s: float = 0.5
    """How long each node call (health, metrics) and each Redis or etcd read may take."""
    redis_tls: RedisTls = NO_TLS
    """The TLS files of a ``rediss://`` ``redis_url``."""
    etcd_access: EtcdAccess = NO_ACCESS
    """TLS files and the etcd user for ``etcd``."""
    node_tls: NodeTls | None = None
    """TLS to the nodes' gRPC and metrics ports; None = plaintext."""


@dataclass(frozen=True)
class NodeTls:
    """The board's TLS to the nodes (PEM paths): the CA of their certificates, and its own for mutual TLS."""

    ca: str
    cert: str = ""
    key: str = ""
    server_name: str = ""
    """The name the nodes' certificate must carry, when it does not name the address dialled (a pod IP)."""

    def channel_options(self) -> list[tuple[str, str]]:
        """For the gRPC health checks: the name to check, if not the address's."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For the gRPC health checks."""

        def read(path: str) -> bytes | None:
            if not path:
                return None
            with open(path, "rb") as f:
                return f.read()

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))

    def context(self) -> ssl.SSLContext:
        """For the metrics pages (HTTPS)."""
        context = ssl.create_default_context(cafile=self.ca or None)
        if self.cert:
            context.load_cert_chain(self.cert, self.key)
        return context


@dataclass
class _State:
    sales: dict[str, SaleMemory] = field(default_factory=dict)
    nodes: dict[str, NodeMemory] = field(default_factory=dict)


class Collector:
    """Reads the sources once per interval and fans the snapshot out to every subscriber."""

    def __init__(self, sources: BoardSources) -> None:
        self.sources = sources
        """Where it reads."""
        self.latest: dict[str, Any] = {"at_ms": 0, "skus": [], "nodes": [], "alerts": [], "problems": [], "polls": 0}
        """The last snapshot."""
        self.polls = 0
        """Polls done so far: one per interval, however many subscribers."""
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._state = _State()
        self._redis: Redis | None = None
        self._etcd: Any = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._known: dict[str, tuple[NodeAddress, float]] = {}
        self._encoded: tuple[dict[str, Any] | None, str] = (None, "")
        tls = sources.node_tls
        self._credentials = tls.channel_credentials() if tls else None
        self._ssl = tls.context() if tls else None
        self._channel_options = tls.channel_options() if tls else []
        self._server_name = tls.server_name if tls else ""

    # -- fan-out ---------------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue that holds the latest snapshot now and is refilled on every poll; :meth:`unsubscribe` it."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1)
        queue.put_nowait(self.latest)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Stop filling ``queue``."""
        self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        """How many viewers are subscribed."""
        return len(self._subscribers)

    def encoded(self, snapshot: dict[str, Any]) -> str:
        """``snapshot`` as compact JSON, encoded once per poll however many viewers send it."""
        if snapshot is not self._encoded[0]:
            self._encoded = (snapshot, json.dumps(snapshot, separators=(",", ":")))
        return self._encoded[1]

    def _publish(self, snapshot: dict[str, Any]) -> None:
        self.latest = snapshot
        for queue in self._subscribers:
            # A viewer that has not taken the last one gets this one instead: never a backlog.
            with contextlib.suppress(asyncio.QueueEmpty):
                if queue.full():
                    queue.get_nowait()
            queue.put_nowait(snapshot)

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll every ``interval_s`` until cancelled."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while True:
                try:
                    self._publish(await self.poll())
                except Exception:  # noqa: BLE001 - a bug in one poll must not end the board
                    log.exception("board poll failed")
                next_at = max(next_at + self.sources.interval_s, loop.time())
                await asyncio.sleep(next_at - loop.time())
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the connections."""
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None
        await self._close_etcd()
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
        self._channels.clear()

    async def poll(self) -> dict[str, Any]:
        """Read every source once; the snapshot."""
        self.polls += 1
        problems: list[str] = []
        now_ms = int(time.time() * 1000)
        nodes_task = asyncio.create_task(self._nodes(problems))
        try:
            skus = await self._skus(now_ms)
        except Exception as exc:  # noqa: BLE001 - shown on the page, read again next poll
            problems.append(f"redis unreachable: {_reason(exc)}")
            skus = []
            if self._redis is not None:
                with contextlib.suppress(Exception):
                    await self._redis.aclose()
                self._redis = None
        nodes, alerts = await nodes_task
        return {
            "at_ms": now_ms,
            "interval_s": self.sources.interval_s,
            "polls": self.polls,
            "skus": skus,
            "nodes": nodes,
            "alerts": alerts,
            "problems": problems,
        }

    # -- Redis -------------------------------------------------------------------------------------

    def _redis_client(self) -> Redis:
        if self._redis is None:
            timeout = self.sources.timeout_s * 2
            self._redis = Redis.from_url(
                self.sources.redis_url,
                decode_responses=True,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                **self.sources.redis_tls.kwargs(self.sources.redis_url),
            )
        return self._redis

    async def _skus(self, now_ms: int) -> list[dict[str, Any]]:
        redis = self._redis_client()
        shards = int(await redis.hget(CONFIG_KEY, "shards") or 0)
        second = now_ms // 1000
        chosen: dict[str, int] = {}
        if shards:
            async with redis.pipeline(transaction=False) as pipe:
                for shard in range(shards):
                    pipe.zrangebyscore(ShardKeys(shard).active, second - ACTIVE_WINDOW_S, "+inf", withscores=True)
                replies = await pipe.execute()
            active = sorted(
                ((int(score), sku, shard) for shard, members in enumerate(replies) for sku, score in members),
                reverse=True,
            )
            for _, sku, shard in active[:MAX_SKUS]:
                chosen.setdefault(sku, shard)
            if len(chosen) < MAX_SKUS:
                # SKUs put but not tried yet show too, so a sale is on the board before it opens.
                listed = [str(sku) for sku in await redis.zrange(SKU_INDEX_KEY, 0, MAX_SKUS - 1)]
                for sku in listed:
                    if len(chosen) >= MAX_SKUS:
                        break
                    chosen.setdefault(sku, shard_of(sku, shards))
        if not chosen:
            return []
        seconds = range(second - RATE_SECONDS, second)
        async with redis.pipeline(transaction=False) as pipe:
            for sku, shard in chosen.items():
                keys = ShardKeys(shard)
                pipe.hgetall(keys.sku(sku))
                pipe.hgetall(keys.sale_totals(sku))
                pipe.pfcount(keys.visitors(sku))
                pipe.pfcount(keys.buyers(sku))
                for s in seconds:
                    pipe.hgetall(keys.sale_second(s, sku))
            replies = await pipe.execute()
        per_sku = 4 + len(seconds)
        out = []
        for i, sku in enumerate(chosen):
            definition, totals, visitors, buyers, *recent = replies[i * per_sku : (i + 1) * per_sku]
            if not definition:
                continue  # removed since the index was read
            memory = self._state.sales.setdefault(sku, SaleMemory())
            out.append(sku_figures(sku, definition, totals, recent, int(visitors), int(buyers), memory, now_ms))
        for gone in set(self._state.sales) - set(chosen):
            del self._state.sales[gone]
        out.sort(key=lambda entry: entry["sku"])
        return out

    # -- nodes -------------------------------------------------------------------------------------

    async def _close_etcd(self) -> None:
        if self._etcd is not None:
            with contextlib.suppress(Exception):
                await self._etcd.close()
            self._etcd = None

    async def _node_list(self, problems: list[str]) -> tuple[list[NodeAddress], dict[str, int]]:
        """The nodes to read, and the shards each owns as etcd says (empty without etcd).

        A node that left etcd's registry (its lease expired: it died, or lost
        its session) stays on the board for :data:`GONE_HOLD_S`, still probed,
        so the operator sees it fail instead of vanish; while etcd cannot be
        read, the nodes last seen are read.
        """
        if not self.sources.etcd:
            return list(self.sources.nodes), {}
        now = time.monotonic()
        try:
            if self._etcd is None:
                self._etcd = etcd_client(
                    self.sources.etcd, timeout=self.sources.timeout_s * 2, access=self.sources.etcd_access
                )
            view = await asyncio.wait_for(read_view(self._etcd, self.sources.cluster), self.sources.timeout_s * 4)
        except Exception as exc:  # noqa: BLE001 - shown on the page; a new client next poll
            problems.append(f"etcd unreachable: {_reason(exc)}")
            await self._close_etcd()
            return sorted((n for n, _ in self._known.values()), key=lambda n: n.node), {}
        for info in view.nodes.values():
            self._known[info.node] = (NodeAddress(info.address, info.metrics, info.node, registered=True), now)
        for node_id, (node, seen) in list(self._known.items()):
            if node_id in view.nodes:
                continue
            if now - seen > GONE_HOLD_S:
                del self._known[node_id]
            elif node.registered:
                self._known[node_id] = (NodeAddress(node.address, node.metrics, node.node, registered=False), seen)
        nodes = sorted((n for n, _ in self._known.values()), key=lambda n: n.node)
        return nodes, {n: view.owned_count(n) for n in view.nodes}

    async def _nodes(self, problems: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        nodes, owned = await self._node_list(problems)
        readings = await asyncio.gather(*(self._read_node(n) for n in nodes))
        now = time.monotonic()
        out, alerts = [], []
        for node, (health, metrics) in zip(nodes, readings, strict=True):
            memory = self._state.nodes.setdefault(node.node, NodeMemory())
            rates = node_rates(metrics, memory.metrics, now - memory.at) if metrics is not None else {}
            alerts += node_alerts(node.node, health, metrics, rates, memory, now, registered=node.registered)
            if metrics is not None:
                memory.metrics, memory.at = metrics, now
            shards = owned.get(node.node)
            if shards is None and metrics is not None and "flashstock_owned_shards" in metrics:
                shards = int(metrics["flashstock_owned_shards"])
            out.append(
                {
                    "id": node.node,
                    "address": node.address,
                    "metrics": node.metrics,
                    "health": health,
                    "rps": rates.get("rps"),
                    "owned_shards": shards,
                    "metrics_ok": metrics is not None,
                    "registered": node.registered,
                }
            )
        for gone in set(self._state.nodes) - {n.node for n in nodes}:
            del self._state.nodes[gone]
        return out, alerts

    async def _read_node(self, node: NodeAddress) -> tuple[str, dict[str, float] | None]:
        health, metrics = await asyncio.gather(self._health(node.address), self._metrics(node.metrics))
        return health, metrics

    async def _health(self, address: str) -> str:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = (
                grpc.aio.secure_channel(address, self._credentials, options=self._channel_options)
                if self._credentials
                else grpc.aio.insecure_channel(address)
            )
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=STOCK_SERVICE), timeout=self.sources.timeout_s
            )
        except grpc.aio.AioRpcError:
            return "unreachable"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def _metrics(self, address: str) -> dict[str, float] | None:
        if not address:
            return None
        try:
            text = await asyncio.wait_for(
                _http_get(address, "/metrics", self._ssl, self._server_name), self.sources.timeout_s
            )
            return metric_sums(list(text_string_to_metric_families(text)))
        except Exception:  # noqa: BLE001 - the node's row says its metrics could not be read
            return None


async def _http_get(address: str, path: str, context: ssl.SSLContext | None = None, server_name: str = "") -> str:
    """The body of ``GET http(s)://address/path`` (HTTP/1.0: the server closes the connection after it).

    ``server_name``: the name the certificate must carry, if not the address's host."""
    host, _, port = address.rpartition(":")
    hostname = (server_name or None) if context is not None else None
    reader, writer = await asyncio.open_connection(host, int(port), ssl=context, server_hostname=hostname)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise OSError(f"GET {path} from {address}: {head[:80]!r}")
    return body.decode()


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]


def node_addresses(texts: Sequence[str]) -> list[NodeAddress]:
    """``--node`` values parsed (:meth:`NodeAddress.parse`)."""
    return [NodeAddress.parse(text) for text in texts]
