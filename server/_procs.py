"""Real server processes on loopback: Redis and flashstock nodes.

Used by ``flashstock demo`` and ``flashstock bench`` and by the test
fixtures: each starts its process on a free 127.0.0.1 port in a temporary
folder, waits until it answers, and stops it (also when the caller fails).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ._node import READY_LINE


class ProcessError(RuntimeError):
    """A helper process could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
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

    def __init__(self, folder: Path | None = None, extra_args: Sequence[str] = (), port: int | None = None) -> None:
        binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
        if binary is None:
            raise ProcessError("redis-server not found: install Debian's package (apt-get install redis-server)")
        self._binary = binary
        self._own_folder = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="flashstock-redis-"))
        self.port = port or free_port()
        self._extra = list(extra_args)
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
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        from .ledger import sqlite_url

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
