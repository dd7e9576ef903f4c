"""Named failpoints: each a small object that breaks one thing (``inject``) and mends it (``recover``).

A fault test reads as "sell, inject, recover, check the promises"::

    failpoint = KillRedis(stack)
    failpoint.inject()      # Redis is gone, with every byte it held
    failpoint.recover()     # an empty Redis on the same port: nodes rebuild from the ledger

Each failpoint acts on real processes: those of a
:class:`~tests.helpers.stacks.FaultStack` (one Redis, the nodes of one test)
or of a :class:`~flashstock.server.local.cluster.LocalCluster` (the cluster
tests' :class:`~tests.helpers.cluster.ClusterStack`), or, for
:class:`PauseRebuilder`, on an in-process
:class:`~flashstock.server.duties.rebuild.ShardRebuilder` through its test hooks.
``inject`` returns once the fault is in place; ``recover`` once the broken
part is back (a node: serving; Redis: answering PING; etcd: healthy), not
once the system healed itself: that is what the tests check.

=====================  ====================================  ==========================================
failpoint              inject                                recover
=====================  ====================================  ==========================================
KillRedis              SIGKILL Redis                         an EMPTY Redis on the same port
FlushRedis             FLUSHALL                              (nothing)
DropRedisConnections   CLIENT KILL every connection          (nothing: the nodes reconnect)
RestartNode            SIGKILL a FaultStack's node           a new node on its port and ledger
KillNode               SIGKILL a cluster node, workers too   the node again, same id, port and data
PauseNode              SIGSTOP a cluster node (past lease)   SIGCONT
KillMainProcess        SIGKILL a node's main pid only        (nothing: its workers follow it)
LoseEtcdMember         SIGTERM one etcd member               the member again, with its data
PauseEtcd              SIGSTOP every etcd member             SIGCONT
PauseRebuilder         hold a rebuild before it installs     release it
=====================  ====================================  ==========================================
"""

from __future__ import annotations

import os
import signal
import threading
from typing import TYPE_CHECKING, Protocol

import psutil
import redis as redis_py

from flashstock.server.local.cluster import LocalCluster
from flashstock.server.local.procs import family, gone, signal_all, wait_gone

if TYPE_CHECKING:
    from flashstock.server.duties.rebuild import ShardRebuilder
    from tests.helpers.stacks import FaultStack

__all__ = [
    "DropRedisConnections",
    "Failpoint",
    "FlushRedis",
    "KillMainProcess",
    "KillNode",
    "KillRedis",
    "LoseEtcdMember",
    "PauseEtcd",
    "PauseNode",
    "PauseRebuilder",
    "RestartNode",
]


class Failpoint(Protocol):
    """A fault that can be put in place and taken away again."""

    name: str

    def inject(self) -> None:
        """Put the fault in place."""

    def recover(self) -> None:
        """Bring the broken part back (empty, restarted, released)."""


class KillRedis:
    """SIGKILL the Redis of a stack or a cluster (nothing is saved); recover: an EMPTY Redis on the same port."""

    name = "kill-redis"

    def __init__(self, target: FaultStack | LocalCluster) -> None:
        self._target = target
        self._port: int | None = None

    def inject(self) -> None:
        if isinstance(self._target, LocalCluster):
            self._target.kill_process("redis")
            return
        assert self._target.redis is not None
        self._port = self._target.redis.port
        self._target.redis.kill()

    def recover(self) -> None:
        if isinstance(self._target, LocalCluster):
            self._target.start_process("redis")  # it keeps nothing on disk: empty
            return
        assert self._port is not None, "recover() before inject()"
        self._target.start_redis(port=self._port)


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


class KillNode:
    """SIGKILL cluster node ``index`` and its workers (a crash); recover: the node again, same id, port and data."""

    name = "kill-node"

    def __init__(self, cluster: LocalCluster, index: int) -> None:
        self._cluster = cluster
        self.index = index

    def inject(self) -> None:
        self._cluster.kill(self.index)

    def recover(self) -> None:
        self._cluster.start_node(self.index)


class PauseNode:
    """SIGSTOP cluster node ``index`` and its workers: it holds its sockets, answers nothing and refreshes no
    lease, so others take its shards once its lease runs out (a long GC pause, a frozen VM); recover: SIGCONT.

    Woken, it still believes it owns its shards until it learns otherwise:
    what the epoch fence is for.
    """

    name = "pause-node"

    def __init__(self, cluster: LocalCluster, index: int) -> None:
        self._cluster = cluster
        self.index = index

    def inject(self) -> None:
        self._cluster.pause(self.index)

    def recover(self) -> None:
        self._cluster.resume(self.index)


class KillMainProcess:
    """SIGKILL a node's main process only: not its process group, not its workers (a plain ``kill -9 PID``).

    Its workers must follow it on their own; ``workers`` holds them, found
    before the kill. ``recover`` has nothing to bring back (``KillNode``
    restarts a node); it SIGKILLs any worker that broke that promise.
    """

    name = "kill-main-process"

    def __init__(self, cluster: LocalCluster, index: int) -> None:
        self._cluster = cluster
        self.index = index
        self.workers: list[psutil.Process] = []
        """The processes under the main one, found at ``inject``."""

    def inject(self) -> None:
        main, *self.workers = family(self._cluster.node_pids(self.index)[0])
        os.kill(main.pid, signal.SIGKILL)
        wait_gone([main], timeout=5)  # and reaped, if it is our child

    def still_running(self) -> list[psutil.Process]:
        """The workers that have not exited yet."""
        return [p for p in self.workers if not gone(p)]

    def recover(self) -> None:
        signal_all(self.still_running(), signal.SIGKILL)


class LoseEtcdMember:
    """Stop etcd member ``member`` of a cluster with several (``etcd-<member>``); recover: start it again."""

    name = "lose-etcd-member"

    def __init__(self, cluster: LocalCluster, member: int) -> None:
        self._cluster = cluster
        self._name = f"etcd-{member}"

    def inject(self) -> None:
        self._cluster.stop_process(self._name)

    def recover(self) -> None:
        self._cluster.start_process(self._name)


class PauseEtcd:
    """SIGSTOP every etcd member of a cluster: no answer to anything, keepalives included, and no error either
    (only a node's own deadline can tell it lost its session); recover: SIGCONT."""

    name = "pause-etcd"

    def __init__(self, cluster: LocalCluster) -> None:
        self._cluster = cluster

    def _members(self) -> list[str]:
        return [p.name for p in self._cluster.processes if p.role == "etcd"]

    def inject(self) -> None:
        for name in self._members():
            self._cluster.pause_process(name)

    def recover(self) -> None:
        for name in self._members():
            self._cluster.resume_process(name)


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
