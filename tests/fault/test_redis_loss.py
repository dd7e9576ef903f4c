"""Losing Redis, or a node, mid-sale: nothing acknowledged is lost, nothing is handed out twice.

Each test runs a sale on real processes (``redis-server``, node processes on
an SQLite ledger in the test's tmp folder), injects one named failpoint
(:mod:`failpoints`: Redis killed and restarted empty, flushed, its
connections dropped; a node killed) while buyers are still buying, recovers,
and checks the promises against the ledger and Redis:

- no lost acknowledgement in durable mode (every OK is in the ledger),
- no oversell (units handed out never exceed the stock),
- exactly-once effect (a retry returns the first answer; a request id is
  counted once),
- one rebuild of a lost shard, however many requests find it missing,
- a paused rebuilder cannot overwrite a newer rebuild.

Buyers send each request id until a node answers: the client retries
UNAVAILABLE and DEADLINE_EXCEEDED itself with the same id; past its
deadline the buyer sends the id again marked as a retry.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable

import pytest
import redis as redis_py
import redis_lock

from flashstock.client import (
    AsyncAdminClient,
    AsyncStockClient,
    DeadlineExceeded,
    Deduction,
    DeductResult,
    Mode,
    Outcome,
    Unavailable,
)
from flashstock.lockmgr import shard_of
from flashstock.server.duties.rebuild import RebuildPolicy, ShardRebuilder
from flashstock.server.ledger import Ledger
from flashstock.server.store.keys import SHARD_READY, ShardKeys
from flashstock.server.store.redis import blocking_client
from tests.helpers import eventually, redis_now_ms
from tests.helpers.failpoints import DropRedisConnections, FlushRedis, KillRedis, PauseRebuilder, RestartNode

SHARDS = 64
"""The nodes' default shard count (NodeProcess's)."""
RECORD_TTL_MS = 86_400_000
"""The nodes' default request_ttl_s, in ms."""
SENDS = 3
"""How often a buyer sends one request id (each send retries for the client's deadline) before the test fails."""
SALE_S = 60.0
"""Longest a sale of these tests may take."""

IN_FLIGHT: set[str] = set()
"""Request ids sent and not answered yet: named when a sale does not finish."""


def new_sku(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


async def send_until_answered(send: Callable[[bool], Awaitable[DeductResult]], request_id: str) -> DeductResult:
    """``send(retry)`` until a node answers; every send after the first is marked as a retry."""
    IN_FLIGHT.add(request_id)
    retry = False
    for _ in range(SENDS):
        try:
            result = await send(retry)
            IN_FLIGHT.discard(request_id)
            return result
        except (Unavailable, DeadlineExceeded):
            retry = True
    raise AssertionError(f"request {request_id}: no answer after {SENDS} sends")


async def run_sale(*tasks: Awaitable[None]) -> None:
    """Run the buyers and the fault injection together; fail naming what never got an answer."""
    IN_FLIGHT.clear()
    try:
        async with asyncio.timeout(SALE_S), asyncio.TaskGroup() as group:
            for task in tasks:
                group.create_task(task)  # type: ignore[arg-type]
    except TimeoutError:
        stuck = sorted(IN_FLIGHT)
        raise AssertionError(
            f"sale not over within {SALE_S} s; {len(stuck)} requests unanswered, e.g. {stuck[:5]}"
        ) from None
    except BaseExceptionGroup as failed:
        if len(failed.exceptions) == 1:  # say what failed, not that a task group did
            raise failed.exceptions[0] from None
        raise


def same_deduction(first: Deduction, again: Deduction | None) -> bool:
    return again is not None and (again.request_id, again.sku_id, again.user_id, again.qty, again.taken_at_ms) == (
        first.request_id,
        first.sku_id,
        first.user_id,
        first.qty,
        first.taken_at_ms,
    )


def ledger_counters(ledger: Ledger, sku: str) -> tuple[int, int, int]:
    (state,) = ledger.sku_states(sku_id=sku)
    return state.total, state.held, state.confirmed


async def redis_counters(client: AsyncStockClient, sku: str) -> tuple[int, int, int]:
    level = await client.get_stock(sku)
    return level.total, level.held, level.confirmed


# -- durable mode: Redis lost under load --------------------------------------

DURABLE_STOCK = 2_000
BUYERS = 50
KILL_AFTER = 300
"""Acknowledged deductions before Redis is killed."""
SELL_AFTER = 300
"""Acknowledged deductions after Redis is back before the buyers stop."""


async def test_acknowledged_durable_deductions_survive_redis_loss(fault_stack):
    stack = fault_stack
    stack.start_node()
    sku = new_sku("durable")
    shard = shard_of(sku, SHARDS)
    ledger = stack.ledger()
    failpoint = KillRedis(stack)
    acked: dict[str, Deduction] = {}
    unacked_sends = 0
    kill_now, back = asyncio.Event(), asyncio.Event()
    figures: dict[str, int] = {}

    async with AsyncAdminClient(stack.client_config()) as admin, AsyncStockClient(stack.client_config()) as client:
        await admin.put_sku(sku, DURABLE_STOCK, mode=Mode.DURABLE)
        figures["generation before"] = ledger.generations()[shard]

        async def buyer(b: int) -> None:
            nonlocal unacked_sends
            n = 0
            while not (back.is_set() and len(acked) >= figures["acked at kill"] + SELL_AFTER):
                request_id, user = f"b{b}-{n}", f"user-{b}"
                n += 1

                # Bound now: the loop's next turn must not change what a resend sends.
                async def send(retry: bool, user: str = user, request_id: str = request_id) -> DeductResult:
                    return await client.deduct(sku, user, 1, request_id=request_id, retry=retry)

                result = await send_until_answered(send, request_id)
                assert result.took_effect, result  # 2,000 units: never sold out here
                assert result.deduction is not None
                if result.outcome is Outcome.DUPLICATE:
                    unacked_sends += 1  # an earlier send took effect; its answer was lost
                acked[request_id] = result.deduction
                if len(acked) >= KILL_AFTER:
                    kill_now.set()

        async def inject() -> None:
            await kill_now.wait()
            figures["acked at kill"] = len(acked)
            await asyncio.to_thread(failpoint.inject)  # the buyers keep buying meanwhile
            await asyncio.to_thread(failpoint.recover)
            back.set()

        await run_sale(inject(), *(buyer(b) for b in range(BUYERS)))

        figures["acked"] = len(acked)
        figures["duplicate answers"] = unacked_sends
        figures["generation after"] = ledger.generations()[shard]

        # No lost acknowledgement: every request id that got OK is in the ledger, as answered.
        rows = ledger.deductions_of(acked)
        missing = sorted(set(acked) - set(rows))
        lost = [acked[m] for m in missing[:5]]
        assert not missing, f"{len(missing)} acknowledged deductions not in the ledger, e.g. {lost}; {figures}"
        for request_id, first in acked.items():
            row = rows[request_id]
            assert (row["sku_id"], row["user_id"], row["qty"], row["state"]) == (sku, first.user_id, 1, "confirmed")

        # Redis, rebuilt from the ledger, agrees with it; no oversell.
        total, held, confirmed = await redis_counters(client, sku)
        assert (total, held, confirmed) == ledger_counters(ledger, sku)
        assert confirmed == sum(d.qty for d in acked.values()) <= total == DURABLE_STOCK
        assert held == 0

        # Exactly once: a retry of each acknowledged request returns its first answer and takes nothing.
        async def retry_of(request_id: str, first: Deduction) -> DeductResult:
            return await client.deduct(sku, first.user_id, 1, request_id=request_id, retry=True)

        retried = await asyncio.gather(*(retry_of(r, d) for r, d in acked.items()))
        differ = [
            (r, d, again.deduction)
            for (r, d), again in zip(acked.items(), retried, strict=True)
            if again.outcome is not Outcome.DUPLICATE or not same_deduction(d, again.deduction)
        ]
        assert not differ, f"{len(differ)} retries did not return the first answer, e.g. {differ[:3]}"
        assert await redis_counters(client, sku) == (total, held, confirmed)

    # The kill lost the shard: it was rebuilt (test_one_rebuild_under_a_crowd counts how often).
    assert figures["generation after"] > figures["generation before"]
    print(f"\nredis loss, durable: {figures}")


# -- one rebuild under a crowd -----------------------------------------------

CROWD = 500
CROWD_STOCK = 300
SOLD_BEFORE = 20


@pytest.mark.parametrize("fault", ["flush", "kill"])
async def test_one_rebuild_under_a_crowd(fault_stack, fault):
    stack = fault_stack
    # Two worker processes: each may notice the missing shard and try to rebuild it,
    # as may worker 0's warden; the mutex and its "ready" re-check must leave one rebuild.
    stack.start_node(workers=2)
    sku = new_sku("crowd")
    shard = shard_of(sku, SHARDS)
    ledger = stack.ledger()
    failpoint = FlushRedis(stack.redis.url) if fault == "flush" else KillRedis(stack)
    config = stack.client_config(connections=4)

    async with AsyncAdminClient(config) as admin, AsyncStockClient(config) as client:
        await admin.put_sku(sku, CROWD_STOCK)
        for i in range(SOLD_BEFORE):
            assert (await client.deduct(sku, f"early-{i}", 1)).outcome is Outcome.OK
        # Fast mode: wait until the ledger holds the early sales (else the loss takes them too).
        eventually(lambda: ledger_counters(ledger, sku), until=lambda c: c == (CROWD_STOCK, 0, SOLD_BEFORE))
        before = ledger.generations()[shard]

        failpoint.inject()
        failpoint.recover()

        async def one(i: int) -> DeductResult:
            request_id = f"crowd-{i}"

            async def send(retry: bool) -> DeductResult:
                return await client.deduct(sku, f"crowd-{i}", 1, request_id=request_id, retry=retry)

            return await send_until_answered(send, request_id)

        results: list[DeductResult] = []

        async def crowd() -> None:
            results.extend(await asyncio.gather(*(one(i) for i in range(CROWD))))

        await run_sale(crowd())
        after = ledger.generations()[shard]

        outcomes = [r.outcome for r in results]
        ok = outcomes.count(Outcome.OK) + outcomes.count(Outcome.DUPLICATE)
        assert set(outcomes) <= {Outcome.OK, Outcome.DUPLICATE, Outcome.SOLD_OUT, Outcome.INSUFFICIENT}
        assert after == before + 1, f"shard {shard} rebuilt {after - before} times"
        # No oversell, and the stock left after the early sales is all sold.
        assert ok + SOLD_BEFORE == CROWD_STOCK
        total, held, confirmed = await redis_counters(client, sku)
        assert (total, held, confirmed) == (CROWD_STOCK, 0, CROWD_STOCK)
        eventually(lambda: ledger_counters(ledger, sku), until=lambda c: c == (total, held, confirmed))
    print(f"\none rebuild under a crowd ({fault}): shard {shard} generation {before} -> {after}, {ok} OK of {CROWD}")


# -- a node killed mid-sale ---------------------------------------------------

RESTART_STOCK = 400
RESTART_REQUESTS = 600
RESTART_BUYERS = 40
KILL_NODE_AFTER = 150
"""Units acknowledged before the node is killed."""


def qty_of(request_id: str) -> int:
    return 1 + int(request_id.rsplit("-", 1)[1]) % 2


@pytest.mark.parametrize("mode", [Mode.FAST, Mode.DURABLE], ids=["fast", "durable"])
async def test_node_restart_mid_sale_loses_nothing_and_doubles_nothing(fault_stack, mode):
    stack = fault_stack
    stack.start_node()
    sku = new_sku("restart")
    ledger = stack.ledger()
    failpoint = RestartNode(stack)
    request_ids = [f"order-{i}" for i in range(RESTART_REQUESTS)]
    queue = list(reversed(request_ids))
    answers: dict[str, DeductResult] = {}
    kill_now = asyncio.Event()
    figures: dict[str, int] = {}

    async with AsyncAdminClient(stack.client_config()) as admin, AsyncStockClient(stack.client_config()) as client:
        await admin.put_sku(sku, RESTART_STOCK, mode=mode)

        def units_acked() -> int:
            return sum(r.deduction.qty for r in answers.values() if r.took_effect and r.deduction)

        async def buyer() -> None:
            while queue:
                request_id = queue.pop()

                async def send(retry: bool, request_id: str = request_id) -> DeductResult:
                    qty = qty_of(request_id)
                    return await client.deduct(sku, f"user-{request_id}", qty, request_id=request_id, retry=retry)

                answers[request_id] = await send_until_answered(send, request_id)
                if units_acked() >= KILL_NODE_AFTER:
                    kill_now.set()

        async def inject() -> None:
            await kill_now.wait()
            figures["units acked at kill"] = units_acked()
            await asyncio.to_thread(failpoint.inject)
            await asyncio.to_thread(failpoint.recover)

        await run_sale(inject(), *(buyer() for _ in range(RESTART_BUYERS)))

        took = {r: a for r, a in answers.items() if a.took_effect}
        assert set(answers) == set(request_ids)
        assert {a.outcome for a in answers.values()} <= {
            Outcome.OK,
            Outcome.DUPLICATE,
            Outcome.SOLD_OUT,
            Outcome.INSUFFICIENT,
        }
        for request_id, answer in took.items():
            assert answer.deduction is not None and answer.deduction.qty == qty_of(request_id)
        handed_out = sum(a.deduction.qty for a in took.values() if a.deduction)
        figures["units handed out"] = handed_out
        figures["duplicate answers"] = sum(a.outcome is Outcome.DUPLICATE for a in answers.values())

        # Units handed out == the answers that took effect, each request id once; no oversell.
        total, held, confirmed = await redis_counters(client, sku)
        assert (held, confirmed) == (0, handed_out)
        assert confirmed <= total == RESTART_STOCK
        # The ledger agrees with Redis (fast mode: once the new node's persister caught up) ...
        eventually(lambda: ledger_counters(ledger, sku), until=lambda c: c == (total, held, confirmed))
        # ... row by row: exactly the request ids that took effect, each with its own qty.
        rows = ledger.deductions_of(request_ids)
        assert set(rows) == set(took)
        assert sum(row["qty"] for row in rows.values()) == confirmed
        assert all(row["qty"] == qty_of(r) for r, row in rows.items())
    print(f"\nnode restart mid-sale ({mode.name.lower()}): {figures}")


# -- a paused rebuilder cannot overwrite a newer rebuild ----------------------


class LedgerWriter:
    """Log entries of one SKU, written to the ledger as a persister would (stream ids on Redis's clock)."""

    def __init__(self, ledger: Ledger, redis: redis_py.Redis, sku: str, shard: int) -> None:
        self.ledger, self.redis, self.sku, self.shard = ledger, redis, sku, shard
        self._seq = 0

    def _id(self) -> str:
        self._seq += 1
        return f"{redis_now_ms(self.redis)}-{self._seq}"

    def put(self, stock: int) -> None:
        fields = {"t": "P", "k": self.sku, "q": str(stock), "lim": "0", "maxq": "0", "start": "0", "end": "0"}
        fields |= {"mode": "fast", "s": "1"}
        self.ledger.persist(self.shard, self._generation(), [(self._id(), fields)])

    def deduct(self, *request_ids: str, qty: int = 1) -> None:
        fields = {"t": "D", "k": self.sku, "q": str(qty), "e": "0", "s": "1", "c": ""}
        entries = [(self._id(), {**fields, "r": r, "u": f"user-{r}"}) for r in request_ids]
        self.ledger.persist(self.shard, self._generation(), entries)

    def _generation(self) -> int:
        # As a persister does: entries written now belong to the current generation.
        return self.ledger.generations().get(self.shard, 0)


def record_exists(redis: redis_py.Redis, shard: int, sku_id: str, request_id: str) -> bool:
    k = ShardKeys(shard)
    now_bucket = redis_now_ms(redis) // RECORD_TTL_MS
    return any(redis.hexists(k.record_bucket(g, sku_id), request_id) for g in (now_bucket, now_bucket - 1))


def start_rebuild(rebuilder: ShardRebuilder, shard: int) -> tuple[threading.Thread, dict[str, str]]:
    result: dict[str, str] = {}
    thread = threading.Thread(target=lambda: result.setdefault("a", rebuilder.rebuild(shard)), daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("meanwhile", ["newer rebuild", "lock taken and released"])
def test_paused_rebuilder_cannot_overwrite_a_newer_rebuild(fault_redis, tmp_path, meanwhile):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = Ledger(url)
    ledger.open()
    redis = redis_py.Redis.from_url(fault_redis.url)
    sku = new_sku("fenced")
    shard = shard_of(sku, SHARDS)
    k = ShardKeys(shard)
    lock_key = f"lock:{k.rebuild_lock}"
    writer = LedgerWriter(ledger, redis, sku, shard)
    writer.put(100)
    writer.deduct("early-1", "early-2", "early-3", qty=2)
    FlushRedis(fault_redis.url).inject()  # the shard is missing

    # A: a mutex that expires after 1 s and is never renewed, held in before_install.
    # (python-redis-lock refuses to wait longer for a lock it does not renew than its expiry: wait_s=1 too.)
    ledger_a, ledger_b = Ledger(url), Ledger(url)
    client_a, client_b = blocking_client(fault_redis.url), blocking_client(fault_redis.url)
    a = ShardRebuilder(client_a, ledger_a, RECORD_TTL_MS, RebuildPolicy(lock_expire_s=1, wait_s=1))
    a.lock_factory = lambda client, name: redis_lock.Lock(client, name, expire=1, auto_renewal=False)
    b = ShardRebuilder(client_b, ledger_b, RECORD_TTL_MS)
    pause = PauseRebuilder(a)
    thread: threading.Thread | None = None
    try:
        pause.inject()
        thread, result = start_rebuild(a, shard)
        assert pause.paused.wait(10), "rebuilder A never reached before_install"
        eventually(lambda: not redis.exists(lock_key), timeout=5)  # A's mutex expired while it slept

        if meanwhile == "newer rebuild":
            writer.deduct("late-1", "late-2")  # B's snapshot differs from A's
            assert b.rebuild(shard) == "rebuilt"
        else:
            other = redis_lock.Lock(redis, k.rebuild_lock, expire=5)
            assert other.acquire(blocking=False)
            other.release()

        pause.recover()
        thread.join(10)
        assert result.get("a") == "stale"

        generations = ledger.generations()[shard]
        meta = redis.hgetall(k.meta)
        if meanwhile == "newer rebuild":
            # Redis holds B's rebuild (the newer generation, the newer ledger), not A's.
            assert generations == 2
            assert meta == {b"gen": b"2", b"state": SHARD_READY}
            fields = redis.hgetall(k.sku(sku))
            (state,) = ledger.sku_states(sku_id=sku)
            assert (int(fields[b"total"]), int(fields[b"held"]), int(fields[b"conf"])) == (100, 0, 8)
            assert (state.total, state.held, state.confirmed) == (100, 0, 8)
            assert int(fields[b"avail"]) == 92
            assert record_exists(redis, shard, sku, "late-2") and record_exists(redis, shard, sku, "early-1")
        else:
            # A wrote nothing: the shard is still missing, and the next rebuild makes it whole.
            assert generations == 1
            assert meta == {} and not redis.exists(k.sku(sku))
            assert b.rebuild(shard) == "rebuilt"
            assert redis.hgetall(k.meta) == {b"gen": b"2", b"state": SHARD_READY}
            assert int(redis.hget(k.sku(sku), "conf")) == 6
    finally:
        pause.recover()
        if thread is not None:
            thread.join(10)
        for closeable in (client_a, client_b, ledger_a, ledger_b, ledger, redis):
            closeable.close()


# -- durable mode: Redis connections dropped, data kept -----------------------

BLIPS = 30
"""CLIENT KILLs of every node connection during the sale."""


async def test_acknowledged_durable_deductions_survive_dropped_redis_connections(fault_stack):
    stack = fault_stack
    stack.start_node()
    sku = new_sku("blips")
    ledger = stack.ledger()
    failpoint = DropRedisConnections(stack.redis.url)
    acked: dict[str, Deduction] = {}
    done = asyncio.Event()

    async with AsyncAdminClient(stack.client_config()) as admin, AsyncStockClient(stack.client_config()) as client:
        await admin.put_sku(sku, DURABLE_STOCK, mode=Mode.DURABLE)

        async def buyer(b: int) -> None:
            n = 0
            while not done.is_set():
                request_id, user = f"b{b}-{n}", f"user-{b}"
                n += 1

                # Bound now: the loop's next turn must not change what a resend sends.
                async def send(retry: bool, user: str = user, request_id: str = request_id) -> DeductResult:
                    return await client.deduct(sku, user, 1, request_id=request_id, retry=retry)

                result = await send_until_answered(send, request_id)
                assert result.took_effect and result.deduction is not None, result
                acked[request_id] = result.deduction

        async def blips() -> None:
            for _ in range(BLIPS):
                await asyncio.to_thread(failpoint.inject)
                await asyncio.sleep(0.05)  # pacing the faults, not waiting for a state
            done.set()

        await run_sale(blips(), *(buyer(b) for b in range(BUYERS)))

        missing = sorted(set(acked) - set(ledger.deductions_of(acked)))
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged deductions not in the ledger: {missing[:5]}"
        total, held, confirmed = await redis_counters(client, sku)
        assert (total, held, confirmed) == ledger_counters(ledger, sku)
        assert confirmed == len(acked)
    print(f"\ndropped connections, durable: {len(acked)} acknowledged, {failpoint.dropped} connections dropped")
