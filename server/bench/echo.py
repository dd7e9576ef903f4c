"""A bare grpc.aio echo server: the baseline of ``flashstock bench``.

It serves ``flashstock.v1.StockService/Deduct`` with the node's own stack
(grpc.aio on uvloop, the same server options, SO_REUSEPORT workers) and
nothing else: no validation, no Redis. Each call decodes the DeductRequest
and answers an OK DeductReply of the size a real deduction gets (the
deduction echoed back, with a timestamp and a stock level), so the bench
drives it with the very same stub and loop as a node, and the ratio
node/echo is the share of the bare stack's rate the node keeps.

Run as its own process: ``python -m flashstock.server.bench.echo --port N
[--workers W]``; it prints :data:`READY_LINE` once it serves and stops on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing.queues
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from flashstock.server._node import supervise
from flashstock.v1 import stock_pb2

READY_LINE = "flashstock echo serving on"
"""The start of the line the echo server prints once it serves."""

SERVICE = "flashstock.v1.StockService"
"""The service the echo answers (only its Deduct method)."""


async def _deduct(request: stock_pb2.DeductRequest, context: grpc.aio.ServicerContext) -> stock_pb2.DeductReply:
    return stock_pb2.DeductReply(
        outcome=stock_pb2.OUTCOME_OK,
        deduction=stock_pb2.Deduction(
            request_id=request.request_id,
            sku_id=request.sku_id,
            user_id=request.user_id,
            qty=request.qty,
            state=stock_pb2.DEDUCTION_STATE_CONFIRMED,
            taken_at_ms=int(time.time() * 1000),
        ),
        stock_left=999_999_999,
    )


def handler() -> grpc.GenericRpcHandler:
    """The generic handler of StockService/Deduct, with protobuf (de)serializers."""
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Deduct": grpc.unary_unary_rpc_method_handler(
                _deduct,
                request_deserializer=stock_pb2.DeductRequest.FromString,
                response_serializer=stock_pb2.DeductReply.SerializeToString,
            )
        },
    )


async def _serve(host: str, port: int, workers: int, on_ready: Callable[[int], object]) -> None:
    # The node's options: SO_REUSEPORT only when several processes share the port.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if workers != 1 else 0)])
    server.add_generic_rpc_handlers((handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # A worker of several leaves SIGINT ignored: its parent turns Ctrl-C into SIGTERM.
    for sig in (signal.SIGTERM,) if workers > 1 else (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    on_ready(bound)
    await stop.wait()
    await server.stop(0.5)


def _run(host: str, port: int, workers: int, on_ready: Callable[[int], object]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(host, port, workers, on_ready))
    else:
        uvloop.run(_serve(host, port, workers, on_ready))


def _worker(host: str, port: int, workers: int, ready: multiprocessing.queues.Queue[int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards SIGTERM
    _run(host, port, workers, ready.put)


class EchoProcess:
    """The echo server as its own process on a free loopback port.

    Started and stopped as :class:`~flashstock.server.local.procs.NodeProcess` is.
    """

    def __init__(self, workers: int = 1) -> None:
        from flashstock.server.local.procs import free_port

        self.workers = workers
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log: Path | None = None
        self._read: Callable[[], str] | None = None

    @property
    def address(self) -> str:
        """host:port of the echo server."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The echo's (parent) process id."""
        assert self.proc is not None
        return self.proc.pid

    def launch(self) -> EchoProcess:
        """Start the process without waiting for it (see :meth:`wait_ready`)."""
        from flashstock.server.local.procs import pipe_reader

        fd, name = tempfile.mkstemp(prefix="flashstock-echo-", suffix=".log")
        os.close(fd)
        self._log = Path(name)
        args = [
            sys.executable,
            "-m",
            "flashstock.server.bench.echo",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        with open(self._log, "wb") as log_file:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file)
        self._read = pipe_reader(self.proc)
        return self

    def wait_ready(self, timeout: float = 60.0) -> EchoProcess:
        """Wait for the ready line; raises ProcessError if it exits or is late."""
        from flashstock.server.local.procs import wait_for_line

        assert self.proc is not None and self._read is not None
        wait_for_line(self.proc, self._read, name="echo server", timeout=timeout, line=READY_LINE, log=self.log)
        return self

    def log(self) -> str:
        """What the echo wrote to stderr (the last 4,000 characters)."""
        return self._log.read_text(errors="replace")[-4000:] if self._log else ""

    def stop(self) -> None:
        """SIGTERM it (SIGKILL if it lingers), its workers with it, and remove its log."""
        from flashstock.server.local.procs import stop_family

        if self.proc is not None:
            stop_family(self.proc, timeout=10)
            if self.proc.stdout:
                self.proc.stdout.close()
        if self._log is not None:
            self._log.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; ``--workers`` processes share the port."""
    parser = argparse.ArgumentParser(
        prog="python -m flashstock.server.bench.echo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)

    def announce(port: int) -> None:
        print(f"{READY_LINE} {args.host}:{port} (workers={args.workers})", flush=True)

    if args.workers <= 1:
        _run(args.host, args.port, 1, announce)
        return 0
    _procs, started = supervise(
        [(_worker, (args.host, args.port, args.workers), f"echo-{i}") for i in range(args.workers)],
        on_ready=lambda: announce(args.port),
        failure="flashstock echo: a worker exited during start",
    )
    return 0 if started else 2


if __name__ == "__main__":
    sys.exit(main())
