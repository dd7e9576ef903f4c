"""Named failpoints: each a small object that breaks one thing (``inject``) and mends it (``recover``).

A fault test reads as "sell, inject, recover, check the promises"::

    failpoint = KillRedis(stack)
    failpoint.inject()      # Redis is gone, with every byte it held
    failpoint.recover()     # an empty Redis on the same port: nodes rebuild from the ledger

Each failpoint acts on real processes (a ``redis-server``, node processes)
or, for :class:`PauseRebuilder`, on an in-process
:class:`~flashstock.server.duties.rebuild.ShardRebuilder` through its test hooks.
``inject`` returns once the fault is in place; ``recover`` once the broken
part is back (a node: serving; Redis: answering PING), not once the system
healed itself: that is what the tests check.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

import redis as redis_py

if TYPE_CHECKING:
    from conftest import FaultStack

    from flashstock.server.duties.rebuild import ShardRebuilder

__all__ = ["DropRedisConnections", "Failpoint", "FlushRedis", "KillRedis", "PauseRebuilder", "RestartNode"]


class Failpoint(Protocol):
    """A fault that can be put in place and taken away again."""

    name: str

    def inject(self) -> None:
        """Put the fault in place."""

    def recover(self) -> None:
        """Bring the broken part back (empty, restarted, released)."""


class KillRedis:
    """SIGKILL the stack's Redis (nothing is saved); recover: an EMPTY Redis on the same port."""

    name = "kill-redis"

    def __init__(self, stack: FaultStack) -> None:
        self._stack = stack
        self._port: int | None = None

    def inject(self) -> None:
        assert self._stack.redis is not None
        self._port = self._stack.redis.port
        self._stack.redis.kill()

    def recover(self) -> None:
        assert self._port is not None, "recover() before inject()"
        self._stack.start_redis(port=self._port)


class FlushRedis:
    """FLUSHALL on a running Redis: every key gone, connections kept; recover: nothing to do.

    The nodes notice on their own (a script finds its shard missing, or the
    warden's pass) and rebuild from the ledger.
    """

    name = "flush-redis"

    def __init__(self, redis_url: str) -> None:
        self._url = redis_url

    def inject(self) -> None:
        with redis_py.Redis.from_url(self._url) as client:
            client.flushall()

    def recover(self) -> None:
        pass


class DropRedisConnections:
    """CLIENT KILL every normal connection (data kept): what a network blip does to the nodes."""

    name = "drop-redis-connections"

    def __init__(self, redis_url: str) -> None:
        self._url = redis_url
        self.dropped = 0
        """Connections dropped so far."""

    def inject(self) -> None:
        with redis_py.Redis.from_url(self._url) as client:
            # SKIPME yes (the default): our own connection stays.
            self.dropped += int(client.execute_command("CLIENT", "KILL", "TYPE", "normal"))
            self.dropped += int(client.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))

    def recover(self) -> None:
        pass  # the nodes reconnect on their own


class RestartNode:
    """SIGKILL the stack's node and its workers (a crash mid-sale); recover: a new node on the
    same port, Redis and data folder (so the same ledger)."""

    name = "restart-node"

    def __init__(self, stack: FaultStack) -> None:
        self._stack = stack
        self._port: int | None = None

    def inject(self) -> None:
        node = self._stack.node
        assert node is not None
        self._port = node.port
        node.kill()

    def recover(self) -> None:
        assert self._port is not None, "recover() before inject()"
        self._stack.restart_node(port=self._port)


class PauseRebuilder:
    """Hold an in-process :class:`ShardRebuilder` after it loaded the ledger, before it installs.

    ``inject`` arms the rebuilder's ``before_install`` hook: the next rebuild
    stops there (``paused`` is set) until ``recover``. Meanwhile its rebuild
    mutex may expire and others may rebuild: a paused rebuilder must not
    overwrite them when it wakes.
    """

    name = "pause-rebuilder"

    def __init__(self, rebuilder: ShardRebuilder, longest_s: float = 60.0) -> None:
        self._rebuilder = rebuilder
        self._longest_s = longest_s
        self._released = threading.Event()
        self.paused = threading.Event()
        """Set once the rebuilder is held in ``before_install``."""

    def _hold(self, shard: int) -> None:
        self.paused.set()
        if not self._released.wait(self._longest_s):
            raise TimeoutError(f"rebuild of shard {shard} held for {self._longest_s} s: the test never released it")

    def inject(self) -> None:
        self._rebuilder.before_install = self._hold

    def recover(self) -> None:
        self._rebuilder.before_install = None
        self._released.set()
