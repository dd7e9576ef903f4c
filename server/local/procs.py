"""Real server processes on loopback: Redis, PostgreSQL and flashstock nodes, and the one process harness.

Used by ``flashstock demo``, ``flashstock bench``, the local cluster and
the test fixtures: each starts its process on a free 127.0.0.1 port in a
temporary folder, waits until it answers, and stops it (also when the caller
fails).

The harness, which every one of them uses to end what it started::

    family(pid)                     # the process and every process under it (a node's workers, duties)
    stop_family(proc)               # its stop signal, SIGKILL for the whole family if it lingers
    kill_family(proc)               # SIGKILL the whole family: a crash
    pause_family(pid), resume_family(pid)
    wait_for_line(proc, read, ...)  # until the process writes its ready line
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from flashstock.server._node import READY_LINE

__all__ = [
    "BOARD_READY_LINE",
    "BoardProcess",
    "NodeProcess",
    "PostgresServer",
    "ProcessError",
    "RedisServer",
    "ServerTlsFiles",
    "family",
    "file_reader",
    "free_port",
    "gone",
    "kill_family",
    "local_stack",
    "pause_family",
    "pipe_reader",
    "resume_family",
    "serve_argv",
    "signal_all",
    "stop_family",
    "wait_for_line",
    "wait_gone",
]


class ProcessError(RuntimeError):
    """A helper process could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now.

    Picked below the kernel's ephemeral range (where ``bind(0)`` would pick),
    so that the outgoing connections of other processes, which take their
    local ports from that range, do not take it before the server binds it.
    """
    low, high = 20000, 32000
    with contextlib.suppress(OSError, ValueError):
        low_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        high = min(high, low_ephemeral)
        low = min(low, high - 1000)
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- the harness: a process and every process under it ------------------------------

_CHILDREN_GRACE_S = 5.0
"""How long the processes under a stopped parent get to follow it before SIGKILL.
A node's workers notice their parent's death within a second (``_lifeline``)."""


def family(proc: psutil.Process | int) -> list[psutil.Process]:
    """A process and every process under it (a node's workers and duties process), parent first.

    Empty if the process is gone. Take it while the parent runs: once the
    parent exits, its children belong to another parent and are not found here.
    """
    try:
        parent = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _merge(*groups: Iterable[psutil.Process]) -> list[psutil.Process]:
    seen: dict[int, psutil.Process] = {}
    for group in groups:
        for proc in group:
            seen.setdefault(proc.pid, proc)
    return list(seen.values())


def _pid(proc: subprocess.Popen | psutil.Process | int) -> int:
    return proc if isinstance(proc, int) else proc.pid


def signal_all(procs: Iterable[psutil.Process], signum: int) -> None:
    """Send ``signum`` to each of ``procs`` still running (psutil refuses a pid the OS has given to another since)."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(signum)


def gone(proc: psutil.Process) -> bool:
    """True once ``proc`` exited; reaps it if it is our own child.

    A zombie counts as exited: an orphan's zombie stays until its new parent
    reaps it, and in a container that may be never.
    """
    try:
        if proc.status() != psutil.STATUS_ZOMBIE:
            return not proc.is_running()
    except psutil.NoSuchProcess:
        return True
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(proc.pid, os.WNOHANG)
    return True


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process exited (a zombie counts as exited); returns the ones still alive."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive:
        alive = [p for p in alive if not gone(p)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return alive


def _exited(proc: subprocess.Popen | psutil.Process, timeout: float) -> bool:
    """Wait up to ``timeout`` for ``proc`` to exit; True if it did.

    Our own Popen collects its exit status itself: reaped behind its back,
    its ``returncode`` would say 0 whatever the process said.
    """
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    return not wait_gone([proc], timeout)


def stop_family(
    proc: subprocess.Popen | psutil.Process | int,
    signum: int = signal.SIGTERM,
    timeout: float = 10.0,
    *,
    known: Iterable[psutil.Process] = (),
) -> str:
    """Stop a process and every process under it; returns ``stopped``, ``killed`` or ``not running``.

    ``signum`` goes to the parent only (a node forwards it to its workers);
    should the parent not exit within ``timeout``, the whole family gets
    SIGKILL. Whatever is left of the family a few seconds later (the workers
    of a parent that was killed) is killed too. ``known``: members found
    earlier (a parent killed meanwhile no longer has them under it).
    """
    pid = _pid(proc)
    members = _merge(family(proc if isinstance(proc, psutil.Process) else pid), known)
    parent = next((p for p in members if p.pid == pid), None)
    waited = proc if isinstance(proc, subprocess.Popen) else parent
    outcome = "not running"
    if parent is not None and waited is not None and not _exited(waited, 0):
        signal_all([parent], signum)
        # A SIGSTOPped process would hold the signal until resumed.
        signal_all(members, signal.SIGCONT)
        outcome = "stopped"
        if not _exited(waited, timeout):
            signal_all(members, signal.SIGKILL)
            _exited(waited, _CHILDREN_GRACE_S)
            outcome = "killed"
    leftovers = wait_gone([p for p in members if p.pid != pid], _CHILDREN_GRACE_S)
    signal_all(leftovers, signal.SIGKILL)
    wait_gone(leftovers, _CHILDREN_GRACE_S)
    if isinstance(proc, subprocess.Popen):
        _exited(proc, 1.0)  # a parent that had exited already: collect its status
    return outcome


def kill_family(proc: subprocess.Popen | psutil.Process | int, *, known: Iterable[psutil.Process] = ()) -> None:
    """SIGKILL a process and every process under it (a crash); returns once each of them exited."""
    pid = _pid(proc)
    members = _merge(family(proc if isinstance(proc, psutil.Process) else pid), known)
    signal_all(members, signal.SIGKILL)
    if isinstance(proc, subprocess.Popen):
        _exited(proc, 10.0)  # first: its status is the Popen's to collect
        members = [p for p in members if p.pid != pid]
    wait_gone(members, 10.0)


def _wait_paused(procs: Sequence[psutil.Process], paused: bool, timeout: float = 5.0) -> None:
    # Signals take a moment to land.
    def settled(proc: psutil.Process) -> bool:
        try:
            return (proc.status() == psutil.STATUS_STOPPED) == paused
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + timeout
    while not all(settled(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.01)


def pause_family(proc: psutil.Process | int) -> None:
    """SIGSTOP a process and every process under it; returns once each of them is stopped.

    They keep their sockets but answer nothing: a long GC pause, a frozen VM.
    """
    members = family(proc)
    signal_all(members, signal.SIGSTOP)
    _wait_paused(members, paused=True)


def resume_family(proc: psutil.Process | int) -> None:
    """SIGCONT a process and every process under it; returns once none of them is stopped."""
    members = list(reversed(family(proc)))  # children first: none finds its parent's pipes stalled
    signal_all(members, signal.SIGCONT)
    _wait_paused(members, paused=False)


def wait_for_line(
    proc: subprocess.Popen,
    read: Callable[[], str],
    *,
    name: str,
    timeout: float = 60.0,
    line: str = READY_LINE,
    log: Callable[[], str] | None = None,
) -> None:
    """Wait until ``read()`` (what the process wrote so far) holds ``line``.

    Raises :class:`ProcessError` with the tail of ``log()`` (default:
    ``read()``) should the process exit first, or ``timeout`` pass: then the
    process and every process under it are killed.
    """
    tail = log or read
    deadline = time.monotonic() + timeout
    while True:
        if line in read():
            return
        if proc.poll() is not None:
            raise ProcessError(f"{name} exited ({proc.returncode}) before it was ready: {tail()[-3000:]}")
        if time.monotonic() >= deadline:
            kill_family(proc)
            raise ProcessError(f"{name} not ready within {timeout} s: {tail()[-3000:]}")
        time.sleep(0.05)


def pipe_reader(proc: subprocess.Popen) -> Callable[[], str]:
    """A ``read`` for :func:`wait_for_line`: what ``proc`` wrote to its stdout pipe so far, read without blocking."""
    assert proc.stdout is not None
    stream = proc.stdout
    os.set_blocking(stream.fileno(), False)
    text = ""

    def read() -> str:
        nonlocal text
        with contextlib.suppress(ValueError):  # the pipe was closed: what was read stays
            text += (stream.read() or b"").decode(errors="replace")
        return text

    return read


def file_reader(path: Path, offset: int = 0) -> Callable[[], str]:
    """A ``read`` for :func:`wait_for_line`: what a process wrote to the file at ``path`` after ``offset``."""

    def read() -> str:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    return read


@dataclass(frozen=True)
class ServerTlsFiles:
    """The PEM files of a server of ours (Redis, etcd) serving TLS, and a client's for checking on it."""

    cert: str
    """The server's certificate (for 127.0.0.1)."""
    key: str
    """Its private key."""
    ca: str = ""
    """The CA of ``cert``: what clients trust."""
    client_ca: str = ""
    """Clients must present a certificate this CA signed (mutual TLS); empty = any client."""
    client_cert: str = ""
    """A client certificate of ``client_ca``, for our own readiness checks."""
    client_key: str = ""
    """Its private key."""

    def context(self) -> ssl.SSLContext:
        """A client context that trusts ``ca`` and presents the client certificate."""
        context = ssl.create_default_context(cafile=self.ca or None)
        if self.client_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


class RedisServer:
    """A ``redis-server`` of our own: free loopback port, temp folder, no persistence by default.

    With ``tls`` it serves only TLS on its port (``--port 0 --tls-port``),
    mutual when ``tls.client_ca`` is set; with ``user`` (name, password) an
    ACL user may do everything and the default user is switched off.
    """

    def __init__(
        self,
        folder: Path | None = None,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        *,
        detach: bool = False,
        tls: ServerTlsFiles | None = None,
        user: tuple[str, str] | None = None,
    ) -> None:
        binary = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
        )
        if binary is None:
            raise ProcessError("redis-server not found: install Debian's package (apt-get install redis-server)")
        self._binary = binary
        self._own_folder = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="flashstock-redis-"))
        self.port = port or free_port()
        self._extra = list(extra_args)
        self.detach = detach
        """Start the server in a session of its own, so it outlives its starter (and its Ctrl-C)."""
        self.tls = tls
        self.user = user
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """URL of this server: ``redis://``, or ``rediss://`` with TLS, with the ACL user and password if any."""
        auth = f"{self.user[0]}:{urllib.parse.quote(self.user[1], safe='')}@" if self.user else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def _security_args(self) -> list[str]:
        out: list[str] = []
        if self.tls:
            out += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls.cert]
            out += ["--tls-key-file", self.tls.key, "--tls-auth-clients", "yes" if self.tls.client_ca else "no"]
            out += ["--tls-ca-cert-file", self.tls.client_ca or self.tls.ca]
        if self.user:
            # An ACL file, not --user flags: a password on a command line is anyone's to read (ps).
            acl = self.folder / "users.acl"
            acl.write_text(f"user {self.user[0]} on >{self.user[1]} ~* &* +@all\nuser default off\n")
            os.chmod(acl, 0o600)
            out += ["--aclfile", str(acl)]
        return out

    def _answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
            s = self.tls.context().wrap_socket(raw, server_hostname="127.0.0.1") if self.tls else raw
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))

    def start(self) -> RedisServer:
        """Start and wait until it answers PING."""
        args = [
            self._binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            str(self.folder / "redis.log"),
            *self._extra,
            *self._security_args(),
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=self.detach,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.folder / "redis.log"
                raise ProcessError(f"redis-server exited: {log.read_text()[-2000:] if log.exists() else ''}")
            with contextlib.suppress(OSError):
                if self._answers():
                    return self
            time.sleep(0.05)
        self.stop()
        raise ProcessError(f"redis-server did not answer on port {self.port} within 15 s")

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing is saved)."""
        if self.proc is not None:
            kill_family(self.proc)

    def stop(self) -> None:
        """Stop the server and remove its folder if we made it."""
        if self.proc is not None:
            stop_family(self.proc)
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _postgres_bindir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest /usr/lib/postgresql/<major>/bin."""
    candidates = []
    if found := shutil.which("pg_ctl"):
        candidates.append(Path(found).resolve().parent)

    def major(bindir: Path) -> int:
        name = bindir.parent.name
        return int(name) if name.isdigit() else 0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


class PostgresServer:
    """A PostgreSQL server of our own: a fresh cluster in a temp folder on a free loopback port.

    ``initdb`` (trust authentication, superuser ``postgres``), then ``pg_ctl
    start`` with ``fsync=off``: for tests and demos, never for data that
    matters. PostgreSQL refuses to run as root, so as root both run as the
    ``postgres`` OS user (``runuser``), in a folder that user owns. Clients
    connect over TCP to 127.0.0.1 as ``postgres`` without a password.
    """

    def __init__(
        self,
        folder: Path | None = None,
        port: int | None = None,
        os_user: str = "postgres",
        *,
        detach: bool = False,
        tls: ServerTlsFiles | None = None,
    ) -> None:
        bindir = _postgres_bindir()
        if bindir is None:
            raise ProcessError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's package "
                "(apt-get install postgresql)"
            )
        self.bindir = bindir
        self._own_folder = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="flashstock-pg-"))
        self.data_dir = self.folder / "data"
        self.log_path = self.folder / "postgres.log"
        self.port = port or free_port()
        self._fixed_port = port is not None
        self._os_user = os_user
        self.detach = detach
        """Leave the server running when this process exits (no stop at exit): whoever started it stops it."""
        self.tls = tls
        """With files: ``ssl=on`` with its certificate (copied into the folder, owned by the server's user)."""
        self._started = False

    # -- addresses --------------------------------------------------------------

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database (for a ledger: see :meth:`create_database`)."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        """SQLAlchemy (psycopg 3) URL of database ``name`` on this server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def dsn(self, name: str = "postgres") -> str:
        """libpq connection string of database ``name`` (for psycopg.connect)."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={name} connect_timeout=10"

    # -- databases --------------------------------------------------------------

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh name unless given); returns its URL."""
        import psycopg
        from psycopg import sql

        name = name or f"flashstock_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, closing whatever connections it still has."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # -- the process ------------------------------------------------------------

    def _command(self, *args: str) -> list[str]:
        if os.geteuid() != 0:
            return list(args)
        runuser = shutil.which("runuser") or next(
            (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if Path(p).exists()), None
        )
        if runuser is None:
            raise ProcessError("PostgreSQL refuses to run as root, and runuser (util-linux) is not installed")
        return [runuser, "-u", self._os_user, "--", *args]

    def _run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        # No PG* variables of the caller's (PGDATA, PGPORT, ...): every setting is on the command line.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return subprocess.run(
            self._command(*args),
            cwd=self.folder,  # a folder the server's user may enter
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def start(self) -> PostgresServer:
        """initdb (unless the folder holds a cluster already), start, and wait until the server takes connections."""
        if not self.detach:
            atexit.register(self.stop)  # stopped at exit too, should the caller never get to it
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        if os.geteuid() == 0:
            import pwd

            try:
                user = pwd.getpwnam(self._os_user)
            except KeyError:
                raise ProcessError(
                    f"PostgreSQL refuses to run as root and there is no {self._os_user!r} OS user "
                    "(Debian's postgresql package creates it)"
                ) from None
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self.tls:
            self._copy_tls_files()
        self._pg_start()

    def _copy_tls_files(self) -> None:
        # PostgreSQL reads its key only when the server's user owns it and nobody else may read it.
        assert self.tls is not None
        for name, source in (("server.crt", self.tls.cert), ("server.key", self.tls.key)):
            target = self.folder / name
            shutil.copyfile(source, target)
            os.chmod(target, 0o600)
            if os.geteuid() == 0:
                import pwd

                user = pwd.getpwnam(self._os_user)
                os.chown(target, user.pw_uid, user.pw_gid)

    def _initdb(self) -> None:
        initdb = self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        if initdb.returncode != 0:
            raise ProcessError(f"initdb failed ({initdb.returncode}): {initdb.stdout.decode(errors='replace')[-2000:]}")

    def _pg_start(self) -> None:
        for attempt in range(3):
            options = f"-p {self.port} -k {shlex.quote(str(self.folder))} -c listen_addresses=127.0.0.1 -c fsync=off"
            if self.tls:
                crt, key = shlex.quote(str(self.folder / "server.crt")), shlex.quote(str(self.folder / "server.key"))
                options += f" -c ssl=on -c ssl_cert_file={crt} -c ssl_key_file={key}"
            started = self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            )
            if started.returncode == 0:
                self._started = True
                return
            log = self._log_tail()
            if self._fixed_port or attempt == 2 or "could not bind" not in log:
                output = started.stdout.decode(errors="replace")[-1000:]
                raise ProcessError(f"PostgreSQL did not start on port {self.port}: {output}\n{log}")
            self.port = free_port()  # someone took the port meanwhile: another one

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder if we made it."""
        # Also after a start that timed out: the pid file says whether a server runs.
        if self._started or (self.data_dir / "postmaster.pid").exists():
            pg_ctl = str(self.bindir / "pg_ctl")
            stopped = self._run(pg_ctl, "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop")
            if stopped.returncode != 0:
                self._run(pg_ctl, "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
            self._started = False
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        # Only now: a stop cut short (a test timeout in teardown) is done again at exit.
        atexit.unregister(self.stop)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_argv(port: int, redis_url: str, *settings: str) -> list[str]:
    """The command line of a node serving on ``127.0.0.1:<port>`` with ``redis_url``, then ``settings`` (flags).

    An empty ``redis_url`` is left out (the node reads ``FLASHSTOCK_REDIS_URL``:
    a URL with a password stays off the command line).
    """
    redis = ["--redis-url", redis_url] if redis_url else []
    return [
        sys.executable,
        "-m",
        "flashstock.server",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *redis,
        *settings,
    ]


class NodeProcess:
    """A ``flashstock serve`` process on a free loopback port."""

    def __init__(
        self,
        redis_url: str,
        *,
        workers: int = 1,
        shards: int = 64,
        extra_args: Sequence[str] = (),
        env: dict | None = None,
        data_dir: Path | None = None,
        ledger: str | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.workers = workers
        self.shards = shards
        self._own_data_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="flashstock-data-"))
        """The node's data folder (its embedded SQLite ledger unless ``ledger`` is given)."""
        self.ledger = ledger
        """The ledger URL given to the node (None: the embedded SQLite file)."""
        self.port = free_port()
        self._extra = list(extra_args)
        self._env = env
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._family: list[psutil.Process] = []

    @property
    def address(self) -> str:
        """host:port of the node."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> NodeProcess:
        """Start the node and wait for its ready line."""
        fd, log_name = tempfile.mkstemp(prefix="flashstock-node-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        args = serve_argv(
            self.port,
            self.redis_url,
            "--workers",
            str(self.workers),
            "--shards",
            str(self.shards),
            "--data-dir",
            str(self.data_dir),
            *(("--ledger", self.ledger) if self.ledger else ()),
            *self._extra,
        )
        env = {**os.environ, **(self._env or {})}
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file, env=env
            )
        try:
            wait_for_line(self.proc, pipe_reader(self.proc), name="flashstock node", timeout=timeout, log=self.log)
        except ProcessError:
            self.stop()
            self.remove_data()
            with contextlib.suppress(OSError):
                self.log_path.unlink()
            raise
        # Taken now, while the node runs: a parent killed later no longer has them under it.
        self._family = family(self.proc.pid)
        return self

    def log(self) -> str:
        """What the node wrote to stderr so far (the last 4,000 characters)."""
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""

    @property
    def pid(self) -> int:
        """The node's (parent) process id."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def ledger_url(self) -> str:
        """The ledger the node writes."""
        from flashstock.server.ledger import sqlite_url

        return self.ledger or sqlite_url(self.data_dir)

    def stop(self) -> None:
        """SIGTERM the node (graceful; it passes the signal on to its workers), SIGKILL if it lingers.

        Returns once the node and every worker it forked exited.
        """
        if self.proc is not None:
            stop_family(self.proc, timeout=15, known=self._family)
            if self.proc.stdout:
                self.proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL the node and its workers (a crash)."""
        if self.proc is not None:
            kill_family(self.proc, known=self._family)

    def pause(self) -> None:
        """SIGSTOP the node and its workers: they hold their sockets but answer nothing, refresh no lease."""
        if self.proc is not None and self.proc.poll() is None:
            pause_family(self.proc.pid)

    def resume(self) -> None:
        """SIGCONT the node and its workers."""
        if self.proc is not None and self.proc.poll() is None:
            resume_family(self.proc.pid)

    def remove_data(self) -> None:
        """Remove the data folder if this object made it."""
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> NodeProcess:
        return self.start()

    def close(self) -> None:
        """Stop the node and its workers; remove its log, and its data folder if this object made it."""
        self.stop()
        self.remove_data()
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


BOARD_READY_LINE = "flashstock board on"
"""What ``flashstock board`` prints, with the page's address, once it serves (tests and scripts wait for it)."""


class BoardProcess:
    """A ``flashstock board`` process on a free loopback port: the live board of a sale, in a browser.

    ``extra_args`` go to ``flashstock board`` as they are (``--page-tls-cert``, ``--auth`` ...)."""

    def __init__(
        self,
        redis_url: str,
        *,
        etcd: str = "",
        cluster: str = "",
        nodes: Sequence[str] = (),
        interval_s: float = 1.0,
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.redis_url = redis_url
        self.port = port or free_port()
        """Where the page is served (127.0.0.1)."""
        self.scheme = "https" if any(a.partition("=")[0] == "--page-tls-cert" for a in extra_args) else "http"
        """``https`` when ``extra_args`` put the page on TLS (``--page-tls-cert``), else ``http``."""
        self._args = [
            "--redis-url",
            redis_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--interval",
            str(interval_s),
            *(("--etcd", etcd) if etcd else ()),
            *(("--cluster", cluster) if cluster else ()),
            *(arg for node in nodes for arg in ("--node", node)),
            *extra_args,
        ]
        self.proc: subprocess.Popen | None = None
        self._read: Callable[[], str] = lambda: ""

    @property
    def url(self) -> str:
        """The page's address (``https://`` on TLS)."""
        return f"{self.scheme}://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 30.0) -> BoardProcess:
        """Start the board and wait for its ready line (``flashstock board on http(s)://...``)."""
        args = [sys.executable, "-m", "flashstock.server", "board", *self._args]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._read = pipe_reader(self.proc)
        wait_for_line(self.proc, self._read, name="flashstock board", timeout=timeout, line=BOARD_READY_LINE)
        return self

    def output(self) -> str:
        """What the board printed so far."""
        return self._read()

    def stop(self) -> None:
        """SIGTERM the board, SIGKILL if it lingers."""
        if self.proc is not None:
            stop_family(self.proc, timeout=10)
            if self.proc.stdout:
                self.proc.stdout.close()

    def __enter__(self) -> BoardProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def local_stack(workers: int = 1, shards: int = 64) -> Iterator[tuple[RedisServer, NodeProcess]]:
    """A Redis and one node on it, both stopped on exit."""
    with RedisServer() as redis_server, NodeProcess(redis_server.url, workers=workers, shards=shards) as node:
        yield redis_server, node
