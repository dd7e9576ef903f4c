"""One scope for a request id, everywhere: its SKU. And a re-put SKU's old holds confirm nothing.

Driven as a stranger would (raw gRPC from server reflection, the CLI), on a
node and Redis of this module's own, with the ledger read directly: Redis
records, ledger rows, rebuilds, reports and the reconcile must all agree that
``(sku_id, request_id)`` names one call, and that an id reused by another
call is refused, never answered as a duplicate.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import grpc
import pytest
import redis as redis_py

from flashstock.lockmgr import shard_of
from flashstock.server.ledger import Ledger, sqlite_url
from tests.helpers import aeventually, stacks
from tests.helpers.stranger import Stranger

# This module's own stack, in place of the session's: assigned, so a test's
# parameter of the same name shadows no import.
node = stacks.node
redis_server = stacks.redis_server
stranger = stacks.stranger
ledger = stacks.ledger


def two_skus_in_different_shards(base: str) -> tuple[str, str]:
    first = f"{base}-a"
    other = next(f"{base}-{i}" for i in range(1000) if shard_of(f"{base}-{i}") != shard_of(first))
    return first, other


async def answered(stranger: Stranger, method: str, **fields):
    """The call's reply, sent again with the same fields while the node is rebuilding (UNAVAILABLE)."""

    async def once():
        try:
            return await stranger.call(method, **fields)
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.UNAVAILABLE:
                return None
            raise

    return await aeventually(once, timeout=20)


async def put(stranger: Stranger, sku: str, stock: int) -> None:
    # An admin change waits for the ledger: after another test's rebuild, its first answer may be
    # UNAVAILABLE ("send the same request id again"), which a caller resends.
    await answered(stranger, "PutSku", sku_id=sku, stock=stock, request_id=f"put-{uuid.uuid4().hex}")


def flush_redis(redis_server) -> None:
    client = redis_py.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()


async def refused_as_reused(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    return err.value.details()


def reconcile(node, redis_server) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "flashstock.server",
            "reconcile",
            "--redis-url",
            redis_server.url,
            "--data-dir",
            str(node.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_one_order_id_keys_a_deduction_on_each_sku_in_redis_ledger_rebuild_and_reconcile(
    stranger, ledger, node, redis_server
):
    a, b = two_skus_in_different_shards(f"scope-{uuid.uuid4().hex[:8]}")
    await put(stranger, a, 5)
    await put(stranger, b, 5)
    order = f"order-{uuid.uuid4().hex}"

    first = [
        await stranger.call("Deduct", sku_id=s, user_id="u1", qty=q, request_id=order) for s, q in ((a, 1), (b, 2))
    ]
    assert [stranger.outcome(r) for r in first] == ["OUTCOME_OK", "OUTCOME_OK"]

    rows = await aeventually(
        lambda: {(s, r["qty"]) for s in (a, b) for r in ledger.deductions_of([order], sku_id=s).values()},
        until=lambda got: len(got) == 2,
    )
    assert rows == {(a, 1), (b, 2)}
    checked = reconcile(node, redis_server)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    flush_redis(redis_server)  # every record is gone from Redis: the rebuild brings them back from the ledger
    again = [
        await answered(stranger, "Deduct", sku_id=s, user_id="u1", qty=q, request_id=order) for s, q in ((a, 1), (b, 2))
    ]
    assert [stranger.outcome(r) for r in again] == ["OUTCOME_DUPLICATE", "OUTCOME_DUPLICATE"]
    assert [r.deduction.taken_at_ms for r in again] == [r.deduction.taken_at_ms for r in first]
    levels = [await stranger.call("GetStock", sku_id=s) for s in (a, b)]
    assert [(x.available, x.confirmed) for x in levels] == [(4, 1), (3, 2)]


async def test_a_hold_id_on_two_skus_is_two_holds_also_after_a_rebuild(stranger, ledger, node, redis_server):
    a, b = two_skus_in_different_shards(f"holds-{uuid.uuid4().hex[:8]}")
    await put(stranger, a, 3)
    await put(stranger, b, 3)
    cart = f"cart-{uuid.uuid4().hex}"
    for sku, user in ((a, "alice"), (b, "bob")):
        held = await stranger.call("Hold", sku_id=sku, user_id=user, qty=1, request_id=cart, ttl_ms=600_000)
        assert stranger.outcome(held) == "OUTCOME_OK"

    released = await stranger.call("Release", sku_id=a, hold_id=cart, request_id=f"rel-{uuid.uuid4().hex}")
    assert stranger.outcome(released) == "OUTCOME_OK"
    await aeventually(lambda: ledger.deductions_of([cart], sku_id=a).get(cart, {}).get("state") == "released")
    rows = {s: ledger.deductions_of([cart], sku_id=s).get(cart, {}).get("state") for s in (a, b)}
    assert rows == {a: "released", b: "held"}  # bob's hold is untouched

    flush_redis(redis_server)
    confirmed = await answered(stranger, "Confirm", sku_id=b, hold_id=cart, request_id=f"conf-{uuid.uuid4().hex}")
    assert stranger.outcome(confirmed) == "OUTCOME_OK"
    assert confirmed.deduction.user_id == "bob"


async def test_an_id_reused_by_another_call_is_refused_never_answered_as_a_duplicate(stranger, node, redis_server):
    a, b = two_skus_in_different_shards(f"reuse-{uuid.uuid4().hex[:8]}")
    await put(stranger, a, 10)
    await put(stranger, b, 10)
    batch = f"batch-{uuid.uuid4().hex}"
    items = [{"sku_id": a, "qty": 1}, {"sku_id": b, "qty": 1}]
    took = await stranger.call("BatchDeduct", user_id="u1", items=items, request_id=batch)
    assert stranger.outcome(took) == "OUTCOME_OK"
    same = await stranger.call("BatchDeduct", user_id="u1", items=items, request_id=batch)
    assert stranger.outcome(same) == "OUTCOME_DUPLICATE"

    # The batch resent with other items: fewer, more, or another quantity.
    for other in ([items[0]], [*items, {"sku_id": f"{a}-x", "qty": 1}], [items[0], {"sku_id": b, "qty": 2}]):
        if len(other) == 3:
            await put(stranger, other[2]["sku_id"], 5)
        await refused_as_reused(stranger.call("BatchDeduct", user_id="u1", items=other, request_id=batch))
    # The batch's id as a Deduct on one of its SKUs, and a Deduct's id later used as a batch id.
    await refused_as_reused(stranger.call("Deduct", sku_id=a, user_id="u1", qty=1, request_id=batch))
    order = f"order-{uuid.uuid4().hex}"
    assert (
        stranger.outcome(await stranger.call("Deduct", sku_id=b, user_id="u1", qty=1, request_id=order)) == "OUTCOME_OK"
    )
    await refused_as_reused(stranger.call("BatchDeduct", user_id="u1", items=items, request_id=order))

    # A Confirm's id reused for a Release of the same hold, or for a Confirm of another hold.
    h1, h2, confirm = (f"{x}-{uuid.uuid4().hex}" for x in ("h1", "h2", "confirm"))
    for hold in (h1, h2):
        await stranger.call("Hold", sku_id=a, user_id="u2", qty=1, request_id=hold)
    assert stranger.outcome(await stranger.call("Confirm", sku_id=a, hold_id=h1, request_id=confirm)) == "OUTCOME_OK"
    assert (
        stranger.outcome(await stranger.call("Confirm", sku_id=a, hold_id=h1, request_id=confirm))
        == "OUTCOME_DUPLICATE"
    )
    await refused_as_reused(stranger.call("Release", sku_id=a, hold_id=h1, request_id=confirm))
    await refused_as_reused(stranger.call("Confirm", sku_id=a, hold_id=h2, request_id=confirm))
    await refused_as_reused(stranger.call("Deduct", sku_id=a, user_id="u2", qty=1, request_id=confirm))

    before = [(x.available, x.confirmed, x.held) for x in [await stranger.call("GetStock", sku_id=s) for s in (a, b)]]
    assert before == [(10 - 1 - 2, 2, 1), (10 - 2, 2, 0)]

    # The same refusals after a rebuild from the ledger.
    ledger = Ledger(sqlite_url(node.data_dir))
    try:
        await aeventually(lambda: ledger.deductions_of([h1], sku_id=a).get(h1, {}).get("state") == "confirmed")
    finally:
        ledger.close()
    flush_redis(redis_server)
    again = await answered(stranger, "BatchDeduct", user_id="u1", items=items, request_id=batch)
    assert stranger.outcome(again) == "OUTCOME_DUPLICATE"
    await refused_as_reused(stranger.call("BatchDeduct", user_id="u1", items=[items[0]], request_id=batch))
    assert (
        stranger.outcome(await stranger.call("Confirm", sku_id=a, hold_id=h1, request_id=confirm))
        == "OUTCOME_DUPLICATE"
    )
    await refused_as_reused(stranger.call("Release", sku_id=a, hold_id=h1, request_id=confirm))
    await refused_as_reused(stranger.call("Confirm", sku_id=a, hold_id=h2, request_id=confirm))
    after = [(x.available, x.confirmed, x.held) for x in [await stranger.call("GetStock", sku_id=s) for s in (a, b)]]
    assert after == before


async def test_a_hold_of_an_earlier_sale_confirms_nothing_and_is_closed_in_the_ledger(
    stranger, ledger, node, redis_server
):
    sku = f"reput-{uuid.uuid4().hex[:8]}"
    await put(stranger, sku, 1)
    old = f"old-hold-{uuid.uuid4().hex}"
    assert (
        stranger.outcome(await stranger.call("Hold", sku_id=sku, user_id="early", qty=1, request_id=old))
        == "OUTCOME_OK"
    )
    await put(stranger, sku, 1)  # the sale starts again: stock 1
    new = f"new-{uuid.uuid4().hex}"
    assert (
        stranger.outcome(await stranger.call("Deduct", sku_id=sku, user_id="late", qty=1, request_id=new))
        == "OUTCOME_OK"
    )

    voided = await stranger.call("Confirm", sku_id=sku, hold_id=old, request_id=f"c-{uuid.uuid4().hex}")
    assert stranger.outcome(voided) == "OUTCOME_HOLD_VOIDED"
    again = await stranger.call("Release", sku_id=sku, hold_id=old, request_id=f"r-{uuid.uuid4().hex}")
    assert stranger.outcome(again) == "OUTCOME_HOLD_VOIDED"
    await aeventually(lambda: ledger.deductions_of([old], sku_id=sku).get(old, {}).get("state") == "released")

    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "flashstock.server",
            "sales",
            "report",
            "--sku",
            sku,
            "--format",
            "json",
            "--data-dir",
            str(node.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr
    (line,) = json.loads(report.stdout)
    assert line["confirmed"] == 1 and line["held"] == 0, line
    level = await stranger.call("GetStock", sku_id=sku)
    assert (level.total, level.available, level.held, level.confirmed) == (1, 0, 0, 1)


async def test_an_admin_change_resent_after_a_redis_loss_changes_nothing(stranger, ledger, node, redis_server):
    sku = f"admin-{uuid.uuid4().hex[:8]}"
    put_id, adjust_id, pause_id = (f"{x}-{uuid.uuid4().hex}" for x in ("put", "adjust", "pause"))
    await answered(stranger, "PutSku", sku_id=sku, stock=5, request_id=put_id)
    for i in range(3):
        took = await stranger.call("Deduct", sku_id=sku, user_id=f"u{i}", qty=1, request_id=f"{sku}-order-{i}")
        assert stranger.outcome(took) == "OUTCOME_OK"
    await answered(stranger, "AdjustStock", sku_id=sku, delta=2, request_id=adjust_id)
    await answered(stranger, "PauseSku", sku_id=sku, request_id=pause_id)
    await aeventually(lambda: len(ledger.deductions_of([f"{sku}-order-{i}" for i in range(3)], sku_id=sku)) == 3)

    flush_redis(redis_server)  # the admin records are gone from Redis; the ledger brings them back

    again = await answered(stranger, "PutSku", sku_id=sku, stock=5, request_id=put_id)
    assert again.duplicate  # not a second sale: the 3 units sold stay sold
    assert (await answered(stranger, "AdjustStock", sku_id=sku, delta=2, request_id=adjust_id)).duplicate
    assert (await answered(stranger, "PauseSku", sku_id=sku, request_id=pause_id)).duplicate
    await refused_as_reused(stranger.call("PutSku", sku_id=sku, stock=9, request_id=put_id))
    level = await stranger.call("GetSku", sku_id=sku)
    assert (level.sku.total, level.sku.available, level.sku.confirmed, level.sku.paused) == (7, 4, 3, True)
