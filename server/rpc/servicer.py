"""The gRPC servicers: the only server module that speaks protobuf.

Each method validates its request (pure checks, no I/O), answers a sold-out
SKU from node memory where the promise allows it, makes one store call, and
turns the typed result into a reply. Errors leave through :func:`_rpc`, which
maps them with the one table in :mod:`flashstock.client.errors`: a caller
never sees a stack trace, and the node keeps serving.

Requests are decoded by :func:`add_services`, not by grpc's generated
``add_*Servicer_to_server``: bytes that are no message (bad UTF-8 in a
string, truncated, a length past the end) become a :class:`MalformedRequest`
that :func:`_rpc` answers INVALID_ARGUMENT, logged at most once per kind per
minute, instead of grpc's UNKNOWN with a traceback per request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, TypeVar, cast

import grpc
from grpc_status import rpc_status

from flashstock.client import (
    AdminResult,
    AdmissionKey,
    BatchResult,
    Deduction,
    DeductResult,
    FlashstockError,
    InvalidArgument,
    Mode,
    Outcome,
    Overloaded,
    Sku,
    SkuDefinition,
    SkuNotFound,
    to_status,
    token_problem,
)
from flashstock.server._log_gate import LogGate
from flashstock.server._logs import log_context
from flashstock.server._serving_metrics import RpcTally, WorkerFigures
from flashstock.server.ledger import AuditNote, SkuChange
from flashstock.server.rpc import validate as v
from flashstock.server.rpc.admission import Admission, RedisBreaker, caller_of
from flashstock.server.rpc.authz import Authorizer
from flashstock.server.rpc.degrade import Degrade
from flashstock.server.rpc.identity import current_caller, set_caller
from flashstock.server.store.redis import is_redis_timeout
from flashstock.server.store.salestats import SaleStats, error_outcome, sale_outcome
from flashstock.server.store.soldout import SoldOutBook
from flashstock.server.store.stock import StockStore
from flashstock.v1 import admin_pb2, admin_pb2_grpc, stock_pb2, stock_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    stock_pb2.DESCRIPTOR.services_by_name["StockService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
"""Full names of the services a node serves (for health and reflection)."""

_R = TypeVar("_R")
_E = TypeVar("_E", bound=int)


@dataclass(frozen=True)
class MalformedRequest:
    """What a request decodes to when its bytes are no message of its type."""

    message_type: str
    """The full name of the message the bytes should have been."""
    reason: str
    """What protobuf found wrong, without the message type (a bounded set of texts)."""


def _decoder(message_type: Any) -> Callable[[bytes], Any]:
    # grpc.aio answers a deserializer's exception with UNKNOWN naming its
    # class, and logs a traceback per request: return a value instead.
    def decode(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except Exception as exc:  # noqa: BLE001 - any failure to parse is the caller's bytes
            reason = str(exc).rpartition("': ")[2] or type(exc).__name__
            return MalformedRequest(message_type.DESCRIPTOR.full_name, reason[:200])

    return decode


def _service_handler(servicer: Any, service: Any, module: Any) -> grpc.GenericRpcHandler:
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, m.name),
            request_deserializer=_decoder(getattr(module, m.input_type.name)),
            response_serializer=getattr(module, m.output_type.name).SerializeToString,
        )
        for m in service.methods
    }
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def add_services(server: grpc.aio.Server, stock: StockServicer, admin: AdminServicer) -> None:
    """Serve ``stock`` and ``admin`` on ``server``, their requests decoded by :func:`_decoder`."""
    server.add_generic_rpc_handlers(
        (
            _service_handler(stock, stock_pb2.DESCRIPTOR.services_by_name["StockService"], stock_pb2),
            _service_handler(admin, admin_pb2.DESCRIPTOR.services_by_name["AdminService"], admin_pb2),
        )
    )


_malformed_log = LogGate(interval_s=60.0)


def _refuse_malformed(method: str, request: MalformedRequest) -> None:
    held_back = _malformed_log.admit((method, request.reason))
    if held_back is not None:
        log.warning(
            "malformed %s request: %s (%d more like it since the last such line)", method, request.reason, held_back
        )
    raise InvalidArgument(f"malformed request: not a {request.message_type}: {request.reason}")


_shed_log = LogGate(interval_s=10.0)


def _note_shed(refusal: Overloaded) -> None:
    # Shedding is the node working as meant, but an operator wants to know it happens: a line per 10 s.
    held_back = _shed_log.admit("shed")
    if held_back is not None:
        log.warning("shedding load: %s (%d more calls shed since the last such line)", refusal.message, held_back)


def _rpc(method: Callable[..., Awaitable[_R]]) -> Callable[..., Awaitable[_R]]:
    """Map every error a method raises to a gRPC status, in one place; count and time every call.

    (:func:`_rpc_read` for a read degraded mode answers from its snapshots.)

    The servicer names its service (``SERVICE``), holds the worker's
    figures (``figures``; None: not counted) and its admission
    (``admission``, :mod:`.admission`; None: every call is taken). A call
    past the admission's limits (the worker's, and per caller: its identity
    when auth is on, else the peer's address) is refused at once with
    :class:`~flashstock.client.Overloaded` (RESOURCE_EXHAUSTED and a
    ``RetryInfo``), before the method runs: it takes nothing, and counts as
    RESOURCE_EXHAUSTED in the figures. Likewise the servicer's ``breaker``
    (:class:`~.admission.RedisBreaker`; None: off) answers UNAVAILABLE at
    once while it is open, and learns here of every Redis timeout and every
    answered call. Counting is a few plain-int additions and a bisect
    (:class:`~flashstock.server._serving_metrics.RpcTally`), written out off
    the request path. First of all, the servicer's ``authorizer``
    (:mod:`.authz`; None: auth off, every call anonymous) decides who calls
    and sets it (:func:`~.identity.set_caller`), or refuses the call
    UNAUTHENTICATED or PERMISSION_DENIED before anything else.
    """
    return _wrapped(method, None)


def _rpc_read(
    read_key: Callable[[Any], Hashable],
) -> Callable[[Callable[..., Awaitable[_R]]], Callable[..., Awaitable[_R]]]:
    """:func:`_rpc` for a read that degraded mode answers from its snapshots under ``read_key(request)``.

    Such a read is answered even when the admission would refuse it, as long
    as the servicer's ``degrade`` (:class:`~.degrade.Degrade`) keeps a fresh
    answer for it (:meth:`~.degrade.Degrade.kept`): from memory it costs next
    to nothing. It is not counted in flight. Without such an answer it is
    refused like any other call.
    """

    def wrap(method: Callable[..., Awaitable[_R]]) -> Callable[..., Awaitable[_R]]:
        return _wrapped(method, read_key)

    return wrap


def _kept(servicer: Any, read_key: Callable[[Any], Hashable] | None, request: Any, now: float) -> bool:
    # True: the servicer's degraded mode holds a fresh answer for this read (the method will find it).
    if read_key is None or isinstance(request, MalformedRequest):
        return False
    degrade: Degrade | None = servicer.degrade
    if degrade is None:
        return False
    return degrade.kept(read_key(request), now) is not None


def _wrapped(
    method: Callable[..., Awaitable[_R]], read_key: Callable[[Any], Hashable] | None
) -> Callable[..., Awaitable[_R]]:
    name = method.__name__
    key: tuple[str, str] | None = None

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> _R:
        nonlocal key
        figures: WorkerFigures | None = self.figures
        admission: Admission | None = self.admission
        breaker: RedisBreaker | None = self.breaker
        tally: RpcTally | None = None
        if figures is not None:
            if key is None:
                key = (self.SERVICE, name)
            tally = figures.rpc(key)
        if figures is not None or admission is not None or breaker is not None:
            started = perf_counter()
        admitted = False
        caller = ""  # who the per-caller caps count the call against, when the admission has them
        code = "UNKNOWN"  # a call that leaves some other way (an abort that failed) counts as this
        try:
            try:
                authorizer: Authorizer | None = self.authorizer
                who = None if authorizer is None else authorizer.authorize(context, self.SERVICE, name)
                if who is not None:
                    set_caller(who)
                if breaker is not None:
                    refused = breaker.refusal(started)
                    if refused is not None:
                        raise refused
                if admission is not None:
                    if admission.callers is not None:
                        # A caller is its identity when auth knows it (gateways behind one address apart),
                        # else the peer's address.
                        caller = who.name if who is not None else caller_of(context.peer())
                    refusal = admission.admit(started, caller)
                    if refusal is None:
                        admitted = True
                    elif not _kept(self, read_key, request, started):
                        _note_shed(refusal)
                        raise refusal
                if isinstance(request, MalformedRequest):
                    _refuse_malformed(name, request)
                reply = await method(self, request, context)
                code = "OK"
                if breaker is not None:
                    breaker.answered()
                return reply
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except FlashstockError as err:
                if breaker is not None and is_redis_timeout(err):
                    breaker.timed_out(perf_counter())
                status = rpc_status.to_status(to_status(err))
            except Exception:
                log.exception(
                    "unexpected error in %s",
                    name,
                    extra=log_context(
                        request_id=getattr(request, "request_id", None), sku=getattr(request, "sku_id", None)
                    ),
                )
                status = rpc_status.to_status(to_status(FlashstockError("internal error; see the node's log")))
            code = status.code.name
            await context.abort(status.code, status.details, status.trailing_metadata)
            raise AssertionError("unreachable: abort raises")
        finally:
            if tally is not None or admitted:
                now = perf_counter()
                if tally is not None:
                    tally.end(code, now - started)
                if admitted:
                    cast(Admission, admission).finished(now - started, now, caller)

    return wrapper


def _stock_key(request: Any) -> Hashable:
    return ("GetStock", request.sku_id)


def _sku_key(request: Any) -> Hashable:
    return ("GetSku", request.sku_id)


def _list_key(request: Any) -> Hashable:
    return ("ListSkus", request.prefix, request.page_size or v.DEFAULT_PAGE_SIZE, request.page_token)


MOST_VIOLATIONS = 16
"""Field violations an INVALID_ARGUMENT carries at most (the message says how many there were).

A status travels in trailing metadata, which a gRPC client refuses past
8 KiB (RESOURCE_EXHAUSTED instead of our answer): a batch of 64 bad items
has 128 violations."""


def _check(violations: list) -> None:
    if violations:
        shown = violations[:MOST_VIOLATIONS]
        fields = ", ".join(sorted({x.field for x in shown}))
        if len(violations) > len(shown):
            fields += f" (the first {len(shown)} of {len(violations)} violations)"
        raise InvalidArgument(f"invalid request: {fields}", shown)


def _enum_pb(kind: type[_E], value: int) -> _E:
    # ``value`` as a member of the protobuf enum ``kind``, for the type checker only: protoc's .pyi types
    # an enum field as its enum class, which no plain int is; on the wire it is the int.
    return cast(_E, int(value))


def _deduction_pb(d: Deduction | None) -> stock_pb2.Deduction | None:
    if d is None:
        return None
    return stock_pb2.Deduction(
        request_id=d.request_id,
        sku_id=d.sku_id,
        user_id=d.user_id,
        qty=d.qty,
        state=_enum_pb(stock_pb2.DeductionState, d.state),
        expires_at_ms=d.expires_at_ms,
        taken_at_ms=d.taken_at_ms,
    )


def _sku_pb(s: Sku) -> admin_pb2.Sku:
    return admin_pb2.Sku(
        sku_id=s.sku_id,
        total=s.total,
        available=s.available,
        held=s.held,
        confirmed=s.confirmed,
        per_user_limit=s.per_user_limit,
        max_per_request=s.max_per_request,
        sale_start_ms=s.sale_start_ms,
        sale_end_ms=s.sale_end_ms,
        paused=s.paused,
        mode=_enum_pb(admin_pb2.Mode, s.mode),
        shard=s.shard,
        goal_units=s.goal_units,
        goal_sellout_ms=s.goal_sellout_ms,
        goal_buyers=s.goal_buyers,
        unit_price_minor=s.unit_price_minor,
        currency=s.currency,
        user_rate_per_s=s.user_rate_per_s,
        require_token=s.require_token,
    )


def batch_outcomes(r: BatchResult) -> list[str]:
    """The figure each item of a decided batch counts as: its own refusal, else the batch's outcome.

    An item that passed in a refused batch took nothing: it counts as the
    refusal that stopped the batch, so ``ok`` always means units taken.
    """
    batch = sale_outcome(r.outcome)
    return [sale_outcome(i.outcome) if i.outcome is not Outcome.OK else batch for i in r.items]


def batch_error_outcomes(items: list[tuple[str, int]], error: Exception) -> list[str]:
    """The figure each item counts as when the batch raised ``error``: ``qty_max`` for the item named, else error."""
    named = getattr(error, "sku", None)
    return [error_outcome(error) if sku_id == named else "error" for sku_id, _ in items]


class StockServicer(stock_pb2_grpc.StockServiceServicer):
    """``flashstock.v1.StockService``."""

    SERVICE = SERVICE_NAMES[0]
    """The service's full name (the metrics' ``grpc_service``)."""

    def __init__(
        self,
        store: StockStore,
        book: SoldOutBook,
        figures: WorkerFigures | None = None,
        stats: SaleStats | None = None,
        admission: Admission | None = None,
        breaker: RedisBreaker | None = None,
        degrade: Degrade | None = None,
        admission_keys: dict[str, AdmissionKey] | None = None,
    ) -> None:
        self._store = store
        self._book = book
        self._admission_keys = admission_keys or {}
        """The keys admission tokens are checked with, by id (the ``admission_keys`` setting)."""
        self.degrade = degrade
        """This worker's degraded mode (GetStock from a snapshot while it sheds); None: reads go to Redis."""
        self.figures = figures
        """This worker's serving figures, counted by :func:`_rpc`; None: not counted."""
        self.admission = admission
        """This worker's bound on calls in flight, applied by :func:`_rpc`; None: every call is taken."""
        self.breaker = breaker
        """This worker's fail-fast on a sick Redis, applied by :func:`_rpc`; None: calls always go to Redis."""
        self.authorizer: Authorizer | None = None
        """Who may call what (:mod:`.authz`), applied by :func:`_rpc`; None: auth off."""
        self._stats = stats
        """This worker's sale figures per SKU (:mod:`..store.salestats`); None: not counted."""

    # A sale's figures: one attempt per Deduct, Hold and BatchDeduct item, once
    # the SKU is known to exist (an invalid request or an unknown SKU counts
    # nowhere: anyone could make up SKUs), timed from the method's start.

    def _count(self, sku_id: str, user_id: str, outcome: str, units: int, started: float) -> None:
        if self._stats is not None:
            self._stats.record(sku_id, user_id, outcome, units, perf_counter() - started)

    async def _counted_take(self, request: Any, started: float, take: Awaitable[DeductResult]) -> DeductResult:
        try:
            r = await take
        except SkuNotFound:
            raise
        except Exception as exc:
            self._count(request.sku_id, request.user_id, error_outcome(exc), 0, started)
            raise
        units = request.qty if r.outcome is Outcome.OK else 0
        self._count(request.sku_id, request.user_id, sale_outcome(r.outcome), units, started)
        return r

    def _count_batch(self, user_id: str, items: list[tuple[str, int]], outcomes: list[str], started: float) -> None:
        for (sku_id, qty), outcome in zip(items, outcomes, strict=True):
            self._count(sku_id, user_id, outcome, qty if outcome == "ok" else 0, started)

    def _sold_out_reply(self, request: Any, reply_type: type) -> Any:
        # The book refuses only ids that took no unit of the SKU: a resend of
        # one that did must get its first answer, flag or no flag. A request
        # marked as a retry goes to the script anyway.
        if not request.retry and self._book.refuses(request.sku_id, request.request_id):
            return reply_type(outcome=stock_pb2.OUTCOME_SOLD_OUT, stock_left=0)
        return None

    def _token_problem(self, token: str, user_id: str, sku_id: str) -> str:
        # CPU only, here: the script learns just "valid or not", and a SKU
        # that requires a token refuses anything but valid, so a caller who
        # omits the token cannot pass. Checked after the resend lookup there:
        # a resend of an id that took units gets its first answer.
        return token_problem(token, self._admission_keys, user_id, sku_id)

    @_rpc
    async def Deduct(self, request: stock_pb2.DeductRequest, context: Any) -> stock_pb2.DeductReply:
        started = perf_counter()
        _check(v.take_violations(request.sku_id, request.user_id, request.qty, request.request_id))
        refused = self._sold_out_reply(request, stock_pb2.DeductReply)
        if refused is not None:
            self._count(request.sku_id, request.user_id, "sold_out", 0, started)
            return refused
        problem = self._token_problem(request.admission_token, request.user_id, request.sku_id)
        r = await self._counted_take(
            request,
            started,
            self._store.take(request.sku_id, request.user_id, request.qty, request.request_id, 0, problem),
        )
        return stock_pb2.DeductReply(
            outcome=_enum_pb(stock_pb2.Outcome, r.outcome),
            deduction=_deduction_pb(r.deduction),
            stock_left=r.stock_left,
            retry_after_ms=r.retry_after_ms,
        )

    @_rpc
    async def Hold(self, request: stock_pb2.HoldRequest, context: Any) -> stock_pb2.HoldReply:
        started = perf_counter()
        _check(
            v.take_violations(request.sku_id, request.user_id, request.qty, request.request_id)
            + v.hold_ttl_violations(request.ttl_ms, self._store.max_hold_ms)
        )
        refused = self._sold_out_reply(request, stock_pb2.HoldReply)
        if refused is not None:
            self._count(request.sku_id, request.user_id, "sold_out", 0, started)
            return refused
        problem = self._token_problem(request.admission_token, request.user_id, request.sku_id)
        r = await self._counted_take(
            request,
            started,
            self._store.hold(request.sku_id, request.user_id, request.qty, request.request_id, request.ttl_ms, problem),
        )
        return stock_pb2.HoldReply(
            outcome=_enum_pb(stock_pb2.Outcome, r.outcome),
            deduction=_deduction_pb(r.deduction),
            stock_left=r.stock_left,
            retry_after_ms=r.retry_after_ms,
        )

    @_rpc
    async def Confirm(self, request: stock_pb2.ConfirmRequest, context: Any) -> stock_pb2.ConfirmReply:
        _check(v.settle_violations(request.sku_id, request.hold_id, request.request_id))
        r = await self._store.settle(request.sku_id, request.hold_id, request.request_id, confirm=True)
        return stock_pb2.ConfirmReply(
            outcome=_enum_pb(stock_pb2.Outcome, r.outcome), deduction=_deduction_pb(r.deduction)
        )

    @_rpc
    async def Release(self, request: stock_pb2.ReleaseRequest, context: Any) -> stock_pb2.ReleaseReply:
        _check(v.settle_violations(request.sku_id, request.hold_id, request.request_id))
        r = await self._store.settle(request.sku_id, request.hold_id, request.request_id, confirm=False)
        return stock_pb2.ReleaseReply(
            outcome=_enum_pb(stock_pb2.Outcome, r.outcome),
            deduction=_deduction_pb(r.deduction),
            stock_left=r.stock_left,
        )

    @_rpc_read(_stock_key)
    async def GetStock(self, request: stock_pb2.GetStockRequest, context: Any) -> stock_pb2.GetStockReply:
        _check(v.id_violations("sku_id", request.sku_id))
        sku_id = request.sku_id
        if self.degrade is None:
            s = await self._store.stock_level(sku_id)
        else:
            s = await self.degrade.read(_stock_key(request), lambda: self._store.stock_level(sku_id))
        return stock_pb2.GetStockReply(
            sku_id=s.sku_id,
            total=s.total,
            available=s.available,
            held=s.held,
            confirmed=s.confirmed,
            sold_out=s.sold_out,
        )

    @_rpc
    async def BatchDeduct(self, request: stock_pb2.BatchDeductRequest, context: Any) -> stock_pb2.BatchDeductReply:
        started = perf_counter()
        items = [(item.sku_id, item.qty) for item in request.items]
        _check(v.batch_violations(request.user_id, items, request.request_id))
        if not request.retry:
            sold = [i for i, (sku_id, _) in enumerate(items) if self._book.refuses(sku_id, request.request_id)]
            if sold:
                # Only the items the book knows are counted: another item's SKU may be made up.
                known = [items[i] for i in sold]
                self._count_batch(request.user_id, known, ["sold_out"] * len(known), started)
                return stock_pb2.BatchDeductReply(
                    outcome=stock_pb2.OUTCOME_SOLD_OUT,
                    items=[
                        stock_pb2.BatchItemResult(
                            sku_id=sku_id,
                            outcome=stock_pb2.OUTCOME_SOLD_OUT if i in sold else stock_pb2.OUTCOME_OK,
                            stock_left=0 if i in sold else -1,
                        )
                        for i, (sku_id, _) in enumerate(items)
                    ],
                )
        problems = [self._token_problem(i.admission_token, request.user_id, i.sku_id) for i in request.items]
        try:
            r = await self._store.batch(request.user_id, items, request.request_id, problems)
        except SkuNotFound:
            raise
        except Exception as exc:
            self._count_batch(request.user_id, items, batch_error_outcomes(items, exc), started)
            raise
        self._count_batch(request.user_id, items, batch_outcomes(r), started)
        return stock_pb2.BatchDeductReply(
            outcome=_enum_pb(stock_pb2.Outcome, r.outcome),
            items=[
                stock_pb2.BatchItemResult(
                    sku_id=i.sku_id,
                    outcome=_enum_pb(stock_pb2.Outcome, i.outcome),
                    stock_left=i.stock_left,
                    retry_after_ms=i.retry_after_ms,
                )
                for i in r.items
            ],
            retry_after_ms=r.retry_after_ms,
        )


def _json_field(descriptor: Any, value: Any) -> Any:
    # An enum by its name (MODE_DURABLE), which a reader of the audit trail knows; a number it does not.
    if descriptor.enum_type is not None:
        named = descriptor.enum_type.values_by_number.get(value)
        return named.name if named is not None else value
    return value


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """``flashstock.v1.AdminService``."""

    SERVICE = SERVICE_NAMES[1]
    """The service's full name (the metrics' ``grpc_service``)."""

    def __init__(self, store: StockStore, figures: WorkerFigures | None = None, degrade: Degrade | None = None) -> None:
        self._store = store
        self.degrade = degrade
        """This worker's degraded mode (GetSku, ListSkus from a snapshot while it sheds); None: reads go to Redis."""
        self.figures = figures
        """This worker's serving figures, counted by :func:`_rpc`; None: not counted."""
        self.admission: Admission | None = None
        """None: operators' calls are never shed (they steer the node out of trouble)."""
        self.breaker: RedisBreaker | None = None
        """None: operators' calls always go to Redis (they are few, and wait for it)."""
        self.authorizer: Authorizer | None = None
        """Who may call what (:mod:`.authz`), applied by :func:`_rpc`; None: auth off."""

    @staticmethod
    def _note(method: str, request: Any, context: grpc.aio.ServicerContext) -> AuditNote:
        # Who and from where (the one answer, identity.py), and every field of the request: the audit trail's.
        caller = current_caller(context)
        args = {f.name: _json_field(f, getattr(request, f.name)) for f in request.DESCRIPTOR.fields}
        return AuditNote(identity=caller.name, peer=caller.peer, method=method, args=args)

    @staticmethod
    def _admin_reply(reply_type: type, r: AdminResult) -> Any:
        return reply_type(sku=_sku_pb(r.sku), duplicate=r.duplicate)

    @staticmethod
    def _log_change(r: AdminResult, request_id: str, what: str, *args: object) -> None:
        # An operator's change of a sale is worth a line (they are few); a resend changed nothing.
        fields = log_context(request_id=request_id, sku=r.sku.sku_id, shard=r.sku.shard)
        if r.duplicate:
            log.debug("SKU %s: request %s was applied before: nothing changed", r.sku.sku_id, request_id, extra=fields)
        else:
            log.info("SKU %s: " + what, r.sku.sku_id, *args, extra=fields)

    @_rpc
    async def PutSku(self, request: admin_pb2.PutSkuRequest, context: Any) -> admin_pb2.PutSkuReply:
        definition = SkuDefinition(
            sku_id=request.sku_id,
            stock=request.stock,
            per_user_limit=request.per_user_limit,
            max_per_request=request.max_per_request,
            sale_start_ms=request.sale_start_ms,
            sale_end_ms=request.sale_end_ms,
            # 0 (unspecified) is fast; any other number is refused just below.
            mode=Mode.DURABLE if request.mode == admin_pb2.MODE_DURABLE else Mode.FAST,
            goal_units=request.goal_units,
            goal_sellout_ms=request.goal_sellout_ms,
            goal_buyers=request.goal_buyers,
            unit_price_minor=request.unit_price_minor,
            currency=request.currency,
            user_rate_per_s=request.user_rate_per_s,
            require_token=request.require_token,
        )
        _check(v.put_violations(definition, request.request_id) + v.mode_violations(request.mode))
        r = await self._store.put_sku(definition, request.request_id, self._note("PutSku", request, context))
        self._log_change(r, request.request_id, "put on sale, %d units (%s)", r.sku.total, r.sku.mode.name.lower())
        return self._admin_reply(admin_pb2.PutSkuReply, r)

    @_rpc_read(_sku_key)
    async def GetSku(self, request: admin_pb2.GetSkuRequest, context: Any) -> admin_pb2.GetSkuReply:
        _check(v.id_violations("sku_id", request.sku_id))
        sku_id = request.sku_id
        if self.degrade is None:
            sku = await self._store.get_sku(sku_id)
        else:
            sku = await self.degrade.read(_sku_key(request), lambda: self._store.get_sku(sku_id))
        return admin_pb2.GetSkuReply(sku=_sku_pb(sku))

    @_rpc_read(_list_key)
    async def ListSkus(self, request: admin_pb2.ListSkusRequest, context: Any) -> admin_pb2.ListSkusReply:
        _check(v.list_violations(request.prefix, request.page_size, request.page_token))
        prefix, size, token = request.prefix, request.page_size or v.DEFAULT_PAGE_SIZE, request.page_token
        if self.degrade is None:
            page = await self._store.list_skus(prefix, size, token)
        else:
            page = await self.degrade.read(_list_key(request), lambda: self._store.list_skus(prefix, size, token))
        return admin_pb2.ListSkusReply(skus=[_sku_pb(s) for s in page.skus], next_page_token=page.next_page_token)

    @_rpc
    async def AdjustStock(self, request: admin_pb2.AdjustStockRequest, context: Any) -> admin_pb2.AdjustStockReply:
        _check(v.adjust_violations(request.sku_id, request.delta, request.request_id))
        note = self._note("AdjustStock", request, context)
        r = await self._store.change_sku(request.sku_id, SkuChange.ADJUST, request.request_id, request.delta, note)
        self._log_change(r, request.request_id, "stock adjusted by %+d, to %d units", request.delta, r.sku.total)
        return self._admin_reply(admin_pb2.AdjustStockReply, r)

    @_rpc
    async def PauseSku(self, request: admin_pb2.PauseSkuRequest, context: Any) -> admin_pb2.PauseSkuReply:
        _check(v.id_violations("sku_id", request.sku_id) + v.id_violations("request_id", request.request_id))
        note = self._note("PauseSku", request, context)
        r = await self._store.change_sku(request.sku_id, SkuChange.PAUSE, request.request_id, note=note)
        self._log_change(r, request.request_id, "sale paused")
        return self._admin_reply(admin_pb2.PauseSkuReply, r)

    @_rpc
    async def ResumeSku(self, request: admin_pb2.ResumeSkuRequest, context: Any) -> admin_pb2.PauseSkuReply:
        _check(v.id_violations("sku_id", request.sku_id) + v.id_violations("request_id", request.request_id))
        note = self._note("ResumeSku", request, context)
        r = await self._store.change_sku(request.sku_id, SkuChange.RESUME, request.request_id, note=note)
        self._log_change(r, request.request_id, "sale resumed")
        return self._admin_reply(admin_pb2.PauseSkuReply, r)


__all__ = ["SERVICE_NAMES", "AdminServicer", "MalformedRequest", "StockServicer", "add_services"]
