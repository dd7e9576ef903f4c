"""The blocking clients: :class:`StockClient` and :class:`AdminClient`.

GENERATED from ``_async.py`` by ``scripts/unasync.py``: do not edit; edit
``_async.py`` and run the script. Every call goes through one ``_rpc_call``, which owns deadlines,
metadata, retries (same request id, marked as a retry) and error mapping.

The nodes are the configured addresses, or the live nodes registered in
etcd (``ClientConfig.etcd``): then a discovery (``_discovery.py``) follows
them from the client's start on and tells the connection when the set
changes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import grpc

from . import _transport as t
from ._config import ClientConfig, channel_options, channel_targets
from ._discovery import Discovery
from ._types import (
    AdminResult,
    BatchItem,
    BatchResult,
    DeductResult,
    Mode,
    SettleResult,
    Sku,
    SkuDefinition,
    SkuPage,
    StockLevel,
)
from .errors import Unavailable


def _config_of(config: ClientConfig | None, addresses: Sequence[str] | str | None) -> ClientConfig:
    if config is not None and addresses is not None:
        raise TypeError("give config or addresses, not both")
    if addresses is not None:
        return ClientConfig(addresses=addresses)
    return config or ClientConfig()


class _Route(NamedTuple):
    """One connection to a node, and the stub that calls through it."""

    address: str
    channel: Any
    stub: Any


class _SyncConnection:
    """Channels to the nodes (the configured ones, or the live ones in etcd), and the one ``_rpc_call``."""

    def __init__(self, config: ClientConfig, stub_type: Any) -> None:
        self.config = config
        self._stub_type = stub_type
        self._credentials = t.channel_credentials(config)
        self._metadata = t.call_metadata(config)
        self._options = channel_options(config)
        # Replaced whole, never changed in place: a call reads it once per attempt.
        self._routes: list[_Route] = []
        self._next = random.randrange(1 << 30)  # clients start at different nodes
        self._discovery = Discovery(config, self._use) if config.etcd else None
        if self._discovery is None:
            self._use(config.addresses or ())
        self._no_node = (
            f"no node of {self._discovery.where} is registered now"
            if self._discovery is not None
            else "no node address is configured"
        )

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses calls go to now, sorted."""
        return tuple(sorted({route.address for route in self._routes}))

    def _use(self, addresses: Sequence[str]) -> list[Any]:
        """Send calls to ``addresses`` from now on; return the channels no longer used.

        Channels to addresses that stay are kept, so a node that stays keeps its connections.
        """
        spare: dict[str, list[_Route]] = {}
        for route in self._routes:
            spare.setdefault(route.address, []).append(route)
        routes = []
        for address in channel_targets(self.config, addresses):
            kept = spare.get(address)
            if kept:
                routes.append(kept.pop())
            else:
                if self._credentials is None:
                    channel = grpc.insecure_channel(address, options=self._options)
                else:
                    channel = grpc.secure_channel(address, self._credentials, options=self._options)
                routes.append(_Route(address, channel, self._stub_type(channel)))
        self._routes = routes
        return [route.channel for left in spare.values() for route in left]

    def start(self) -> None:
        """With etcd: read the live nodes and start following them (once)."""
        if self._discovery is not None:
            self._discovery.start()

    def _rpc_call(self, method: str, request: Any) -> Any:
        if self._discovery is not None:
            self._discovery.start()
        config = self.config
        deadline = time.monotonic() + config.deadline_s
        delays = config.retry.delays()
        while True:
            routes = self._routes
            if routes:
                stub = routes[self._next % len(routes)].stub
                self._next += 1  # spread calls; a retry goes to the next address
                timeout = max(0.001, min(config.attempt_timeout_s, deadline - time.monotonic()))
                try:
                    return getattr(stub, method)(request, timeout=timeout, metadata=self._metadata)
                except grpc.RpcError as exc:
                    t.pass_cancellation(exc)
                    error = t.error_of(exc)
                    if not t.should_retry(exc, error):
                        raise error from None
                    t.mark_retry(request)
            else:
                # Every node left etcd; one may join (or come back) before the deadline.
                error = Unavailable(self._no_node)
            delay = next(delays, None)
            if delay is None:
                raise error from None
            delay = max(delay, getattr(error, "retry_after", 0.0))
            if time.monotonic() + delay >= deadline:
                raise error from None
            time.sleep(delay)

    def close(self) -> None:
        if self._discovery is not None:
            self._discovery.close()
        for route in self._routes:
            route.channel.close()


class StockClient:
    """Take units of hot SKUs exactly once (blocking).

    Every mutating method takes a ``request_id``; give your own (an order id)
    to make your own retries safe, or let the client make one. The client
    retries UNAVAILABLE, DEADLINE_EXCEEDED and a node's shedding (RESOURCE_EXHAUSTED,
    :class:`Overloaded`: after the delay the node asks for) with the same
    id, so a retry never takes units twice; it raises the last error when
    ``retry.max_attempts`` or ``deadline_s`` run out. A request id you send again gets its first
    answer (DUPLICATE), also once the SKU is sold out; ``retry=True`` only
    tells the node to ask Redis at once.
    """

    RPCS = {
        "Deduct": "deduct",
        "Hold": "hold",
        "Confirm": "confirm",
        "Release": "release",
        "GetStock": "get_stock",
        "BatchDeduct": "batch_deduct",
    }
    """Each RPC of StockService and the method that wraps it."""

    def __init__(self, config: ClientConfig | None = None, *, addresses: Sequence[str] | str | None = None) -> None:
        self._conn = _SyncConnection(_config_of(config, addresses), t.stock_pb2_grpc.StockServiceStub)

    @property
    def config(self) -> ClientConfig:
        """The client's settings."""
        return self._conn.config

    @property
    def addresses(self) -> tuple[str, ...]:
        """The node addresses calls go to now, sorted: the configured ones, or
        (with ``etcd``) the live nodes last seen there; empty before the start."""
        return self._conn.addresses

    def deduct(
        self,
        sku_id: str,
        user_id: str,
        qty: int = 1,
        *,
        request_id: str | None = None,
        retry: bool = False,
        admission_token: str = "",
    ) -> DeductResult:
        """Take ``qty`` units of ``sku_id`` for ``user_id``, for good.

        ``admission_token``: the gateway's token for this user and SKU
        (:func:`admission_token`), needed when the SKU requires one.
        """
        request = t.stock_pb2.DeductRequest(
            sku_id=sku_id,
            user_id=user_id,
            qty=qty,
            request_id=t.request_id_or_new(request_id),
            retry=retry,
            admission_token=admission_token,
        )
        return t.deduct_result(self._conn._rpc_call("Deduct", request))

    def hold(
        self,
        sku_id: str,
        user_id: str,
        qty: int = 1,
        *,
        ttl_ms: int = 0,
        request_id: str | None = None,
        retry: bool = False,
        admission_token: str = "",
    ) -> DeductResult:
        """Hold ``qty`` units for ``ttl_ms`` (0 = the node's default); the hold id is the request id."""
        request = t.stock_pb2.HoldRequest(
            sku_id=sku_id,
            user_id=user_id,
            qty=qty,
            ttl_ms=ttl_ms,
            request_id=t.request_id_or_new(request_id),
            retry=retry,
            admission_token=admission_token,
        )
        return t.deduct_result(self._conn._rpc_call("Hold", request))

    def confirm(self, sku_id: str, hold_id: str, *, request_id: str | None = None) -> SettleResult:
        """Make the hold ``hold_id`` sold for good, unless it expired or was released first."""
        request = t.stock_pb2.ConfirmRequest(sku_id=sku_id, hold_id=hold_id, request_id=t.request_id_or_new(request_id))
        return t.settle_result(self._conn._rpc_call("Confirm", request))

    def release(self, sku_id: str, hold_id: str, *, request_id: str | None = None) -> SettleResult:
        """Give the hold ``hold_id``'s units back, unless it was confirmed or expired first."""
        request = t.stock_pb2.ReleaseRequest(sku_id=sku_id, hold_id=hold_id, request_id=t.request_id_or_new(request_id))
        return t.settle_result(self._conn._rpc_call("Release", request))

    def get_stock(self, sku_id: str) -> StockLevel:
        """The counters of ``sku_id``."""
        return t.stock_level(self._conn._rpc_call("GetStock", t.stock_pb2.GetStockRequest(sku_id=sku_id)))

    def batch_deduct(
        self,
        user_id: str,
        items: Iterable[BatchItem | tuple[str, int]],
        *,
        request_id: str | None = None,
        retry: bool = False,
    ) -> BatchResult:
        """Take every item (a :class:`BatchItem` or ``(sku_id, qty)``), or none."""
        request = t.stock_pb2.BatchDeductRequest(
            user_id=user_id, items=t.batch_items(items), request_id=t.request_id_or_new(request_id), retry=retry
        )
        return t.batch_result(self._conn._rpc_call("BatchDeduct", request))

    def start(self) -> None:
        """Find the nodes now, instead of on the first call: with ``etcd``, read
        the live nodes and start following them. Raises :class:`Unavailable`
        when etcd does not answer, or lists no node, within
        ``discovery_timeout_s``. Nothing to do with fixed addresses.
        """
        self._conn.start()

    def close(self) -> None:
        """Close every connection, and stop following the nodes in etcd."""
        self._conn.close()

    def __enter__(self) -> StockClient:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AdminClient:
    """Define SKUs and steer their sale (blocking). For operators, not buyers."""

    RPCS = {
        "PutSku": "put_sku",
        "GetSku": "get_sku",
        "ListSkus": "list_skus",
        "AdjustStock": "adjust_stock",
        "PauseSku": "pause_sku",
        "ResumeSku": "resume_sku",
    }
    """Each RPC of AdminService and the method that wraps it."""

    def __init__(self, config: ClientConfig | None = None, *, addresses: Sequence[str] | str | None = None) -> None:
        self._conn = _SyncConnection(_config_of(config, addresses), t.admin_pb2_grpc.AdminServiceStub)

    @property
    def config(self) -> ClientConfig:
        """The client's settings."""
        return self._conn.config

    @property
    def addresses(self) -> tuple[str, ...]:
        """The node addresses calls go to now, sorted: the configured ones, or
        (with ``etcd``) the live nodes last seen there; empty before the start."""
        return self._conn.addresses

    def put_sku(
        self,
        sku_id: str | SkuDefinition,
        stock: int | None = None,
        *,
        per_user_limit: int = 0,
        max_per_request: int = 0,
        sale_start_ms: int = 0,
        sale_end_ms: int = 0,
        mode: Mode = Mode.FAST,
        goal_units: int = 0,
        goal_sellout_ms: int = 0,
        goal_buyers: int = 0,
        unit_price_minor: int = 0,
        currency: str = "",
        user_rate_per_s: int = 0,
        require_token: bool = False,
        request_id: str | None = None,
    ) -> AdminResult:
        """Define a SKU (again: restarts its sale), from a :class:`SkuDefinition` or its fields.

        ``put_sku(SkuDefinition("hot", 1000, per_user_limit=2))`` is
        ``put_sku("hot", 1000, per_user_limit=2)``; beside a definition only
        ``request_id`` may be given.
        """
        definition = t.sku_definition(
            sku_id,
            stock,
            per_user_limit=per_user_limit,
            max_per_request=max_per_request,
            sale_start_ms=sale_start_ms,
            sale_end_ms=sale_end_ms,
            mode=mode,
            goal_units=goal_units,
            goal_sellout_ms=goal_sellout_ms,
            goal_buyers=goal_buyers,
            unit_price_minor=unit_price_minor,
            currency=currency,
            user_rate_per_s=user_rate_per_s,
            require_token=require_token,
        )
        request = t.put_sku_request(definition, t.request_id_or_new(request_id))
        return t.admin_result(self._conn._rpc_call("PutSku", request))

    def get_sku(self, sku_id: str) -> Sku:
        """The definition and counters of ``sku_id``."""
        reply = self._conn._rpc_call("GetSku", t.admin_pb2.GetSkuRequest(sku_id=sku_id))
        return t.sku(reply.sku)

    def list_skus(self, prefix: str = "", *, page_size: int = 100, page_token: str = "") -> SkuPage:
        """One page of SKUs in id order."""
        request = t.admin_pb2.ListSkusRequest(prefix=prefix, page_size=page_size, page_token=page_token)
        return t.sku_page(self._conn._rpc_call("ListSkus", request))

    def all_skus(self, prefix: str = "") -> list[Sku]:
        """Every SKU (whose id starts with ``prefix``), page after page."""
        out: list[Sku] = []
        token = ""
        while True:
            page = self.list_skus(prefix, page_size=1000, page_token=token)
            out += page.skus
            token = page.next_page_token
            if not token:
                return out

    def adjust_stock(self, sku_id: str, delta: int, *, request_id: str | None = None) -> AdminResult:
        """Add (``delta > 0``) or take away stock, never below the units handed out."""
        request = t.admin_pb2.AdjustStockRequest(sku_id=sku_id, delta=delta, request_id=t.request_id_or_new(request_id))
        return t.admin_result(self._conn._rpc_call("AdjustStock", request))

    def pause_sku(self, sku_id: str, *, request_id: str | None = None) -> AdminResult:
        """Stop the sale of ``sku_id``: attempts get NOT_ON_SALE."""
        request = t.admin_pb2.PauseSkuRequest(sku_id=sku_id, request_id=t.request_id_or_new(request_id))
        return t.admin_result(self._conn._rpc_call("PauseSku", request))

    def resume_sku(self, sku_id: str, *, request_id: str | None = None) -> AdminResult:
        """Resume the sale of ``sku_id``."""
        request = t.admin_pb2.ResumeSkuRequest(sku_id=sku_id, request_id=t.request_id_or_new(request_id))
        return t.admin_result(self._conn._rpc_call("ResumeSku", request))

    def start(self) -> None:
        """Find the nodes now, instead of on the first call: with ``etcd``, read
        the live nodes and start following them. Raises :class:`Unavailable`
        when etcd does not answer, or lists no node, within
        ``discovery_timeout_s``. Nothing to do with fixed addresses.
        """
        self._conn.start()

    def close(self) -> None:
        """Close every connection, and stop following the nodes in etcd."""
        self._conn.close()

    def __enter__(self) -> AdminClient:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
