"""An aetcd client on a channel flashstock opens: TLS, and etcd's user/password auth.

aetcd 1.0 dials only insecure channels, and authenticates once: the token
it gets lives as long as etcd's ``--auth-token-ttl`` after its last use, and
aetcd never asks for a new one. So :class:`SecureClient` opens the channel
itself (``grpc.aio.secure_channel`` with the CA and client certificate, or
an insecure one), and puts an interceptor on it that adds the token to
every call and, when etcd answers a unary call with "invalid auth token",
authenticates again and repeats the call once (safe: every call lockmgr
makes may run twice, see ``_client._SERVICE_CONFIG``). Streams (watches,
lease keepalives) get the token current when they open.

The rest of aetcd (its stubs, transactions, watcher) is used unchanged.
Imported only where a client is made (it imports aetcd and grpc).
"""

from __future__ import annotations

import asyncio
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


class _Token(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Adds etcd's auth token to every call; fetches a new one when etcd forgot it."""

    def __init__(self, user: str, password: str, timeout: float | None) -> None:
        self._user = user
        self._password = password
        self._timeout = timeout
        self._token = ""
        self._lock = asyncio.Lock()
        self.stub: Any = None
        """The channel's Auth stub (set once the channel is open)."""

    async def authenticate(self, stale: str = "") -> None:
        """Ask etcd for a token (once for all callers that saw ``stale`` refused)."""
        async with self._lock:
            if self._token and self._token != stale:
                return
            reply = await self.stub.Authenticate(
                _rpc.AuthenticateRequest(name=self._user, password=self._password), timeout=self._timeout
            )
            self._token = reply.token

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if details.method in (_AUTHENTICATE, _AUTHENTICATE.encode()):
            return details
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata["token"] = self._token
        return cast(grpc.aio.ClientCallDetails, details._replace(metadata=metadata))  # type: ignore[attr-defined]

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        token = self._token
        call = await continuation(self._with_token(client_call_details), request)
        if client_call_details.method in (_AUTHENTICATE, _AUTHENTICATE.encode()):
            return call
        if await call.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
            return call
        details = await call.details() or ""
        if any(m in details for m in _INVALID_TOKEN):
            await self.authenticate(stale=token)
            call = await continuation(self._with_token(client_call_details), request)
        return call

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request)

    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request_iterator)


class SecureClient(aetcd.Client):
    """aetcd's client on a channel of :class:`EtcdAccess`: TLS and/or user/password, as given."""

    def __init__(self, host: str, port: int, access: EtcdAccess, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self._access = access

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
            token = _Token(access.user, access.password, self._timeout) if access.user else None
            interceptors = [token] if token else None
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
