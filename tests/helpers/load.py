"""Load on a node from raw gRPC stubs: closed loop (to measure capacity) and paced open loop (to overload it).

Every call is a Deduct of one unit with a request id of its own and its own
deadline, through a raw stub (not the client, which would retry a shed
call): what the node answered is what is recorded, as a :class:`Call`.

:func:`open_loop` offers calls at a set rate whatever the node answers
(paced: it sleeps between sends, and sends every call due since the last
wake-up, so a late wake-up does not lower the rate). :func:`offer` runs it in
a process of its own (for :class:`concurrent.futures.ProcessPoolExecutor`):
one Python process cannot offer much more than a thousand calls a second.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from flashstock.client import Overloaded
from flashstock.client.errors import from_status
from flashstock.v1 import stock_pb2, stock_pb2_grpc

__all__ = ["Call", "Offered", "closed_loop", "deduct", "measure", "offer", "open_loop", "percentile"]


@dataclass(frozen=True)
class Call:
    """One Deduct and what the node answered."""

    request_id: str
    sku: str
    code: str
    """The status code's name (``OK``, ``RESOURCE_EXHAUSTED``, ...)."""
    seconds: float
    """From the send to the answer, as the caller saw it."""
    outcome: int = 0
    """The reply's outcome (``stock_pb2.Outcome``), for an OK answer."""
    stock_left: int = -1
    taken_at_ms: int = 0
    """The deduction's ``taken_at_ms``, for an OK answer that took units (a resend's DUPLICATE repeats it)."""
    retry_after: float | None = None
    """For RESOURCE_EXHAUSTED: the RetryInfo's delay, when the status carried one."""


@dataclass(frozen=True)
class Offered:
    """What an open loop sent and got back."""

    calls: list[Call]
    first: float
    """When the first call was sent (``time.monotonic()``, which every process on the machine shares)."""
    last: float
    """When the last call was sent."""

    @property
    def seconds(self) -> float:
        """From the first send to the last."""
        return self.last - self.first

    @property
    def rate(self) -> float:
        """Calls sent a second, as achieved (not as asked)."""
        return (len(self.calls) - 1) / self.seconds if self.seconds > 0 and len(self.calls) > 1 else 0.0


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


async def deduct(stub: stock_pb2_grpc.StockServiceStub, sku: str, request_id: str, deadline_s: float) -> Call:
    """One raw Deduct of one unit by user ``u-<request id>``."""
    request = stock_pb2.DeductRequest(sku_id=sku, user_id=f"u-{request_id}", qty=1, request_id=request_id)
    started = time.perf_counter()
    try:
        reply = await stub.Deduct(request, timeout=deadline_s)
    except grpc.aio.AioRpcError as exc:
        seconds = time.perf_counter() - started
        retry_after = None
        if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
            error = from_status(exc.code(), exc.details() or "", exc.trailing_metadata())
            if isinstance(error, Overloaded) and error.retry_after > 0:
                retry_after = error.retry_after
        return Call(request_id, sku, exc.code().name, seconds, retry_after=retry_after)
    seconds = time.perf_counter() - started
    return Call(request_id, sku, "OK", seconds, reply.outcome, reply.stock_left, reply.deduction.taken_at_ms)


async def closed_loop(
    address: str, skus: Sequence[str], duration_s: float, prefix: str, deadline_s: float = 10.0
) -> list[Call]:
    """A caller per entry of ``skus``, each Deducting from its SKU again when answered, for ``duration_s``."""
    calls: list[Call] = []
    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        stub = stock_pb2_grpc.StockServiceStub(channel)
        end = time.perf_counter() + duration_s

        async def caller(n: int, sku: str) -> None:
            i = 0
            while time.perf_counter() < end:
                calls.append(await deduct(stub, sku, f"{prefix}-{n}-{i}", deadline_s))
                i += 1

        await asyncio.gather(*(caller(n, sku) for n, sku in enumerate(skus)))
    return calls


async def open_loop(
    address: str,
    sku: str,
    rate: float,
    duration_s: float,
    prefix: str,
    deadline_s: float = 5.0,
    start_at: float = 0.0,
) -> Offered:
    """Send Deducts at ``rate`` a second for ``duration_s``, whatever the answers; wait for every answer.

    The first is sent at ``start_at`` (``time.monotonic()``; at once if past), so that loops in several
    processes offer their calls together.
    """
    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        stub = stock_pb2_grpc.StockServiceStub(channel)
        total = max(1, round(rate * duration_s))
        tasks: list[asyncio.Task[Call]] = []
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        first = last = time.monotonic()
        while len(tasks) < total:
            due = min(total, 1 + int((time.monotonic() - first) * rate))
            while len(tasks) < due:
                tasks.append(asyncio.create_task(deduct(stub, sku, f"{prefix}-{len(tasks)}", deadline_s)))
                last = time.monotonic()
            await asyncio.sleep(max(0.0, first + len(tasks) / rate - time.monotonic()))
        calls = list(await asyncio.gather(*tasks))
    return Offered(calls, first, last)


def offer(
    address: str, sku: str, rate: float, duration_s: float, prefix: str, deadline_s: float, start_at: float
) -> Offered:
    """:func:`open_loop` in this process's own event loop (for a process pool)."""
    return asyncio.run(open_loop(address, sku, rate, duration_s, prefix, deadline_s, start_at))


def measure(address: str, skus: Sequence[str], duration_s: float, prefix: str) -> list[Call]:
    """:func:`closed_loop` in this process's own event loop (for a process pool)."""
    return asyncio.run(closed_loop(address, skus, duration_s, prefix))
