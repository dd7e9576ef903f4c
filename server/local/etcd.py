"""Real etcd processes on loopback: one member, or a cluster of several.

Used by the test fixtures (and by anyone who wants a throwaway etcd): each
member runs Debian's ``/usr/bin/etcd`` on free 127.0.0.1 ports (client and
peer) with its data in a temporary folder, is waited for until ``/health``
says so, and is stopped again, also when the caller fails.

::

    with EtcdServer() as etcd:
        client = flashstock.lockmgr.etcd_client([etcd.endpoint])

    with EtcdCluster(size=3) as cluster:
        cluster.stop_member(0)      # lose one member; the other two keep a quorum
        cluster.start_member(0)     # it rejoins with its data

The members tick fast (50 ms heartbeat, 500 ms election timeout) so a lost
leader is replaced in about a second and etcd grants leases as short as 1 s
(its floor is 1.5 election timeouts).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flashstock.server.local.procs import (
    ProcessError,
    ServerTlsFiles,
    free_port,
    kill_family,
    pause_family,
    resume_family,
    stop_family,
)

__all__ = ["EtcdCluster", "EtcdServer", "add_etcd_user", "enable_etcd_auth", "grant_role", "etcd_binary"]


def _tls_args(tls: ServerTlsFiles) -> list[str]:
    out = ["--cert-file", tls.cert, "--key-file", tls.key]
    if tls.client_ca:
        out += ["--trusted-ca-file", tls.client_ca, "--client-cert-auth"]
    return out


async def add_etcd_user(client: Any, user: str, password: str, *, prefix: str = "", role: str = "") -> None:
    """Add etcd ``user`` (``etcdctl user add``); with ``prefix``, grant it a role with readwrite on it.

    The role is ``role`` (default ``<user>-rw``); ``prefix`` is a key prefix
    such as ``/flashstock/<cluster>/``. ``user`` ``root`` gets etcd's root role.
    """
    import aetcd.rpc

    await client.connect()
    stub = aetcd.rpc.AuthStub(client.channel)
    await stub.UserAdd(aetcd.rpc.AuthUserAddRequest(name=user, password=password))
    if user == "root":
        await stub.UserGrantRole(aetcd.rpc.AuthUserGrantRoleRequest(user=user, role="root"))
        return
    if prefix:
        role = role or f"{user}-rw"
        key = prefix.encode()
        end = key[:-1] + bytes([key[-1] + 1])
        await stub.RoleAdd(aetcd.rpc.AuthRoleAddRequest(name=role))
        permission = aetcd.rpc.Permission(permType=aetcd.rpc.Permission.READWRITE, key=key, range_end=end)
        await stub.RoleGrantPermission(aetcd.rpc.AuthRoleGrantPermissionRequest(name=role, perm=permission))
        await stub.UserGrantRole(aetcd.rpc.AuthUserGrantRoleRequest(user=user, role=role))


async def grant_role(client: Any, user: str, role: str) -> None:
    """Give etcd ``user`` the existing ``role`` (``etcdctl user grant-role``)."""
    import aetcd.rpc

    await client.connect()
    await aetcd.rpc.AuthStub(client.channel).UserGrantRole(aetcd.rpc.AuthUserGrantRoleRequest(user=user, role=role))


async def enable_etcd_auth(client: Any) -> None:
    """``etcdctl auth enable``: from now on etcd asks every caller for a user (``root`` must exist)."""
    import aetcd.rpc

    await client.connect()
    await aetcd.rpc.AuthStub(client.channel).AuthEnable(aetcd.rpc.AuthEnableRequest())


def etcd_binary() -> str:
    """The etcd server binary: ``etcd`` on the PATH, else Debian's ``/usr/bin/etcd``."""
    binary = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if binary is None:
        raise ProcessError("etcd not found: install Debian's package (apt-get install etcd-server)")
    return binary


class EtcdServer:
    """One etcd member of our own: free loopback ports, temp data folder.

    Alone (the default) it is a one-member cluster. :class:`EtcdCluster` makes
    several that know each other through ``initial_cluster``.

    :meth:`stop` ends the process but keeps the data folder, so :meth:`start`
    brings the same member back; :meth:`close` (and leaving the ``with``
    block) also removes the folder if this object made it.
    """

    def __init__(
        self,
        folder: Path | None = None,
        *,
        name: str = "etcd0",
        client_port: int | None = None,
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        cluster_token: str | None = None,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        extra_args: Sequence[str] = (),
        detach: bool = False,
        tls: ServerTlsFiles | None = None,
    ) -> None:
        self._binary = etcd_binary()
        self.tls = tls
        """The files of TLS to clients; None = plaintext."""
        self._own_folder = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="flashstock-etcd-"))
        """Holds the member's data (``data/``) and its log (``etcd.log``)."""
        self.name = name
        """The member name (``--name``)."""
        self._own_ports = client_port is None and peer_port is None and initial_cluster is None
        self.client_port = client_port or free_port()
        """The port clients connect to."""
        self.peer_port = peer_port or free_port()
        """The port the other members connect to."""
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        """``--initial-cluster``: every member's ``name=peer URL``."""
        self.cluster_token = cluster_token or f"flashstock-{os.getpid()}-{self.client_port}"
        """``--initial-cluster-token``: keeps test clusters from joining each other."""
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self._extra = list(extra_args)
        self.detach = detach
        """Start the member in a session of its own, so it outlives its starter (and its Ctrl-C)."""
        self.proc: subprocess.Popen | None = None
        self._paused = False

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<client port>``: what etcd clients are given."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        """``http://127.0.0.1:<client port>`` (``https://`` with TLS)."""
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        """``http://127.0.0.1:<peer port>``."""
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def log_path(self) -> Path:
        """The member's log file."""
        return self.folder / "etcd.log"

    def log(self) -> str:
        """The last 4,000 characters of the member's log (and of what it printed before logging started)."""
        text = ""
        for path in (self.folder / "etcd.out", self.log_path):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return text[-4000:]

    def running(self) -> bool:
        """True while the process lives (paused counts as living)."""
        return self.proc is not None and self.proc.poll() is None

    def launch(self) -> EtcdServer:
        """Start the process without waiting (a cluster member waits for its peers)."""
        if self.running():
            return self
        args = [
            self._binary,
            "--name",
            self.name,
            "--data-dir",
            str(self.folder / "data"),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-token",
            self.cluster_token,
            # Ignored once the data folder exists, so a restarted member rejoins.
            "--initial-cluster-state",
            "new",
            "--heartbeat-interval",
            str(self.heartbeat_ms),
            "--election-timeout",
            str(self.election_ms),
            "--logger",
            "zap",
            "--log-outputs",
            str(self.log_path),
            *(_tls_args(self.tls) if self.tls else ()),
            *self._extra,
        ]
        self.folder.mkdir(parents=True, exist_ok=True)
        # Flag errors come before the logger is set up: keep them too.
        with open(self.folder / "etcd.out", "ab") as out:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=self.detach
            )
        self._paused = False
        return self

    def healthy(self, timeout: float = 1.0) -> bool:
        """True when the member answers ``/health`` with ``"health": "true"`` (it has a leader)."""
        try:
            context = self.tls.context() if self.tls else None
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=timeout, context=context) as response:
                return json.loads(response.read()).get("health") == "true"
        except (OSError, ValueError, urllib.error.URLError, ssl.SSLError):
            return False

    def wait_ready(self, timeout: float = 30.0) -> EtcdServer:
        """Wait until :meth:`healthy`; raise :class:`ProcessError` (with the log) if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise ProcessError(f"etcd {self.name} exited ({code}): {self.log()}")
            if self.healthy(timeout=0.5):
                return self
            time.sleep(0.05)
        raise ProcessError(f"etcd {self.name} not healthy on {self.endpoint} within {timeout} s: {self.log()}")

    def start(self, timeout: float = 30.0) -> EtcdServer:
        """Start and wait until it is healthy; closed again (folder and all) if it does not get there.

        A member that chose its own ports tries new ones (up to three times)
        should another process take one before etcd binds it.
        """
        for attempt in range(3):
            try:
                self.launch()
                return self.wait_ready(timeout)
            except ProcessError:
                if not self._own_ports or attempt == 2:
                    self.close()
                    raise
                self.stop()
                shutil.rmtree(self.folder / "data", ignore_errors=True)  # it may name the old ports
                self.client_port, self.peer_port = free_port(), free_port()
                self.initial_cluster = f"{self.name}={self.peer_url}"
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the member (SIGKILL if it lingers); its data folder stays."""
        if self.proc is not None:
            stop_family(self.proc, timeout=timeout)  # a paused member is resumed to take the signal
        self._paused = False

    def kill(self) -> None:
        """SIGKILL the member: a crash."""
        if self.proc is not None:
            kill_family(self.proc)
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP the member: it holds its connections but answers nothing."""
        if self.running():
            assert self.proc is not None
            pause_family(self.proc.pid)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused member."""
        if self.running() and self._paused:
            assert self.proc is not None
            resume_family(self.proc.pid)
        self._paused = False

    def close(self) -> None:
        """Stop the member and remove its folder if this object made it."""
        self.stop()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class EtcdCluster:
    """``size`` etcd members on loopback that form one cluster.

    Members are numbered ``0 .. size-1``; :meth:`stop_member` and
    :meth:`start_member` lose and bring back one of them (a majority keeps
    the cluster serving). Every member is stopped, and the folders removed,
    on :meth:`close`, also when starting fails half way.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        folder: Path | None = None,
        detach: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, not {size}")
        self._own_folder = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="flashstock-etcd-cluster-"))
        """Holds one sub-folder per member (``m0`` ...)."""
        self.detach = detach
        """Start each member in a session of its own, so it outlives its starter (and its Ctrl-C)."""
        self._size, self._heartbeat_ms, self._election_ms = size, heartbeat_ms, election_ms
        self.members = self._new_members()
        """The members, in order."""

    def _new_members(self) -> list[EtcdServer]:
        # Every member's peer port is in every member's --initial-cluster:
        # the ports are chosen for all of them at once.
        size, heartbeat_ms, election_ms = self._size, self._heartbeat_ms, self._election_ms
        ports = [(free_port(), free_port()) for _ in range(size)]
        initial = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
        token = f"flashstock-{os.getpid()}-{ports[0][0]}"
        return [
            EtcdServer(
                self.folder / f"m{i}",
                name=f"m{i}",
                client_port=client,
                peer_port=peer,
                initial_cluster=initial,
                cluster_token=token,
                heartbeat_ms=heartbeat_ms,
                election_ms=election_ms,
                detach=self.detach,
            )
            for i, (client, peer) in enumerate(ports)
        ]

    @property
    def endpoints(self) -> list[str]:
        """Every member's ``127.0.0.1:<client port>``."""
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        """Start every member and wait until each is healthy (a leader is elected).

        Should a member fail to start (another process took one of its ports
        meanwhile), the whole cluster is started again on new ports, up to
        three times.
        """
        for attempt in range(3):
            try:
                for member in self.members:
                    (self.folder / member.name).mkdir(parents=True, exist_ok=True)
                    member.launch()
                # A member reports healthy only once a quorum elected a leader,
                # so all must be running before any is waited for.
                for member in self.members:
                    member.wait_ready(timeout)
                return self
            except ProcessError:
                for member in self.members:
                    with contextlib.suppress(Exception):
                        member.stop()
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder.mkdir(parents=True, exist_ok=True)
                if attempt == 2:
                    self.close()
                    raise
                self.members = self._new_members()
            except BaseException:
                self.close()
                raise
        return self

    def stop_member(self, index: int) -> EtcdServer:
        """SIGTERM one member (its data stays, so it can come back)."""
        member = self.members[index]
        member.stop()
        return member

    def start_member(self, index: int, timeout: float = 30.0) -> EtcdServer:
        """Start a stopped member again and wait until it is healthy."""
        member = self.members[index]
        member.launch()
        return member.wait_ready(timeout)

    def close(self) -> None:
        """Stop every member and remove the cluster's folder if this object made it."""
        for member in self.members:
            with contextlib.suppress(Exception):
                member.stop()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
