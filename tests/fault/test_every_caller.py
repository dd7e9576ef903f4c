"""Exactly-once without a client flag: a resend of an id that took units always gets its first answer.

A caller that knows nothing of flashstock's client (raw gRPC from server
reflection, never setting ``retry``) resends request ids around the moment a
SKU sells out, to two nodes of two worker processes each: every node and
worker refuses the crowd from memory once the SKU is sold out, yet answers
each id that took units with DUPLICATE and its first answer — also after
Redis lost everything and was rebuilt from the ledger.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import aeventually
from tests.helpers.cluster import ClusterStack
from tests.helpers.failpoints import KillRedis
from tests.helpers.stranger import Stranger

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with ClusterStack(tmp_path_factory.mktemp("every-caller"), nodes=2, workers=2) as stack:
        yield stack


@pytest.fixture
async def stranger(cluster: ClusterStack):
    s = Stranger(cluster.node_addresses, connections=4)
    yield s
    await s.close()


def first_answers_hold(sends: list[tuple[str, object]], outcome) -> None:
    """Each id took units at most once, and every other answer to it is DUPLICATE of that first answer."""
    by_id: dict[str, list] = {}
    for request_id, reply in sends:
        by_id.setdefault(request_id, []).append(reply)
    for request_id, replies in by_id.items():
        ok = [r for r in replies if outcome(r) == "OUTCOME_OK"]
        assert len(ok) <= 1, (request_id, [outcome(r) for r in replies])
        if not ok:
            continue
        first = (ok[0].deduction.user_id, ok[0].deduction.qty, ok[0].deduction.taken_at_ms)
        for reply in replies:
            if reply is ok[0]:
                continue
            assert outcome(reply) == "OUTCOME_DUPLICATE", (request_id, [outcome(r) for r in replies])
            assert (reply.deduction.user_id, reply.deduction.qty, reply.deduction.taken_at_ms) == first


_scenario = st.fixed_dictionaries(
    {
        "stock": st.integers(1, 4),
        "qty": st.lists(st.sampled_from([1, 1, 2]), min_size=2, max_size=10),
        # Waves of sends, each (id index, node) at once, with a pause before each wave
        # (0-30 ms: the nodes load the sold-out SKU's takers at one point or another).
        "waves": st.lists(
            st.tuples(
                st.sampled_from([0, 0, 5, 30]),
                st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1)), min_size=1, max_size=10),
            ),
            min_size=2,
            max_size=6,
        ),
    }
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=_scenario)
async def test_unmarked_resends_around_the_sell_out_get_their_first_answer(stranger, scenario) -> None:
    sku = f"crowd-{uuid.uuid4().hex[:10]}"
    await stranger.call("PutSku", sku_id=sku, stock=scenario["stock"], request_id=f"put-{sku}")
    ids = [f"{sku}-order-{i}" for i in range(len(scenario["qty"]))]
    sends: list[tuple[str, object]] = []

    async def send(index: int, node: int) -> None:
        request_id = ids[index]
        reply = await stranger.call(
            "Deduct", node=node, sku_id=sku, user_id=f"user-{index}", qty=scenario["qty"][index], request_id=request_id
        )
        sends.append((request_id, reply))

    # Every id is sent once first (in waves), then again as the scenario says.
    for pause, wave in [(0, [(i, i % 2) for i in range(len(ids))]), *scenario["waves"]]:
        await asyncio.sleep(pause / 1000)
        await asyncio.gather(*(send(ref % len(ids), node) for ref, node in wave))

    first_answers_hold(sends, stranger.outcome)
    took = {r for r, reply in sends if stranger.outcome(reply) == "OUTCOME_OK"}
    assert sum(scenario["qty"][ids.index(r)] for r in took) <= scenario["stock"]
    # Once every node knows the sell-out, each taker still gets its first answer from every worker.
    if sum(scenario["qty"][ids.index(r)] for r in took) == scenario["stock"]:
        again = await asyncio.gather(
            *(
                stranger.call(
                    "Deduct",
                    node=node,
                    sku_id=sku,
                    user_id=f"user-{ids.index(r)}",
                    qty=scenario["qty"][ids.index(r)],
                    request_id=r,
                )
                for r in took
                for node in (0, 1, 0, 1)
            )
        )
        first_answers_hold(
            [*sends, *zip(itertools.chain.from_iterable([r] * 4 for r in took), again, strict=True)], stranger.outcome
        )


async def test_resends_of_acknowledged_durable_deductions_after_a_redis_loss(cluster: ClusterStack, stranger) -> None:
    sku = f"durable-crowd-{uuid.uuid4().hex[:8]}"
    durable = stranger.enum_number("Mode", "MODE_DURABLE")
    await stranger.call("PutSku", sku_id=sku, stock=150, mode=durable, request_id=f"put-{sku}")
    orders = [f"{sku}-{i}" for i in range(400)]
    sends: list[tuple[str, object]] = []
    gate = asyncio.Semaphore(32)

    async def buy(i: int, request_id: str) -> None:
        async with gate:
            reply = await stranger.call("Deduct", sku_id=sku, user_id=f"u{i}", qty=1, request_id=request_id)
            sends.append((request_id, reply))

    # A crowd around the sell-out, one in five sending its order again (unmarked).
    crowd = [(i, r) for i, r in enumerate(orders)] + [(i, r) for i, r in enumerate(orders) if i % 5 == 0]
    await asyncio.gather(*(buy(i, r) for i, r in crowd))
    first_answers_hold(sends, stranger.outcome)
    acked = {r for r, reply in sends if stranger.outcome(reply) in ("OUTCOME_OK", "OUTCOME_DUPLICATE")}
    assert len(acked) == 150

    # Redis loses everything; the nodes rebuild it from the ledger.
    lose_redis = KillRedis(cluster)
    lose_redis.inject()
    lose_redis.recover()

    async def answered(i: int, request_id: str):
        async def deduct():
            try:
                return await stranger.call("Deduct", sku_id=sku, user_id=f"u{i}", qty=1, request_id=request_id)
            except grpc.aio.AioRpcError as err:
                if err.code() is grpc.StatusCode.UNAVAILABLE:
                    raise AssertionError(f"{request_id}: {err.code().name}") from err  # not yet: again
                raise

        return await aeventually(deduct, timeout=20, interval=0.1, until=lambda reply: True)

    again = await asyncio.gather(*(answered(orders.index(r), r) for r in sorted(acked)))
    assert {stranger.outcome(x) for x in again} == {"OUTCOME_DUPLICATE"}
    fresh = await asyncio.gather(*(answered(1000 + i, f"{sku}-late-{i}") for i in range(50)))
    assert {stranger.outcome(x) for x in fresh} == {"OUTCOME_SOLD_OUT"}
