"""The node's one door to Redis: the clients it uses, and what their failures mean.

Every Redis client of the node is made here, from the URL and named
timeouts (:class:`RedisTimeouts`), and every Redis failure becomes an error
of flashstock's tree in one place (:func:`flashstock_error`, applied by
:class:`redis_errors` around async and blocking code alike).

A node's process has two clients, no more:

- an **asyncio client** (:func:`async_client`) on a blocking connection
  pool: requests, the pub/sub feed, the persister, the reaper, fencing. A
  pool that waits for a free connection (``pool_wait_s``) rather than
  failing at once: a burst of buyers queues for a moment instead of getting
  errors. Its connect step is the node's incarnation gate (``on_connect``):
  no connection reaches a restarted Redis before it was checked against the
  ledger.
- a **blocking client** (:func:`blocking_client`), used from threads: the
  rebuild mutex (python-redis-lock only blocks, and waits in whole seconds
  inside BLPOP, so the command timeout must outlast that wait), the
  incarnation check itself (which must not go through the gate it runs for,
  or it would wait on itself), and the reconciliation duty's reads. One such
  client serves all three: redis-py's blocking pool is thread-safe.

What does not come from this module: the CLI, the bench and the local stack
make their own clients for their own tools, and tests talk to Redis as any
stranger would.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis
import redis.asyncio
import redis.exceptions
from redis.commands.core import AsyncScript as _AsyncScript
from redis.commands.core import Script as _Script
from redis.typing import KeyT, StreamIdT  # noqa: F401 - redis-py's key and stream-id types, for annotations

from flashstock.client import FlashstockError, Unavailable

AsyncRedis = redis.asyncio.Redis
"""The asyncio client type (for annotations)."""

BlockingRedis = redis.Redis
"""The blocking client type (for annotations)."""

AsyncScript = _AsyncScript
"""A script registered on an asyncio client (run by SHA; loaded again on NOSCRIPT)."""

BlockingScript = _Script
"""A script registered on a blocking client."""

RedisError = redis.exceptions.RedisError
"""The root of redis-py's errors: for code that tries again on any failure."""

RedisAuthError = redis.exceptions.AuthenticationError
"""Redis refused the URL's user or password (Redis AUTH / ACL)."""

RedisConnectionError = redis.exceptions.ConnectionError
"""What a connection's connect step raises to fail the connection (redis-py retries or reports it)."""

NoScriptError = redis.exceptions.NoScriptError
"""Redis does not know a script's SHA (it restarted or was flushed): load the scripts again."""

ResponseError = redis.exceptions.ResponseError
"""Redis refused one command (in a pipeline read with ``raise_on_error=False``, it is a value)."""


@dataclass(frozen=True)
class RedisTimeouts:
    """How long a client waits for Redis, in seconds."""

    connect_s: float = 2.0
    """To open a connection."""
    command_s: float = 2.0
    """For a command's reply (a blocking command must return before this)."""
    pool_wait_s: float = 2.0
    """For a free connection of the asyncio pool, when all are busy."""


BLOCKING_TIMEOUTS = RedisTimeouts(connect_s=5.0, command_s=10.0)
"""The blocking client's default: long enough for a rebuild mutex's BLPOP of a few seconds."""


@dataclass(frozen=True)
class RedisTls:
    """The PEM files of a ``rediss://`` connection; empty strings are unset.

    The server's certificate is always checked (against ``ca``, else the
    system's CAs) and its name against the URL's host. The user and password
    (Redis AUTH, an ACL user) are the URL's: ``rediss://user:password@host:port/0``.
    """

    ca: str = ""
    """``redis_tls_ca``: the CA(s) that signed the Redis server's certificate; empty = the system's CAs."""
    cert: str = ""
    """``redis_tls_cert``: this side's client certificate, when Redis asks for one (``tls-auth-clients``)."""
    key: str = ""
    """``redis_tls_key``: the private key of ``cert``."""

    @property
    def given(self) -> bool:
        """True when any file is set."""
        return bool(self.ca or self.cert or self.key)

    def problems(self, url: str) -> list[str]:
        """What is wrong with these files for ``url``, each naming its setting (files are not read)."""
        if self.given and not url.startswith("rediss://"):
            return ["redis_tls_ca, redis_tls_cert, redis_tls_key: need a rediss:// redis_url (TLS)"]
        if bool(self.cert) != bool(self.key):
            return ["redis_tls_cert, redis_tls_key: give both (a client certificate and its key) or neither"]
        return []

    def kwargs(self, url: str) -> dict[str, Any]:
        """redis-py's keyword arguments for a connection to ``url`` (none for a plaintext URL)."""
        if not url.startswith("rediss://"):
            return {}
        out: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if self.ca:
            out["ssl_ca_certs"] = self.ca
        if self.cert:
            out["ssl_certfile"] = self.cert
            out["ssl_keyfile"] = self.key
        return out


NO_TLS = RedisTls()
"""No TLS files: a ``rediss://`` URL then trusts the system's CAs."""


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: what logs, printouts and errors show."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def async_client(
    url: str,
    timeouts: RedisTimeouts = RedisTimeouts(),
    *,
    pool_size: int = 256,
    on_connect: Callable[[Any], Awaitable[None]] | None = None,
    tls: RedisTls = NO_TLS,
) -> redis.asyncio.Redis:
    """An asyncio client of the Redis at ``url``, on a pool of at most ``pool_size`` connections.

    ``on_connect``: the connect step of every new connection (redis-py's
    ``redis_connect_func``); it must call ``connection.on_connect()`` first.
    ``tls``: the files of a ``rediss://`` URL. Raises ``ValueError`` for a
    URL that is not one.
    """
    return redis.asyncio.Redis(
        connection_pool=redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=timeouts.pool_wait_s,
            socket_timeout=timeouts.command_s,
            socket_connect_timeout=timeouts.connect_s,
            redis_connect_func=on_connect,
            **tls.kwargs(url),
        )
    )


def blocking_client(url: str, timeouts: RedisTimeouts = BLOCKING_TIMEOUTS, *, tls: RedisTls = NO_TLS) -> redis.Redis:
    """A blocking client of the Redis at ``url`` (replies as bytes); safe to share between threads.

    ``tls``: the files of a ``rediss://`` URL. Raises ``ValueError`` for a
    URL that is not one.
    """
    return redis.Redis.from_url(
        url, socket_timeout=timeouts.command_s, socket_connect_timeout=timeouts.connect_s, **tls.kwargs(url)
    )


# Checked in order: the first class an error is an instance of decides.
# BusyLoadingError is a ConnectionError, hence first.
_UNAVAILABLE: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str, float], ...] = (
    (redis.exceptions.BusyLoadingError, "Redis is loading its data", 0.5),
    # A failover under way: the old primary is a replica now, or the
    # replica has lost its primary. The next connection finds the new one.
    ((redis.exceptions.ReadOnlyError, redis.exceptions.MasterDownError), "Redis cannot take writes now: {}", 0.5),
    # A restarted or flushed Redis forgot the scripts; the next call loads them.
    (redis.exceptions.NoScriptError, "Redis lost its scripts: {}", 0.05),
    # OSError covers what a socket raises before redis-py wraps it.
    ((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError), "Redis is unreachable: {}", 0.2),
)


def flashstock_error(exc: BaseException, shard: int | None = None) -> FlashstockError | None:
    """The error of flashstock's tree that the Redis failure ``exc`` means; None for any other exception.

    Every failure of Redis itself (unreachable, timed out, loading, a
    failover under way, scripts forgotten) is :class:`Unavailable` with a
    retry delay: the caller sends the same request id again. Anything else
    (a script's error, a wrong type: a bug, not an outage) is not mapped,
    nor is cancellation, so it surfaces as it is.
    """
    if isinstance(exc, FlashstockError):
        return None
    for kinds, message, retry_after in _UNAVAILABLE:
        if isinstance(exc, kinds):
            return Unavailable(message.format(exc), retry_after=retry_after, shard=shard)
    return None


def is_redis_timeout(error: BaseException) -> bool:
    """True when ``error`` stands for a Redis command that did not answer within its timeout
    (an :class:`Unavailable` that :func:`flashstock_error` made of one, or the timeout itself)."""
    seen: BaseException | None = error
    for _ in range(8):  # a chain is short; a cycle must not hang the caller
        if seen is None:
            return False
        if isinstance(seen, redis.exceptions.TimeoutError):
            return True
        seen = seen.__cause__
    return False


class redis_errors:  # lower case, as contextlib.suppress: named for how the statement reads
    """Around Redis calls (``with`` or ``async with``): a Redis failure leaves as :func:`flashstock_error`'s error.

    A class, not a generator: it wraps every request, and entering it costs
    no more than a call.
    """

    __slots__ = ("_shard",)

    def __init__(self, shard: int | None = None) -> None:
        """``shard``: the shard the calls are about, carried by the error."""
        self._shard = shard

    def __enter__(self) -> redis_errors:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None:
            mapped = flashstock_error(exc, self._shard)
            if mapped is not None:
                raise mapped from exc

    async def __aenter__(self) -> redis_errors:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(kind, exc, tb)
