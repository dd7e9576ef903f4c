"""Calls to a node from another loopback source address, as from another machine.

gRPC's Python channels cannot choose their local address, so
:class:`FromAddress` listens on ``127.0.0.1`` and opens, for each connection
it accepts, one to the node bound to ``source`` (``127.0.0.2``: Linux
routes the whole 127.0.0.0/8 to loopback), copying bytes both ways. A
channel to :attr:`FromAddress.address` reaches the node, which sees the
caller as ``source``.

With ``delay_s``, every reply (the bytes coming back from ``target``)
arrives that much later, in order, and without limiting throughput: a slow
link, e.g. to a Redis, whose round trip the test sets.

::

    async with FromAddress(node.address, "127.0.0.2") as other:
        async with grpc.aio.insecure_channel(other.address) as channel:
            ...

    async with FromAddress(f"127.0.0.1:{redis.port}", "127.0.0.1", delay_s=0.05) as slow:
        ...  # redis://{slow.address}: every round trip 50 ms longer
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class FromAddress:
    """A loopback forwarder to ``target`` (host:port) whose connections leave from ``source``."""

    def __init__(self, target: str, source: str, *, delay_s: float = 0.0) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self.source = source
        self.delay_s = delay_s
        """Seconds every reply is held back (0: none)."""
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.address = ""
        """host:port to dial instead of ``target``."""

    async def __aenter__(self) -> FromAddress:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target, local_addr=(self.source, 0))
        except OSError:
            writer.close()
            return
        back = self._copy(up_reader, writer) if not self.delay_s else self._copy_late(up_reader, writer, self.delay_s)
        for pipe in (self._copy(reader, up_writer), back):
            task = asyncio.create_task(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _copy_late(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay_s: float) -> None:
        # Each chunk is written delay_s after it was read, in order; reading goes on meanwhile, so the
        # link adds latency only, not a bound on throughput.
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def write() -> None:
            while True:
                due, data = await chunks.get()
                if not data:
                    return
                await asyncio.sleep(due - loop.time())
                dst.write(data)
                await dst.drain()

        writer = asyncio.create_task(write())
        try:
            while data := await src.read(65536):
                chunks.put_nowait((loop.time() + delay_s, data))
            chunks.put_nowait((0.0, b""))
            await writer
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.cancel()
            with contextlib.suppress(OSError):
                dst.close()

    @staticmethod
    async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.close()
