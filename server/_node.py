"""A flashstock node: the gRPC server, its Redis, and its background duties.

One :class:`Node` per process. :func:`serve` starts ``workers`` serving
processes sharing one port (SO_REUSEPORT), each keeping its own sold-out
memory in step over pub/sub, and one more process for the shard duties
(``duties_process``, see :mod:`.duties.shard`): the persister (shard logs into the
ledger), the reaper of expired holds, and the warden (rebuilds a shard whose
Redis state is gone). Apart, the duties do not take the serving processes'
CPU (measured with ``flashstock bench``: see benchmarks/README.md); with
``duties_process`` off, worker 0 runs them.

Standalone (no ``etcd``), the node runs the duties of every shard: one such
node per Redis. In a cluster (``etcd`` set), every node serves every SKU but
runs the duties only of the shards it owns (:mod:`.duties.ownership`), fenced by
their epochs.

The node lives and dies whole (:func:`supervise`): each child ties itself
to the main process first thing (``_lifeline.py``) and exits within a
second of its death; SIGTERM stops the workers first (their calls in flight
get ``grace_s``) and the duties process after them; a child that dies
stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.queues
import os
import queue
import signal
import socket
import sys
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flashstock.client import AdmissionKey, FlashstockError
from flashstock.lockmgr import (
    ClusterKeys,
    CoordinationError,
    SessionConfig,
    SettingMismatch,
    ShardCountMismatch,
    auth_refusal,
)
from flashstock.server._binding import BoundSettings, bind_in_etcd, bind_in_redis, explain
from flashstock.server._config import (
    NodeConfig,
    admission_keys,
    auth_settings,
    etcd_access,
    etcd_endpoints,
    ledger_url,
    node_name,
    redis_tls,
    start_problems,
    tls_files,
)
from flashstock.server._cpus import read_cpu_budget
from flashstock.server._incarnation import IncarnationGate
from flashstock.server._lifeline import Lifeline, tie_to_parent
from flashstock.server._logs import NODE_FIELD, configure_logging
from flashstock.server._metrics import served_registry
from flashstock.server._serving_metrics import (
    WorkerFigures,
    flush_every,
    fresh_folder,
    remove_folder,
    serving_folder,
    snapshot_path,
)
from flashstock.server._tls import ServerTls, is_loopback
from flashstock.server.duties.incidents import IncidentLog
from flashstock.server.duties.ownership import Ownership
from flashstock.server.duties.pause import watch_pause
from flashstock.server.duties.persister import PersistPolicy
from flashstock.server.duties.rebuild import RebuildPolicy, ShardRebuilder
from flashstock.server.duties.salefigures import MetricsPolicy
from flashstock.server.duties.shard import DutyPolicy, ShardDuties
from flashstock.server.ledger import Ledger, LedgerError
from flashstock.server.rpc.admission import Admission, CallerCaps, RedisBreaker
from flashstock.server.rpc.degrade import Degrade
from flashstock.server.rpc.servicer import SERVICE_NAMES, AdminServicer, StockServicer, add_services
from flashstock.server.store.durable import PersistWatch
from flashstock.server.store.feed import RedisFeed, TakersLoader
from flashstock.server.store.keys import CONFIG_KEY, ShardKeys
from flashstock.server.store.redis import (
    RedisAuthError,
    RedisConnectionError,
    RedisTimeouts,
    async_client,
    blocking_client,
    masked_url,
)
from flashstock.server.store.salestats import SaleStats
from flashstock.server.store.soldout import SoldOutBook
from flashstock.server.store.stock import StockStore, StoreLimits

log = logging.getLogger(__name__)

DEGRADE_FILE = "degrade"
"""While a file of this name exists in the node's data_dir, its workers are in degraded mode (rpc/degrade.py)."""

READY_LINE = "flashstock node serving on"
"""The start of the line a node prints once it serves (tests and scripts wait for it)."""


def _admission(config: NodeConfig) -> Admission | None:
    """A worker's StockService admission (its caps and the per-caller ones); None when every cap is off."""
    callers = (
        CallerCaps(config.max_in_flight_per_caller, config.max_rate_per_caller)
        if config.max_in_flight_per_caller or config.max_rate_per_caller
        else None
    )
    if not (config.max_in_flight or config.max_queue_ms or callers):
        return None
    return Admission(config.max_in_flight, config.max_queue_ms / 1000, callers=callers)


class StartupError(Exception):
    """The node cannot start; the message names the setting to fix."""


class Node:
    """One server process: gRPC services, health, reflection, sold-out feed, duties."""

    DUTIES_ONLY = -1
    """The worker index of the process that runs the duties and serves nothing."""

    @classmethod
    def duties_run_in(cls, config: NodeConfig, worker_index: int) -> bool:
        """True for the one process of a node that runs its duties: the duties process, or worker 0 without one."""
        return worker_index == cls.DUTIES_ONLY or (worker_index == 0 and not config.duties_process)

    def __init__(self, config: NodeConfig, worker_index: int = 0) -> None:
        self.config = config
        self.etcd_access = etcd_access(config)
        """TLS files and the etcd user of every etcd client of this process."""
        self.worker_index = worker_index
        self.serving = worker_index != self.DUTIES_ONLY
        """True for a process that serves gRPC."""
        self.runs_duties = self.duties_run_in(config, worker_index)
        """True for the one process of the node that runs the duties."""
        self.book = SoldOutBook()
        self.watch = PersistWatch()
        self.figures: WorkerFigures | None = (
            WorkerFigures() if self.serving and config.metrics_port and config.serving_metrics else None
        )
        """This worker's serving figures (_serving_metrics.py), when they are counted."""
        try:
            self.ledger = Ledger(ledger_url(config))
        except LedgerError as exc:
            raise StartupError(exc.message) from None
        # The node's two Redis clients (why two: see store/redis.py). The
        # blocking one waits for the rebuild mutex inside one BLPOP of up to
        # rebuild_wait_s: its command timeout outlasts that.
        self.blocking_redis = blocking_client(
            config.redis_url,
            RedisTimeouts(connect_s=5.0, command_s=max(10.0, math.ceil(config.rebuild_wait_s) + 5.0)),
            tls=redis_tls(config),
        )
        """Blocking client, used from threads: the rebuild mutex, the incarnation check, reconciliation."""
        self.rebuilder = ShardRebuilder(
            self.blocking_redis,
            self.ledger,
            config.request_ttl_s * 1000,
            RebuildPolicy(lock_expire_s=config.rebuild_lock_expire_s, wait_s=config.rebuild_wait_s),
        )
        self.incidents = IncidentLog(self.ledger, node_name(config, config.port))
        """What goes wrong on this process (rebuilds, and in the duties' process failovers, fenced writes,
        reconcile differences, lost etcd sessions), written to the ledger for a sale's review."""
        self.rebuilder.incidents = self.incidents
        self.gate = IncarnationGate(
            lambda: self.rebuilder.verify(config.shards, self._bound.ledger_id if self._bound else None),
            wait_s=config.rebuild_wait_s,
            on_rebuilt=lambda shards: self.store.forget_generations(shards),
        )
        """Holds connections to a (re)started Redis until it was checked against the ledger."""
        self.redis = async_client(
            config.redis_url,
            RedisTimeouts(
                connect_s=config.redis_timeout_s, command_s=config.redis_timeout_s, pool_wait_s=config.redis_timeout_s
            ),
            pool_size=config.redis_pool_size,
            on_connect=self.gate.on_connect,
            tls=redis_tls(config),
        )
        """The asyncio client of the hot path (and the feed and duties); its connections pass the gate."""
        self.store = StockStore(
            self.redis,
            config.shards,
            self.book,
            self.watch,
            self.rebuilder,
            StoreLimits(
                request_ttl_s=config.request_ttl_s,
                default_hold_ms=config.default_hold_ms,
                coalesce_window_s=config.coalesce_window_ms / 1000,
                durable_wait_s=config.durable_wait_ms / 1000,
            ),
            on_batch=self.figures.batch if self.figures is not None else None,
        )
        self.takers = TakersLoader(self.redis, self.book, config.shards, config.request_ttl_s * 1000)
        self.book.on_sell_out = self.takers.schedule
        self.stats: SaleStats | None = None
        """This worker's sale figures (a serving worker, with ``stats_interval_ms`` set)."""
        if self.serving and config.stats_interval_ms:
            self.stats = SaleStats(self.redis, config.shards, config.stats_interval_ms / 1000)
        self._stats_task: asyncio.Task[None] | None = None
        self.breaker: RedisBreaker | None = None
        """Fail-fast on a sick Redis (a serving worker, with ``redis_trip_timeouts`` set)."""
        if self.serving and config.redis_trip_timeouts:
            self.breaker = RedisBreaker(config.redis_trip_timeouts, config.redis_cooldown_ms / 1000)
            self.breaker.on_open = self._breaker_opened
        self._redis_up = True
        """What the feed last said of Redis (the health is SERVING when it is up and the breaker closed)."""
        self._probe: asyncio.Task[None] | None = None
        admission = _admission(config)
        self.degrade = Degrade(config.degraded_read_max_age_ms / 1000, admission, by_hand=config.degrade)
        """This worker's degraded mode: reads from a snapshot while it sheds, or an operator says so."""
        self.stock_servicer = StockServicer(
            self.store,
            self.book,
            self.figures,
            self.stats,
            admission,
            self.breaker,
            self.degrade,
            self._admission_keys(config) if self.serving else None,
        )
        self.admin_servicer = AdminServicer(self.store, self.figures, self.degrade)
        if self.serving:
            try:
                authorizer = auth_settings(config).authorizer()
            except ValueError as exc:
                raise StartupError(str(exc)) from None
            self.stock_servicer.authorizer = self.admin_servicer.authorizer = authorizer
        self.health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[None]] = []
        self.duties: ShardDuties | None = None
        """The shard duties, in the process that runs them."""
        self.ownership: Ownership | None = None
        """This node's place in the cluster (etcd), when ``etcd`` is set."""
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        """The plaintext health-only server on ``health_port``, when set."""
        self.tls: ServerTls | None = None
        """The gRPC port's TLS (``tls_cert``), in a serving process."""
        if self.serving and tls_files(config).on:
            try:
                self.tls = ServerTls(tls_files(config))
            except OSError as exc:
                raise StartupError(f"tls_cert, tls_key, tls_client_ca: {exc}") from None
        self.port = 0
        self._bound: BoundSettings | None = None
        self._refused: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    @staticmethod
    def _admission_keys(config: NodeConfig) -> dict[str, AdmissionKey]:
        try:
            return admission_keys(config)
        except ValueError as exc:
            raise StartupError(str(exc)) from None

    @property
    def alone(self) -> bool:
        """True when this process is the whole node (one worker that runs the duties too)."""
        return self.config.workers == 1 and not self.config.duties_process

    def serving_folder(self, port: int) -> Path:
        """Where the node's workers write their serving figures (``port``: the node's bound port)."""
        return serving_folder(self.config.data_dir, node_name(self.config, port))

    async def start(self) -> int:
        """Open the ledger, connect to Redis, start the duties and serving; returns the bound port."""
        try:
            await asyncio.to_thread(self.ledger.open)
        except LedgerError as exc:
            raise StartupError(exc.message) from None
        await self._connect_redis()
        await self.store.load_scripts()
        await self._bind_settings()
        # Only a node bound to this Redis's ledger may repair the Redis from it.
        await self._check_redis_against_ledger()
        feed = RedisFeed(
            self.redis,
            self.book,
            self.watch,
            self.config.shards,
            on_redis=self._redis_health,
            check=self._recheck_binding,
        )
        self._tasks.append(asyncio.create_task(feed.run(), name="redis feed"))
        try:
            await asyncio.wait_for(feed.ready.wait(), timeout=10)
        except TimeoutError:
            raise StartupError("redis_url: the pub/sub feed could not subscribe within 10 s") from None
        if not self.serving:
            await self._start_duties(self.config.port)
            return 0

        options = [("grpc.so_reuseport", 1 if self.config.workers != 1 else 0)]
        server = grpc.aio.server(options=options)
        add_services(server, self.stock_servicer, self.admin_servicer)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        address = f"{self.config.host}:{self.config.port}"
        try:
            if self.tls is not None:
                self.port = server.add_secure_port(address, self.tls.credentials())
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise StartupError(f"host/port: cannot bind {self.config.host}:{self.config.port}: {exc}") from None
        self.incidents.node = node_name(self.config, self.port)
        if self.runs_duties:
            # The port is bound (the address to register is known); calls are taken from start() on.
            await self._start_duties(self.port)
        if self.figures is not None:
            folder = self.serving_folder(self.port)
            if self.alone:
                try:
                    fresh_folder(folder)  # else the supervisor emptied it before the workers started
                except OSError as exc:
                    raise StartupError(f"data_dir: cannot make the metrics folder {folder}: {exc}") from None
            path = snapshot_path(folder, self.worker_index)
            self._flusher = asyncio.create_task(flush_every(self.figures, path, self.worker_index), name="figures")
        if self.stats is not None:
            self._stats_task = asyncio.create_task(self.stats.run(), name="sale figures")
        self._tasks.append(asyncio.create_task(self._watch_degrade(), name="degrade"))
        health_server = self._health_only_server(options) if self.config.health_port else None
        await server.start()
        self._server = server
        if health_server is not None:
            await health_server.start()
            self._health_server = health_server
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def _health_only_server(self, options: list[tuple[str, int]]) -> grpc.aio.Server:
        """A PLAINTEXT server on ``health_port`` with the health service alone (this worker's own
        servicer, so its statuses are the gRPC port's): for probes that cannot speak TLS."""
        server = grpc.aio.server(options=options)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        address = f"{self.config.host}:{self.config.health_port}"
        try:
            server.add_insecure_port(address)
        except RuntimeError as exc:
            raise StartupError(f"health_port: cannot bind {address}: {exc}") from None
        return server

    async def _flush_stats(self) -> None:
        # Once no call is in flight: send the last figures (at most a second
        # or two; Redis may be gone, and shutdown must not wait for it).
        if self._stats_task is None or self.stats is None:
            return
        self._stats_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._stats_task
        self._stats_task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.stats.flush(), timeout=2.0)

    def degraded_by_hand(self) -> bool:
        """True while an operator switched degraded mode on: the ``degrade`` setting, or the file
        ``<data_dir>/degrade`` (:data:`DEGRADE_FILE`)."""
        return self.config.degrade or (Path(self.config.data_dir).expanduser() / DEGRADE_FILE).exists()

    async def _watch_degrade(self) -> None:
        """Once a second: the operator's switch (the setting, or the file ``<data_dir>/degrade``), and whether
        the worker is degraded, for the log and the ``flashstock_degraded`` metric."""
        was_on = False
        while True:
            self.degrade.by_hand = await asyncio.to_thread(self.degraded_by_hand)
            on = self.degrade.on(time.perf_counter())
            if on != was_on:
                was_on = on
                if on:
                    why = "switched on by hand" if self.degrade.by_hand else "the worker sheds calls"
                    log.warning("degraded mode on (%s): reads are answered from a snapshot", why)
                else:
                    log.warning("degraded mode off: reads go to Redis again")
            if self.figures is not None:
                self.figures.degraded = on
                self.figures.shed_at = self._shed_at()
            await asyncio.sleep(1.0)

    def _shed_at(self) -> float | None:
        """When this worker last shed a call by its own caps, in unix seconds (None: never)."""
        admission = self.degrade.admission
        last = None if admission is None else admission.last_shed
        return None if last is None else time.time() - (time.perf_counter() - last)

    async def _redis_health(self, up: bool) -> None:
        # Without Redis the services answer UNAVAILABLE: say so to load
        # balancers and readiness probes. "" (the process) stays SERVING.
        self._redis_up = up
        await self._set_health()

    async def _set_health(self) -> None:
        well = self._redis_up and not (self.breaker is not None and self.breaker.is_open)
        status = health_pb2.HealthCheckResponse.SERVING if well else health_pb2.HealthCheckResponse.NOT_SERVING
        if self._server is not None:
            for name in SERVICE_NAMES:
                await self.health.set(name, status)

    def _breaker_opened(self) -> None:
        # Called from a call's error path: the health and the probing happen in a task of their own.
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_redis(), name="redis probe")

    async def _probe_redis(self) -> None:
        """While the breaker is open: NOT_SERVING, and once per cool-down a script call (the hot path's
        kind of command, which a Redis paused for writes or busy in a script also holds back) until one
        is answered in time; then the breaker closes and the health follows the feed again."""
        breaker = self.breaker
        assert breaker is not None
        log.warning(
            "Redis did not answer in time %d times in a row: this worker answers UNAVAILABLE at once and "
            "probes Redis every %g ms",
            breaker.trip_after,
            breaker.cooldown_s * 1000,
        )
        await self._set_health()
        while breaker.is_open:
            await asyncio.sleep(breaker.due(time.perf_counter()))
            try:
                await self.redis.eval("return 1", 0)
            except Exception as exc:  # noqa: BLE001 - any failure: still sick
                log.debug("Redis probe failed: %r", exc)
                breaker.probe_failed(time.perf_counter())
            else:
                breaker.close()
        log.warning("Redis answers in time again: this worker sends calls to it again")
        await self._set_health()

    async def _connect_redis(self) -> None:
        # Give a Redis that is still starting (a pod beside us) a few seconds.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            try:
                await self.redis.ping()
                return
            except Exception as exc:  # noqa: BLE001 - reported below, naming the setting
                # A refused password or certificate does not get better by waiting.
                refused = isinstance(exc, RedisAuthError) or "SSL" in type(exc).__name__ or "certificate" in str(exc)
                if refused or asyncio.get_running_loop().time() > deadline:
                    where = masked_url(self.config.redis_url)
                    raise StartupError(f"redis_url: cannot reach Redis at {where}: {exc}") from None
                await asyncio.sleep(0.2)

    async def _check_redis_against_ledger(self) -> None:
        """Before anything is served: no shard of this Redis may be older than the ledger."""
        deadline = asyncio.get_running_loop().time() + 2 * self.config.rebuild_wait_s
        while True:
            try:
                await self.gate.arm()
                return
            except RedisConnectionError as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise StartupError(
                        f"redis_url: the Redis at {masked_url(self.config.redis_url)} could not be checked "
                        f"against the ledger: {exc}"
                    ) from None
                await asyncio.sleep(0.2)

    async def _bind_settings(self) -> None:
        """Refuse to start with a setting other than the one bound for this node's peers (``_binding.py``).

        etcd first, for a cluster: it keeps the binding when Redis loses it.
        Every process of the node checks: each would write with its settings.
        """
        endpoints = etcd_endpoints(self.config)
        try:
            ledger_id = await asyncio.to_thread(self.ledger.identity)
        except LedgerError as exc:
            raise StartupError(exc.message) from None
        cluster = self.config.cluster if endpoints else ""
        self._bound = BoundSettings(ledger_id, self.config.shards, self.config.request_ttl_s, cluster)
        try:
            if endpoints:
                try:
                    await bind_in_etcd(endpoints, self.config.cluster, self._bound, access=self.etcd_access)
                except (SettingMismatch, ShardCountMismatch):
                    raise
                except Exception as exc:  # noqa: BLE001 - reported naming the setting
                    refusal = auth_refusal(exc, self.etcd_access.user, ClusterKeys(self.config.cluster).prefix)
                    if refusal is not None:
                        raise StartupError(f"etcd_user: {refusal[1]}") from None
                    raise StartupError(f"etcd: cannot reach {','.join(endpoints)} within 10 s: {exc!r}") from None
            elif not await self.redis.exists(CONFIG_KEY):
                # A cluster's Redis from before the binding must not be bound as a standalone's.
                await self._refuse_a_clusters_redis()
            if await bind_in_redis(self.redis, self.store.scripts.bind, self._bound):
                log.info("bound %s in Redis (%s)", self._bound, CONFIG_KEY)
        except (SettingMismatch, ShardCountMismatch) as exc:
            raise StartupError(explain(exc)) from None

    async def _recheck_binding(self) -> None:
        """Bind Redis again when it lost the binding; stop if another node bound other values meanwhile.

        Run by the feed on every reconnect and every few seconds: a node that
        went on beside a node of another ledger (or shard count, or TTL)
        would split or double what they sell, so it exits with status 2.
        """
        assert self._bound is not None
        try:
            if await bind_in_redis(self.redis, self.store.scripts.bind, self._bound, check_placement=False):
                log.warning("Redis had lost the bound settings (%s): bound this node's again", CONFIG_KEY)
        except SettingMismatch as exc:
            if self._refused is None:
                log.error("%s. This process stops serving and exits (status 2)", explain(exc))
                self._refused = asyncio.create_task(self._exit_refused(), name="refused")

    async def _exit_refused(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.stop(0), timeout=self.config.grace_s + 5)
        logging.shutdown()
        os._exit(2)

    async def _start_duties(self, port: int) -> None:
        self.incidents.node = node_name(self.config, port)  # the port is bound now (0 was "a free one")
        self.duties = ShardDuties(
            self.redis,
            self.ledger,
            self.store,
            self.rebuilder,
            DutyPolicy(
                reap_interval_s=self.config.reap_interval_ms / 1000,
                reconcile_interval_s=self.config.reconcile_interval_s,
                persist=PersistPolicy(
                    batch_size=self.config.persist_batch, max_wait_s=self.config.persist_max_wait_ms / 1000
                ),
                sku_metrics=MetricsPolicy(window_s=self.config.metrics_sku_window_s, cap=self.config.metrics_sku_cap),
            ),
            reconcile_redis=self.blocking_redis,
            shard_count=self.config.shards,
            incidents=self.incidents,
        )
        # The workers say when they shed in their serving figures (none without a metrics port).
        counted = self.config.metrics_port and self.config.serving_metrics
        folder = self.serving_folder(port) if counted else None
        self._tasks.append(
            asyncio.create_task(watch_pause(self.duties, self.degraded_by_hand, folder), name="duties pause")
        )
        endpoints = etcd_endpoints(self.config)
        if endpoints:
            address = self.config.advertise or f"{self.config.host}:{port}"
            # The metrics are served on the host of the advertised address (the board finds them there).
            metrics_address = (
                f"{address.rsplit(':', 1)[0]}:{self.config.metrics_port}" if self.config.metrics_port else ""
            )
            self.ownership = Ownership(
                endpoints,
                self.config.cluster,
                node_name(self.config, port),
                address,
                self.config.shards,
                SessionConfig(ttl=self.config.lease_ttl_s),
                self.redis,
                self.ledger,
                self.duties,
                metrics_address,
                access=self.etcd_access,
            )
            try:
                await self.ownership.start()
            except CoordinationError as exc:
                self.ownership = None
                raise StartupError(str(exc)) from None
        else:
            # Standalone: this node owns every shard, unfenced. Whole shards
            # before the first request: rebuild any whose state is gone.
            await self.duties.assign({shard: None for shard in range(self.config.shards)})
            try:
                await self.duties.warden_pass()
            except FlashstockError as exc:
                log.warning("warden: %s (requests will rebuild what is missing)", exc.message)
        if self.config.metrics_port:
            from prometheus_client import start_http_server

            folder = self.serving_folder(port) if self.config.serving_metrics else None
            files = tls_files(self.config)
            start_http_server(
                self.config.metrics_port,
                addr=self.config.host,
                registry=served_registry(folder),
                certfile=files.cert or None,
                keyfile=files.key or None,
                client_cafile=files.client_ca or None,
                client_auth_required=bool(files.client_ca),
            )

    async def _refuse_a_clusters_redis(self) -> None:
        """A standalone node's duty writes carry no epoch: refuse a Redis whose shards have owners' epochs."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(self.config.shards):
                pipe.hget(ShardKeys(shard).meta, "epoch")
            epochs = await pipe.execute()
        owned = [(shard, int(epoch)) for shard, epoch in enumerate(epochs) if epoch and int(epoch) > 0]
        if owned:
            shard, epoch = owned[0]
            raise StartupError(
                f"etcd: this Redis belongs to a cluster (shard {shard} has owner epoch {epoch}, and "
                f"{len(owned)} shard(s) in all): start the node with --etcd of that cluster; a standalone "
                "node's duties would write without fencing"
            )

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, give in-flight ones ``grace`` seconds, stop duties."""
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            await self._server.stop(self.config.grace_s if grace is None else grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._flusher is not None:
            # Its last flush, on cancel, writes the figures of the calls just finished.
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            if self.alone:
                remove_folder(self.serving_folder(self.port))
        await self._flush_stats()
        if self.ownership is not None:
            await self.ownership.stop()
        elif self.duties is not None:
            await self.duties.stop()
        if self._probe is not None:
            self._tasks.append(self._probe)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.store.close()
        await self.redis.aclose()
        self.blocking_redis.close()
        await asyncio.to_thread(self.incidents.close, 2.0)
        await asyncio.to_thread(self.ledger.close)

    async def run_until_signalled(self, lifeline: Lifeline | None = None) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully (:meth:`stop`: calls in flight get ``grace_s``).

        ``lifeline``: this is a child of the node's main process; if that
        dies, this process exits within a second, and its last words revoke
        the node's etcd lease (when it holds one), so its shards fail over
        at once.
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if lifeline is not None:
            lifeline.last_words = lambda seconds: self._abandon(loop, seconds)
        await stop.wait()
        try:
            await asyncio.wait_for(self.stop(), timeout=self.config.grace_s + 5)
        except TimeoutError:
            log.error("shutdown took longer than grace_s + 5 s; exiting now")
            os._exit(1)

    def _abandon(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        # On the lifeline's thread, the main process gone: no time to stop
        # the duties in order. Revoking the lease frees the shards now; a
        # duty write racing a successor's claim is refused by the epoch.
        if self.ownership is None or seconds <= 0:
            return
        future = asyncio.run_coroutine_threadsafe(self.ownership.abandon(), loop)
        try:
            future.result(timeout=seconds)
        except Exception as exc:  # noqa: BLE001 - the lease then expires by itself
            log.warning("could not revoke the etcd lease in %.2f s (it expires by itself): %r", seconds, exc)


def _setup_logging(config: NodeConfig) -> None:
    # The port may still be 0 (a free one is picked): _serve_one names the node again once bound.
    configure_logging(config.log_level, config.log_format, node_name(config, config.port))


def _run(coro_factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro_factory())
    else:
        uvloop.run(coro_factory())


async def _serve_one(
    config: NodeConfig, worker_index: int, on_ready: Callable[[int], object], lifeline: Lifeline | None = None
) -> None:
    node = Node(config, worker_index)
    try:
        port = await node.start()
    except BaseException:
        await node.stop(0)
        raise
    NODE_FIELD.node = node_name(config, port or config.port)
    on_ready(port)
    await node.run_until_signalled(lifeline)


def _announce(config: NodeConfig, port: int) -> None:
    print(f"{READY_LINE} {config.host}:{port} (shards={config.shards}, workers={config.workers})", flush=True)


def _worker_main(config: NodeConfig, worker_index: int, parent_pid: int, ready: multiprocessing.queues.Queue) -> None:
    # First of all: never outlive the main process (kill -9 of it alone included).
    lifeline = tie_to_parent(
        parent_pid, has_last_words=Node.duties_run_in(config, worker_index) and bool(etcd_endpoints(config))
    )
    _setup_logging(config)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM
    name = "the duties process" if worker_index == Node.DUTIES_ONLY else f"worker {worker_index}"
    try:
        _run(lambda: _serve_one(config, worker_index, ready.put, lifeline))
    except StartupError as exc:
        log.error("%s cannot start: %s", name, exc)
        sys.exit(2)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(config: NodeConfig, warnings: Collection[str] = ()) -> int:
    """Run a node until signalled; returns the process exit code. ``warnings``: logged once logging is set up."""
    _setup_logging(config)
    for warning in warnings:
        log.warning("%s", warning)
    problems = start_problems(config)
    if problems:
        print(f"flashstock: cannot start: {'; '.join(problems)}", file=sys.stderr)
        return 2
    if not tls_files(config).on and not is_loopback(config.host):
        log.warning(
            "serving plaintext on %s, which other machines can reach: anyone there can read the calls "
            "(set tls_cert and tls_key, and tls_client_ca for mutual TLS)",
            config.host,
        )
    if config.auth == "off" and not is_loopback(config.host):
        log.warning(
            "auth is off on %s, which other machines can reach: anyone there can call every method, "
            "AdminService's too (set auth = on with auth_jwt_keys or auth_cert_roles)",
            config.host,
        )
    workers = config.workers
    if workers == 0:
        budget = read_cpu_budget()
        workers = budget.workers
        log.info("workers 0: %d serving worker(s), from %s", workers, budget.source)
    if workers == 1 and not config.duties_process:
        config = replace(config, workers=1)
        try:
            _run(lambda: _serve_one(config, 0, lambda port: _announce(config, port)))
        except StartupError as exc:
            print(f"flashstock: cannot start: {exc}", file=sys.stderr)
            return 2
        return 0
    if config.port == 0:
        config = replace(config, port=_free_port(config.host))
        NODE_FIELD.node = node_name(config, config.port)
    config = replace(config, workers=workers)
    indexes = [*([Node.DUTIES_ONLY] if config.duties_process else []), *range(workers)]
    duties = "flashstock-duties"
    # The workers' serving figures meet in one folder of this node (_serving_metrics.py): emptied
    # now (an earlier run's would add up), removed once the node has stopped.
    figures_folder = None
    if config.metrics_port and config.serving_metrics:
        figures_folder = serving_folder(config.data_dir, node_name(config, config.port))
        try:
            fresh_folder(figures_folder)
        except OSError as exc:
            print(f"flashstock: cannot start: data_dir: cannot make {figures_folder}: {exc}", file=sys.stderr)
            return 2
    try:
        return _supervise_node(config, indexes, duties)
    finally:
        if figures_folder is not None:
            remove_folder(figures_folder)


def _supervise_node(config: NodeConfig, indexes: list[int], duties: str) -> int:
    procs, started = supervise(
        [
            (_worker_main, (config, i, os.getpid()), duties if i == Node.DUTIES_ONLY else f"flashstock-worker-{i}")
            for i in indexes
        ],
        on_ready=lambda: _announce(config, config.port),
        failure="flashstock: cannot start: a worker exited during start (see its log above)",
        # The workers' calls in flight may wait for the ledger (durable mode):
        # the duties persist it, so they stop only once the workers are done.
        stop_last=(duties,),
        stop_last_within=config.grace_s + 10,
    )
    failed = [p for p in procs if p.exitcode not in (0, -signal.SIGTERM)]
    return 2 if not started or failed else 0


def supervise(
    targets: list[tuple[Callable[..., None], tuple[Any, ...], str]],
    on_ready: Callable[[], None],
    failure: str,
    *,
    stop_last: Collection[str] = (),
    stop_last_within: float = 15.0,
) -> tuple[list[BaseProcess], bool]:
    """Start one spawned process per ``(target, args, name)`` and see them through.

    Each target gets a queue as its last argument and puts on it once it is
    ready. ``on_ready`` runs once all are ready; if one exits first,
    ``failure`` is printed and the others are stopped. SIGTERM and SIGINT
    are passed on as SIGTERM: first to the processes not named in
    ``stop_last``, then, once those have exited (or ``stop_last_within``
    seconds passed), to the named ones. A process that exits while the
    others serve stops them all: the group lives and dies whole. Returns
    the processes, joined, and whether all became ready.
    """
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    procs: list[BaseProcess] = [
        ctx.Process(target=target, args=(*args, ready), name=name) for target, args, name in targets
    ]
    first = [p for p in procs if p.name not in stop_last]
    last = [p for p in procs if p.name in stop_last]
    for p in procs:
        p.start()
    signalled_at: list[float] = []  # when the stop began (a list: set from the signal handler)

    def terminate(group: list[BaseProcess]) -> None:
        for p in group:
            if p.is_alive():
                p.terminate()  # SIGTERM

    def forward(signum: int, _frame: object) -> None:
        if not signalled_at:
            signalled_at.append(time.monotonic())
        terminate(first)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    started = 0
    while started < len(procs) and all(p.is_alive() for p in procs) and not signalled_at:
        try:
            ready.get(timeout=0.2)
            started += 1
        except queue.Empty:
            pass
    if started == len(procs):
        on_ready()
    elif not signalled_at:
        print(failure, file=sys.stderr)
        forward(signal.SIGTERM, None)
    last_signalled = False
    while any(p.is_alive() for p in procs):
        multiprocessing.connection.wait([p.sentinel for p in procs if p.is_alive()], timeout=0.2)
        if not signalled_at and not all(p.is_alive() for p in procs):
            gone = next(p for p in procs if not p.is_alive())
            print(f"{gone.name} exited ({gone.exitcode}): stopping the others", file=sys.stderr)
            forward(signal.SIGTERM, None)
        if signalled_at and not last_signalled:
            if not any(p.is_alive() for p in first) or time.monotonic() > signalled_at[0] + stop_last_within:
                terminate(last)
                last_signalled = True
    for p in procs:
        p.join()
    return procs, started == len(procs)
