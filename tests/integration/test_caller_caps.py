"""One caller past its own caps is refused at once, taking nothing, while another caller is served.

Real nodes (one serving worker each) on a real Redis. A caller is the peer's
address: the test calls from ``127.0.0.1`` directly and from ``127.0.0.2``
through :class:`~tests.helpers.source.FromAddress`. Raw gRPC calls (not the
client, which would retry the refusals).

- ``max_in_flight_per_caller``: with Redis writes paused (``CLIENT PAUSE ...
  WRITE``: every stock script waits), one caller's calls past its cap are
  refused with RESOURCE_EXHAUSTED naming the caller's cap and a RetryInfo,
  while the other caller's calls are admitted and served.
- ``max_rate_per_caller``: a burst past one second's worth is refused with a
  RetryInfo of when the caller may call again; the other caller is served.
- With auth on a caller is its identity: two gateways' bearer tokens on one
  channel from one address are capped apart.

A refused call left no record in Redis nor the ledger.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import grpc
import jwt
import pytest
import redis as redis_py

from flashstock.client import AdminClient, ClientConfig, Overloaded
from flashstock.client.errors import from_status
from flashstock.server.ledger import Ledger, sqlite_url
from flashstock.server.local.procs import NodeProcess, RedisServer
from flashstock.server.rpc.admission import RETRY_MAX_S, RETRY_MIN_S
from flashstock.v1 import admin_pb2, admin_pb2_grpc, stock_pb2, stock_pb2_grpc
from tests.helpers import eventually
from tests.helpers.source import FromAddress

pytestmark = pytest.mark.slow

PER_CALLER = 2
RATE = 10
PAUSE_MS = 1500


@pytest.fixture(scope="module")
def in_flight_capped() -> Iterator[tuple[RedisServer, NodeProcess]]:
    """A Redis of its own and a node of one worker that takes at most PER_CALLER calls at a time from one caller."""
    with RedisServer() as server:
        args = ["--max-in-flight-per-caller", str(PER_CALLER)]
        with NodeProcess(server.url, workers=1, extra_args=args) as node:
            yield server, node


@pytest.fixture(scope="module")
def rate_capped() -> Iterator[tuple[RedisServer, NodeProcess]]:
    """A Redis of its own and a node of one worker that takes at most RATE calls a second from one caller."""
    with RedisServer() as server:
        args = ["--max-rate-per-caller", str(RATE)]
        with NodeProcess(server.url, workers=1, extra_args=args) as node:
            yield server, node


async def _deduct(
    stub: stock_pb2_grpc.StockServiceStub, sku: str, rid: str, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[str, object]:
    """One raw Deduct (with ``metadata``: a bearer token): (request id, the reply or the grpc error)."""
    try:
        reply = await stub.Deduct(
            stock_pb2.DeductRequest(sku_id=sku, user_id=f"u-{rid}", qty=1, request_id=rid),
            metadata=metadata,
            timeout=20,
        )
        return rid, reply
    except grpc.aio.AioRpcError as exc:
        return rid, exc


def _split(results: dict[str, object]) -> tuple[set[str], dict[str, Overloaded]]:
    """(ids answered OK, {id: the Overloaded it was refused with}); anything else fails the test."""
    ok = {rid for rid, res in results.items() if isinstance(res, stock_pb2.DeductReply)}
    refused = {}
    for rid, res in results.items():
        if rid in ok:
            assert res.outcome == stock_pb2.OUTCOME_OK, res
            continue
        assert isinstance(res, grpc.aio.AioRpcError), res
        assert res.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, res
        error = from_status(res.code(), res.details() or "", res.trailing_metadata())
        assert isinstance(error, Overloaded)
        refused[rid] = error
    return ok, refused


def _recorded_ids(r: redis_py.Redis, sku: str) -> set[str]:
    ids: set[str] = set()
    for key in r.scan_iter(match=f"fs:*:r:*:{sku}"):
        ids |= {k.decode() for k in r.hkeys(key)}
    return ids


def _assert_took_nothing(
    node: NodeProcess, r: redis_py.Redis, sku: str, ok: set[str], refused: set[str], token: str | None = None
) -> None:
    with AdminClient(ClientConfig(addresses=[node.address], token=token)) as admin:
        level = admin.get_sku(sku)
    assert level.total - level.available == len(ok)
    recorded = _recorded_ids(r, sku)
    assert ok <= recorded and not refused & recorded
    ledger = Ledger(sqlite_url(node.data_dir))
    try:
        eventually(lambda: set(ledger.deductions_of(ok, sku)) == ok)
        assert not ledger.deductions_of(refused, sku)
    finally:
        ledger.close()


async def test_a_caller_past_its_in_flight_cap_is_refused_while_another_is_served(in_flight_capped):
    redis_server, node = in_flight_capped
    sku = f"caller-{uuid.uuid4().hex[:8]}"
    with AdminClient(addresses=[node.address]) as admin:
        admin.put_sku(sku, 1000)
    r = redis_py.Redis.from_url(redis_server.url)
    greedy_ids = [uuid.uuid4().hex for _ in range(4 * PER_CALLER)]
    polite_ids = [uuid.uuid4().hex for _ in range(PER_CALLER)]
    async with (
        FromAddress(node.address, "127.0.0.2") as other,
        grpc.aio.insecure_channel(node.address) as greedy_channel,
        grpc.aio.insecure_channel(other.address) as polite_channel,
    ):
        greedy = stock_pb2_grpc.StockServiceStub(greedy_channel)
        polite = stock_pb2_grpc.StockServiceStub(polite_channel)
        await greedy_channel.channel_ready()
        await polite_channel.channel_ready()
        assert r.client_pause(PAUSE_MS, all=False)  # writes (every stock script) wait
        try:
            greedy_calls = [asyncio.create_task(_deduct(greedy, sku, rid)) for rid in greedy_ids]
            # The greedy caller's extra calls are refused at once, while its first ones wait on Redis ...
            done, _ = await asyncio.wait(greedy_calls, return_when=asyncio.FIRST_COMPLETED)
            first = next(iter(done)).result()[1]
            assert isinstance(first, grpc.aio.AioRpcError), first
            # ... and the other caller is admitted all the same (its calls wait on Redis too).
            polite_results = dict(await asyncio.gather(*(_deduct(polite, sku, rid) for rid in polite_ids)))
            greedy_results = dict(await asyncio.gather(*greedy_calls))
        finally:
            r.client_unpause()

    polite_ok, polite_refused = _split(polite_results)
    assert polite_ok == set(polite_ids) and not polite_refused
    greedy_ok, greedy_refused = _split(greedy_results)
    assert len(greedy_ok) == PER_CALLER and len(greedy_refused) == len(greedy_ids) - PER_CALLER
    for error in greedy_refused.values():
        assert "caller 127.0.0.1" in error.message and "max_in_flight_per_caller" in error.message
        assert "nothing was taken" in error.message
        assert RETRY_MIN_S <= error.retry_after <= RETRY_MAX_S
    _assert_took_nothing(node, r, sku, greedy_ok | polite_ok, set(greedy_refused))


async def test_a_caller_past_its_rate_is_told_when_to_come_back_while_another_is_served(rate_capped):
    redis_server, node = rate_capped
    sku = f"caller-{uuid.uuid4().hex[:8]}"
    with AdminClient(addresses=[node.address]) as admin:
        admin.put_sku(sku, 1000)
    r = redis_py.Redis.from_url(redis_server.url)
    burst_ids = [uuid.uuid4().hex for _ in range(5 * RATE)]
    async with (
        FromAddress(node.address, "127.0.0.2") as other,
        grpc.aio.insecure_channel(node.address) as greedy_channel,
        grpc.aio.insecure_channel(other.address) as polite_channel,
    ):
        greedy = stock_pb2_grpc.StockServiceStub(greedy_channel)
        polite = stock_pb2_grpc.StockServiceStub(polite_channel)
        await greedy_channel.channel_ready()
        await polite_channel.channel_ready()
        # Five seconds' worth at once: a second's worth (and what refills meanwhile) is taken, the rest refused.
        burst = dict(await asyncio.gather(*(_deduct(greedy, sku, rid) for rid in burst_ids)))
        polite_results = dict(await asyncio.gather(*(_deduct(polite, sku, uuid.uuid4().hex) for _ in range(RATE))))

    ok, refused = _split(burst)
    assert RATE <= len(ok) < len(burst_ids) and refused
    for error in refused.values():
        assert "caller 127.0.0.1" in error.message and "max_rate_per_caller" in error.message
        # When the bucket holds a token again: at most a token's time (1/RATE s) and a little jitter.
        assert 0 < error.retry_after <= 1 / RATE + RETRY_MIN_S
    polite_ok, polite_refused = _split(polite_results)
    assert len(polite_ok) == RATE and not polite_refused
    _assert_took_nothing(node, r, sku, ok | polite_ok, set(refused))


@pytest.fixture(scope="module")
def rate_capped_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, NodeProcess, bytes]]:
    """As ``rate_capped``, with auth on (HS256 bearer tokens): a caller is its identity, not its address."""
    secret = b"k" * 40
    key_file = tmp_path_factory.mktemp("caps-auth") / "hs256.secret"
    key_file.write_bytes(secret)
    auth = ["--auth", "on", "--auth-jwt-keys", str(key_file), "--auth-jwt-issuer", "caps", "--auth-jwt-audience", "fs"]
    with RedisServer() as server:
        args = ["--max-rate-per-caller", str(RATE), *auth]
        with NodeProcess(server.url, workers=1, extra_args=args) as node:
            yield server, node, secret


def _bearer(secret: bytes, sub: str, *roles: str) -> tuple[tuple[str, str]]:
    now = int(time.time())
    claims = {"sub": sub, "roles": list(roles), "iss": "caps", "aud": "fs", "iat": now, "exp": now + 600}
    return (("authorization", f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"),)


async def test_with_auth_two_gateways_behind_one_address_are_two_callers(rate_capped_with_auth):
    redis_server, node, secret = rate_capped_with_auth
    sku = f"caller-{uuid.uuid4().hex[:8]}"
    greedy_md, polite_md = _bearer(secret, "gw-greedy", "buyer"), _bearer(secret, "gw-polite", "buyer")
    async with grpc.aio.insecure_channel(node.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        await admin.PutSku(
            admin_pb2.PutSkuRequest(sku_id=sku, stock=1000, request_id=uuid.uuid4().hex),
            metadata=_bearer(secret, "ops", "operator"),
            timeout=20,
        )
        stub = stock_pb2_grpc.StockServiceStub(channel)
        # One channel, one address: the greedy gateway's burst past its rate is refused under its own name ...
        burst = dict(await asyncio.gather(*(_deduct(stub, sku, uuid.uuid4().hex, greedy_md) for _ in range(5 * RATE))))
        # ... and the other gateway, from the same address, still has its whole second's worth.
        polite = dict(await asyncio.gather(*(_deduct(stub, sku, uuid.uuid4().hex, polite_md) for _ in range(RATE))))

    ok, refused = _split(burst)
    assert RATE <= len(ok) < len(burst) and refused
    assert all("caller jwt:gw-greedy" in e.message and "max_rate_per_caller" in e.message for e in refused.values())
    polite_ok, polite_refused = _split(polite)
    assert len(polite_ok) == RATE and not polite_refused
    viewer = _bearer(secret, "ops", "viewer")[0][1].removeprefix("Bearer ")
    _assert_took_nothing(node, redis_py.Redis.from_url(redis_server.url), sku, ok | polite_ok, set(refused), viewer)
