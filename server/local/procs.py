"""Real server processes on loopback: Redis, PostgreSQL and flashstock nodes.

Used by ``flashstock demo`` and ``flashstock bench`` and by the test
fixtures: each starts its process on a free 127.0.0.1 port in a temporary
folder, waits until it answers, and stops it (also when the caller fails).
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
import subprocess
import sys
import tempfile
import uuid
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from flashstock.server._node import READY_LINE


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


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RedisServer:
    """A ``redis-server`` of our own: free loopback port, temp folder, no persistence by default."""

    def __init__(
        self, folder: Path | None = None, extra_args: Sequence[str] = (), port: int | None = None, *, detach: bool = False
    ) -> None:
        binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
        if binary is None:
            raise ProcessError("redis-server not found: install Debian's package (apt-get install redis-server)")
        self._binary = binary
        self._own_folder = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="flashstock-redis-"))
        self.port = port or free_port()
        self._extra = list(extra_args)
        self.detach = detach
        """Start the server in a session of its own, so it outlives its starter (and its Ctrl-C)."""
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start and wait until it answers PING."""
        args = [
            self._binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.folder),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self.folder / "redis.log"),
            *self._extra,
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
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            time.sleep(0.05)
        self.stop()
        raise ProcessError(f"redis-server did not answer on port {self.port} within 15 s")

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing is saved)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """Stop the server and remove its folder if we made it."""
        if self.proc is not None:
            _stop(self.proc)
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
        self, folder: Path | None = None, port: int | None = None, os_user: str = "postgres", *, detach: bool = False
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
        self._pg_start()

    def _initdb(self) -> None:
        initdb = self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data_dir),
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
            started = self._run(
                str(self.bindir / "pg_ctl"),
                "-D", str(self.data_dir),
                "-l", str(self.log_path),
                "-o", options,
                "-w", "-t", "60",
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

    @property
    def address(self) -> str:
        """host:port of the node."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> NodeProcess:
        """Start the node and wait for its ready line."""
        fd, log_name = tempfile.mkstemp(prefix="flashstock-node-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        args = [
            sys.executable, "-m", "flashstock.server", "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--redis-url", self.redis_url,
            "--workers", str(self.workers),
            "--shards", str(self.shards),
            "--data-dir", str(self.data_dir),
            *(("--ledger", self.ledger) if self.ledger else ()),
            *self._extra,
        ]
        env = {**os.environ, **(self._env or {})}
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        os.set_blocking(self.proc.stdout.fileno(), False)
        buffered = b""
        while time.monotonic() < deadline:
            chunk = self.proc.stdout.read() or b""
            buffered += chunk
            if READY_LINE.encode() in buffered:
                return self
            if self.proc.poll() is not None:
                message = f"flashstock node exited ({self.proc.returncode}): {self.log()}"
                self.remove_data()
                with contextlib.suppress(OSError):
                    self.log_path.unlink()
                raise ProcessError(message)
            time.sleep(0.05)
        self.stop()
        raise ProcessError(f"flashstock node not ready within {timeout} s: {self.log()}")

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
        """SIGTERM the node (graceful), SIGKILL if it lingers."""
        if self.proc is not None:
            _stop(self.proc, timeout=15)
            if self.proc.stdout:
                self.proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL the node and its workers (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            import psutil

            for child in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            self.proc.kill()
            self.proc.wait()

    def remove_data(self) -> None:
        """Remove the data folder if this object made it."""
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.remove_data()
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()


@contextlib.contextmanager
def local_stack(workers: int = 1, shards: int = 64) -> Iterator[tuple[RedisServer, NodeProcess]]:
    """A Redis and one node on it, both stopped on exit."""
    with RedisServer() as redis_server, NodeProcess(redis_server.url, workers=workers, shards=shards) as node:
        yield redis_server, node
