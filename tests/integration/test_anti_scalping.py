"""Anti-scalping against real nodes and a real Redis: the per-user attempt rate and admission tokens.

Two nodes share the session's Redis (and ledger): the rate is counted in
Redis, so the third attempt of a second is refused whichever node it hits.
Both nodes hold two admission keys (a rotation: tokens of either pass).
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from flashstock.client import (
    AdminClient,
    AdmissionKey,
    AdmissionTokenRefused,
    AsyncAdminClient,
    AsyncStockClient,
    BatchItem,
    ClientConfig,
    Outcome,
    RequestIdReused,
    StockClient,
    Unavailable,
    admission_token,
    read_admission_key,
)
from flashstock.server.cli.app import app
from flashstock.server.ledger import Ledger, sqlite_url
from flashstock.server.local.procs import NodeProcess, RedisServer, free_port, serve_argv
from flashstock.v1 import stock_pb2, stock_pb2_grpc
from tests.helpers import aeventually, eventually, redis_now_ms
from tests.helpers.processes import QUIET, running_node


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two key files, ids ``old`` and ``new``."""
    folder = tmp_path_factory.mktemp("admission-keys")
    paths = []
    for kid in ("old", "new"):
        path = folder / f"{kid}.key"
        path.write_text(secrets.token_urlsafe(32) + "\n")
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def pair(redis_server: RedisServer, node: NodeProcess, keys: list[Path]) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """Two nodes on the session's Redis and ledger, holding both admission keys."""
    flags = (*QUIET, "--admission-keys", ",".join(str(k) for k in keys))
    with (
        running_node(redis_server.url, ledger=node.ledger_url, extra_args=flags) as a,
        running_node(redis_server.url, ledger=node.ledger_url, extra_args=flags) as b,
    ):
        yield a, b


@pytest.fixture
def clients(pair: tuple[NodeProcess, NodeProcess]) -> Iterator[tuple[StockClient, StockClient, AdminClient]]:
    """A client of each node (one address each), and an admin client."""
    a, b = pair
    with (
        StockClient(ClientConfig(addresses=[a.address])) as on_a,
        StockClient(ClientConfig(addresses=[b.address])) as on_b,
        AdminClient(ClientConfig(addresses=[a.address])) as admin,
    ):
        yield on_a, on_b, admin


def _early_in_a_second(redis) -> bool:  # type: ignore[no-untyped-def]
    # The attempts of one round must fall in one second of Redis's clock: start in its first half.
    return redis_now_ms(redis) % 1000 < 400


def test_the_third_attempt_in_a_second_is_rate_limited_whichever_node_it_hits(clients, redis, sku):
    on_a, on_b, admin = clients
    admin.put_sku(sku, 100, user_rate_per_s=2)
    assert admin.get_sku(sku).user_rate_per_s == 2
    tries = iter(range(100))

    def one_round():  # type: ignore[no-untyped-def]
        eventually(lambda: _early_in_a_second(redis), timeout=3, interval=0.01)
        user = f"u{next(tries)}"
        first = on_a.deduct(sku, user, request_id=f"{user}-1")
        second = on_b.deduct(sku, user, request_id=f"{user}-2")
        third = on_a.deduct(sku, user, request_id=f"{user}-3")
        fourth = on_b.deduct(sku, user, request_id=f"{user}-4")
        other = on_b.deduct(sku, f"{user}-other", request_id=f"{user}-other-1")
        resend = on_b.deduct(sku, user, request_id=f"{user}-1")
        return user, [first, second, third, fourth, other, resend]

    # Retried only if the round straddled a second (then its answers are of two windows).
    user, (first, second, third, fourth, other, resend) = eventually(
        one_round, until=lambda r: r[1][0].deduction.taken_at_ms // 1000 == r[1][1].deduction.taken_at_ms // 1000
    )
    assert (first.outcome, second.outcome) == (Outcome.OK, Outcome.OK)
    for refused in (third, fourth):
        assert refused.outcome is Outcome.RATE_LIMITED, refused
        assert 0 < refused.retry_after_ms <= 1000 and refused.deduction is None
    assert other.outcome is Outcome.OK  # another user has attempts of their own
    assert resend.outcome is Outcome.DUPLICATE and resend.deduction == first.deduction
    # Refused attempts took nothing: 3 units went, of every round tried.
    level = on_a.get_stock(sku)
    assert level.confirmed == level.total - level.available
    taken = level.confirmed
    # ... and recorded nothing: the refused id, sent again once the window passed, is a fresh attempt.
    again = eventually(
        lambda: on_a.deduct(sku, user, request_id=f"{user}-3"), until=lambda r: r.outcome is not Outcome.RATE_LIMITED
    )
    assert again.outcome is Outcome.OK
    assert on_a.get_stock(sku).confirmed == taken + 1


def test_holds_and_batches_count_against_the_rate_too(clients, redis, sku):
    on_a, on_b, admin = clients
    admin.put_sku(sku, 100, user_rate_per_s=1)
    admin.put_sku(f"{sku}-free", 100)

    batches = []

    def one_round(user: str):  # type: ignore[no-untyped-def]
        eventually(lambda: _early_in_a_second(redis), timeout=3, interval=0.01)
        hold = on_a.hold(sku, user, ttl_ms=60_000)
        batches.append(on_b.batch_deduct(user, [BatchItem(f"{sku}-free", 1), BatchItem(sku, 1)]))
        return hold, batches[-1]

    tries = iter(range(100))
    # The batch is OK only when Redis's second turned between the two calls: then another round.
    hold, batch = eventually(lambda: one_round(f"b{next(tries)}"), until=lambda r: r[1].outcome is not Outcome.OK)
    assert hold.outcome is Outcome.OK
    assert batch.outcome is Outcome.RATE_LIMITED and batch.retry_after_ms > 0
    assert [i.outcome for i in batch.items] == [Outcome.OK, Outcome.RATE_LIMITED]
    assert 0 < batch.items[1].retry_after_ms <= 1000
    # A refused batch took nothing of either SKU.
    taken = sum(1 for b in batches if b.outcome is Outcome.OK)
    assert on_a.get_stock(f"{sku}-free").available == 100 - taken


def _bad_mac(token: str) -> str:
    head, _, mac = token.rpartition(".")
    return f"{head}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"


def test_a_sku_that_requires_a_token_takes_only_valid_ones(clients, keys, sku):
    on_a, on_b, admin = clients
    old, new = (read_admission_key(k) for k in keys)
    admin.put_sku(sku, 10, require_token=True)
    admin.put_sku(f"{sku}-other", 10, require_token=True)
    assert admin.get_sku(sku).require_token
    stranger = AdmissionKey("old", secrets.token_bytes(32))  # the right id, not the nodes' key
    refused = {
        "none": "",
        "bad mac": _bad_mac(admission_token(old, "u1", sku, 30)),
        "other user": admission_token(old, "u2", sku, 30),
        "other sku": admission_token(old, "u1", f"{sku}-other", 30),
        "expired": admission_token(old, "u1", sku, 1, now_ms=1_000),
        "unknown key": admission_token(AdmissionKey("gone", secrets.token_bytes(32)), "u1", sku, 30),
        "foreign key": admission_token(stranger, "u1", sku, 30),
        "garbage": "v1.old.x.y",
    }
    for case, token in refused.items():
        for client in (on_a, on_b):
            with pytest.raises(AdmissionTokenRefused) as e:
                client.deduct(sku, "u1", admission_token=token)
            assert e.value.sku == sku and "admission token" in e.value.message, case
    with pytest.raises(AdmissionTokenRefused):
        on_a.hold(sku, "u1", admission_token="")
    assert on_a.get_stock(sku).available == 10  # nothing taken by a refused call

    # Valid tokens of either key pass (the gateway's key rotates), on either node.
    ok_old = on_a.deduct(sku, "u1", request_id="r-old", admission_token=admission_token(old, "u1", sku, 30))
    ok_new = on_b.hold(sku, "u1", request_id="r-new", admission_token=admission_token(new, "u1", sku, 30))
    assert (ok_old.outcome, ok_new.outcome) == (Outcome.OK, Outcome.OK)
    # A resend gets its first answer, whatever became of its token since.
    resend = on_b.deduct(sku, "u1", request_id="r-old", admission_token=refused["expired"])
    assert resend.outcome is Outcome.DUPLICATE and resend.deduction == ok_old.deduction
    assert on_a.get_stock(sku).available == 8
    # A SKU without the setting ignores tokens, good or bad.
    admin.put_sku(f"{sku}-open", 10)
    assert on_a.deduct(f"{sku}-open", "u1", admission_token="junk").outcome is Outcome.OK


def test_a_batch_item_needs_its_own_token(clients, keys, sku):
    on_a, _, admin = clients
    old = read_admission_key(keys[0])
    admin.put_sku(sku, 10, require_token=True)
    admin.put_sku(f"{sku}-open", 10)
    with pytest.raises(AdmissionTokenRefused) as e:
        on_a.batch_deduct("u1", [BatchItem(f"{sku}-open", 1), BatchItem(sku, 1)])
    assert e.value.sku == sku
    token = admission_token(old, "u1", sku, 30)
    result = on_a.batch_deduct("u1", [BatchItem(f"{sku}-open", 1), BatchItem(sku, 1, admission_token=token)])
    assert result.outcome is Outcome.OK
    assert on_a.get_stock(f"{sku}-open").available == 9 and on_a.get_stock(sku).available == 9


def test_raw_grpc_sees_the_outcome_the_delay_and_the_status(clients, pair, redis, keys, sku):
    _, _, admin = clients
    admin.put_sku(sku, 10, user_rate_per_s=1)
    admin.put_sku(f"{sku}-locked", 10, require_token=True)
    with grpc.insecure_channel(pair[1].address) as channel:
        stub = stock_pb2_grpc.StockServiceStub(channel)

        tries = iter(range(100))

        def two() -> list[stock_pb2.DeductReply]:
            eventually(lambda: _early_in_a_second(redis), timeout=3, interval=0.01)
            user = f"raw{next(tries)}"
            return [stub.Deduct(stock_pb2.DeductRequest(sku_id=sku, user_id=user, qty=1, request_id=r)) for r in "xy"]

        # Another round only if Redis's second turned between the two calls.
        replies = eventually(two, until=lambda r: r[1].outcome != stock_pb2.OUTCOME_OK)
        assert replies[0].outcome == stock_pb2.OUTCOME_OK
        assert replies[1].outcome == stock_pb2.OUTCOME_RATE_LIMITED and 0 < replies[1].retry_after_ms <= 1000
        assert not replies[1].HasField("deduction")
        with pytest.raises(grpc.RpcError) as e:
            stub.Deduct(stock_pb2.DeductRequest(sku_id=f"{sku}-locked", user_id="raw", qty=1, request_id="z"))
        assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "no admission token" in (e.value.details() or "")
        token = admission_token(read_admission_key(keys[1]), "raw", f"{sku}-locked", 30)
        ok = stub.Deduct(
            stock_pb2.DeductRequest(sku_id=f"{sku}-locked", user_id="raw", qty=1, request_id="z", admission_token=token)
        )
        assert ok.outcome == stock_pb2.OUTCOME_OK


def test_unusable_admission_keys_stop_the_start_naming_the_setting(tmp_path):
    def start_exit(*flags: str) -> subprocess.CompletedProcess[str]:
        argv = serve_argv(free_port(), "redis://127.0.0.1:1/0", *flags)
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    missing = start_exit("--admission-keys", str(tmp_path / "nope.key"))
    assert missing.returncode == 2 and "admission_keys:" in missing.stderr, missing.stderr
    short = tmp_path / "short.key"
    short.write_text("too short\n")
    too_short = start_exit("--admission-keys", str(short))
    assert too_short.returncode == 2 and "admission_keys:" in too_short.stderr and "fewer than 32" in too_short.stderr


def test_the_settings_are_kept_by_the_ledger_and_enforced_after_a_rebuild(private_stack, sku):
    node = private_stack.node
    config = ClientConfig(addresses=[node.address])
    reader = Ledger(sqlite_url(node.data_dir))
    try:
        with AdminClient(config) as admin, StockClient(config) as stock:
            put = admin.put_sku(sku, 10, user_rate_per_s=3, require_token=True, request_id="put-1")
            assert (put.sku.user_rate_per_s, put.sku.require_token) == (3, True)
            # The settings are part of the call: the same id with another rate is another call.
            assert admin.put_sku(sku, 10, user_rate_per_s=3, require_token=True, request_id="put-1").duplicate
            with pytest.raises(RequestIdReused):
                admin.put_sku(sku, 10, user_rate_per_s=4, require_token=True, request_id="put-1")
            (row,) = eventually(lambda: reader.sku_states(sku_id=sku))
            assert (row.user_rate_per_s, row.require_token) == (3, True)

            private_stack.restart_redis()  # an empty Redis: the node rebuilds the shard from the ledger
            again = eventually(lambda: admin.get_sku(sku), retry_on=(Unavailable,), timeout=30)
            assert (again.user_rate_per_s, again.require_token) == (3, True)
            with pytest.raises(AdmissionTokenRefused):
                stock.deduct(sku, "u1")
            assert stock.get_stock(sku).available == 10
    finally:
        reader.close()


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


def test_the_cli_makes_a_key_mints_a_token_and_puts_a_guarded_sku(pair, keys, tmp_path, sku):
    # A node takes a key made by the CLI only when told of it: mint with one of the nodes' keys here,
    # and check the new key's file on its own.
    made = Path(_cli("admission", "key", str(tmp_path), "--kid", "gw-1").strip())
    assert made == tmp_path / "gw-1.key" and read_admission_key(made).kid == "gw-1"
    assert made.stat().st_mode & 0o077 == 0  # the owner's alone
    addr = ("--addr", pair[0].address)
    table = _cli("sku", "put", sku, "--stock", "5", "--user-rate", "2", "--require-token", *addr)
    assert "2/s per user, token" in table
    assert "2/s per user, token" in _cli("sku", "get", sku, *addr)
    token = _cli("admission", "token", "--key", str(keys[0]), "--user", "u1", "--sku", sku, "--ttl", "1m").strip()
    with StockClient(ClientConfig(addresses=[pair[0].address])) as stock:
        assert stock.deduct(sku, "u1", admission_token=token).outcome is Outcome.OK
        with pytest.raises(AdmissionTokenRefused):
            stock.deduct(sku, "u2", admission_token=token)


async def test_concurrent_attempts_sharing_a_script_call_are_each_answered_on_their_own(pair, redis, sku):
    # Concurrent deductions of one shard share one deduct.lua call (the coalescer): each is counted
    # and answered on its own, the refused ones with their own delay.
    async with (
        AsyncAdminClient(ClientConfig(addresses=[pair[0].address])) as admin,
        AsyncStockClient(ClientConfig(addresses=[pair[0].address])) as stock,
    ):
        await admin.put_sku(sku, 1000, user_rate_per_s=2)
        tries = iter(range(100))

        async def one_round():  # type: ignore[no-untyped-def]
            await aeventually(lambda: _early_in_a_second(redis), timeout=3, interval=0.01)
            n = next(tries)
            before = redis_now_ms(redis) // 1000
            results = await asyncio.gather(
                *(stock.deduct(sku, f"x{n}") for _ in range(8)), *(stock.deduct(sku, f"y{n}-{i}") for i in range(4))
            )
            return before == redis_now_ms(redis) // 1000, results

        _, results = await aeventually(one_round, until=lambda r: r[0])  # another round if the second turned
    mine, others = results[:8], results[8:]
    assert sorted(r.outcome.name for r in mine) == ["OK"] * 2 + ["RATE_LIMITED"] * 6
    assert all(0 < r.retry_after_ms <= 1000 for r in mine if r.outcome is Outcome.RATE_LIMITED)
    assert all(r.retry_after_ms == 0 for r in mine if r.outcome is Outcome.OK)
    assert [r.outcome for r in others] == [Outcome.OK] * 4
