"""The thin etcd adapter: making a client, and watching prefixes as snapshots.

The client is `aetcd <https://aetcd.readthedocs.io>`_ (etcd's v3 API over
``grpc.aio``). aetcd is imported only where a client is made, so importing
:mod:`flashstock.lockmgr` for :func:`shard_of` does not need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import aetcd

log = logging.getLogger(__name__)

T = TypeVar("T")

LEASE_NOT_FOUND = "requested lease not found"
"""What etcd says (``rpctypes.ErrLeaseNotFound``) when a request names a lease that expired or was revoked."""

_SERVICE_CONFIG = {
    # Spread calls over the members and skip the ones that are down, so
    # losing one member of three does not fail a keepalive.
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{}],
            # Right after a member is lost (or comes back) every connection
            # may be reconnecting for a moment: wait for one, within the
            # call's timeout, instead of failing at once.
            "waitForReady": True,
            # A call cut off with its member is tried on another. Safe for
            # every call lockmgr makes: each transaction is written so that
            # running it twice has the effect of running it once (a second
            # claim finds the key ours, a second init finds the count
            # stored); a repeated lease grant leaves a spare lease that
            # expires unused. At worst a repeated release or unpin reports
            # False for a key the first attempt removed.
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}

_CHANNEL_OPTIONS = {
    "grpc.service_config": json.dumps(_SERVICE_CONFIG),
    "grpc.enable_retries": 1,
    # Notice a member that stopped answering (paused, cut off) on an open
    # stream; etcd refuses pings more often than every 5 s.
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
}


@dataclass(frozen=True)
class EtcdAccess:
    """How to reach etcd beyond its address: TLS files and an etcd user; empty strings are unset.

    TLS is on when ``ca`` or ``cert`` is given (the server's certificate is
    checked against ``ca``, else the system's CAs, and its name against the
    endpoint's host). With ``user``, every call carries an etcd auth token of
    that user (etcd's ``auth enable``); etcd's roles then decide what it may
    read and write.
    """

    ca: str = ""
    """``etcd_tls_ca``: the CA(s) that signed etcd's server certificate."""
    cert: str = ""
    """``etcd_tls_cert``: the client certificate (etcd's ``--client-cert-auth``)."""
    key: str = ""
    """``etcd_tls_key``: the private key of ``cert``."""
    user: str = ""
    """``etcd_user``: the etcd user to authenticate as; empty = no etcd auth."""
    password: str = field(default="", repr=False)
    """``etcd_password``: the etcd user's password (never shown in a repr)."""

    @property
    def tls(self) -> bool:
        """True when the channel is TLS."""
        return bool(self.ca or self.cert)

    def problems(self) -> list[str]:
        """What is wrong with which settings are given, each naming its setting (files are not read)."""
        out = []
        if bool(self.cert) != bool(self.key):
            out.append("etcd_tls_cert, etcd_tls_key: give both (a client certificate and its key) or neither")
        if self.password and not self.user:
            out.append("etcd_password: needs etcd_user")
        if self.user and not self.password:
            out.append("etcd_password: etcd_user needs a password (FLASHSTOCK_ETCD_PASSWORD or a password file)")
        return out


NO_ACCESS = EtcdAccess()
"""Plaintext, no etcd user."""


def _split(endpoint: str) -> tuple[str, int]:
    endpoint = endpoint.strip().removeprefix("http://")
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"an etcd endpoint is host:port, not {endpoint!r}")
    return host, int(port)


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host.strip("[]")).version
    except ValueError:
        return None


def grpc_target(endpoints: Sequence[str] | str) -> str:
    """The gRPC target for ``endpoints`` (``host:port`` strings; ``http://`` is allowed).

    One endpoint is used as given (a DNS name may resolve to every member).
    Several must all be IPv4 (or all IPv6) addresses: gRPC's ``ipv4:``
    scheme lists them in one target. Several DNS names cannot share a
    target: give one name that resolves to every member instead.
    """
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e.strip()]
    if not endpoints:
        raise ValueError("no etcd endpoint given")
    parts = [_split(e) for e in endpoints]
    if len(parts) == 1:
        host, port = parts[0]
        return f"{host}:{port}"
    versions = {_ip_version(host) for host, _ in parts}
    if versions not in ({4}, {6}):
        raise ValueError(
            f"several etcd endpoints must all be IPv4 or all IPv6 addresses, not {list(endpoints)}: "
            "give one DNS name that resolves to every member instead"
        )
    scheme = "ipv4" if versions == {4} else "ipv6"
    return f"{scheme}:" + ",".join(f"{host}:{port}" for host, port in parts)


def etcd_client(
    endpoints: Sequence[str] | str, *, timeout: float = 5.0, access: EtcdAccess = NO_ACCESS
) -> aetcd.Client:
    """An asyncio etcd client of ``endpoints`` (``"127.0.0.1:2379"``, a list, or a comma-separated string).

    ``timeout`` bounds every unary call, in seconds. ``access``: TLS and an
    etcd user (aetcd alone dials only plaintext: ``_secure.py``). The client
    connects on first use (a wrong password fails there); close it with
    ``await client.close()`` or ``async with``.
    """
    import aetcd

    target = grpc_target(endpoints)
    # aetcd dials f"{host}:{port}"; splitting the target at its last colon
    # hands it a multi-address target unchanged.
    host, _, port = target.rpartition(":")
    options = dict(_CHANNEL_OPTIONS)
    if access == NO_ACCESS:
        # aetcd annotates timeout as int, but hands it to grpc as a deadline in (fractional) seconds.
        return aetcd.Client(host, int(port), timeout=timeout, options=options)  # type: ignore[arg-type]
    from ._secure import SecureClient

    return SecureClient(host, int(port), access, timeout=timeout, options=options)


def auth_refusal(exc: BaseException, user: str, prefix: str) -> tuple[str, str] | None:
    """Why etcd refused a caller as ``user``, when it did: ``(kind, reason)``; None for any other failure.

    ``kind`` is ``"password"`` (a wrong user or password), ``"permission"``
    (the user lacks a role on ``prefix``, the cluster's keys) or ``"no user"``
    (etcd's auth is on and no user was given).
    """
    text = " ".join(str(exc).split())
    if "authentication failed" in text:
        return "password", f"etcd refused the user {user!r}: wrong user or password ({text})"
    if "permission denied" in text:
        who = f"the etcd user {user!r}" if user else "a caller without an etcd user"
        return (
            "permission",
            f"etcd refused {who}: permission denied; it needs a role with readwrite on the prefix {prefix}",
        )
    if "user name is empty" in text or "invalid auth token" in text:
        return "no user", "etcd's auth is on: it asks for a user and its password"
    return None


def is_lease_not_found(exc: BaseException) -> bool:
    """True when etcd refused a request because its lease is gone."""
    return LEASE_NOT_FOUND in str(exc)


async def snapshots(
    client: aetcd.Client,
    prefixes: Sequence[str],
    read: Callable[[], Awaitable[tuple[T, int]]],
    *,
    retry_delay: float = 0.5,
) -> AsyncGenerator[T, None]:
    """``read()``'s value now, then again after every change under ``prefixes``.

    ``read`` returns a value and the etcd revision it was read at. The watch
    starts right after that revision, so no change is missed; a change only
    makes us read again (level-triggered), so a burst yields the latest
    state, and values equal to the last one are not yielded again. When the
    watch breaks (a member lost, history compacted), it is set up again from
    a fresh read after ``retry_delay``.

    The first read raises if etcd cannot be reached; later trouble is logged
    and retried until the caller stops iterating.
    """
    value, revision = await read()
    yield value
    changed = asyncio.Event()
    broken: list[BaseException] = []

    async def pump(watch: Any) -> None:
        try:
            async for _event in watch:
                changed.set()
            broken.append(ConnectionError("the watch stream ended"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            broken.append(exc)
        changed.set()

    while True:
        watches: list[Any] = []
        pumps: list[asyncio.Task[None]] = []
        try:
            for prefix in prefixes:
                watch = await client.watch_prefix(prefix.encode(), start_revision=revision + 1)
                watches.append(watch)
                pumps.append(asyncio.create_task(pump(watch)))
            while not broken:
                await changed.wait()
                changed.clear()
                if broken:
                    break
                new, revision = await read()
                if new != value:
                    value = new
                    yield value
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            broken.append(exc)
        finally:
            for task in pumps:
                task.cancel()
            for watch in watches:
                with contextlib.suppress(Exception):
                    await watch.cancel()
            if pumps:
                await asyncio.wait(pumps)
        log.warning("etcd watch of %s broke (%r); setting it up again", list(prefixes), broken[0])
        broken.clear()
        changed.clear()
        while True:
            await asyncio.sleep(retry_delay)
            try:
                new, revision = await read()
                break
            except Exception as exc:
                log.warning("etcd read of %s failed (%r); retrying", list(prefixes), exc)
        if new != value:
            value = new
            yield value
