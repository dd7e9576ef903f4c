"""The audit trail of SKU changes: every PutSku, AdjustStock, PauseSku and ResumeSku that took effect
is one ``audit`` row, written with the change; a resend, a refused change, a rebuild add none.

Driven through raw gRPC (:class:`~tests.helpers.stranger.Stranger`), against a node of this module's
own (its ledger gets every log entry). An admin change is answered only once the ledger holds it, so
each row is looked for right after the answer, without waiting: it came in the change's transaction.
"""

from __future__ import annotations

import json
import uuid

import grpc
import pytest
import redis as redis_py
from typer.testing import CliRunner

from flashstock.lockmgr import shard_of
from flashstock.server.cli.app import app
from flashstock.server.ledger import AuditRecord, Ledger
from tests.helpers import aeventually, stacks
from tests.helpers.stranger import Stranger

node = stacks.node
redis_server = stacks.redis_server
stranger = stacks.stranger
ledger = stacks.ledger


@pytest.fixture
def sku() -> str:
    return f"audit-{uuid.uuid4().hex[:10]}"


async def answered(stranger: Stranger, method: str, **fields):
    """The call's reply, sent again with the same fields while the node rebuilds a shard (UNAVAILABLE)."""

    async def once():
        try:
            return await stranger.call(method, **fields)
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.UNAVAILABLE:
                return None
            raise

    return await aeventually(once, timeout=20)


def trail(ledger: Ledger, sku: str) -> list[AuditRecord]:
    """The SKU's audit records, oldest first."""
    return list(reversed(ledger.audit(sku_id=sku, limit=1000)))


def figures(record_figures: dict | None, *names: str) -> tuple:
    assert record_figures is not None
    return tuple(record_figures[n] for n in names)


async def test_each_admin_change_is_one_audit_row_with_who_what_and_the_figures_before_and_after(stranger, ledger, sku):
    await answered(stranger, "PutSku", sku_id=sku, stock=5, per_user_limit=2, goal_units=5, request_id=f"p-{sku}")
    [put] = trail(ledger, sku)  # no wait: the ledger held the row before the node answered
    assert (put.method, put.identity, put.sku_id, put.shard) == ("PutSku", "anonymous", sku, shard_of(sku))
    assert put.peer.startswith(("ipv4:127.0.0.1:", "ipv6:[::1]:")), put.peer
    assert put.args["stock"] == 5 and put.args["per_user_limit"] == 2 and put.args["goal_units"] == 5
    assert put.args["request_id"] == f"p-{sku}" and put.args["mode"] == "MODE_UNSPECIFIED"
    assert put.before is None  # a new SKU
    assert figures(put.after, "total", "available", "per_user_limit", "goal_units", "paused") == (5, 5, 2, 5, False)

    took = await stranger.call("Deduct", sku_id=sku, user_id="u1", qty=2, request_id=f"d-{sku}")
    assert stranger.outcome(took) == "OUTCOME_OK"

    await answered(stranger, "AdjustStock", sku_id=sku, delta=3, request_id=f"a-{sku}")
    await answered(stranger, "PauseSku", sku_id=sku, request_id=f"z-{sku}")
    await answered(stranger, "ResumeSku", sku_id=sku, request_id=f"u-{sku}")
    put, adjust, pause, resume = trail(ledger, sku)

    assert adjust.method == "AdjustStock" and adjust.args["delta"] == 3
    # Before: what the deduction left; after: the same plus the 3 units added.
    assert figures(adjust.before, "total", "available", "confirmed") == (5, 3, 2)
    assert figures(adjust.after, "total", "available", "confirmed") == (8, 6, 2)
    assert (pause.method, pause.before["paused"], pause.after["paused"]) == ("PauseSku", False, True)
    assert (resume.method, resume.before["paused"], resume.after["paused"]) == ("ResumeSku", True, False)
    assert put.at_ms <= adjust.at_ms <= pause.at_ms <= resume.at_ms
    assert len({r.source for r in (put, adjust, pause, resume)}) == 4


async def test_a_resend_and_a_refused_change_write_no_audit_row(stranger, ledger, sku):
    await answered(stranger, "PutSku", sku_id=sku, stock=3, request_id=f"p-{sku}")
    took = await stranger.call("Deduct", sku_id=sku, user_id="u1", qty=2, request_id=f"d-{sku}")
    assert stranger.outcome(took) == "OUTCOME_OK"

    # Resent with the same request id: answered DUP, nothing changed, nothing recorded.
    assert (await answered(stranger, "PutSku", sku_id=sku, stock=3, request_id=f"p-{sku}")).duplicate
    # Below what is handed out: refused, nothing changed, nothing recorded.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stranger.call("AdjustStock", sku_id=sku, delta=-2, request_id=f"a-{sku}")
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    # Past the cap: refused too.
    with pytest.raises(grpc.aio.AioRpcError):
        await stranger.call("AdjustStock", sku_id=sku, delta=10**18, request_id=f"a2-{sku}")
    # An unknown SKU: nothing to change.
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stranger.call("PauseSku", sku_id=f"{sku}-none", request_id=f"z-{sku}")
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND

    assert [r.method for r in trail(ledger, sku)] == ["PutSku"]
    assert trail(ledger, f"{sku}-none") == []


async def test_a_rebuild_from_the_ledger_neither_loses_nor_doubles_audit_rows(stranger, ledger, redis_server, sku):
    await answered(stranger, "PutSku", sku_id=sku, stock=4, request_id=f"p-{sku}")
    await answered(stranger, "AdjustStock", sku_id=sku, delta=1, request_id=f"a-{sku}")
    before = trail(ledger, sku)
    assert [r.method for r in before] == ["PutSku", "AdjustStock"]

    client = redis_py.Redis.from_url(redis_server.url)
    try:
        client.flushall()  # Redis loses everything; the node rebuilds the shard from the ledger
    finally:
        client.close()

    # The resends after the loss are duplicates (the ledger keeps the admin records): no new rows.
    assert (await answered(stranger, "PutSku", sku_id=sku, stock=4, request_id=f"p-{sku}")).duplicate
    assert (await answered(stranger, "AdjustStock", sku_id=sku, delta=1, request_id=f"a-{sku}")).duplicate
    assert trail(ledger, sku) == before
    # A new change after the rebuild is recorded, once, from the rebuilt log, with the rebuilt figures.
    await answered(stranger, "PauseSku", sku_id=sku, request_id=f"z-{sku}")
    *_, pause = trail(ledger, sku)
    assert len(trail(ledger, sku)) == 3
    assert figures(pause.before, "total", "paused") == (5, False)
    assert pause.source not in {r.source for r in before}


# -- flashstock audit ls ------------------------------------------------------------------------------------


def audit_ls(*args: str):  # type: ignore[no-untyped-def]
    # A wide terminal, so a row of the table is one line; no colours.
    env = {"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    return CliRunner().invoke(app, ["audit", "ls", *args], env=env)


async def test_audit_ls_shows_the_changes_newest_first_as_a_table_and_as_json_lines(stranger, node, sku):
    await answered(stranger, "PutSku", sku_id=sku, stock=5, request_id=f"p-{sku}")
    await answered(stranger, "AdjustStock", sku_id=sku, delta=-2, request_id=f"a-{sku}")
    await answered(stranger, "PauseSku", sku_id=sku, request_id=f"z-{sku}")
    where = ("--data-dir", str(node.data_dir))

    got = audit_ls("--sku", sku, "--format", "json", *where)
    assert got.exit_code == 0, got.output
    lines = [json.loads(line) for line in got.output.splitlines()]
    assert [x["method"] for x in lines] == ["PauseSku", "AdjustStock", "PutSku"]  # newest first
    assert lines[1]["args"]["delta"] == -2 and lines[1]["identity"] == "anonymous"
    assert (lines[1]["before"]["total"], lines[1]["after"]["total"]) == (5, 3)
    assert lines[2]["before"] is None and lines[2]["sku_id"] == sku

    limited = audit_ls("--sku", sku, "--format", "json", "--limit", "1", *where)
    assert [json.loads(line)["method"] for line in limited.output.splitlines()] == ["PauseSku"]

    table = audit_ls("--sku", sku, "--since", "1h", *where)
    assert table.exit_code == 0, table.output
    rows = [line for line in table.output.splitlines() if sku in line]
    assert [next(m for m in ("PauseSku", "AdjustStock", "PutSku") if m in row) for row in rows] == [
        "PauseSku",
        "AdjustStock",
        "PutSku",
    ]
    assert "total 5→3" in rows[1] and "available 5→3" in rows[1] and "delta=-2" in rows[1]
    assert "paused False→True" in rows[0] and "anonymous" in rows[0]
    assert "new: total 5" in rows[2]


def test_audit_ls_since_a_time_to_come_shows_nothing_and_a_bad_since_is_refused_clearly(node):
    where = ("--data-dir", str(node.data_dir))
    later = audit_ls("--since", "2999-01-01T00:00:00+00:00", "--format", "json", *where)
    assert later.exit_code == 0 and later.output == ""
    assert "no admin changes recorded in that time" in audit_ls("--since", "2999-01-01", *where).output

    bad = audit_ls("--since", "yesterday", *where)
    assert bad.exit_code == 2
    assert "--since" in bad.output and "'yesterday' is neither a span back from now" in bad.output


def test_audit_ls_without_a_ledger_says_so(tmp_path):
    got = audit_ls("--data-dir", str(tmp_path / "nothing"))
    assert got.exit_code == 2
    assert "there is no ledger" in got.output
