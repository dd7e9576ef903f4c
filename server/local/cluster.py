"""A flashstock cluster on one machine: etcd, Redis, N nodes and their shared ledger, in one folder.

``flashstock cluster up`` runs it, and so can tests and demos::

    with LocalCluster(tmp_path / "cluster", nodes=3) as cluster:
        client = StockClient(ClientConfig(addresses=cluster.node_addresses))
        cluster.pause(0)            # node-0 stops answering and refreshing its lease
        cluster.resume(0)
        cluster.kill(1)             # a crash: SIGKILL, workers included
        cluster.start_node(1)       # back, with the same id and port

Everything listens on 127.0.0.1, on free ports, and lives in the folder::

    cluster.json        what runs: every process (pid, command line, ports, log) and the endpoints
    etcd/               etcd's data and its own log (etcd/m<i>/ for each member, with etcd_members > 1)
    redis/              Redis's folder (no persistence: the nodes rebuild it from the ledger)
    ledger.sqlite3      --ledger sqlite: the ledger every node shares (SQLite WAL: one host)
    postgres/           --ledger postgresql: a PostgreSQL cluster, database ``flashstock``
    node-<i>/           node i's data folder
    logs/<name>.log     every process's log (links to etcd's, Redis's and PostgreSQL's own)

Each process runs in a session of its own (``start_new_session``), so it
outlives the command that started it and a Ctrl-C in that command's terminal.
:meth:`LocalCluster.down` stops exactly the recorded processes: a pid is
signalled only while its start time and command line are still the
recorded ones, so a pid the OS has since given to another program is left
alone. ``up`` on a folder whose cluster is down starts it again with its
data (the same ports when they are free): etcd keeps the shard count and
the epochs the ledger has seen, so the two stay consistent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import psutil

from flashstock.client import ClientConfig
from flashstock.lockmgr import NO_ACCESS, EtcdAccess
from flashstock.server._node import READY_LINE
from flashstock.server.local.clustertls import REDIS_USER, ClusterTls
from flashstock.server.local.etcd import EtcdCluster, EtcdServer
from flashstock.server.local.procs import (
    BOARD_READY_LINE,
    PostgresServer,
    ProcessError,
    RedisServer,
    family,
    file_reader,
    free_port,
    gone,
    kill_family,
    pause_family,
    resume_family,
    serve_argv,
    stop_family,
    wait_for_line,
)
from flashstock.server.store.redis import NO_TLS, RedisTls, masked_url

__all__ = ["ClusterProcess", "ClusterStatus", "LocalCluster", "ProcessStatus", "StopOutcome"]

T = TypeVar("T")

CLUSTER_FILE = "cluster.json"
"""The record of a local cluster, in its folder."""

LEDGER_DATABASE = "flashstock"
"""The PostgreSQL database of the ledger (``--ledger postgresql``)."""

_STOP_ORDER = ("board", "node", "redis", "etcd", "postgres")
"""Nodes first (they write to the others), then what they use."""

_STOP_TIMEOUT_S = {"board": 10.0, "node": 20.0, "redis": 10.0, "etcd": 10.0, "postgres": 30.0}
"""How long a process gets to exit after its stop signal, before SIGKILL.
A node's grace period for in-flight calls is 5 s by default."""

_STOP_SIGNAL = {
    "board": signal.SIGTERM,
    "node": signal.SIGTERM,
    "redis": signal.SIGTERM,
    "etcd": signal.SIGTERM,
    "postgres": signal.SIGINT,
}
"""SIGINT is PostgreSQL's fast shutdown; its SIGTERM would wait for every client session to end."""


@dataclass
class ClusterProcess:
    """One process of a local cluster, as ``cluster.json`` records it."""

    name: str
    """``etcd``, ``redis``, ``postgres`` or the node id (``node-0`` ...)."""
    role: str
    """``etcd``, ``redis``, ``postgres`` or ``node``."""
    pid: int
    """Its process id."""
    argv: list[str]
    """Its command line, as the OS reports it: with ``create_time``, what tells it from a reused pid."""
    create_time: float
    """When the OS started it (``psutil.Process.create_time()``, unix seconds)."""
    started_ms: int
    """When it was ready, unix ms (for people)."""
    ports: dict[str, int]
    """Its TCP ports on 127.0.0.1, by use (``client``, ``peer``, ``grpc``, ``metrics`` ...)."""
    log: str
    """Its log file."""
    address: str = ""
    """What clients are given: an endpoint, a URL or ``host:port``."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterProcess:
        """The record from its ``cluster.json`` form."""
        return cls(**data)


@dataclass(frozen=True)
class ProcessStatus:
    """How one recorded process is doing now."""

    name: str
    """The process's name in the cluster."""
    role: str
    """``etcd``, ``redis``, ``postgres`` or ``node``."""
    pid: int
    """The recorded pid."""
    state: str
    """``running``, ``paused`` (SIGSTOPped) or ``gone``."""
    address: str
    """What clients are given."""
    health: str | None = None
    """Nodes: the gRPC health check's answer (``SERVING``, ``NOT_SERVING``) or why there was none."""
    shards: int | None = None
    """Nodes: shards it owns according to etcd; None when etcd could not be read."""

    @property
    def ok(self) -> bool:
        """Running, and (a node) serving."""
        return self.state == "running" and (self.role != "node" or self.health == "SERVING")


@dataclass(frozen=True)
class ClusterStatus:
    """How a local cluster is doing now (:meth:`LocalCluster.status`)."""

    state: str
    """What ``cluster.json`` says: ``starting``, ``up`` or ``down``."""
    processes: list[ProcessStatus]
    """Every recorded process."""
    etcd_error: str | None = None
    """Why the shard owners could not be read from etcd, if they could not."""

    @property
    def ok(self) -> bool:
        """Every process running, every node serving."""
        return bool(self.processes) and all(p.ok for p in self.processes)


@dataclass(frozen=True)
class StopOutcome:
    """What :meth:`LocalCluster.down` did to one recorded process."""

    name: str
    """The process's name in the cluster."""
    pid: int
    """The recorded pid."""
    outcome: str
    """``stopped`` (exited on its signal), ``killed`` (SIGKILL after the timeout) or ``not running``
    (gone already, or the pid now belongs to another program: left alone)."""


@dataclass(frozen=True)
class _NodeSpec:
    index: int
    port: int
    metrics_port: int

    @property
    def id(self) -> str:
        return f"node-{self.index}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class _Record:
    """Everything ``cluster.json`` holds."""

    cluster: str
    shards: int
    ledger: str
    lease_ttl_s: int
    workers: int
    extra_node_args: list[str]
    state: str = "new"
    etcd_endpoint: str = ""
    redis_url: str = ""
    ledger_url: str = ""
    nodes: list[dict[str, int]] = field(default_factory=list)
    processes: list[ClusterProcess] = field(default_factory=list)
    up_ms: int = 0
    down_ms: int = 0
    etcd_members: int = 1
    node_env: dict[str, dict[str, str]] = field(default_factory=dict)
    board: bool = False
    board_port: int = 0
    tls: bool = False


# -- processes ------------------------------------------------------------------


def _now_ms() -> int:
    return int(time.time() * 1000)


def _identify(pid: int) -> tuple[list[str], float]:
    """The command line and start time the OS has for ``pid`` now."""
    proc = psutil.Process(pid)
    return proc.cmdline(), proc.create_time()


def _running(record: ClusterProcess) -> psutil.Process | None:
    """The live ``psutil.Process`` of ``record``, or None if it exited or the pid is another program's now."""
    try:
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.create_time) > 1.0:
            return None  # the pid was given to another process since
        if gone(proc) or proc.cmdline() != record.argv:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _terminate(record: ClusterProcess) -> str:
    """Stop ``record``'s process (and its children): its stop signal, then SIGKILL after the role's timeout."""
    proc = _running(record)
    if proc is None:
        return "not running"
    return stop_family(proc, _STOP_SIGNAL[record.role], _STOP_TIMEOUT_S[record.role])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the servers bind: a port whose old connections linger in TIME_WAIT is free to them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _reuse_or_new(port: int | None) -> int:
    return port if port and _port_free(port) else free_port()


def _link_log(folder: Path, name: str, target: Path) -> Path:
    """``logs/<name>.log``, a link to a log the process writes elsewhere."""
    link = folder / "logs" / f"{name}.log"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))
    return link


def _run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to the end, also when called from a running event loop (on a thread of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()  # type: ignore[arg-type]


def _node_env() -> dict[str, str]:
    # Every setting is on the command line: none of the caller's FLASHSTOCK_* (or its config file).
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("FLASHSTOCK_")}


# -- the cluster ---------------------------------------------------------------------


class LocalCluster:
    """etcd, Redis, ``nodes`` flashstock nodes and a shared ledger, on loopback, in ``folder``.

    :meth:`up` starts it and :meth:`down` stops it; as a context manager it
    does both, and also stops what it started when starting fails half way.
    :meth:`load` rebuilds the object from the folder's ``cluster.json`` (for
    ``cluster status`` / ``down`` in another process). The methods block;
    they may be called from a running event loop (its loop is not used).

    ``ledger`` is ``"sqlite"`` (one file every node opens, ``ledger.sqlite3``)
    or ``"postgresql"`` (a PostgreSQL server in the folder). ``workers`` and
    ``extra_node_args`` go to every node's ``flashstock serve``; ``cluster``
    is the cluster's name in etcd. ``etcd_members``: one etcd (``etcd``) or
    several that form one etcd cluster (``etcd-0`` ...), each node given
    every endpoint. ``node_env``: environment variables of a node's own, by
    node id (a failpoint flag for one node in a test). ``board``: also run
    ``flashstock board`` on the cluster (process ``board``, :attr:`board_url`).

    Any recorded process can be broken and mended by name (``node-1``,
    ``redis``, ``etcd``, ``etcd-0``): :meth:`kill_process`,
    :meth:`stop_process`, :meth:`pause_process`, :meth:`resume_process`,
    :meth:`start_process`.
    """

    def __init__(
        self,
        folder: str | Path,
        nodes: int = 3,
        ledger: str = "sqlite",
        shards: int = 64,
        lease_ttl_s: int = 5,
        workers: int = 1,
        extra_node_args: Sequence[str] = (),
        cluster: str = "flashstock",
        etcd_members: int = 1,
        node_env: Mapping[str, Mapping[str, str]] | None = None,
        board: bool = False,
        tls: bool = False,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"nodes must be >= 1, not {nodes}")
        if ledger not in ("sqlite", "postgresql"):
            raise ValueError(f"ledger must be 'sqlite' or 'postgresql', not {ledger!r}")
        if not 1 <= shards <= 16384:
            raise ValueError(f"shards must be 1-16384, not {shards}")
        if lease_ttl_s < 1:
            raise ValueError(f"lease_ttl_s must be >= 1, not {lease_ttl_s}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, not {workers}")
        if etcd_members < 1:
            raise ValueError(f"etcd_members must be >= 1, not {etcd_members}")
        if tls and etcd_members > 1:
            raise ValueError("tls: a cluster on TLS runs one etcd member (several on TLS are not built)")
        self.folder = Path(folder).expanduser().resolve()
        """The cluster's folder (absolute)."""
        self.size = nodes
        """How many nodes it runs."""
        self._record = _Record(
            cluster=cluster,
            shards=shards,
            ledger=ledger,
            lease_ttl_s=lease_ttl_s,
            workers=workers,
            extra_node_args=list(extra_node_args),
            etcd_members=etcd_members,
            node_env={node: dict(env) for node, env in (node_env or {}).items()},
            board=board,
            tls=tls,
        )
        self._popens: dict[int, subprocess.Popen] = {}

    # -- what it is --------------------------------------------------------------

    @classmethod
    def load(cls, folder: str | Path) -> LocalCluster:
        """The cluster recorded in ``folder``/cluster.json; ``FileNotFoundError`` if there is none."""
        path = Path(folder).expanduser().resolve() / CLUSTER_FILE
        data = json.loads(path.read_text())
        processes = [ClusterProcess.from_json(p) for p in data.pop("processes")]
        record = _Record(**data, processes=processes)
        cluster = cls(
            path.parent,
            nodes=max(1, len(record.nodes)),
            ledger=record.ledger,
            shards=record.shards,
            lease_ttl_s=record.lease_ttl_s,
            workers=record.workers,
            extra_node_args=record.extra_node_args,
            cluster=record.cluster,
            etcd_members=record.etcd_members,
            node_env=record.node_env,
            board=record.board,
            tls=record.tls,
        )
        cluster._record = record
        return cluster

    @property
    def cluster(self) -> str:
        """The cluster's name in etcd."""
        return self._record.cluster

    @property
    def shards(self) -> int:
        """The cluster's shard count."""
        return self._record.shards

    @property
    def state(self) -> str:
        """``new`` (never started), ``starting``, ``up`` or ``down``, as recorded."""
        return self._record.state

    @property
    def etcd_endpoint(self) -> str:
        """``127.0.0.1:<port>`` of etcd (``--etcd``); every member's, comma-separated, if it has several."""
        return self._record.etcd_endpoint

    @property
    def redis_url(self) -> str:
        """``redis://127.0.0.1:<port>/0``; with TLS ``rediss://flashstock:<password>@127.0.0.1:<port>/0``."""
        return self._record.redis_url

    @property
    def tls(self) -> ClusterTls | None:
        """The certificates and passwords of a cluster on TLS (``tls/``); None for a plaintext one."""
        return ClusterTls(self.folder / "tls") if self._record.tls else None

    def client_tls(self) -> dict[str, str]:
        """``ClientConfig`` fields that reach the nodes as the operator (mutual TLS); empty without TLS."""
        if self.tls is None:
            return {}
        pair = self.tls.client("operator")
        return {"tls_ca": str(self.tls.ca), "tls_cert": str(pair.cert), "tls_key": str(pair.key)}

    def operator_config(self, **settings: Any) -> ClientConfig:
        """A client of the cluster's nodes found in its etcd, as the operator (TLS and etcd user, with TLS)."""
        access = self.etcd_access()
        return ClientConfig(
            etcd=self.etcd_endpoint,
            cluster=self.cluster,
            etcd_tls_ca=access.ca,
            etcd_tls_cert=access.cert,
            etcd_tls_key=access.key,
            etcd_user=access.user,
            etcd_password=access.password,
            **self.client_tls(),  # type: ignore[arg-type]
            **settings,
        )

    def redis_tls(self) -> RedisTls:
        """The files of the operator's ``rediss://`` connection to the cluster's Redis (none without TLS)."""
        if self.tls is None:
            return NO_TLS
        pair = self.tls.client("operator")
        return RedisTls(str(self.tls.ca), str(pair.cert), str(pair.key))

    def etcd_access(self) -> EtcdAccess:
        """How the operator reaches the cluster's etcd (TLS and the etcd user ``operator``, with TLS)."""
        return self.tls.etcd_access("operator") if self.tls else NO_ACCESS

    @property
    def ledger_url(self) -> str:
        """The ledger URL every node is given (``--ledger``)."""
        return self._record.ledger_url

    @property
    def node_ids(self) -> list[str]:
        """The nodes' ids, by index: ``node-0`` ..."""
        return [self._spec(i).id for i in range(len(self._record.nodes))]

    @property
    def node_addresses(self) -> list[str]:
        """The nodes' gRPC addresses (``127.0.0.1:<port>``), by index."""
        return [self._spec(i).address for i in range(len(self._record.nodes))]

    @property
    def processes(self) -> list[ClusterProcess]:
        """Every recorded process, in start order."""
        return list(self._record.processes)

    @property
    def board_url(self) -> str:
        """The live board's page (``http://127.0.0.1:<port>/``, ``https://`` with TLS); '' when the cluster runs none.

        With auth on (:attr:`board_auth_args`) it needs a viewer's token: ``<url>?token=<JWT>`` opens it."""
        if not self._record.board:
            return ""
        return f"{'https' if self._record.tls else 'http'}://127.0.0.1:{self._record.board_port}/"

    @property
    def board_auth_args(self) -> list[str]:
        """The board's ``--auth*`` flags: the nodes' own, when ``extra_node_args`` turn auth on with
        ``--auth-jwt-keys`` (the board takes bearer tokens only); else none, and its page needs no token."""
        return board_auth_args(self._record.extra_node_args)

    @property
    def metrics_ports(self) -> list[int]:
        """The nodes' Prometheus ports on 127.0.0.1, by index."""
        return [self._spec(i).metrics_port for i in range(len(self._record.nodes))]

    def node_pids(self, i: int) -> list[int]:
        """Node ``i``'s process and every process under it (workers, duties); empty if it is not running."""
        proc = _running(self._process(self._spec(i).id))
        return [] if proc is None else [p.pid for p in family(proc)]

    # -- up and down ----------------------------------------------------------------

    def up(self) -> Self:
        """Start etcd, Redis, the ledger and the nodes; wait until each node serves.

        Refuses (``ProcessError``) a folder whose recorded cluster still runs.
        Should anything fail to start, what was started is stopped again.
        """
        previous = self._previous()
        self._refuse_if_running(previous)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "logs").mkdir(exist_ok=True)
        self._record.processes = []
        self._record.nodes = []
        self._record.state = "starting"
        if previous is not None and previous._record.tls:
            self._record.tls = True  # its etcd asks for users now: TLS it stays
        try:
            if self._record.tls:
                ClusterTls.make(self.folder)
            self._start_etcd(previous)
            self._init_cluster()
            self._start_redis(previous)
            self._start_ledger(previous)
            for i in range(self.size):
                self._start_first_node(i, previous)
            if self._record.board:
                self._start_board(previous)
        except BaseException:
            self.down()
            raise
        self._record.state = "up"
        self._record.up_ms = _now_ms()
        self._save()
        return self

    def down(self, purge: bool = False) -> list[StopOutcome]:
        """Stop every recorded process (nodes, then Redis, etcd, PostgreSQL) and mark the folder down.

        Logs and data stay unless ``purge``, which removes the folder.
        """
        outcomes = []
        for record in sorted(self._record.processes, key=self._stop_rank):
            outcomes.append(StopOutcome(record.name, record.pid, _terminate(record)))
        self._forget_popens()
        if purge:
            shutil.rmtree(self.folder, ignore_errors=True)
        elif self._record.state != "new":
            self._record.state = "down"
            self._record.down_ms = _now_ms()
            self._save()
        return outcomes

    def status(self, timeout: float = 1.0) -> ClusterStatus:
        """Each recorded process alive or not; each node's health check and shards owned (from etcd)."""
        owned, etcd_error = self._owned_shards(timeout=max(timeout, 2.0))
        statuses = []
        for record in self._record.processes:
            state = self._state_of(record)
            if record.role != "node":
                statuses.append(ProcessStatus(record.name, record.role, record.pid, state, record.address))
                continue
            health = _health(record.address, timeout, self.tls) if state == "running" else None
            shards = None if owned is None else owned.get(record.name, 0)
            statuses.append(ProcessStatus(record.name, record.role, record.pid, state, record.address, health, shards))
        return ClusterStatus(self._record.state, statuses, etcd_error)

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    # -- one node ------------------------------------------------------------------------

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` and every process under it: a crash."""
        self.kill_process(self._spec(i).id)

    def stop_node(self, i: int) -> StopOutcome:
        """Stop node ``i`` gracefully (SIGTERM; SIGKILL if it lingers)."""
        return self.stop_process(self._spec(i).id)

    def start_node(self, i: int, timeout: float = 60.0) -> ClusterProcess:
        """Start node ``i`` again (same id, port and data) and wait until it serves; refused while it runs."""
        record = self._process(self._spec(i).id)
        self._refuse_running(record)
        started = self._spawn_node(record.argv, Path(record.log), timeout)
        started.ports, started.address = record.ports, record.address
        self._replace(started)
        return started

    def pause(self, i: int) -> None:
        """SIGSTOP node ``i`` and its workers: it holds its sockets but answers nothing, refreshes no lease.

        Returns once every one of them is stopped.
        """
        self.pause_process(self._spec(i).id)

    def resume(self, i: int) -> None:
        """SIGCONT node ``i`` and its workers; returns once none of them is stopped."""
        self.resume_process(self._spec(i).id)

    # -- any process, by name -------------------------------------------------------------

    def kill_process(self, name: str) -> None:
        """SIGKILL the recorded process ``name`` and every process under it: a crash."""
        proc = _running(self._process(name))
        if proc is not None:
            kill_family(proc)

    def stop_process(self, name: str) -> StopOutcome:
        """Stop the recorded process ``name`` with its stop signal (SIGKILL if it lingers)."""
        record = self._process(name)
        return StopOutcome(record.name, record.pid, _terminate(record))

    def pause_process(self, name: str) -> None:
        """SIGSTOP the recorded process ``name`` and every process under it; returns once all are stopped."""
        proc = _running(self._process(name))
        if proc is not None:
            pause_family(proc)

    def resume_process(self, name: str) -> None:
        """SIGCONT the recorded process ``name`` and every process under it; returns once none is stopped."""
        proc = _running(self._process(name))
        if proc is not None:
            resume_family(proc)

    def start_process(self, name: str) -> ClusterProcess:
        """Start the recorded process ``name`` again, on its ports and folder, and wait until it answers.

        A node keeps its data; Redis comes back EMPTY (it keeps nothing on
        disk: the nodes rebuild it from the ledger); an etcd member keeps its
        data. Refused while the process runs.
        """
        record = self._process(name)
        if record.role == "node":
            return self.start_node(self.node_ids.index(name))
        self._refuse_running(record)
        if record.role == "redis":
            server = self._redis_server(record.ports["redis"])
            server.start()
            assert server.proc is not None
            self._popens[server.proc.pid] = server.proc
            started = self._recorded(name, "redis", server.proc.pid, record.ports, Path(record.log), record.address)
        elif record.role == "etcd":
            member = self._etcd_member(record)
            member.launch()
            assert member.proc is not None
            self._popens[member.proc.pid] = member.proc
            member.wait_ready()
            started = self._recorded(name, "etcd", member.proc.pid, record.ports, Path(record.log), record.address)
        else:
            raise ProcessError(f"{name} ({record.role}) cannot be started on its own: cluster down, then up")
        self._replace(started)
        return started

    # -- starting ----------------------------------------------------------------------

    def _previous(self) -> LocalCluster | None:
        try:
            return LocalCluster.load(self.folder)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as exc:
            raise ProcessError(f"{self.folder / CLUSTER_FILE} is not a cluster record ({exc!r}): remove it") from None

    def _refuse_if_running(self, previous: LocalCluster | None) -> None:
        if previous is None:
            return
        running = [p for p in previous.processes if _running(p) is not None]
        if running:
            names = ", ".join(f"{p.name} (pid {p.pid})" for p in running)
            raise ProcessError(
                f"a cluster is running in {self.folder}: {names}; "
                f"stop it first (flashstock cluster down --dir {self.folder})"
            )

    def _start_etcd(self, previous: LocalCluster | None) -> None:
        if self._record.etcd_members > 1:
            self._start_etcd_members(previous)
            return
        old_etcd = previous._find("etcd") if previous else None
        old = old_etcd.ports if old_etcd else {}
        reuse = bool(old) and _port_free(old["client"]) and _port_free(old["peer"])
        server = EtcdServer(
            self.folder / "etcd",
            client_port=old["client"] if reuse else None,
            peer_port=old["peer"] if reuse else None,
            detach=True,
            tls=self.tls.server_files() if self.tls else None,
        )
        server.start()
        assert server.proc is not None
        self._popens[server.proc.pid] = server.proc
        self._record.etcd_endpoint = server.endpoint
        log = _link_log(self.folder, "etcd", server.log_path)
        ports = {"client": server.client_port, "peer": server.peer_port}
        self._add(self._recorded("etcd", "etcd", server.proc.pid, ports, log, server.endpoint))

    def _start_etcd_members(self, previous: LocalCluster | None) -> None:
        """Several etcd members: new ones, or (data in the folder) the recorded ones on their ports."""
        old = [p for p in previous.processes if p.role == "etcd"] if previous else []
        if old and len(old) != self._record.etcd_members:
            raise ProcessError(
                f"the cluster in {self.folder} has {len(old)} etcd member(s), not {self._record.etcd_members}"
            )
        if old:
            busy = [p.name for p in old if not (_port_free(p.ports["client"]) and _port_free(p.ports["peer"]))]
            if busy:
                raise ProcessError(f"the ports of {', '.join(busy)} are taken: its members know each other by them")
            members = [self._etcd_member(p, old) for p in old]
            for member in members:
                member.launch()
            # A member reports healthy only once a quorum elected a leader: all run before any is waited for.
            for member in members:
                member.wait_ready()
        else:
            members = EtcdCluster(self._record.etcd_members, folder=self.folder / "etcd", detach=True).start().members
        self._record.etcd_endpoint = ",".join(m.endpoint for m in members)
        for i, member in enumerate(members):
            assert member.proc is not None
            self._popens[member.proc.pid] = member.proc
            log = _link_log(self.folder, f"etcd-{i}", member.log_path)
            ports = {"client": member.client_port, "peer": member.peer_port}
            self._add(self._recorded(f"etcd-{i}", "etcd", member.proc.pid, ports, log, member.endpoint))

    def _etcd_member(self, record: ClusterProcess, members: Sequence[ClusterProcess] = ()) -> EtcdServer:
        """The recorded etcd member ``record``, as an :class:`EtcdServer` on its folder and ports (not started)."""
        if record.name == "etcd":
            return EtcdServer(
                self.folder / "etcd",
                client_port=record.ports["client"],
                peer_port=record.ports["peer"],
                detach=True,
                tls=self.tls.server_files() if self.tls else None,
            )
        members = members or [p for p in self._record.processes if p.role == "etcd"]
        # EtcdCluster's names: m0, m1 ... in folders of those names.
        initial = ",".join(f"m{p.name.removeprefix('etcd-')}=http://127.0.0.1:{p.ports['peer']}" for p in members)
        name = f"m{record.name.removeprefix('etcd-')}"
        return EtcdServer(
            self.folder / "etcd" / name,
            name=name,
            client_port=record.ports["client"],
            peer_port=record.ports["peer"],
            initial_cluster=initial,
            detach=True,
        )

    def _init_cluster(self) -> None:
        from flashstock.lockmgr import ShardCountMismatch, etcd_client, init_cluster

        tls = self.tls
        marker = self.folder / "tls" / "etcd-auth-enabled"

        async def set_up_auth() -> None:
            assert tls is not None
            client = etcd_client(
                self.etcd_endpoint,
                timeout=10,
                access=dataclasses.replace(tls.etcd_access("root"), user="", password=""),
            )
            try:
                await tls.set_up_etcd_users(client, self.cluster)
            finally:
                await client.close()

        async def init() -> int:
            client = etcd_client(self.etcd_endpoint, timeout=10, access=self.etcd_access())
            try:
                return await init_cluster(client, self.cluster, self.shards)
            finally:
                await client.close()

        if tls is not None and not marker.exists():
            _run_async(set_up_auth)
            marker.touch()

        try:
            _run_async(init)
        except ShardCountMismatch as exc:
            raise ProcessError(
                f"the cluster in {self.folder} has shards={exc.stored} (kept in its etcd, and the ledger's epochs "
                f"with it), not {self.shards}: start it with shards={exc.stored}, or use another folder"
            ) from None

    def _start_redis(self, previous: LocalCluster | None) -> None:
        old = previous._find("redis") if previous else None
        (self.folder / "redis").mkdir(exist_ok=True)
        server = self._redis_server(_reuse_or_new(old.ports["redis"] if old else None))
        server.start()
        assert server.proc is not None
        self._popens[server.proc.pid] = server.proc
        self._record.redis_url = server.url
        log = _link_log(self.folder, "redis", server.folder / "redis.log")
        address = masked_url(server.url)
        self._add(self._recorded("redis", "redis", server.proc.pid, {"redis": server.port}, log, address))

    def _redis_server(self, port: int) -> RedisServer:
        """The cluster's Redis on ``port`` (not started): with TLS, mutual TLS only and an ACL user."""
        if self.tls is None:
            return RedisServer(self.folder / "redis", port=port, detach=True)
        user = (REDIS_USER, self.tls.redis_password)
        return RedisServer(self.folder / "redis", port=port, detach=True, tls=self.tls.server_files("node"), user=user)

    def _start_ledger(self, previous: LocalCluster | None) -> None:
        if self._record.ledger == "sqlite":
            self._record.ledger_url = f"sqlite:///{self.folder / 'ledger.sqlite3'}"
            return
        old = previous._find("postgres") if previous else None
        server = PostgresServer(
            self.folder / "postgres",
            port=_reuse_or_new(old.ports["postgres"] if old else None),
            detach=True,
            tls=self.tls.server_files() if self.tls else None,
        )
        try:
            server.start()
        except ProcessError as exc:
            hint = (
                " (as root, PostgreSQL runs as the postgres user: it must be able to enter every folder above "
                f"{self.folder})"
                if os.geteuid() == 0
                else ""
            )
            raise ProcessError(f"{exc}{hint}") from None
        pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        log = _link_log(self.folder, "postgres", server.log_path)
        address = f"127.0.0.1:{server.port}"
        self._add(self._recorded("postgres", "postgres", pid, {"postgres": server.port}, log, address))
        self._record.ledger_url = _ensure_database(server, LEDGER_DATABASE)
        if self.tls:
            self._record.ledger_url += f"?sslmode=verify-full&sslrootcert={self.tls.ca}"

    def _start_first_node(self, i: int, previous: LocalCluster | None) -> None:
        """Start node ``i`` on its previous ports if free; new ports if another program takes one first."""
        old = previous._record.nodes[i] if previous and i < len(previous._record.nodes) else {}
        for attempt in range(3):
            spec = _NodeSpec(i, _reuse_or_new(old.get("port")), _reuse_or_new(old.get("metrics_port")))
            self._set_spec(spec)
            log = self.folder / "logs" / f"{spec.id}.log"
            try:
                started = self._spawn_node(self._node_argv(spec), log)
            except ProcessError as exc:
                if attempt == 2 or "cannot bind" not in str(exc):
                    raise
                old = {}
                continue
            started.ports = {"grpc": spec.port, "metrics": spec.metrics_port}
            started.address = spec.address
            self._add(started)
            return

    def _start_board(self, previous: LocalCluster | None) -> None:
        """Start ``flashstock board`` on the cluster's etcd and Redis (its previous port if free)."""
        old = previous._record.board_port if previous else None
        self._record.board_port = _reuse_or_new(old)
        argv = [
            sys.executable,
            "-m",
            "flashstock.server",
            "board",
            *(self.tls.board_flags() + self.tls.page_flags() if self.tls else ["--redis-url", self.redis_url]),
            *self.board_auth_args,
            "--etcd",
            self.etcd_endpoint,
            "--cluster",
            self.cluster,
            "--host",
            "127.0.0.1",
            "--port",
            str(self._record.board_port),
        ]
        log = self.folder / "logs" / "board.log"
        proc = self._spawn(argv, log, "board", self._env(), 30.0, BOARD_READY_LINE)
        port = self._record.board_port
        self._add(self._recorded("board", "board", proc.pid, {"http": port}, log, f"127.0.0.1:{port}"))

    def _node_argv(self, spec: _NodeSpec) -> list[str]:
        r = self._record
        return serve_argv(
            spec.port,
            "" if self.tls else r.redis_url,  # with a password: FLASHSTOCK_REDIS_URL (self._env)
            "--etcd",
            r.etcd_endpoint,
            "--cluster",
            r.cluster,
            "--node-id",
            spec.id,
            "--shards",
            str(r.shards),
            "--lease-ttl-s",
            str(r.lease_ttl_s),
            "--workers",
            str(r.workers),
            "--data-dir",
            str(self.folder / spec.id),
            "--ledger",
            r.ledger_url,
            "--metrics-port",
            str(spec.metrics_port),
            *(self.tls.node_flags() if self.tls else ()),
            *r.extra_node_args,
        )

    def _env(self) -> dict[str, str]:
        """The environment of a node or the board: none of the caller's settings; the Redis URL with TLS."""
        env = _node_env()
        if self.tls:
            env["FLASHSTOCK_REDIS_URL"] = self.redis_url
        return env

    def _spawn_node(self, argv: list[str], log: Path, timeout: float = 60.0) -> ClusterProcess:
        """Start a node with stdout and stderr into ``log``; wait for its ready line there."""
        name = argv[argv.index("--node-id") + 1]
        proc = self._spawn(argv, log, name, {**self._env(), **self._record.node_env.get(name, {})}, timeout)
        return self._recorded(name, "node", proc.pid, {}, log, "")

    def _spawn(
        self, argv: list[str], log: Path, name: str, env: dict[str, str], timeout: float, line: str = READY_LINE
    ) -> subprocess.Popen:
        """Start ``argv`` in a session of its own, output appended to ``log``; wait for ``line`` there."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            offset = out.tell()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._popens[proc.pid] = proc
        try:
            wait_for_line(proc, file_reader(log, offset), name=name, timeout=timeout, line=line)
        except ProcessError:
            proc.wait()
            raise
        return proc

    # -- the record ------------------------------------------------------------------------

    def _recorded(
        self, name: str, role: str, pid: int, ports: dict[str, int], log: Path, address: str
    ) -> ClusterProcess:
        argv, create_time = _identify(pid)
        return ClusterProcess(name, role, pid, argv, create_time, _now_ms(), ports, str(log), address)

    def _add(self, record: ClusterProcess) -> None:
        # Saved at once: a starter killed half way leaves a record `down` can use.
        self._record.processes.append(record)
        self._save()

    def _replace(self, record: ClusterProcess) -> None:
        self._record.processes = [record if p.name == record.name else p for p in self._record.processes]
        self._save()

    def _find(self, name: str) -> ClusterProcess | None:
        return next((p for p in self._record.processes if p.name == name), None)

    def _refuse_running(self, record: ClusterProcess) -> None:
        if _running(record) is not None:
            raise ProcessError(f"{record.name} is running (pid {record.pid}): stop or kill it first")

    def _process(self, name: str) -> ClusterProcess:
        record = self._find(name)
        if record is None:
            raise ProcessError(f"{name} is not a process of the cluster in {self.folder}")
        return record

    def _spec(self, i: int) -> _NodeSpec:
        if not 0 <= i < len(self._record.nodes):
            raise IndexError(f"node index {i} is not 0-{len(self._record.nodes) - 1}")
        node = self._record.nodes[i]
        return _NodeSpec(i, node["port"], node["metrics_port"])

    def _set_spec(self, spec: _NodeSpec) -> None:
        nodes = self._record.nodes
        entry = {"port": spec.port, "metrics_port": spec.metrics_port}
        if spec.index < len(nodes):
            nodes[spec.index] = entry
        else:
            nodes.append(entry)

    def _save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = dataclasses.asdict(self._record)
        data["processes"] = [dataclasses.asdict(p) for p in self._record.processes]
        path = self.folder / CLUSTER_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        if self._record.tls:
            os.chmod(tmp, 0o600)  # it holds the Redis URL with its password
        os.replace(tmp, path)

    def _stop_rank(self, record: ClusterProcess) -> tuple[int, str]:
        return _STOP_ORDER.index(record.role), record.name

    def _forget_popens(self) -> None:
        # Reaped already (the pid is gone): let each Popen know, so none warns it still runs.
        for proc in self._popens.values():
            with contextlib.suppress(OSError):
                proc.poll()
        self._popens.clear()

    # -- status --------------------------------------------------------------------------

    def _state_of(self, record: ClusterProcess) -> str:
        proc = _running(record)
        if proc is None:
            return "gone"
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() == psutil.STATUS_STOPPED:
                return "paused"
        return "running"

    def _owned_shards(self, timeout: float) -> tuple[Counter[str] | None, str | None]:
        from flashstock.lockmgr import etcd_client, owners

        etcd = [p for p in self._record.processes if p.role == "etcd"]
        if not any(self._state_of(p) == "running" for p in etcd):
            return None, "etcd is not running"

        async def read() -> Counter[str]:
            client = etcd_client(self.etcd_endpoint, timeout=timeout, access=self.etcd_access())
            try:
                return Counter(o.node for o in (await owners(client, self.cluster)).values())
            finally:
                await client.close()

        try:
            return _run_async(read), None
        except Exception as exc:  # noqa: BLE001 - shown to the operator, not raised
            return None, f"{type(exc).__name__}: {exc}"


_BOARD_AUTH_FLAGS = (
    "--auth",
    "--auth-jwt-keys",
    "--auth-jwt-issuer",
    "--auth-jwt-audience",
    "--auth-jwt-leeway-s",
    "--auth-jwt-roles-claim",
)
"""The auth flags a node and the board share (``flashstock serve`` and ``flashstock board``)."""


def board_auth_args(node_args: Sequence[str]) -> list[str]:
    """The board's ``--auth*`` flags out of a node's flags: theirs when they turn auth on with token keys."""
    given: dict[str, str] = {}
    args = list(node_args)
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in _BOARD_AUTH_FLAGS:
            if eq:
                given[name] = value
            elif i + 1 < len(args):
                given[name] = args[i + 1]
    if given.get("--auth") != "on" or not given.get("--auth-jwt-keys"):
        return []
    return [part for name, value in given.items() for part in (name, value)]


def _health(address: str, timeout: float, tls: ClusterTls | None = None) -> str:
    """The gRPC health check's answer for the whole server (as the operator, with TLS), or why there was none."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls is None:
        channel = grpc.insecure_channel(address)
    else:
        pair = tls.client("operator")
        credentials = grpc.ssl_channel_credentials(tls.ca.read_bytes(), pair.key.read_bytes(), pair.cert.read_bytes())
        channel = grpc.secure_channel(address, credentials)
    with channel:
        # types-grpcio-health-checking leaves out the stub's methods (grpc sets them in __init__).
        check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]
        try:
            reply = check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            return f"unreachable ({exc.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _ensure_database(server: PostgresServer, name: str) -> str:
    """The URL of database ``name`` on ``server``, created if it is missing (a cluster started again keeps it)."""
    import psycopg

    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return server.database_url(name) if exists else server.create_database(name)
