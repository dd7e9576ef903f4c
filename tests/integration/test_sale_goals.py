"""A sale's goals and unit price: set with PutSku, kept with the SKU in Redis and the ledger, and through a rebuild.

Driven as a stranger would (raw gRPC from server reflection) and through the
CLI, on a node and Redis of this module's own, with the ledger read directly.
A Redis flushed under the node is rebuilt from the ledger, which the node
also records as an incident for the sale's review.
"""

from __future__ import annotations

import re
import time
import uuid

import grpc
import pytest
import redis as redis_py
from typer.testing import CliRunner

from flashstock.client import AdminClient, ClientConfig, InvalidArgument
from flashstock.lockmgr import shard_of
from flashstock.server.cli.app import app
from tests.helpers import aeventually, eventually, stacks
from tests.helpers.stranger import Stranger

node = stacks.node
redis_server = stacks.redis_server
stranger = stacks.stranger
ledger = stacks.ledger

GOALS = {"goal_units": 8, "goal_sellout_ms": 30_000, "goal_buyers": 5, "unit_price_minor": 1999, "currency": "EUR"}


@pytest.fixture
def admin(node):
    with AdminClient(ClientConfig(addresses=node.address)) as client:
        yield client


def goals_of(message) -> dict:
    return {name: getattr(message, name) for name in GOALS}


async def answered(stranger: Stranger, method: str, **fields):
    """The reply, sent again with the same fields while the node rebuilds the shard (UNAVAILABLE)."""

    async def once():
        try:
            return await stranger.call(method, **fields)
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.UNAVAILABLE:
                return None
            raise

    return await aeventually(once, timeout=20)


def flush_redis(redis_server) -> None:
    client = redis_py.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()


async def test_goals_put_over_raw_grpc_are_read_back_kept_in_the_ledger_and_survive_a_rebuild(
    stranger, ledger, redis_server, sku
):
    put = await answered(stranger, "PutSku", sku_id=sku, stock=10, request_id=f"put-{uuid.uuid4().hex}", **GOALS)
    assert goals_of(put.sku) == GOALS
    got = await stranger.call("GetSku", sku_id=sku)
    assert goals_of(got.sku) == GOALS
    listed = await stranger.call("ListSkus", prefix=sku)
    assert [goals_of(s) for s in listed.skus] == [GOALS]

    # Adjusting, pausing and resuming the sale leave its goals and price as they were.
    await stranger.call("AdjustStock", sku_id=sku, delta=5, request_id=f"adj-{uuid.uuid4().hex}")
    await stranger.call("PauseSku", sku_id=sku, request_id=f"pause-{uuid.uuid4().hex}")
    resumed = await stranger.call("ResumeSku", sku_id=sku, request_id=f"resume-{uuid.uuid4().hex}")
    assert goals_of(resumed.sku) == GOALS and resumed.sku.total == 15

    (row,) = await aeventually(lambda: ledger.sku_states(sku_id=sku), until=lambda rows: rows and rows[0].total == 15)
    assert {name: getattr(row, name) for name in GOALS} == GOALS

    before = int(time.time() * 1000)
    flush_redis(redis_server)  # every SKU hash is gone: the rebuild brings the goals back from the ledger
    again = await answered(stranger, "GetSku", sku_id=sku)
    assert goals_of(again.sku) == GOALS and again.sku.total == 15

    # The node recorded the rebuild of the SKU's shard, for the sale's review.
    rebuilds = await aeventually(
        lambda: [i for i in ledger.incidents(since_ms=before, kinds=["rebuild"]) if i.shard == shard_of(sku)]
    )
    assert "rebuilt from the ledger" in rebuilds[0].detail
    assert rebuilds[0].node and rebuilds[0].at_ms >= before


async def test_a_put_without_goals_has_none_and_a_resend_with_other_goals_is_refused(stranger, sku):
    request_id = f"put-{uuid.uuid4().hex}"
    plain = await answered(stranger, "PutSku", sku_id=sku, stock=10, request_id=request_id)
    assert goals_of(plain.sku) == dict.fromkeys(GOALS, 0) | {"currency": ""}
    same = await stranger.call("PutSku", sku_id=sku, stock=10, request_id=request_id)
    assert same.duplicate

    with_goals = f"put-{uuid.uuid4().hex}"
    await stranger.call("PutSku", sku_id=sku, stock=10, request_id=with_goals, **GOALS)
    for other in ({"goal_units": 9}, {"goal_sellout_ms": 1}, {"unit_price_minor": 2000}, {"currency": "USD"}):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stranger.call("PutSku", sku_id=sku, stock=10, request_id=with_goals, **(GOALS | other))
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "applied before to another admin call" in (err.value.details() or "")
    # The id that put no goals is another call than the same values with goals.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stranger.call("PutSku", sku_id=sku, stock=10, request_id=request_id, **GOALS)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        (
            {"goal_units": -1, "goal_sellout_ms": -1, "goal_buyers": -1},
            {"goal_units", "goal_sellout_ms", "goal_buyers"},
        ),
        ({"goal_units": 11, "goal_buyers": 11}, {"goal_units", "goal_buyers"}),
        ({"unit_price_minor": 100}, {"currency"}),
        ({"unit_price_minor": -5, "currency": "EUR"}, {"unit_price_minor"}),
        ({"unit_price_minor": 100, "currency": "eur"}, {"currency"}),
        ({"currency": "EUR"}, {"currency"}),
    ],
)
def test_invalid_goals_and_prices_are_refused_and_change_nothing(admin, sku, fields, bad):
    admin.put_sku(sku, 10, goal_units=3)
    with pytest.raises(InvalidArgument) as err:
        admin.put_sku(sku, 10, **fields)
    assert {v.field for v in err.value.violations} == bad
    assert admin.get_sku(sku).goal_units == 3


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


def row(output: str, sku: str) -> list[str]:
    line = next(line for line in output.splitlines() if sku in line)
    return [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]


def test_the_cli_puts_goals_and_an_exact_price_and_shows_them(node, admin, sku):
    addr = ("--addr", node.address)
    out = cli(
        "sku", "put", sku, "--stock", "100", "--goal-units", "80", "--goal-sellout", "1m30s", "--goal-buyers", "40",
        "--price", "19.99", "--currency", "eur", *addr,
    )  # fmt: skip
    assert row(out, sku)[9:11] == ["80 units, sold out in 90s, 40 buyers", "19.99 EUR"]
    got = admin.get_sku(sku)
    assert (got.goal_units, got.goal_sellout_ms, got.goal_buyers) == (80, 90_000, 40)
    assert (got.unit_price_minor, got.currency) == (1999, "EUR")
    assert row(cli("sku", "get", sku, *addr), sku)[9:11] == ["80 units, sold out in 90s, 40 buyers", "19.99 EUR"]
    assert row(cli("sku", "ls", "--prefix", sku, *addr), sku)[9:11] == [
        "80 units, sold out in 90s, 40 buyers",
        "19.99 EUR",
    ]

    cli("sku", "put", sku, "--stock", "5", "--price", "1500", "--currency", "JPY", *addr)
    assert (admin.get_sku(sku).unit_price_minor, admin.get_sku(sku).currency) == (1500, "JPY")
    refused = CliRunner().invoke(
        app, ["sku", "put", sku, "--stock", "5", "--price", "15.5", "--currency", "JPY", *addr]
    )
    assert refused.exit_code == 2 and "no decimals" in refused.output
    assert eventually(lambda: admin.get_sku(sku).unit_price_minor) == 1500  # the refused put changed nothing
