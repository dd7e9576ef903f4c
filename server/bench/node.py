"""``flashstock bench``: Deduct throughput, latency, CPU and Redis cost, against a bare echo.

One command starts its own Redis, a flashstock node, a bare grpc.aio echo
server (:mod:`._echo`) and ``client_procs`` load processes, all on loopback,
and runs these phases:

1. **flashstock**: one hot SKU with a stock that cannot run out and no
   per-user limit; ``buyers`` coroutines Deduct one unit each, back to back,
   for a warm-up and then ``seconds`` measured: successful deductions/s,
   latency percentiles, CPU of the node, Redis and the load processes.
2. **metrics on/off**: the same Deduct loop against two nodes alike but for
   their metrics (each on a Redis of its own): one counts everything (the
   serving metrics, ``serving_metrics``, and a sale's figures per SKU,
   ``stats_interval_ms``), the other neither; ``metrics_rounds`` times
   each, alternating in A-B-B-A order so a drift of the machine weighs on
   both: their rates, each node's CPU per successful call, and the cost of
   the metrics (the ratio against echo with and without them, and the CPU
   each call costs more with them).
   **TLS on/off**: the same loop against the node in plaintext and a twin
   alike but for mutual TLS (its own Redis; certificates made with
   ``openssl`` at bench start, :mod:`.certs`), the load processes calling it
   over TLS with a client certificate; ``tls_rounds`` times each, A-B-B-A:
   the rates, ratios against echo, p50/p99, node CPU per call, and the
   difference (``tls_cost``). ``tls_rounds`` 0 leaves the part out.
   **auth on/off**: the same against a twin with ``auth = on`` (its own
   Redis; an HS256 secret made at bench start), every call carrying a
   buyer's bearer JWT in its metadata; ``auth_rounds`` times each, A-B-B-A,
   the same figures (``auth_cost``). ``auth_rounds`` 0 leaves the part out.
3. **echo**: the same loop, the same stub, channel options and coroutine
   count, against the echo server (same stack, same number of worker
   processes): calls/s. The ratio flashstock/echo is the share of the bare
   stack's rate the node keeps, measured minutes apart on the same machine.
4. **memory**: ``records`` deductions of a fresh SKU (per-user limit 1,
   each by a distinct user with a fresh request id, as the client makes
   them); Redis ``used_memory`` after minus before (each read once it holds
   still), less the change of the connections' buffers (``MEMORY STATS``
   ``clients.normal``: per connection, not per record, and swinging by a
   megabyte with load), divided by the deductions Redis recorded. The
   unadjusted figure and a breakdown are reported too.
5. **sale**: a SKU with ``sale_stock`` units; buyers until it is sold out
   (oversell check: units handed out must equal the stock, OK answers must
   not exceed it), then **sold out**: the buyers keep going for
   ``soldout_seconds`` while Redis ``INFO commandstats`` is read before and
   after: every Redis call the node made while it refused, by command.

The figures are printed as a table, with PASS/FAIL for the targets of the
issue, and written as JSON with ``--json``. The exit code is 0 whatever the
figures (a measurement), 1 when the oversell check fails, 2 when the bench
could not run (a process would not start or died), 130 on Ctrl-C. Every
process started is stopped on the way out, also on Ctrl-C and on errors.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import itertools
import json
import math
import multiprocessing
import os
import signal
import time
import tracemalloc
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

TARGET_RATIO = 0.6
"""Successful deductions/s of one node over echo calls/s, at least."""
TARGET_SOLD_OUT_EVALSHA = 0
"""EVALSHA calls while refusing a sold-out SKU, at most."""
TARGET_BYTES_PER_RECORD = 300
"""Redis memory per recorded deduction, below (bytes)."""
TARGET_DURABLE_RATIO = 0.5
"""Successful durable deductions/s over fast ones, at least."""
TARGET_LAG_P99_MS = 50.0
"""Persister lag p99 at half the fast load, below (ms)."""

NOISY_REST_PERCENT = 25.0
"""Above this much CPU (% of a core) used by others during a throughput phase, the run is called noisy."""

_INF = float("inf")


@dataclass(frozen=True)
class BenchPlan:
    """What ``flashstock bench`` runs."""

    buyers: int = 64
    """Concurrent buyer coroutines, over all load processes."""
    seconds: float = 5.0
    """Measured length of the flashstock and the echo phase."""
    workers: int = 1
    """Worker processes of the node, and of the echo server."""
    client_procs: int = 1
    """Load-generating processes; the buyers are split among them."""
    records: int = 20_000
    """Deductions recorded for the memory figure."""
    json_out: str | None = None
    """Also write the figures to this JSON file."""
    warmup: float = 1.5
    """Unmeasured calls before each throughput phase, seconds."""
    sale_stock: int = 5_000
    """Units of the sale phase's SKU."""
    soldout_seconds: float = 2.0
    """Length of the sold-out phase, seconds."""
    connections: int = 0
    """gRPC connections per load process (0: 1 with one worker, else 4 per worker:
    SO_REUSEPORT spreads connections, not calls, over the workers, at random)."""
    metrics_rounds: int = 2
    """Throughput phases of the node with its metrics (serving, a sale's figures) on, as many off, alternating."""
    tls_rounds: int = 2
    """Throughput phases of the node in plaintext, as many of its mutual-TLS twin, alternating; 0: no TLS part."""
    auth_rounds: int = 2
    """Throughput phases of the node without auth, as many of its twin with auth on (a bearer JWT per call),
    alternating; 0: no auth part."""

    def problems(self) -> list[str]:
        """What is wrong with the plan, each naming its option."""
        out = []
        if self.buyers < 1:
            out.append("--buyers must be >= 1")
        if self.client_procs < 1 or self.client_procs > self.buyers:
            out.append("--client-procs must be 1 to --buyers")
        if self.workers < 1:
            out.append("--workers must be >= 1")
        if self.seconds <= 0 or self.warmup < 0 or self.soldout_seconds <= 0:
            out.append("--seconds, --warmup and --soldout-seconds must be > 0")
        if self.records < 1 or self.sale_stock < 1:
            out.append("--records and --sale-stock must be >= 1")
        if self.connections < 0:
            out.append("--connections must be >= 0")
        if self.metrics_rounds < 1:
            out.append("--metrics-rounds must be >= 1")
        if self.tls_rounds < 0:
            out.append("--tls-rounds must be >= 0 (0 leaves the TLS part out)")
        if self.auth_rounds < 0:
            out.append("--auth-rounds must be >= 0 (0 leaves the auth part out)")
        return out

    def connections_per_proc(self) -> int:
        """Channels each load process opens to the server under test."""
        if self.connections:
            return self.connections
        return 1 if self.workers == 1 else 4 * self.workers


# -- the load processes ---------------------------------------------------------
#
# Each is a spawned process running one uvloop loop. The parent sends a phase
# (a dict) over a pipe; the process runs it and sends back counts and
# latencies. Phase boundaries are absolute CLOCK_MONOTONIC times (the same
# clock in every process on Linux) in a shared array the parent may move
# while the phase runs: [measure_from, measure_until, stop_at].

_CTRL_FROM, _CTRL_UNTIL, _CTRL_STOP = 0, 1, 2


def _load_main(index: int, conn: Any, ctrl: Any, progress: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    try:
        import uvloop

        uvloop.run(_load_serve(index, conn, ctrl, progress))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass


async def _load_serve(index: int, conn: Any, ctrl: Any, progress: Any) -> None:
    conn.send(("ready", os.getpid()))
    while True:
        phase = await asyncio.to_thread(conn.recv)
        if phase is None:
            return
        conn.send(await _load_phase(index, phase, ctrl, progress))


async def _load_phase(index: int, phase: dict[str, Any], ctrl: Any, progress: Any) -> dict[str, Any]:
    import grpc

    from flashstock.client import CHANNEL_OPTIONS
    from flashstock.v1 import stock_pb2, stock_pb2_grpc

    tls = phase.get("tls")
    if tls:
        # Mutual TLS: the bench's CA as trust root, and the load's client certificate.
        pem = {k: open(v, "rb").read() for k, v in tls.items()}  # noqa: SIM115 - tiny files, read once
        creds = grpc.ssl_channel_credentials(pem["ca"], pem["key"], pem["cert"])
        channels = [
            grpc.aio.secure_channel(phase["target"], creds, options=CHANNEL_OPTIONS)
            for _ in range(phase["connections"])
        ]
    else:
        channels = [
            grpc.aio.insecure_channel(phase["target"], options=CHANNEL_OPTIONS) for _ in range(phase["connections"])
        ]
    # With auth: the bearer token every call carries, as a client with ``token`` sends it.
    metadata = (("authorization", f"Bearer {phase['token']}"),) if phase.get("token") else None
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 30)
        stubs = [stock_pb2_grpc.StockServiceStub(c) for c in channels]
        request_type = stock_pb2.DeductRequest
        sku_id = phase["sku"]
        prefix = f"{phase['users']}{index}-"
        distinct = phase["distinct_users"]
        budget = [phase["requests"] if phase["requests"] is not None else -1]
        # A paced phase: each coroutine sends one call per `interval` seconds.
        interval = phase["coroutines"] / phase["rate"] if phase.get("rate") else 0.0
        serial = itertools.count()
        totals: Counter[Any] = Counter()
        window: Counter[Any] = Counter()
        latencies = array.array("d")
        first_sold_out = [_INF]
        now = time.monotonic
        new_id = uuid.uuid4
        sold_out = stock_pb2.OUTCOME_SOLD_OUT
        progress[index] = 0

        async def buyer(k: int) -> None:
            deduct = stubs[k % len(stubs)].Deduct
            user = f"{prefix}{k}"
            done = 0
            next_at = now() + interval * k / max(1, phase["coroutines"])
            while now() < ctrl[_CTRL_STOP]:
                if interval:
                    await asyncio.sleep(max(0.0, next_at - now()))
                    next_at += interval
                if budget[0] >= 0:
                    if budget[0] == 0:
                        break
                    budget[0] -= 1
                if distinct:
                    user = f"{prefix}{next(serial)}"
                request = request_type(sku_id=sku_id, user_id=user, qty=1, request_id=new_id().hex)
                t0 = now()
                try:
                    outcome: Any = (await deduct(request, timeout=10.0, metadata=metadata)).outcome
                except grpc.aio.AioRpcError as exc:
                    outcome = exc.code().name
                    await asyncio.sleep(0.01)
                t1 = now()
                totals[outcome] += 1
                if ctrl[_CTRL_FROM] <= t1 < ctrl[_CTRL_UNTIL]:
                    window[outcome] += 1
                    latencies.append(t1 - t0)
                if outcome == sold_out and t1 < first_sold_out[0]:
                    first_sold_out[0] = t1
                done += 1
                if done % 64 == 0:
                    progress[index] += 64

        await asyncio.gather(*(buyer(k) for k in range(phase["coroutines"])))
    finally:
        for c in channels:
            await c.close()
    progress[index] = sum(totals.values())
    return {
        "totals": dict(totals),
        "window": dict(window),
        "latencies": latencies.tobytes(),
        "first_sold_out": first_sold_out[0],
    }


class _LoadProcs:
    """The load processes, their pipes and the shared phase clock."""

    def __init__(self, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ctrl = ctx.Array("d", [_INF, _INF, _INF], lock=False)
        self.progress = ctx.Array("q", count, lock=False)
        self._pipes = []
        self.procs = []
        for i in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_load_main, args=(i, child, self.ctrl, self.progress), name=f"flashstock-load-{i}", daemon=True
            )
            proc.start()
            child.close()
            self._pipes.append(parent)
            self.procs.append(proc)
        self.pids: list[int] = []

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for pipe, proc in zip(self._pipes, self.procs, strict=True):
            while not pipe.poll(0.1):
                if not proc.is_alive() or time.monotonic() > deadline:
                    from flashstock.server.local.procs import ProcessError

                    raise ProcessError(f"load process {proc.name} did not start")
            tag, pid = pipe.recv()
            self.pids.append(pid)

    def set_clock(self, measure_from: float = _INF, measure_until: float = _INF, stop_at: float = _INF) -> None:
        self.ctrl[_CTRL_FROM], self.ctrl[_CTRL_UNTIL], self.ctrl[_CTRL_STOP] = measure_from, measure_until, stop_at

    def start(self, phases: list[dict[str, Any]]) -> None:
        for i, pipe in enumerate(self._pipes):
            self.progress[i] = 0
            pipe.send(phases[i])

    def done(self) -> int:
        return sum(self.progress)

    def check_alive(self) -> None:
        for proc in self.procs:
            if not proc.is_alive():
                raise RuntimeError(f"load process {proc.name} died (exit code {proc.exitcode})")

    def finished(self) -> bool:
        return all(pipe.poll() for pipe in self._pipes)

    def results(self) -> list[dict[str, Any]]:
        out = []
        for pipe, proc in zip(self._pipes, self.procs, strict=True):
            while not pipe.poll(0.2):
                if not proc.is_alive():
                    raise RuntimeError(f"load process {proc.name} died (exit code {proc.exitcode})")
            out.append(pipe.recv())
        return out

    def stop(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(None)
        for proc in self.procs:
            proc.join(3)
            if proc.is_alive():
                proc.terminate()
                proc.join(3)
        for pipe in self._pipes:
            pipe.close()


def takers_memory(redis_url: str, sku_id: str, shards: int, record_ttl_ms: int = 86_400_000) -> dict[str, Any]:
    """What a node's memory holds for a sold-out SKU: its takers (the ids that took
    its units), loaded as a node loads them, measured with tracemalloc."""
    import redis.asyncio as aioredis

    from flashstock.lockmgr import shard_of
    from flashstock.server.store.feed import TakersLoader
    from flashstock.server.store.keys import ShardKeys
    from flashstock.server.store.soldout import SoldOutBook

    async def load() -> dict[str, Any]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            sv = int(await client.hget(ShardKeys(shard_of(sku_id, shards)).sku(sku_id), "sv") or 0)
            book = SoldOutBook()
            loader = TakersLoader(client, book, shards, record_ttl_ms)
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            book.on_sell_out = loader.schedule
            book.learn(sku_id, sv, True)
            for _ in range(500):
                if book.refuses(sku_id, ""):
                    break
                await asyncio.sleep(0.01)
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            takers = book.takers_held()
        finally:
            await client.aclose()
        return {"takers": takers, "bytes": held, "bytes_per_unit": round(held / takers, 1) if takers else None}

    return asyncio.run(load())


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# -- figures --------------------------------------------------------------------


def percentile(sorted_values: list[float] | array.array, q: float) -> float:
    """Nearest-rank percentile ``q`` (0-1) of already sorted values; NaN when empty."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    return sorted_values[min(n - 1, max(0, math.ceil(q * n) - 1))]


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    totals: Counter[Any] = Counter()
    window: Counter[Any] = Counter()
    latencies = array.array("d")
    for r in results:
        totals.update(r["totals"])
        window.update(r["window"])
        latencies.frombytes(r["latencies"])
    return {
        "totals": totals,
        "window": window,
        "latencies": sorted(latencies),
        "first_sold_out": min(r["first_sold_out"] for r in results),
    }


def _outcome_names(counts: Counter[Any]) -> dict[str, int]:
    from flashstock.client import Outcome

    return {
        (Outcome(k).name if isinstance(k, int) else k): v for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))
    }


def _latency_ms(latencies: list[float]) -> dict[str, float]:
    return {
        name: round(percentile(latencies, q) * 1000, 3) for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))
    }


class _Cpu:
    """CPU seconds of groups of processes (user + system), and of the machine."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        from flashstock.server.local.procs import family

        self._groups: dict[str, list[psutil.Process]] = {}
        seen: set[int] = set()
        for name, pids in groups.items():
            procs = []
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    # The bench's own children are the groups above, not the bench.
                    members = [psutil.Process(pid)] if pid == os.getpid() else family(pid)
                    procs += [q for q in members if q.pid not in seen]
                    seen.update(q.pid for q in members)
            self._groups[name] = procs

    def sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {"_wall": time.monotonic()}
        for name, procs in self._groups.items():
            per = []
            for p in procs:
                try:
                    t = p.cpu_times()
                    per.append(t.user + t.system)
                except psutil.Error:
                    per.append(0.0)
            out[name] = per
        m = psutil.cpu_times()
        out["_machine"] = sum(m) - m.idle - getattr(m, "iowait", 0.0)
        return out

    @staticmethod
    def percent(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """% of one core per group over the interval, with a per-process split."""
        wall = after["_wall"] - before["_wall"]
        machine = 100 * (after["_machine"] - before["_machine"]) / wall
        out: dict[str, Any] = {"machine": round(machine, 1)}
        ours = 0.0
        for name in before:
            if name.startswith("_"):
                continue
            per = [100 * (a - b) / wall for a, b in zip(after[name], before[name], strict=True)]
            out[name] = round(sum(per), 1)
            ours += sum(per)
            busy = [round(x, 1) for x in per if x >= 0.5]
            if len(busy) > 1:
                out[f"{name}_per_process"] = busy
        # Kernel work not charged to a process (softirqs of loopback traffic), and
        # whatever else runs on the machine: high values mean a noisy run.
        out["rest"] = round(machine - ours, 1)
        return out


# -- the run --------------------------------------------------------------------


def _sleep_until(t: float, tick: Any = None) -> None:
    while True:
        left = t - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.1))
        if tick is not None:
            tick()


class _Run:
    """One bench run on a stack it started: Redis, a node, the echo, load processes."""

    SKU_HOT = "bench-hot"
    SKU_DURABLE = "bench-durable"
    SKU_MEM = "bench-mem"
    SKU_SALE = "bench-sale"

    def __init__(self, plan: BenchPlan, console: Console, stack: contextlib.ExitStack) -> None:
        self.plan = plan
        self.console = console
        self.stack = stack
        self.figures: dict[str, Any] = {"plan": {k: v for k, v in asdict(plan).items() if k != "json_out"}}
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=4,
        )

    # -- stack ------------------------------------------------------------------

    def start_stack(self) -> None:
        import redis

        from flashstock.server.bench.echo import EchoProcess
        from flashstock.server.local.procs import NodeProcess, RedisServer

        plan = self.plan
        task = self.progress.add_task(
            f"start: Redis, node ({plan.workers} worker(s)), echo, {plan.client_procs} load process(es)",
            total=None,
            info="",
        )
        self.loads = _LoadProcs(plan.client_procs)
        self.stack.callback(self.loads.stop)
        self.echo = EchoProcess(workers=plan.workers).launch()
        self.stack.callback(self.echo.stop)
        self.redis_server = RedisServer()
        self.stack.push(self.redis_server)  # its __exit__: stop, remove its folder
        self.redis_server.start()
        from flashstock.server.local.procs import free_port

        self.metrics_port = free_port()
        self.node = NodeProcess(
            self.redis_server.url, workers=plan.workers, extra_args=("--metrics-port", str(self.metrics_port))
        )
        self.stack.push(self.node)  # its __exit__: stop, remove its log
        self.node.start()
        # The same node without its metrics (serving, and a sale's figures), on a Redis of its own (a Redis
        # serves one ledger).
        self.redis_off = RedisServer()
        self.stack.push(self.redis_off)
        self.redis_off.start()
        self.node_off = NodeProcess(
            self.redis_off.url,
            workers=plan.workers,
            extra_args=("--metrics-port", str(free_port()), "--no-serving-metrics", "--stats-interval-ms", "0"),
        )
        self.stack.push(self.node_off)
        self.node_off.start()
        self.node_tls: NodeProcess | None = None
        if plan.tls_rounds:
            self._start_tls_twin()
        self.node_auth: NodeProcess | None = None
        if plan.auth_rounds:
            self._start_auth_twin()
        self.echo.wait_ready()
        self.loads.wait_ready()
        self.redis = redis.Redis.from_url(self.redis_server.url, decode_responses=True)
        self.stack.callback(self.redis.close)
        self.cpu = _Cpu(
            {
                "node": [self.node.pid],
                "redis": [self.redis_server.proc.pid],  # type: ignore[union-attr]
                "node_off": [self.node_off.pid],
                "redis_off": [self.redis_off.proc.pid],  # type: ignore[union-attr]
                **(
                    {"node_tls": [self.node_tls.pid], "redis_tls": [self.redis_tls.proc.pid]}
                    if self.node_tls is not None
                    else {}
                ),
                **(
                    {"node_auth": [self.node_auth.pid], "redis_auth": [self.redis_auth.proc.pid]}
                    if self.node_auth is not None
                    else {}
                ),
                "echo": [self.echo.pid],
                "load": self.loads.pids,
                "bench": [os.getpid()],
            }
        )
        import platform

        import grpc

        self.figures["machine"] = {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "redis_server": self.redis.info("server")["redis_version"],
        }
        self.progress.update(task, total=1, completed=1, info=f"node {self.node.address}, echo {self.echo.address}")

    def _start_tls_twin(self) -> None:
        """The node's twin serving mutual TLS, on a Redis of its own, with certificates made now."""
        import shutil
        import tempfile
        from pathlib import Path

        from flashstock.server.local.certs import make_mtls_files
        from flashstock.server.local.procs import NodeProcess, RedisServer, free_port

        folder = Path(tempfile.mkdtemp(prefix="flashstock-bench-tls-"))
        self.stack.callback(shutil.rmtree, folder, True)
        self.certs = make_mtls_files(folder)
        self.redis_tls = RedisServer()
        self.stack.push(self.redis_tls)
        self.redis_tls.start()
        self.node_tls = NodeProcess(
            self.redis_tls.url,
            workers=self.plan.workers,
            extra_args=(
                "--metrics-port", str(free_port()),
                "--tls-cert", str(self.certs.node_cert),
                "--tls-key", str(self.certs.node_key),
                "--tls-client-ca", str(self.certs.ca),
            ),
        )  # fmt: skip
        self.stack.push(self.node_tls)
        self.node_tls.start()

    def _start_auth_twin(self) -> None:
        """The node's twin with auth on (HS256 bearer tokens), on a Redis of its own, with a secret made now."""
        import secrets
        import shutil
        import tempfile
        from pathlib import Path

        import jwt

        from flashstock.server.local.procs import NodeProcess, RedisServer, free_port

        folder = Path(tempfile.mkdtemp(prefix="flashstock-bench-auth-"))
        self.stack.callback(shutil.rmtree, folder, True)
        secret = secrets.token_hex(32).encode()
        (folder / "jwt.secret").write_bytes(secret)
        now = int(time.time())

        def token(sub: str, role: str) -> str:
            claims = {"sub": sub, "roles": [role], "iss": "bench", "aud": "flashstock", "iat": now, "exp": now + 86400}
            return jwt.encode(claims, secret, algorithm="HS256")

        self.auth_tokens = {"buyer": token("bench-load", "buyer"), "operator": token("bench", "operator")}
        self.redis_auth = RedisServer()
        self.stack.push(self.redis_auth)
        self.redis_auth.start()
        self.node_auth = NodeProcess(
            self.redis_auth.url,
            workers=self.plan.workers,
            extra_args=(
                "--metrics-port", str(free_port()),
                "--auth", "on",
                "--auth-jwt-keys", str(folder / "jwt.secret"),
                "--auth-jwt-issuer", "bench",
                "--auth-jwt-audience", "flashstock",
            ),
        )  # fmt: skip
        self.stack.push(self.node_auth)
        self.node_auth.start()

    def _token(self, target: str, role: str) -> str | None:
        """The bearer token of ``role`` when ``target`` is the auth twin, else None."""
        if self.node_auth is None or target != self.node_auth.address:
            return None
        return self.auth_tokens[role]

    def _tls_files(self, target: str) -> dict[str, str] | None:
        """The load's PEM files when ``target`` is the TLS twin, else None (plaintext)."""
        if self.node_tls is None or target != self.node_tls.address:
            return None
        c = self.certs
        return {"ca": str(c.ca), "cert": str(c.client_cert), "key": str(c.client_key)}

    def admin(self, address: str | None = None) -> Any:
        from flashstock.client import AdminClient, ClientConfig

        tls = self._tls_files(address or "") or {}
        return AdminClient(
            ClientConfig(
                addresses=address or self.node.address,
                deadline_s=10,
                tls_ca=tls.get("ca"),
                tls_cert=tls.get("cert"),
                tls_key=tls.get("key"),
                token=self._token(address or "", "operator"),
            )
        )

    def _phases(
        self, target: str, sku: str, users: str, distinct: bool, requests: int | None = None, rate: float | None = None
    ) -> list[dict[str, Any]]:
        plan = self.plan
        budgets = _split(requests, plan.client_procs) if requests is not None else [None] * plan.client_procs
        buyers = _split(plan.buyers, plan.client_procs)
        return [
            {
                "target": target,
                "sku": sku,
                "users": users,
                "distinct_users": distinct,
                "requests": budget,
                "coroutines": n,
                "connections": plan.connections_per_proc(),
                "rate": rate * n / plan.buyers if rate else None,
                "tls": self._tls_files(target),
                "token": self._token(target, "buyer"),
            }
            for n, budget in zip(buyers, budgets, strict=True)
        ]

    # -- phases ---------------------------------------------------------------------

    def throughput(self, name: str, target: str, sku: str = SKU_HOT, rate: float | None = None) -> dict[str, Any]:
        """Warm-up, then ``seconds`` of Deducts of ``sku`` against ``target``: back to back, or paced at ``rate``/s."""
        plan = self.plan
        pace = f", paced at {rate:,.0f}/s" if rate else ""
        task = self.progress.add_task(
            f"{name}: {plan.buyers} buyers{pace}, warm-up {plan.warmup:g} s + {plan.seconds:g} s",
            total=plan.warmup + plan.seconds,
            info="",
        )
        start = time.monotonic()
        measure_from = start + plan.warmup
        measure_until = measure_from + plan.seconds
        self.loads.set_clock(measure_from, measure_until, measure_until)
        self.loads.start(self._phases(target, sku, "t", distinct=False, rate=rate))

        def tick() -> None:
            self.loads.check_alive()
            elapsed = time.monotonic() - start
            self.progress.update(
                task, completed=min(elapsed, plan.warmup + plan.seconds), info=f"{self.loads.done():,} calls"
            )

        _sleep_until(measure_from, tick)
        before = self.cpu.sample()
        lag_before = self._lag_buckets() if target == self.node.address else None
        _sleep_until(measure_until, tick)
        after = self.cpu.sample()
        lag_after = self._lag_buckets() if target == self.node.address else None
        r = _merge(self.loads.results())
        wall = measure_until - measure_from
        from flashstock.v1 import stock_pb2

        ok = r["window"].get(stock_pb2.OUTCOME_OK, 0)
        calls = sum(r["window"].values())
        errors = {k: v for k, v in r["window"].items() if isinstance(k, str)}
        self.progress.update(task, completed=plan.warmup + plan.seconds, info=f"{ok / wall:,.0f} OK/s")
        cpu = _Cpu.percent(before, after)
        # The groups of the server under test and its Redis; reported as node/echo and redis.
        server, redis_group = {
            self.echo.address: ("echo", "redis"),
            self.node_off.address: ("node_off", "redis_off"),
            **({self.node_tls.address: ("node_tls", "redis_tls")} if self.node_tls is not None else {}),
            **({self.node_auth.address: ("node_auth", "redis_auth")} if self.node_auth is not None else {}),
        }.get(target, ("node", "redis"))

        # CPU time each successful call cost, in µs: comparable across machines
        # and independent of how the cores were shared.
        def us(group: str) -> float | None:
            return round(cpu[group] / 100 * 1e6 / (ok / wall), 1) if ok else None

        per_call = {"echo" if server == "echo" else "node": us(server), "redis": us(redis_group), "load": us("load")}
        return {
            "persister_lag_ms": (
                _lag_quantiles(lag_before, lag_after) if lag_before is not None and lag_after is not None else None
            ),
            "calls_per_s": round(calls / wall, 1),
            "ok_per_s": round(ok / wall, 1),
            "calls": calls,
            "outcomes": _outcome_names(r["window"]),
            "errors": sum(errors.values()),
            "latency_ms": _latency_ms(r["latencies"]),
            "cpu_percent": cpu,
            "cpu_us_per_call": per_call,
        }

    def _lag_buckets(self) -> dict[float, float]:
        """The node's persister lag histogram: cumulative count per upper bound (seconds)."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        out: dict[float, float] = {}
        for line in text.splitlines():
            if line.startswith("flashstock_persister_lag_seconds_bucket{"):
                bound = line.split('le="', 1)[1].split('"', 1)[0]
                out[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
        return out

    def metrics_cost(self) -> dict[str, Any]:
        """The node with its metrics and without, alternating (A-B-B-A ...), ``metrics_rounds`` each."""
        on: list[dict[str, Any]] = []
        off: list[dict[str, Any]] = []
        for i in range(self.plan.metrics_rounds):
            order = [True, False] if i % 2 == 0 else [False, True]
            for metered in order:
                if metered:
                    on.append(self.throughput(f"metrics on ({len(on) + 1})", self.node.address))
                else:
                    off.append(self.throughput(f"metrics off ({len(off) + 1})", self.node_off.address))
        return {"on": _phase_means(on), "off": _phase_means(off), "rounds_on": on, "rounds_off": off}

    def tls_cost(self) -> dict[str, Any]:
        """The node in plaintext and its mutual-TLS twin, alternating (A-B-B-A ...), ``tls_rounds`` each."""
        assert self.node_tls is not None
        plain: list[dict[str, Any]] = []
        tls: list[dict[str, Any]] = []
        for i in range(self.plan.tls_rounds):
            order = [False, True] if i % 2 == 0 else [True, False]
            for secure in order:
                if secure:
                    tls.append(self.throughput(f"TLS on ({len(tls) + 1})", self.node_tls.address))
                else:
                    plain.append(self.throughput(f"TLS off ({len(plain) + 1})", self.node.address))
        return {"plain": _phase_means(plain), "tls": _phase_means(tls), "rounds_plain": plain, "rounds_tls": tls}

    def auth_cost(self) -> dict[str, Any]:
        """The node without auth and its twin with auth on, alternating (A-B-B-A ...), ``auth_rounds`` each."""
        assert self.node_auth is not None
        off: list[dict[str, Any]] = []
        on: list[dict[str, Any]] = []
        for i in range(self.plan.auth_rounds):
            order = [False, True] if i % 2 == 0 else [True, False]
            for authed in order:
                if authed:
                    on.append(self.throughput(f"auth on ({len(on) + 1})", self.node_auth.address))
                else:
                    off.append(self.throughput(f"auth off ({len(off) + 1})", self.node.address))
        return {"plain": _phase_means(off), "auth": _phase_means(on), "rounds_plain": off, "rounds_auth": on}

    def memory(self) -> dict[str, Any]:
        """``records`` deductions by distinct users; Redis used_memory after minus before."""
        plan = self.plan
        with self.admin() as admin:
            admin.put_sku(self.SKU_MEM, plan.records, per_user_limit=1)
        task = self.progress.add_task(f"memory: {plan.records:,} recorded deductions", total=plan.records, info="")
        before, stats_before = self._settled_memory()
        keys_before = self.redis.dbsize()
        self.loads.set_clock(0.0, _INF, _INF)
        self.loads.start(self._phases(self.node.address, self.SKU_MEM, "m", distinct=True, requests=plan.records))
        while not self.loads.finished():
            self.loads.check_alive()
            self.progress.update(task, completed=self.loads.done())
            time.sleep(0.1)
        r = _merge(self.loads.results())
        after, stats_after = self._settled_memory()
        keys_after = self.redis.dbsize()
        with self.admin() as admin:
            sku = admin.get_sku(self.SKU_MEM)
        recorded = sku.held + sku.confirmed
        self.progress.update(task, completed=plan.records, info=f"{(after - before) / max(recorded, 1):,.0f} B each")
        from flashstock.v1 import stock_pb2

        out: dict[str, Any] = {
            "recorded": recorded,
            "ok_answers": r["totals"].get(stock_pb2.OUTCOME_OK, 0),
            "outcomes": _outcome_names(r["totals"]),
            "used_memory_before": before,
            "used_memory_after": after,
            "keys_added": keys_after - keys_before,
            # Connection buffers grow under load and shrink seconds after it
            # (by ±1 MB with 64 connections); they are per connection, not per
            # record, so the figure leaves their change out.
            "client_buffers_change": int(stats_after.get("clients.normal", 0))
            - int(stats_before.get("clients.normal", 0)),
            "bytes_per_record_raw": round((after - before) / recorded, 1) if recorded else None,
            "breakdown_per_record": _memory_breakdown(stats_before, stats_after, recorded),
            "stock": plan.records,
        }
        out["bytes_per_record"] = (
            round((after - before - out["client_buffers_change"]) / recorded, 1) if recorded else None
        )
        return out

    def _settled_memory(self) -> tuple[int, dict[str, Any]]:
        """used_memory once it holds still (an incremental rehash of the key space done), and MEMORY STATS."""
        last = -1
        deadline = time.monotonic() + 3
        while True:
            time.sleep(0.15)
            used = int(self.redis.info("memory")["used_memory"])
            if used == last or time.monotonic() > deadline:
                return used, self.redis.memory_stats()
            last = used

    def sale(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """A sale until sold out, then buyers for ``soldout_seconds`` more, with commandstats."""
        from flashstock.lockmgr import shard_of
        from flashstock.server.store.keys import ShardKeys
        from flashstock.v1 import stock_pb2

        plan = self.plan
        with self.admin() as admin:
            admin.put_sku(self.SKU_SALE, plan.sale_stock, per_user_limit=1)
        sku_key = ShardKeys(shard_of(self.SKU_SALE, self.node.shards)).sku(self.SKU_SALE)
        task = self.progress.add_task(
            f"sale: {plan.sale_stock:,} units, {plan.buyers} buyers", total=plan.sale_stock, info=""
        )
        self.loads.set_clock()
        start = time.monotonic()
        self.loads.start(self._phases(self.node.address, self.SKU_SALE, "s", distinct=True))
        deadline = start + 120
        while True:
            avail = int(self.redis.hget(sku_key, "avail") or 0)
            self.progress.update(task, completed=plan.sale_stock - avail, info=f"{avail:,} left")
            if avail <= 0:
                break
            self.loads.check_alive()
            if time.monotonic() > deadline:
                self.loads.set_clock(stop_at=0.0)
                self.loads.results()
                raise RuntimeError(f"the sale did not sell out within 120 s ({avail} units left)")
            time.sleep(0.02)
        sold_out_at = time.monotonic()
        # Calls in flight when the last unit went finish; the node has heard the news.
        task2 = self.progress.add_task(
            f"sold out: buyers go on for {plan.soldout_seconds:g} s", total=plan.soldout_seconds, info=""
        )
        measure_from = sold_out_at + 0.3
        measure_until = measure_from + plan.soldout_seconds
        self.loads.set_clock(measure_from, measure_until, measure_until)
        _sleep_until(measure_from)
        stats_before = self.redis.info("commandstats")
        cpu_before = self.cpu.sample()

        def tick() -> None:
            self.progress.update(
                task2,
                completed=min(plan.soldout_seconds, time.monotonic() - measure_from),
                info=f"{self.loads.done():,} calls",
            )

        _sleep_until(measure_until, tick)
        cpu_after = self.cpu.sample()
        stats_after = self.redis.info("commandstats")
        r = _merge(self.loads.results())
        with self.admin() as admin:
            sku = admin.get_sku(self.SKU_SALE)
        self.progress.update(task2, completed=plan.soldout_seconds, info="")

        calls = _command_delta(stats_before, stats_after)
        calls["info"] = calls.get("info", 0) - 1  # the bench's own INFO commandstats (the "before" one)
        calls = {k: v for k, v in calls.items() if v > 0}
        first_sold_out = r["first_sold_out"]
        ok_answers = r["totals"].get(stock_pb2.OUTCOME_OK, 0)
        wall = measure_until - measure_from
        sale = {
            "stock": plan.sale_stock,
            "handed_out": sku.held + sku.confirmed,
            "available": sku.available,
            "ok_answers": ok_answers,
            "outcomes": _outcome_names(r["totals"]),
            "seconds_to_sell_out": round(sold_out_at - start, 2),
            "first_sold_out_answer_s": round(first_sold_out - start, 2) if first_sold_out < _INF else None,
        }
        soldout = {
            "seconds": round(wall, 2),
            "refusals_per_s": round(r["window"].get(stock_pb2.OUTCOME_SOLD_OUT, 0) / wall, 1),
            "outcomes": _outcome_names(r["window"]),
            "latency_ms": _latency_ms(r["latencies"]),
            "redis_calls": sum(calls.values()),
            "evalsha": calls.get("evalsha", 0) + calls.get("eval", 0),
            "redis_calls_by_command": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
            "cpu_percent": _Cpu.percent(cpu_before, cpu_after),
        }
        refusals = r["window"].get(stock_pb2.OUTCOME_SOLD_OUT, 0)
        soldout["node_cpu_us_per_refusal"] = (
            round(soldout["cpu_percent"]["node"] / 100 * 1e6 * wall / refusals, 1) if refusals else None
        )
        soldout["takers_memory"] = takers_memory(self.node.redis_url, self.SKU_SALE, self.node.shards)
        return sale, soldout

    def run(self) -> int:
        from flashstock.client import Mode

        with self.progress:
            self.start_stack()
            with self.admin() as admin:
                admin.put_sku(self.SKU_HOT, 10**12)
                admin.put_sku(self.SKU_DURABLE, 10**12, mode=Mode.DURABLE)
            with self.admin(self.node_off.address) as admin:
                admin.put_sku(self.SKU_HOT, 10**12)
            self.figures["flashstock"] = self.throughput("flashstock", self.node.address)
            self.figures["metrics_cost"] = self.metrics_cost()
            if self.node_tls is not None:
                with self.admin(self.node_tls.address) as admin:
                    admin.put_sku(self.SKU_HOT, 10**12)
                self.figures["tls_cost"] = self.tls_cost()
            if self.node_auth is not None:
                with self.admin(self.node_auth.address) as admin:
                    admin.put_sku(self.SKU_HOT, 10**12)
                self.figures["auth_cost"] = self.auth_cost()
            self.figures["durable"] = self.throughput("durable", self.node.address, sku=self.SKU_DURABLE)
            self.figures["echo"] = self.throughput("echo", self.echo.address)
            half = self.figures["flashstock"]["ok_per_s"] / 2
            self.figures["half_load"] = self.throughput("half load", self.node.address, rate=half)
            self.figures["memory"] = self.memory()
            self.figures["sale"], self.figures["sold_out"] = self.sale()
        return self.report()

    # -- report -----------------------------------------------------------------

    def report(self) -> int:
        f = self.figures
        fs, echo, mem, sale, so = f["flashstock"], f["echo"], f["memory"], f["sale"], f["sold_out"]
        ratio = fs["ok_per_s"] / echo["calls_per_s"] if echo["calls_per_s"] else 0.0
        oversell_problems = []
        if sale["handed_out"] != sale["stock"]:
            oversell_problems.append(f"sale: {sale['handed_out']} units handed out of a stock of {sale['stock']}")
        if sale["ok_answers"] > sale["stock"]:
            oversell_problems.append(f"sale: {sale['ok_answers']} OK answers for a stock of {sale['stock']}")
        if mem["ok_answers"] > mem["stock"] or mem["recorded"] > mem["stock"]:
            oversell_problems.append(
                f"memory: {mem['ok_answers']} OK answers, {mem['recorded']} recorded, stock {mem['stock']}"
            )
        bpr = mem["bytes_per_record"]
        durable_ratio = f["durable"]["ok_per_s"] / fs["ok_per_s"] if fs["ok_per_s"] else 0.0
        lag_p99 = (f["half_load"]["persister_lag_ms"] or {}).get("p99")
        targets = {
            "ratio": {"value": round(ratio, 3), "target": f">= {TARGET_RATIO}", "pass": ratio >= TARGET_RATIO},
            "durable_ratio": {
                "value": round(durable_ratio, 3),
                "target": f">= {TARGET_DURABLE_RATIO}",
                "pass": durable_ratio >= TARGET_DURABLE_RATIO,
            },
            "lag_p99_half_load_ms": {
                "value": lag_p99,
                "target": f"< {TARGET_LAG_P99_MS}",
                "pass": lag_p99 is not None and lag_p99 < TARGET_LAG_P99_MS,
            },
            "sold_out_evalsha": {
                "value": so["evalsha"],
                "target": f"== {TARGET_SOLD_OUT_EVALSHA}",
                "pass": so["evalsha"] <= TARGET_SOLD_OUT_EVALSHA,
            },
            "bytes_per_record": {
                "value": bpr,
                "target": f"< {TARGET_BYTES_PER_RECORD}",
                "pass": bpr is not None and bpr < TARGET_BYTES_PER_RECORD,
            },
        }
        f["ratio"] = round(ratio, 3)
        so["refusals_vs_echo"] = round(so["refusals_per_s"] / echo["calls_per_s"], 3) if echo["calls_per_s"] else None
        node_us, echo_us = fs["cpu_us_per_call"]["node"], echo["cpu_us_per_call"]["echo"]
        f["cpu_ratio"] = round(echo_us / node_us, 3) if node_us and echo_us else None
        cost = f["metrics_cost"]
        for side in ("on", "off"):
            rate = cost[side]["ok_per_s"]
            cost[f"ratio_{side}"] = round(rate / echo["calls_per_s"], 3) if echo["calls_per_s"] else None
        on_us, off_us = cost["on"]["node_cpu_us_per_call"], cost["off"]["node_cpu_us_per_call"]
        cost["node_cpu_us_per_call_more"] = round(on_us - off_us, 1) if on_us and off_us else None
        if "tls_cost" in f:
            f["tls_cost"].update(tls_difference(f["tls_cost"]["plain"], f["tls_cost"]["tls"], echo["calls_per_s"]))
        if "auth_cost" in f:
            f["auth_cost"].update(auth_difference(f["auth_cost"]["plain"], f["auth_cost"]["auth"], echo["calls_per_s"]))
        f["targets"] = targets
        f["oversell_check"] = {"pass": not oversell_problems, "problems": oversell_problems}

        self.console.print(self._throughput_table(fs, echo, ratio, f["cpu_ratio"]))
        self.console.print(self._metrics_cost_table(f["metrics_cost"]))
        if "tls_cost" in f:
            self.console.print(self._tls_cost_table(f["tls_cost"]))
        if "auth_cost" in f:
            self.console.print(self._auth_cost_table(f["auth_cost"]))
        noisy = max(fs["cpu_percent"]["rest"], echo["cpu_percent"]["rest"])
        if noisy > NOISY_REST_PERCENT:
            self.console.print(
                f"[yellow]warning:[/] processes other than the bench's used up to {noisy:.0f}% of a core during a "
                "throughput phase: the rates and their ratio are disturbed; the CPU-per-call figures less so"
            )
        self.console.print(self._sale_table(mem, sale, so))
        self.console.print(self._redis_calls_table(so))
        self.console.print(self._durable_table(fs, f["durable"], f["half_load"], durable_ratio))
        for name, label in (
            ("ratio", "flashstock/echo ratio"),
            ("durable_ratio", "durable/fast ratio"),
            ("lag_p99_half_load_ms", "persister lag p99 at half load, ms"),
            ("sold_out_evalsha", "EVALSHA after sold out"),
            ("bytes_per_record", "Redis bytes per recorded deduction"),
        ):
            t = targets[name]
            mark = "[bold green]PASS[/]" if t["pass"] else "[bold red]FAIL[/]"
            self.console.print(f"{mark} {label}: {t['value']} (target {t['target']})")
        if oversell_problems:
            for p in oversell_problems:
                self.console.print(f"[bold red]FAIL oversell check:[/] {p}")
        else:
            self.console.print(
                f"[bold green]PASS[/] oversell check: {sale['handed_out']:,} units handed out "
                f"= stock {sale['stock']:,}, "
                f"{sale['ok_answers']:,} OK answers"
            )
        if self.plan.json_out:
            with open(self.plan.json_out, "w") as out:
                json.dump(f, out, indent=2, default=str)
                out.write("\n")
            self.console.print(f"figures written to {self.plan.json_out}")
        return 0 if not oversell_problems else 1

    def _throughput_table(
        self, fs: dict[str, Any], echo: dict[str, Any], ratio: float, cpu_ratio: float | None
    ) -> Table:
        plan = self.plan
        t = Table(
            "figure",
            "flashstock Deduct",
            "bare echo",
            title=(
                f"Throughput: {plan.buyers} buyers, {plan.seconds:g} s measured, "
                f"node and echo with {plan.workers} worker(s), "
                f"{plan.client_procs} load process(es) × {plan.connections_per_proc()} connection(s)"
            ),
        )
        t.add_row("successful calls/s", f"{fs['ok_per_s']:,.0f}", f"{echo['calls_per_s']:,.0f}")
        t.add_row("ratio flashstock/echo", f"[bold]{ratio:.2f}[/]", "1")
        for p in ("p50", "p99", "p999"):
            t.add_row(f"latency {p} (ms)", f"{fs['latency_ms'][p]:.2f}", f"{echo['latency_ms'][p]:.2f}")
        t.add_row("errors", str(fs["errors"]), str(echo["errors"]))
        fc, ec = fs["cpu_percent"], echo["cpu_percent"]
        t.add_row("server CPU, % of a core", _cpu_cell(fc, "node"), _cpu_cell(ec, "echo"))
        t.add_row("Redis CPU, % of a core", _cpu_cell(fc, "redis"), _cpu_cell(ec, "redis"))
        t.add_row("load processes CPU, % of a core", _cpu_cell(fc, "load"), _cpu_cell(ec, "load"))
        fu, eu = fs["cpu_us_per_call"], echo["cpu_us_per_call"]
        t.add_row(
            "server CPU per successful call (µs)",
            f"{fu['node']:,.0f}" if fu["node"] else "-",
            f"{eu['echo']:,.0f}" if eu["echo"] else "-",
        )
        t.add_row("Redis CPU per successful call (µs)", f"{fu['redis']:,.0f}" if fu["redis"] else "-", "-")
        t.add_row("ratio by server CPU per call (echo µs / node µs)", f"{cpu_ratio:.2f}" if cpu_ratio else "-", "1")
        cores = os.cpu_count() or 1
        t.add_row(f"machine CPU, % of a core ({cores} cores)", f"{fc['machine']:.0f}", f"{ec['machine']:.0f}")
        t.add_row("  of which not the bench's processes", f"{max(0.0, fc['rest']):.0f}", f"{max(0.0, ec['rest']):.0f}")
        return t

    def _metrics_cost_table(self, cost: dict[str, Any]) -> Table:
        rounds = self.plan.metrics_rounds
        t = Table(
            "figure",
            "metrics on",
            "off",
            title=f"The metrics' cost (serving, and a sale's figures): {rounds} phase(s) each, alternating, means",
        )
        on, off = cost["on"], cost["off"]
        t.add_row("successful calls/s", f"{on['ok_per_s']:,.0f}", f"{off['ok_per_s']:,.0f}")
        t.add_row(
            "ratio against echo",
            f"[bold]{cost['ratio_on']:.3f}[/]" if cost["ratio_on"] is not None else "-",
            f"[bold]{cost['ratio_off']:.3f}[/]" if cost["ratio_off"] is not None else "-",
        )
        t.add_row(
            "latency p50 / p99 (ms)",
            f"{on['p50_ms']:.2f} / {on['p99_ms']:.2f}",
            f"{off['p50_ms']:.2f} / {off['p99_ms']:.2f}",
        )
        more = cost["node_cpu_us_per_call_more"]
        t.add_row(
            "node CPU per successful call (µs)",
            f"{on['node_cpu_us_per_call']:,.1f}" + (f" ({more:+.1f})" if more is not None else ""),
            f"{off['node_cpu_us_per_call']:,.1f}",
        )
        t.add_row("phases' rates (calls/s)", _rates(cost["rounds_on"]), _rates(cost["rounds_off"]))
        return t

    def _tls_cost_table(self, cost: dict[str, Any]) -> Table:
        title = f"The cost of TLS: {self.plan.tls_rounds} phase(s) each, alternating, means"
        return _twin_cost_table(cost, "tls", ("plaintext", "mutual TLS"), title)

    def _auth_cost_table(self, cost: dict[str, Any]) -> Table:
        title = f"The cost of auth (a bearer JWT per call): {self.plan.auth_rounds} phase(s) each, alternating, means"
        return _twin_cost_table(cost, "auth", ("auth off", "auth on"), title)

    def _durable_table(
        self, fast: dict[str, Any], durable: dict[str, Any], half: dict[str, Any], ratio: float
    ) -> Table:
        t = Table("figure", "fast", "durable", "fast at half load", title="Durable mode: replies wait for the ledger")
        t.add_row(
            "successful deductions/s",
            f"{fast['ok_per_s']:,.0f}",
            f"{durable['ok_per_s']:,.0f}",
            f"{half['ok_per_s']:,.0f}",
        )
        t.add_row("ratio durable/fast", "1", f"{ratio:.2f}", "-")
        for q in ("p50", "p99", "p999"):
            t.add_row(
                f"latency {q} (ms)",
                f"{fast['latency_ms'][q]:.2f}",
                f"{durable['latency_ms'][q]:.2f}",
                f"{half['latency_ms'][q]:.2f}",
            )

        def lag(phase: dict[str, Any], q: str) -> str:
            value = (phase["persister_lag_ms"] or {}).get(q)
            return "-" if value is None else f"{value:.1f}"

        for q in ("p50", "p99"):
            t.add_row(f"persister lag {q} (ms)", lag(fast, q), lag(durable, q), lag(half, q))
        t.add_row(
            "node CPU, % of a core",
            _cpu_cell(fast["cpu_percent"], "node"),
            _cpu_cell(durable["cpu_percent"], "node"),
            _cpu_cell(half["cpu_percent"], "node"),
        )
        return t

    def _sale_table(self, mem: dict[str, Any], sale: dict[str, Any], so: dict[str, Any]) -> Table:
        t = Table("figure", "value", title="Memory, sale and sold out")
        bpr = mem["bytes_per_record"]
        t.add_row(
            "Redis memory per recorded deduction",
            f"[bold]{bpr:,.0f} B[/] (used_memory change less client buffers' change)" if bpr is not None else "-",
        )
        if mem["bytes_per_record_raw"] is not None:
            t.add_row("  used_memory change alone, per record", f"{mem['bytes_per_record_raw']:,.0f} B")
        parts = mem["breakdown_per_record"]
        if parts:
            t.add_row(
                "  of which (MEMORY STATS)",
                f"data {parts['dataset']:,.0f} B (key names, values, user counters, log entries), "
                f"key space dict entries and tables (main + expires) {parts['key_space_hash_tables']:,.0f} B, "
                f"client buffers {parts['clients']:,.0f} B",
            )
        t.add_row(
            "  used_memory before → after",
            f"{mem['used_memory_before']:,} → {mem['used_memory_after']:,} B, {mem['recorded']:,} recorded, "
            f"{mem['keys_added']:,} keys added",
        )
        t.add_row(
            "sale: units handed out / stock",
            f"{sale['handed_out']:,} / {sale['stock']:,} (OK answers {sale['ok_answers']:,})",
        )
        t.add_row("sale: sold out after", f"{sale['seconds_to_sell_out']} s")
        t.add_row("sold out: refusals/s", f"{so['refusals_per_s']:,.0f} over {so['seconds']} s")
        lat = so["latency_ms"]
        t.add_row(
            "sold out: refusal latency p50/p99/p999 (ms)", f"{lat['p50']:.2f} / {lat['p99']:.2f} / {lat['p999']:.2f}"
        )
        c = so["cpu_percent"]
        t.add_row(
            "sold out: CPU node / Redis / load, % of a core",
            f"{_cpu_cell(c, 'node')} / {_cpu_cell(c, 'redis')} / {_cpu_cell(c, 'load')}",
        )
        if so["node_cpu_us_per_refusal"]:
            t.add_row("sold out: node CPU per refusal (µs)", f"{so['node_cpu_us_per_refusal']:,.0f}")
        if so.get("refusals_vs_echo") is not None:
            t.add_row("sold out: refusals/s ÷ echo calls/s", f"[bold]{so['refusals_vs_echo']:.2f}[/]")
        tm = so["takers_memory"]
        t.add_row(
            "sold out: node memory of the SKU's takers",
            f"[bold]{tm['bytes_per_unit']:,.0f} B per unit[/] ({tm['takers']:,} ids, {tm['bytes']:,} B; "
            "what each worker holds to answer their resends)",
        )
        t.add_row("sold out: Redis calls (all commands)", f"{so['redis_calls']:,}")
        t.add_row("sold out: EVALSHA calls", f"{so['evalsha']:,}")
        return t

    def _redis_calls_table(self, so: dict[str, Any]) -> Table:
        t = Table(
            "command", "calls", "per s", title=f"Redis calls during the sold-out phase ({so['seconds']} s), by command"
        )
        for cmd, n in so["redis_calls_by_command"].items():
            t.add_row(cmd, f"{n:,}", f"{n / so['seconds']:,.1f}")
        if not so["redis_calls_by_command"]:
            t.add_row("(none)", "0", "0")
        return t


def _phase_means(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean rate, latency and node CPU per call of throughput phases."""

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return round(sum(known) / len(known), 1) if known else None

    return {
        "ok_per_s": mean([p["ok_per_s"] for p in phases]) or 0.0,
        "p50_ms": mean([p["latency_ms"]["p50"] for p in phases]) or 0.0,
        "p99_ms": mean([p["latency_ms"]["p99"] for p in phases]) or 0.0,
        "node_cpu_us_per_call": mean([p["cpu_us_per_call"]["node"] for p in phases]),
    }


def tls_difference(plain: dict[str, Any], tls: dict[str, Any], echo_calls_per_s: float) -> dict[str, Any]:
    """What TLS costs, from the means (:func:`_phase_means`) of the plaintext and the TLS phases.

    Each side's ratio against echo, and the difference TLS minus plaintext of
    each figure (a loss of rate is negative, a cost in latency or CPU positive);
    None where a side has no figure.
    """

    def ratio(rate: float) -> float | None:
        return round(rate / echo_calls_per_s, 3) if echo_calls_per_s else None

    def minus(a: float | None, b: float | None, digits: int = 1) -> float | None:
        return round(a - b, digits) if a is not None and b is not None else None

    ratio_plain, ratio_tls = ratio(plain["ok_per_s"]), ratio(tls["ok_per_s"])
    rate_diff = minus(tls["ok_per_s"], plain["ok_per_s"])
    return {
        "ratio_plain": ratio_plain,
        "ratio_tls": ratio_tls,
        "difference": {
            "ok_per_s": rate_diff,
            "ok_per_s_percent": (
                round(100 * rate_diff / plain["ok_per_s"], 1) if rate_diff is not None and plain["ok_per_s"] else None
            ),
            "ratio": minus(ratio_tls, ratio_plain, 3),
            "p50_ms": minus(tls["p50_ms"], plain["p50_ms"], 2),
            "p99_ms": minus(tls["p99_ms"], plain["p99_ms"], 2),
            "node_cpu_us_per_call": minus(tls["node_cpu_us_per_call"], plain["node_cpu_us_per_call"]),
        },
    }


def _twin_cost_table(cost: dict[str, Any], side: str, labels: tuple[str, str], title: str) -> Table:
    """The node against a twin alike but for one thing (``side``: tls, auth), as a table."""
    t = Table("figure", *labels, "difference", title=title)
    plain, twin, diff = cost["plain"], cost[side], cost["difference"]

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    t.add_row(
        "successful calls/s",
        f"{plain['ok_per_s']:,.0f}",
        f"{twin['ok_per_s']:,.0f}",
        f"{num(diff['ok_per_s'], '+,.0f')} ({num(diff['ok_per_s_percent'], '+.1f')} %)",
    )
    t.add_row(
        "ratio against echo",
        num(cost["ratio_plain"], ".3f"),
        num(cost[f"ratio_{side}"], ".3f"),
        num(diff["ratio"], "+.3f"),
    )
    for q in ("p50", "p99"):
        t.add_row(
            f"latency {q} (ms)",
            f"{plain[f'{q}_ms']:.2f}",
            f"{twin[f'{q}_ms']:.2f}",
            num(diff[f"{q}_ms"], "+.2f"),
        )
    t.add_row(
        "node CPU per successful call (µs)",
        num(plain["node_cpu_us_per_call"], ",.1f"),
        num(twin["node_cpu_us_per_call"], ",.1f"),
        num(diff["node_cpu_us_per_call"], "+.1f"),
    )
    t.add_row("phases' rates (calls/s)", _rates(cost["rounds_plain"]), _rates(cost[f"rounds_{side}"]), "")
    return t


def auth_difference(plain: dict[str, Any], auth: dict[str, Any], echo_calls_per_s: float) -> dict[str, Any]:
    """What auth costs: :func:`tls_difference`'s figures, auth on minus off, its ratio named ``ratio_auth``."""
    out = tls_difference(plain, auth, echo_calls_per_s)
    out["ratio_auth"] = out.pop("ratio_tls")
    return out


def _rates(phases: list[dict[str, Any]]) -> str:
    return ", ".join(f"{p['ok_per_s']:,.0f}" for p in phases)


def _cpu_cell(cpu: dict[str, Any], name: str) -> str:
    cell = f"{cpu[name]:.0f}"
    split = cpu.get(f"{name}_per_process")
    if split:
        cell += " (" + " + ".join(f"{x:.0f}" for x in split) + ")"
    return cell


def _memory_breakdown(before: dict[str, Any], after: dict[str, Any], records: int) -> dict[str, float]:
    """Where the memory went, per record, from two MEMORY STATS replies."""
    if not records:
        return {}

    def tables(stats: dict[str, Any]) -> int:
        db = stats.get("db.0") or {}
        return int(db.get("overhead.hashtable.main", 0)) + int(db.get("overhead.hashtable.expires", 0))

    def delta(name: str) -> float:
        return round((int(after.get(name, 0)) - int(before.get(name, 0))) / records, 1)

    return {
        "dataset": delta("dataset.bytes"),
        "key_space_hash_tables": round((tables(after) - tables(before)) / records, 1),
        "clients": delta("clients.normal"),
    }


def _lag_quantiles(before: dict[float, float], after: dict[float, float]) -> dict[str, float | None]:
    """p50/p99 (ms) of the entries persisted between two scrapes, interpolated within buckets."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    out: dict[str, float | None] = {"entries": total}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        if not total:
            out[name] = None
            continue
        rank, lower, below = q * total, 0.0, 0.0
        for bound, cumulative in zip(bounds, counts, strict=True):
            if cumulative >= rank:
                upper = bound if bound != float("inf") else lower
                share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
                out[name] = round((lower + (upper - lower) * share) * 1000, 2)
                break
            lower, below = bound, cumulative
    return out


def _command_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Calls per command between two ``INFO commandstats`` replies (as parsed by redis-py)."""
    out = {}
    for key, stats in after.items():
        name = key.removeprefix("cmdstat_")
        prev = before.get(key, {}).get("calls", 0)
        out[name] = int(stats.get("calls", 0)) - int(prev)
    return out


def sigterm_as_interrupt(stack: contextlib.ExitStack) -> None:
    """Until ``stack`` closes, SIGTERM raises KeyboardInterrupt: the same clean stop as Ctrl-C."""

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminated)
    stack.callback(signal.signal, signal.SIGTERM, previous)


def run_bench(plan: BenchPlan, console: Console) -> int:
    """Run the bench; returns the exit code (see the module's docstring)."""
    from flashstock.server.local.procs import ProcessError

    problems = plan.problems()
    if problems:
        for p in problems:
            console.print(f"[red]flashstock bench:[/] {p}")
        return 2
    with contextlib.ExitStack() as stack:
        sigterm_as_interrupt(stack)
        run = _Run(plan, console, stack)
        try:
            return run.run()
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopping every process the bench started[/]")
            return 130
        except ProcessError as exc:
            console.print(f"[red]flashstock bench: cannot start:[/] {exc}")
            return 2
        except Exception as exc:  # noqa: BLE001 - report, then stop the stack
            console.print(f"[red]flashstock bench failed:[/] {type(exc).__name__}: {exc}")
            node = getattr(run, "node", None)
            if node is not None and node.proc is not None:
                console.print(f"node log (tail):\n{node.log()}")
            return 2
