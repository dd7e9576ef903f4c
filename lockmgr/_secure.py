"""An aetcd client on a channel flashstock opens: TLS, and etcd's user/password auth.

aetcd 1.0 dials only insecure channels, and authenticates once: the token
it gets lives as long as etcd's ``--auth-token-ttl`` after its last use, and
aetcd never asks for a new one. So :class:`SecureClient` opens the channel
itself (``grpc.aio.secure_channel`` with the CA and client certificate, or
an insecure one), with interceptors (one per kind of call: grpc.aio files
an interceptor object under one kind only) that add the token to every
call. When etcd answers a unary call with "invalid auth token" it
authenticates again and repeats the call once (safe: every call lockmgr
makes may run twice, see ``_client._SERVICE_CONFIG``). Streams (watches,
lease keepalives) carry the token current when they open, and a watch is
added only under a fresh one (:meth:`SecureClient.watch`).

The rest of aetcd (its stubs, transactions, watcher) is used unchanged.
Imported only where a client is made (it imports aetcd and grpc).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.watcher
import grpc
import grpc.aio

if TYPE_CHECKING:
    from ._client import EtcdAccess

_rpc: Any = aetcd.rpc  # untyped: its stubs and messages
_watcher: Any = aetcd.watcher

_AUTHENTICATE = "/etcdserverpb.Auth/Authenticate"
_WATCH = "/etcdserverpb.Watch/Watch"
WATCH_TOKEN_MAX_AGE_S = 30.0
"""A watch is created under a token at most this old (etcd's simple tokens live 300 s after their last use)."""
_INVALID_TOKEN = ("invalid auth token", "user name is empty")


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path!r}: {exc.strerror or exc}") from None


def channel_credentials(access: EtcdAccess) -> grpc.ChannelCredentials:
    """TLS credentials of ``access``: its CA (else the system's) and its client certificate, if any."""
    ca = _read(access.ca, "etcd_tls_ca") if access.ca else None
    cert = _read(access.cert, "etcd_tls_cert") if access.cert else None
    key = _read(access.key, "etcd_tls_key") if access.key else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


class _Token:
    """etcd's auth token of one user: added to every call, fetched again when etcd forgot it."""

    def __init__(self, user: str, password: str, timeout: float | None) -> None:
        self._user = user
        self._password = password
        self._timeout = timeout
        self.token = ""
        """The current token (empty until the first authentication)."""
        self.fetched_at = 0.0
        """When ``token`` was fetched (``time.monotonic()``)."""
        self.watch_token = ""
        """The token the current watch stream opened with (etcd checks it at each watch's creation)."""
        self._lock = asyncio.Lock()
        self.stub: Any = None
        """The channel's Auth stub (set once the channel is open)."""

    async def authenticate(self, stale: str = "") -> None:
        """Ask etcd for a token (once for all callers that saw ``stale`` refused)."""
        async with self._lock:
            if self.token and self.token != stale:
                return
            reply = await self.stub.Authenticate(
                _rpc.AuthenticateRequest(name=self._user, password=self._password), timeout=self._timeout
            )
            self.token = reply.token
            self.fetched_at = time.monotonic()

    def with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        """``details`` with the token in its metadata (the Authenticate call itself goes without)."""
        if details.method in (_AUTHENTICATE, _AUTHENTICATE.encode()):
            return details
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata["token"] = self.token
        return cast(grpc.aio.ClientCallDetails, details._replace(metadata=metadata))  # type: ignore[attr-defined]


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    """The token on unary calls; on "invalid auth token", a new token and the call once more.

    (grpc.aio files each interceptor object under one kind of call only: one class per kind.)
    """

    def __init__(self, token: _Token) -> None:
        self._token = token

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        token = self._token.token
        call = await continuation(self._token.with_token(client_call_details), request)
        if client_call_details.method in (_AUTHENTICATE, _AUTHENTICATE.encode()):
            return call
        if await call.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
            return call
        details = await call.details() or ""
        if any(m in details for m in _INVALID_TOKEN):
            await self._token.authenticate(stale=token)
            call = await continuation(self._token.with_token(client_call_details), request)
        return call


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    """The token on server streams (none of aetcd's calls is one today; added for completeness)."""

    def __init__(self, token: _Token) -> None:
        self._token = token

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._token.with_token(client_call_details), request)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    """The token on bidirectional streams (watches, lease keepalives) as they open."""

    def __init__(self, token: _Token) -> None:
        self._token = token

    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        if client_call_details.method in (_WATCH, _WATCH.encode()):
            self._token.watch_token = self._token.token
        return await continuation(self._token.with_token(client_call_details), request_iterator)


class SecureClient(aetcd.Client):
    """aetcd's client on a channel of :class:`EtcdAccess`: TLS and/or user/password, as given."""

    def __init__(self, host: str, port: int, access: EtcdAccess, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self._access = access
        self._token: _Token | None = None

    async def watch(self, *args: Any, **kwargs: Any) -> Any:
        """aetcd's watch, created under a fresh token.

        etcd checks a watch's token when the watch is created, on a stream
        that carries the token it opened with. So before a watch is added,
        a token older than :data:`WATCH_TOKEN_MAX_AGE_S` is fetched anew,
        and a stream opened under an older token is ended: its watches end
        with an error (their owners set them up again, as after any broken
        stream) and the next one opens a new stream under the new token.
        """
        await self.connect()
        token = self._token
        if token is not None:
            if time.monotonic() - token.fetched_at > WATCH_TOKEN_MAX_AGE_S:
                await token.authenticate(stale=token.token)
            if token.watch_token and token.watch_token != token.token:
                await self._watcher._terminate_stream(ConnectionError("etcd auth token renewed: watch again"))
        return await super().watch(*args, **kwargs)

    async def connect(self) -> None:
        """Open the channel (and authenticate, so a wrong password fails here)."""
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        self._is_connecting = True
        try:
            access = self._access
            target = f"{self._host}:{self._port}"
            self._token = token = _Token(access.user, access.password, self._timeout) if access.user else None
            interceptors = [_UnaryUnary(token), _UnaryStream(token), _StreamStream(token)] if token else None
            if access.tls:
                self.channel = grpc.aio.secure_channel(
                    target, channel_credentials(access), options=list(self._options.items()), interceptors=interceptors
                )
            else:
                self.channel = grpc.aio.insecure_channel(
                    target, options=list(self._options.items()), interceptors=interceptors
                )
            self.auth_stub = _rpc.AuthStub(self.channel)
            if token:
                token.stub = self.auth_stub
                try:
                    await token.authenticate()
                except grpc.aio.AioRpcError as exc:
                    await self.channel.close()
                    self._init_channel_attrs()  # type: ignore[no-untyped-call]
                    aetcd.exceptions._handle_exception(exc)
            self.kvstub = _rpc.KVStub(self.channel)
            self.clusterstub = _rpc.ClusterStub(self.channel)
            self.leasestub = _rpc.LeaseStub(self.channel)
            self.maintenancestub = _rpc.MaintenanceStub(self.channel)
            self._watcher = _watcher.Watcher(_rpc.WatchStub(self.channel), timeout=self._timeout, metadata=None)
            self._connected.set()
        finally:
            self._is_connecting = False
