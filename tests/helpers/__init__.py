"""What the tests share: polling with a deadline (never a bare sleep), Redis and metrics readers.

::

    stock = eventually(lambda: stock_client.get_stock(sku), until=lambda s: s.held == 0)
    await aeventually(lambda: astock.deduct(sku, "u1"), until=lambda r: r.outcome is Outcome.OK)

A check is retried while it returns something falsy (or fails ``until``) or
raises ``AssertionError`` (or one of ``retry_on``); when the deadline passes
the helper raises ``AssertionError`` naming the last value or error, so a
failing test says what it saw, not just that it timed out.

The package's modules, each for one kind of test::

    processes   a node process of a test, stopped with every worker it forked (running_node, QUIET)
    stacks      a Redis and nodes a test (or a module) has to itself: PrivateStack, FaultStack
    etcd        etcd fixtures (pytest_plugins = ["tests.helpers.etcd"])
    cluster     ClusterStack: the local cluster (etcd, Redis, nodes, a ledger) with the readers tests need
    failpoints  named faults with inject()/recover(): kill or pause a node, lose Redis or an etcd member ...
    stranger    raw gRPC calls built from server reflection, as a caller without our client would
    source      FromAddress: calls to a node from another loopback source address (127.0.0.2), as another host;
                or to a Redis over a slow link (every reply late)
    load        raw Deducts in a closed loop (capacity) or paced open loop (overload), from processes of their own
    deploy      the alert rules and the dashboard under deploy/: their PromQL, and promtool / prometheus

Every process is started through :mod:`flashstock.server.local.procs` (and
:class:`~flashstock.server.local.cluster.LocalCluster`), the harness the
demo, the bench and ``flashstock cluster`` use too.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "BACKGROUND_COMMANDS",
    "aeventually",
    "calls_delta",
    "command_calls",
    "eventually",
    "logs_drained",
    "metric",
    "no_hold_due_soon",
    "redis_now_ms",
    "varint",
]

BACKGROUND_COMMANDS = frozenset(
    {"time", "zrange", "hget", "xread", "xlen", "multi", "exec"}
    | {"hincrby", "pfadd", "expire", "zadd"}
    | {"zrangebyscore", "hgetall", "pfcount", "zrem", "zrevrange", "hmget"}
)
"""What a node's duties send whatever the traffic, left out when counting a
request's Redis calls: the reaper (a pipeline of TIME and one ZRANGE per
shard), the warden (one HGET of each shard's state a second) and the
persister (a blocking XREAD, then the entries and the shards' generations in one
MULTI, and an XLEN of each log a second for its backlog). The sale figures add
each worker's flush, once a second (HINCRBY, PFADD, EXPIRE, ZADD), and
their duty's round every two seconds (ZRANGEBYSCORE, HGETALL, PFCOUNT, ZREM,
ZREVRANGE, HMGET)."""


def _accept(value: Any, until: Callable[[Any], bool] | None) -> bool:
    return bool(until(value)) if until is not None else bool(value)


def _timeout_error(timeout: float, last: Any, error: BaseException | None) -> AssertionError:
    seen = f"last error: {error!r}" if error is not None else f"last value: {last!r}"
    return AssertionError(f"not true within {timeout} s; {seen}")


def eventually(
    check: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    *,
    until: Callable[[T], bool] | None = None,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``check`` until its value is accepted; return that value.

    Accepted means truthy, or ``until(value)`` when ``until`` is given.
    ``AssertionError`` and the exceptions in ``retry_on`` count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            last = check()
            error = None
            if _accept(last, until):
                return last
        except (AssertionError, *retry_on) as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise _timeout_error(timeout, last, error)
        time.sleep(interval)


async def aeventually(
    check: Callable[[], Awaitable[T] | T],
    timeout: float = 10.0,
    interval: float = 0.02,
    *,
    until: Callable[[T], bool] | None = None,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """The asyncio twin of :func:`eventually`: ``check`` may be async or plain."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            value = check()
            last = await value if inspect.isawaitable(value) else value
            error = None
            if _accept(last, until):
                return last
        except (AssertionError, *retry_on) as exc:
            error = exc
        if loop.time() >= deadline:
            raise _timeout_error(timeout, last, error)
        await asyncio.sleep(interval)


def redis_now_ms(redis: Any) -> int:
    """Now on Redis's clock (the one sale windows and holds are decided on), unix ms."""
    seconds, micros = redis.time()
    return seconds * 1000 + micros // 1000


def command_calls(redis: Any) -> dict[str, int]:
    """Calls per command since Redis started (INFO commandstats), by lower-case name."""
    stats = redis.info("commandstats")
    return {name.removeprefix("cmdstat_").lower(): int(s["calls"]) for name, s in stats.items()}


def calls_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands called between two :func:`command_calls` readings, and how often."""
    return {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}


def no_hold_due_soon(redis: Any, within_ms: int = 3000) -> bool:
    """True when no open hold of any SKU expires within ``within_ms``.

    A due hold makes the reaper run a script (an EVALSHA); tests counting
    EVALSHAs wait for this first, so other tests' holds cannot disturb them.
    """
    horizon = redis_now_ms(redis) + within_ms
    return all(redis.zcount(key, "-inf", horizon) == 0 for key in redis.scan_iter(match="fs:*:hx", count=1000))


def logs_drained(redis: Any) -> bool:
    """True when every shard log is persisted and announced (the persister trims a log once it announced it).

    The announcement is a script call (an EVALSHA) of the persister: tests
    counting EVALSHAs wait for this first.
    """
    return all(redis.xlen(key) == 0 for key in redis.scan_iter(match="fs:*:log", count=1000))


def metric(port: int, name: str) -> float:
    """The sum of Prometheus metric ``name`` (every label set) served on 127.0.0.1:``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


def varint(n: int) -> bytes:
    """``n`` as a protobuf base-128 varint (to write malformed messages by hand)."""
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out
