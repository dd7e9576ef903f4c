"""Five times a node's capacity, measured in the same test: it sheds the excess and keeps its promises.

On this machine (two cores, shared) a Python load generator cannot offer five
times what a CPU-bound node serves, so the node's capacity is made bounded by
what the test sets, honestly: one serving worker with ``max_in_flight`` CAP,
on a Redis whose every reply arrives DELAY_S late (a loopback forwarder,
:class:`~tests.helpers.source.FromAddress`). Its capacity is about CAP calls
per one or two round trips (the coalescer sends a shard's next batch when the
last is answered), far below what two generator processes can offer.

1. Capacity: CAP callers in a closed loop on one SKU for a few seconds (the
   worker's cap always full, never past it): OK answers a second. Unloaded
   latency: one caller on a SKU of each shard (no call waits for another's
   coalesced batch), the same few seconds.
2. Overload: FACTOR x that rate, open loop (paced sends from two processes,
   raw stubs, a request id and a deadline per call), for LOAD_S seconds.
3. Asserted: the offered rate reached at least 4.5 x capacity; the admitted
   calls' p99 is within K x the unloaded p99; the rest were shed with
   RESOURCE_EXHAUSTED and a RetryInfo, typically in under half a round trip; the
   node still served about its capacity; units handed out (Redis, then the
   ledger once persisted) == OK answers + the calls left unanswered that a
   resend finds taken (DUPLICATE, with the first answer) <= stock; a shed id
   left no record and takes its unit when sent again; and once the load
   stops, calls at light load are as fast as before (polled, not timed).

K = 4: an admitted call may wait for its shard's one coalesced batch in
flight (one round trip, ``store/coalesce.py``) before its own round trip, so
by design it takes up to about two unloaded calls (measured: p50 and p99
about 2 x the unloaded p99); the other two are margin for the worker's
extra work of refusing four calls for each one it takes, on a machine other
processes share. DELAY_S is 100 ms so that such a machine's scheduling
hiccups (tens of ms) stay small beside a round trip: at 50 ms the ratio
wandered up to 3.2 x under a load average of 8. A node that queued instead
of shedding would fall behind by four calls in five: its p99 would grow to
seconds within the load.

The figures are printed (``pytest -s``) for the report.

The same slow link shows the duties pausing while the node sheds: the
reconcile duty runs no pass from the moment the node is seen shedding until
it is seen resumed, and runs again after (duties/pause.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import grpc
import pytest
import redis as redis_py
from prometheus_client.parser import text_string_to_metric_families

from flashstock.lockmgr import shard_of
from flashstock.server.duties.pause import SHED_PAUSE_S
from flashstock.server.ledger import Ledger
from flashstock.server.local.procs import NodeProcess, RedisServer, free_port
from flashstock.v1 import admin_pb2, admin_pb2_grpc, stock_pb2, stock_pb2_grpc
from tests.helpers import aeventually
from tests.helpers.load import Call, Offered, deduct, measure, offer, percentile
from tests.helpers.source import FromAddress

pytestmark = pytest.mark.slow

CAP = 8
"""The worker's max_in_flight."""
DELAY_S = 0.1
"""How late every Redis reply arrives: the round trip that bounds the node's capacity."""
FACTOR = 5
"""The offered rate, in times the measured capacity."""
LOAD_S = 6.0
"""How long the overload lasts."""
K = 4
"""Admitted calls' p99 may be at most K x the unloaded p99 (see the module's docstring)."""
STOCK = 20_000
"""Far more than the test can sell: a sold-out SKU is answered from memory, and would no longer load Redis."""
GENERATORS = 2
"""Processes offering the overload together."""
SHARDS = 4
"""The node's shards (few: each is rebuilt at start, over the slow link)."""


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def pool() -> Iterator[ProcessPoolExecutor]:
    """Processes of their own for the load (spawned: no gRPC state inherited), so this one only forwards."""
    with ProcessPoolExecutor(GENERATORS, mp_context=get_context("spawn")) as executor:
        yield executor


def _recorded_ids(r: redis_py.Redis, sku: str) -> set[str]:
    """Every request id with a first answer recorded in Redis for ``sku``."""
    ids: set[str] = set()
    for key in r.scan_iter(match=f"fs:*:r:*:{sku}", count=1000):
        ids |= {k.decode() for k in r.hkeys(key)}
    return ids


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def _handed_out(admin: admin_pb2_grpc.AdminServiceStub, sku: str) -> int:
    sku_now = (await admin.GetSku(admin_pb2.GetSkuRequest(sku_id=sku), timeout=10)).sku
    assert sku_now.total == STOCK
    return sku_now.total - sku_now.available


def _one_per_shard(prefix: str) -> list[str]:
    """SKU ids, one in each of the node's SHARDS shards: callers on them are never coalesced together."""
    by_shard: dict[int, str] = {}
    i = 0
    while len(by_shard) < SHARDS:
        name = f"{prefix}-{i}"
        by_shard.setdefault(shard_of(name, SHARDS), name)
        i += 1
    return sorted(by_shard.values())


async def test_at_five_times_capacity_admitted_calls_stay_fast_the_rest_is_shed_and_nothing_is_lost(
    redis_server: RedisServer, pool: ProcessPoolExecutor
) -> None:
    loop = asyncio.get_running_loop()
    run = uuid.uuid4().hex[:6]
    sku = f"over-{run}"
    light = _one_per_shard(f"light-{run}")
    async with FromAddress(f"127.0.0.1:{redis_server.port}", "127.0.0.1", delay_s=DELAY_S) as slow_link:
        node = NodeProcess(
            f"redis://{slow_link.address}/0", workers=1, shards=SHARDS, extra_args=["--max-in-flight", str(CAP)]
        )
        await asyncio.to_thread(node.start)  # this loop forwards its Redis traffic meanwhile
        try:
            async with grpc.aio.insecure_channel(node.address) as channel:
                admin = admin_pb2_grpc.AdminServiceStub(channel)
                stock = stock_pb2_grpc.StockServiceStub(channel)
                for each in (sku, *light):
                    await admin.PutSku(admin_pb2.PutSkuRequest(sku_id=each, stock=STOCK, request_id=f"put-{each}"))

                def closed(skus: list[str], seconds: float, prefix: str) -> asyncio.Future[list[Call]]:
                    return loop.run_in_executor(pool, measure, node.address, skus, seconds, prefix)

                # Both processes of the pool, and every SKU's first call, warmed up before anything is measured.
                warm = await asyncio.gather(*(closed([sku, *light], 0.3, f"{run}-warm-{g}") for g in range(GENERATORS)))
                others = [c for part in warm for c in part]  # every call but the overload's and the measures'

                # 1. Capacity: CAP callers on one SKU (the worker's cap full, never past it). The unloaded
                # latency: one caller per SKU of each shard, so that no call waits for another's batch.
                at_cap = await closed([sku] * CAP, 3.0, f"{run}-cap")
                assert {c.code for c in at_cap} == {"OK"}, {c.code for c in at_cap}
                capacity = len(at_cap) / 3.0
                unloaded = await closed(light, 3.0, f"{run}-light")
                assert {c.code for c in unloaded} == {"OK"}
                unloaded_p50 = percentile([c.seconds for c in unloaded], 50)
                unloaded_p99 = percentile([c.seconds for c in unloaded], 99)

                # 2. FACTOR x capacity on the one SKU, open loop, from GENERATORS processes starting together.
                rate = FACTOR * capacity
                start_at = time.monotonic() + 1.0
                parts: list[Offered] = await asyncio.gather(
                    *(
                        loop.run_in_executor(
                            pool, offer, node.address, sku, rate / GENERATORS, LOAD_S, f"{run}-o{g}", 5.0, start_at
                        )
                        for g in range(GENERATORS)
                    )
                )
                load_ended = time.monotonic()
                calls = [c for part in parts for c in part.calls]
                offered = len(calls) / (max(p.last for p in parts) - min(p.first for p in parts))
                ok = [c for c in calls if c.code == "OK"]
                shed = [c for c in calls if c.code == "RESOURCE_EXHAUSTED"]
                admitted_p50 = percentile([c.seconds for c in ok], 50)
                admitted_p99 = percentile([c.seconds for c in ok], 99)
                shed_p50 = percentile([c.seconds for c in shed], 50)
                shed_p99 = percentile([c.seconds for c in shed], 99)
                admitted_rate = len(ok) / LOAD_S

                # 3. Recovery: light load (as unloaded was measured) right after, polled until as fast as before.
                attempts = 0

                async def light_load() -> list[Call]:
                    nonlocal attempts
                    attempts += 1
                    got = await closed(light, 0.5, f"{run}-rec-{attempts}")
                    others.extend(got)
                    return got

                recovered = await aeventually(
                    light_load,
                    timeout=30,
                    until=lambda cs: (
                        all(c.code == "OK" for c in cs) and percentile([c.seconds for c in cs], 99) <= K * unloaded_p99
                    ),
                )
                recovery_s = time.monotonic() - load_ended
                recovered_p99 = percentile([c.seconds for c in recovered], 99)

                everything = [*others, *at_cap, *unloaded, *calls]
                unanswered = [c for c in everything if c.code not in ("OK", "RESOURCE_EXHAUSTED")]
                print(
                    f"\noverload figures: capacity {capacity:.0f} OK/s (max_in_flight {CAP}, Redis round trip "
                    f"+{_ms(DELAY_S)}); offered {rate:.0f}/s asked, {offered:.0f}/s achieved "
                    f"({offered / capacity:.2f} x capacity) for {LOAD_S:g} s; admitted {len(ok)} "
                    f"({admitted_rate:.0f} OK/s), shed {len(shed)}, unanswered {len(unanswered)}; "
                    f"latency unloaded p50 {_ms(unloaded_p50)} p99 {_ms(unloaded_p99)} ({len(unloaded)} calls), "
                    f"admitted p50 {_ms(admitted_p50)} p99 {_ms(admitted_p99)} "
                    f"({admitted_p99 / unloaded_p99:.2f} x), shed p50 {_ms(shed_p50)} p99 {_ms(shed_p99)}; "
                    f"recovered within {recovery_s:.2f} s of the load's end (light-load p99 {_ms(recovered_p99)}, "
                    f"{attempts} probe(s) of 0.5 s)"
                )

                assert offered >= 4.5 * capacity
                assert ok and shed
                assert all(c.outcome == stock_pb2.OUTCOME_OK for c in everything if c.code == "OK")
                assert admitted_p99 <= K * unloaded_p99
                assert all(c.retry_after is not None and c.retry_after > 0 for c in shed)
                assert shed_p50 < unloaded_p50 / 2  # refused at once: no Redis round trip
                assert admitted_rate >= 0.5 * capacity  # no collapse: the node still serves

                # No oversell, no unit taken without an answer a resend finds: per SKU, units handed out ==
                # OK answers + unanswered calls whose resend answers DUPLICATE (with the first answer).
                found: set[str] = set()
                handed = {each: await _handed_out(admin, each) for each in (sku, *light)}
                for c in unanswered:
                    again = await stock.Deduct(
                        stock_pb2.DeductRequest(
                            sku_id=c.sku, user_id=f"u-{c.request_id}", qty=1, request_id=c.request_id, retry=True
                        ),
                        timeout=10,
                    )
                    if again.outcome == stock_pb2.OUTCOME_DUPLICATE:
                        assert again.deduction.request_id == c.request_id
                        found.add(c.request_id)
                r = redis_py.Redis.from_url(redis_server.url)
                ledger = Ledger(node.ledger_url)
                try:
                    for each in (sku, *light):
                        answered = {c.request_id for c in everything if c.sku == each and c.code == "OK"}
                        late = {c.request_id for c in unanswered if c.sku == each}
                        assert handed[each] == len(answered) + len(late & found) <= STOCK, each
                        recorded = _recorded_ids(r, each) - {f"put-{each}"}
                        assert recorded == answered | late  # the unanswered ones not found took theirs now
                        assert not recorded & {c.request_id for c in shed}
                        await aeventually(
                            lambda: (lambda s: s.total - s.available)(ledger.sku_states(sku_id=each)[0]),  # noqa: B023
                            timeout=30,
                            until=lambda units: units == len(recorded),  # noqa: B023
                        )
                finally:
                    ledger.close()

                # A resend of an answered id gets its first answer; a shed id took nothing and takes one now.
                for c in ok[:20]:
                    again = await stock.Deduct(
                        stock_pb2.DeductRequest(
                            sku_id=sku, user_id=f"u-{c.request_id}", qty=1, request_id=c.request_id
                        ),
                        timeout=10,
                    )
                    assert again.outcome == stock_pb2.OUTCOME_DUPLICATE
                    assert (again.deduction.request_id, again.deduction.taken_at_ms) == (c.request_id, c.taken_at_ms)
                for c in shed[:20]:
                    fresh = await deduct(stock, sku, c.request_id, 10.0)
                    assert (fresh.code, fresh.outcome) == ("OK", stock_pb2.OUTCOME_OK)
        finally:
            await asyncio.to_thread(node.stop)


def _duty_figures(port: int) -> tuple[float, float]:
    """From one scrape: flashstock_duties_paused{reason="shedding"} and the reconcile passes so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        families = list(text_string_to_metric_families(reply.read().decode()))
    samples = {(s.name, s.labels.get("reason", "")): s.value for f in families for s in f.samples}
    return samples[("flashstock_duties_paused", "shedding")], samples[("flashstock_reconcile_passes_total", "")]


async def test_the_reconcile_duty_pauses_while_the_node_sheds_and_resumes_by_itself(
    redis_server: RedisServer,
) -> None:
    sku = f"pause-{uuid.uuid4().hex[:8]}"
    metrics_port = free_port()
    args = ["--max-in-flight", "2", "--reconcile-interval-s", "0.1", "--metrics-port", str(metrics_port)]
    async with FromAddress(f"127.0.0.1:{redis_server.port}", "127.0.0.1", delay_s=DELAY_S) as slow_link:
        node = NodeProcess(f"redis://{slow_link.address}/0", workers=1, shards=SHARDS, extra_args=args)
        await asyncio.to_thread(node.start)
        try:
            figures = lambda: asyncio.to_thread(_duty_figures, metrics_port)  # noqa: E731
            # Running, and not paused: passes go on.
            first = await aeventually(figures, timeout=30, until=lambda f: f[1] >= 2)
            assert first[0] == 0
            async with grpc.aio.insecure_channel(node.address) as channel:
                admin = admin_pb2_grpc.AdminServiceStub(channel)
                await admin.PutSku(admin_pb2.PutSkuRequest(sku_id=sku, stock=STOCK, request_id=f"put-{sku}"))
                stub = stock_pb2_grpc.StockServiceStub(channel)
                shed = 0

                async def overload() -> None:
                    # Bursts past the cap until the duties are seen paused: some of each burst is shed.
                    nonlocal shed
                    n = 0
                    while True:
                        burst = [deduct(stub, sku, f"{sku}-{n}-{i}", 5.0) for i in range(6)]
                        shed += sum(c.code == "RESOURCE_EXHAUSTED" for c in await asyncio.gather(*burst))
                        n += 1

                load = asyncio.create_task(overload())
                try:
                    paused = await aeventually(figures, timeout=30, until=lambda f: f[0] == 1)
                finally:
                    load.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await load
                assert shed > 0
            # No load now: the pause lasts SHED_PAUSE_S past the last shed call, with no reconcile pass
            # (one already under way may end); then the duties resume by themselves and pass again.
            resumed = await aeventually(figures, timeout=SHED_PAUSE_S + 30, interval=0.05, until=lambda f: f[0] == 0)
            assert resumed[1] - paused[1] <= 1, (paused, resumed)
            await aeventually(figures, timeout=30, until=lambda f: f[1] >= resumed[1] + 2)
            log = node.log()
            assert "non-core duties paused (reconcile, sale figures into the ledger): a serving worker shed" in log
            assert "non-core duties resumed" in log
        finally:
            await asyncio.to_thread(node.stop)
