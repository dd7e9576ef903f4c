"""Whatever a stranger sends, the node answers with a status it means, keeps serving, and keeps its log clean.

Over 10,000 requests over every RPC of StockService and AdminService, sent
concurrently through raw gRPC (bytes in, bytes out): requests that
hypothesis builds from the message descriptors (every field by its type:
huge and negative integers, unknown enum numbers, odd unicode, empty and
oversized strings, too many batch items), with ids often drawn from a small
pool so that requests meet real SKUs, holds and records; plus malformed
bytes (random, valid messages truncated or bit-flipped, bad UTF-8, a huge
length prefix). The promises:

- no answer is UNKNOWN or INTERNAL (an unmapped error, a crash);
- the node's health stays SERVING;
- a control SKU, set up before with a known state, is unchanged after;
- the node's log holds no traceback.

``FLASHSTOCK_FUZZ_SEED`` replays a run (its seed is printed on failure).
"""

from __future__ import annotations

import collections
import functools
import os
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as F
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from flashstock.server.local.procs import NodeProcess, RedisServer
from flashstock.server.rpc.validate import (
    MAX_HOLD_MS,
    MAX_ID_BYTES,
    MAX_QTY,
    MAX_STOCK,
    MAX_TIME_MS,
)
from flashstock.v1 import admin_pb2, admin_pb2_grpc, stock_pb2, stock_pb2_grpc
from tests.helpers import stacks, varint
from tests.helpers.processes import QUIET, running_node

# This module's own Redis, in place of the session's: assigned, so a test's
# parameter of the same name shadows no import.
redis_server = stacks.redis_server

REQUESTS = 10_000
"""At least this many requests per run."""
IN_FLIGHT = 128
"""Requests sent before the oldest is waited for."""
RAW_PER_ROUND = 2
"""Malformed-bytes requests per round, besides one built request per RPC."""
POOL = tuple(f"fz-{i}" for i in range(6))
"""Ids the fuzz reuses, so that puts, deductions, holds and confirms meet each other."""

SERVICES = (
    (stock_pb2, stock_pb2.DESCRIPTOR.services_by_name["StockService"]),
    (admin_pb2, admin_pb2.DESCRIPTOR.services_by_name["AdminService"]),
)
METHODS = tuple(
    (f"/{service.full_name}/{m.name}", getattr(module, m.input_type.name))
    for module, service in SERVICES
    for m in service.methods
)
ROUNDS = -(-REQUESTS // (len(METHODS) + RAW_PER_ROUND))

INT64_EDGES = (
    0, 1, -1, MAX_QTY, MAX_QTY + 1, MAX_STOCK, MAX_STOCK + 1, MAX_TIME_MS, MAX_TIME_MS + 1, MAX_HOLD_MS,
    MAX_HOLD_MS // 2, MAX_HOLD_MS // 2 + 1, 10**17, 2**53 + 1, 2**62, 2**63 - 1, -(2**63),
)  # fmt: skip
ODD_TEXT = (
    "", " ", "\x00", "a\nb", "\u2028", "\ufeff", "\U0010ffff", "é" * 64, "é" * 65, "中" * 43, "🙂" * 32,
    "x" * MAX_ID_BYTES, "x" * (MAX_ID_BYTES + 1), "fs:{s1}:k:x", "(", "[", "-", "+", "%d", "nil",
)  # fmt: skip


def wild_text() -> st.SearchStrategy[str]:
    """Any string a stranger might send: pooled ids, odd ones, random unicode, oversized ones."""
    return st.one_of(
        st.sampled_from(POOL),
        st.sampled_from(ODD_TEXT),
        st.text(st.characters(codec="utf-8"), max_size=16),
        st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(MAX_ID_BYTES - 2, 5000)),
    )


def wild(field: Any) -> st.SearchStrategy[Any]:
    """Any value of the field's type."""
    if field.type == F.TYPE_MESSAGE:
        item = message_of(field, wild=True)
        if not field.is_repeated:
            return item
        # Few items, or a batch around the most items allowed.
        return st.one_of(st.lists(item, max_size=4), st.builds(lambda x, n: [x] * n, item, st.integers(60, 70)))
    if field.type == F.TYPE_STRING:
        return wild_text()
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    if field.type == F.TYPE_INT64:
        return st.one_of(st.sampled_from(INT64_EDGES), st.integers(-3, 30), st.integers(-(2**63), 2**63 - 1))
    if field.type == F.TYPE_UINT32:
        return st.one_of(st.sampled_from((0, 1, 100, 1000, 1001, 2**32 - 1)), st.integers(0, 2**32 - 1))
    raise AssertionError(f"no strategy for {field.full_name} (type {field.type}): add one")


REQUEST_IDS = st.builds("r-{}".format, st.integers(0, 3000))
"""Request ids that now and then meet an earlier one (a retry, a reuse, a hold to confirm)."""
PLAUSIBLE_BY_NAME = {
    "sku_id": st.sampled_from(POOL),
    "user_id": st.sampled_from(("u1", "u2", "u3")),
    "request_id": REQUEST_IDS,
    "hold_id": REQUEST_IDS,
    "qty": st.integers(1, 4),
    "ttl_ms": st.sampled_from((0, 50, 300, 60_000)),
    "stock": st.integers(0, 40),
    "per_user_limit": st.integers(0, 6),
    "max_per_request": st.integers(0, 4),
    "sale_start_ms": st.sampled_from((0, 0, 1, MAX_TIME_MS - 1)),
    "sale_end_ms": st.sampled_from((0, 0, MAX_TIME_MS)),
    "delta": st.integers(-5, 5),
    "goal_units": st.integers(0, 50),
    "goal_sellout_ms": st.sampled_from((0, 0, 30_000)),
    "goal_buyers": st.integers(0, 50),
    "unit_price_minor": st.sampled_from((0, 0, 1999)),
    "currency": st.sampled_from(("", "", "EUR", "JPY", "eur")),
    "user_rate_per_s": st.sampled_from((0, 0, 0, 1, 1000)),
    "require_token": st.sampled_from((False, False, False, True)),  # mostly SKUs that deductions can reach
    "admission_token": st.sampled_from(("", "", "junk", "v1.k.9999999999999.AAAA")),
    "prefix": st.sampled_from(("", "fz", "fz-1", "zz")),
    "page_size": st.integers(0, 5),
    "page_token": st.sampled_from(("", *POOL)),
}


def plausible(field: Any) -> st.SearchStrategy[Any]:
    """A value a well-behaved caller would send, so that requests meet real SKUs, holds and records."""
    if field.type == F.TYPE_MESSAGE:
        return st.lists(message_of(field, wild=False), min_size=1, max_size=3)
    if field.type == F.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    if field.type == F.TYPE_BOOL:
        return PLAUSIBLE_BY_NAME.get(field.name, st.booleans())
    return PLAUSIBLE_BY_NAME[field.name]


def message_of(field: Any, wild: bool) -> st.SearchStrategy[Any]:
    cls = getattr(stock_pb2, field.message_type.name, None) or getattr(admin_pb2, field.message_type.name)
    return wild_message(cls) if wild else plausible_message(cls)


@functools.cache
def wild_message(cls: Any) -> st.SearchStrategy[Any]:
    """Instances of ``cls``, each field set or not, to any value of its type."""
    return st.fixed_dictionaries({}, optional={f.name: wild(f) for f in cls.DESCRIPTOR.fields}).map(
        lambda kw: cls(**kw)
    )


@functools.cache
def plausible_message(cls: Any) -> st.SearchStrategy[Any]:
    """Instances of ``cls`` with every field plausible, but at most one (often) set to any value."""
    fields = cls.DESCRIPTOR.fields
    # Built once: a strategy made inside a draw is validated on every draw.
    usual = {f.name: plausible(f) for f in fields}
    odd_value = {f.name: wild(f) for f in fields}
    odd_field = st.sampled_from([None, *(f.name for f in fields)])

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        kw = {name: draw(value) for name, value in usual.items()}
        odd = draw(odd_field)
        if odd is not None:
            kw[odd] = draw(odd_value[odd])
        return cls(**kw)

    return build()


@functools.cache
def request(cls: Any) -> st.SearchStrategy[Any]:
    """A request of type ``cls``: plausible (one field perhaps odd) or wild."""
    return st.one_of(plausible_message(cls), wild_message(cls))


def malformed(cls: Any) -> st.SearchStrategy[bytes]:
    """Bytes that are mostly not a ``cls``: random, cut short, bit-flipped, bad UTF-8, a huge length prefix."""
    serialized = request(cls).map(lambda m: m.SerializeToString()).filter(bool)
    return st.one_of(
        st.binary(max_size=64),
        st.builds(lambda b, k: b[: k % len(b)], serialized, st.integers(0, 10**6)),
        st.builds(
            lambda b, k, x: b[: k % len(b)] + bytes([b[k % len(b)] ^ x]) + b[k % len(b) + 1 :],
            serialized,
            st.integers(0, 10**6),
            st.integers(1, 255),
        ),  # fmt: skip
        st.sampled_from(
            (b"\x0a\x02\xff\xfe", b"\x0a\x03a\xc3(", b"\x0a" + varint(2**31) + b"x", b"\x0a" + varint(2**64 - 1))
        ),
        st.builds(lambda tag, junk: bytes([tag]) + junk, st.integers(0, 255), st.binary(min_size=1, max_size=16)),
    )


REQUEST_OF = {path: request(cls) for path, cls in METHODS}
MALFORMED_OF = {path: malformed(cls) for path, cls in METHODS}


class Sender:
    """Sends raw requests concurrently, at most ``IN_FLIGHT`` at once, and keeps every answer's status."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._calls = {
            path: channel.unary_unary(path, request_serializer=None, response_deserializer=None) for path, _ in METHODS
        }
        self._pending: collections.deque[tuple[str, str, bytes, Any]] = collections.deque()
        self.codes: collections.Counter[tuple[str, grpc.StatusCode]] = collections.Counter()
        self.bad: list[str] = []
        """The first few wrong answers, each with its request."""
        self.wrong = 0
        self.sent = 0

    def send(self, path: str, kind: str, data: bytes) -> None:
        while len(self._pending) >= IN_FLIGHT:
            self._settle_oldest()
        self._pending.append((path, kind, data, self._calls[path].future(data, timeout=30)))
        self.sent += 1

    def drain(self) -> None:
        while self._pending:
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        path, kind, data, future = self._pending.popleft()
        code = future.code()
        self.codes[(path.rpartition("/")[2], code)] += 1
        # RESOURCE_EXHAUSTED about metadata: our answer was too big for the client to take.
        wrong = code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL) or (
            code is grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata" in (future.details() or "")
        )
        if wrong:
            self.wrong += 1
        if wrong and len(self.bad) < 20:
            self.bad.append(f"{path} ({kind}) {data[:200]!r} -> {code.name}: {future.details()}")


@pytest.fixture(scope="module")
def node(redis_server: RedisServer) -> Iterator[NodeProcess]:
    """The only node on this module's Redis."""
    with running_node(redis_server.url, workers=1, extra_args=QUIET) as n:
        yield n


def control_state(admin: admin_pb2_grpc.AdminServiceStub, stock: stock_pb2_grpc.StockServiceStub, sku_id: str) -> tuple:
    return (
        admin.GetSku(admin_pb2.GetSkuRequest(sku_id=sku_id), timeout=10).sku,
        stock.GetStock(stock_pb2.GetStockRequest(sku_id=sku_id), timeout=10),
    )


@pytest.mark.slow  # about a minute on 2 cores: 10,000 requests and their generation
def test_ten_thousand_strange_requests_leave_the_node_serving_and_its_log_clean(node: NodeProcess) -> None:
    run_seed = int(os.environ.get("FLASHSTOCK_FUZZ_SEED") or random.randrange(2**32))
    control = f"control-{uuid.uuid4().hex}"
    with grpc.insecure_channel(node.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        stock = stock_pb2_grpc.StockServiceStub(channel)
        admin.PutSku(
            admin_pb2.PutSkuRequest(sku_id=control, stock=100, per_user_limit=5, request_id=control), timeout=10
        )
        stock.Deduct(stock_pb2.DeductRequest(sku_id=control, user_id="c", qty=2, request_id=f"{control}-d"), timeout=10)
        stock.Hold(
            stock_pb2.HoldRequest(sku_id=control, user_id="c", qty=1, request_id=f"{control}-h", ttl_ms=600_000),
            timeout=10,
        )
        before = control_state(admin, stock, control)
        assert (before[0].available, before[0].held, before[0].confirmed) == (97, 1, 2)

        sender = Sender(channel)
        started = time.monotonic()

        @seed(run_seed)
        @settings(
            max_examples=ROUNDS,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(st.data())
        def one_round(data: st.DataObject) -> None:
            for path, _ in METHODS:
                sender.send(path, "built", data.draw(REQUEST_OF[path]).SerializeToString())
            for _ in range(RAW_PER_ROUND):
                path = data.draw(st.sampled_from([p for p, _ in METHODS]))
                sender.send(path, "malformed", data.draw(MALFORMED_OF[path]))

        one_round()
        sender.drain()
        elapsed = time.monotonic() - started

        codes = ", ".join(
            f"{m} {c.name} {n}" for (m, c), n in sorted(sender.codes.items(), key=lambda x: (x[0][0], x[0][1].name))
        )
        summary = f"seed {run_seed}; {sender.sent} requests in {elapsed:.1f} s; {codes}"
        print(summary)
        assert sender.sent >= REQUESTS, summary
        assert sender.wrong == 0, "\n".join([summary, *sender.bad])
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "flashstock.v1.StockService", "flashstock.v1.AdminService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        assert control_state(admin, stock, control) == before, summary
    assert node.log_path is not None
    log = node.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 : log.index("Traceback") + 3000]
