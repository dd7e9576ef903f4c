"""Finding the nodes in etcd: a client's address set, kept up to date.

A client configured with ``etcd`` calls the live nodes of its cluster, the
ones registered under ``/flashstock/<cluster>/nodes/``. Each registration is
bound to its node's lease, so a node that dies drops out by itself. A
discovery reads the nodes when the client starts, then follows every join
and leave (:func:`flashstock.lockmgr.watch_nodes`, which reconnects to etcd
on its own), and hands each new address set to the client's connection.
The connection opens channels to the nodes that joined and hands back the
channels to the nodes that left. Those are closed once their calls in
flight are done, which takes at most one attempt timeout. A call cut off by
a node that dies is retried on the next node by the client's usual retry.

The watch is written once (:class:`_NodeWatch`) and runs in two places:

- :class:`AsyncDiscovery`: a task on the asyncio client's event loop;
- :class:`Discovery`: a daemon thread with an event loop of its own, for
  the blocking client. ``scripts/unasync.py`` turns the one name into the
  other when it generates that client.

aetcd is imported (through lockmgr) only when a discovery starts, so a
client with fixed addresses does not need it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ._config import ClientConfig
from .errors import Unavailable

log = logging.getLogger(__name__)

UseAddresses = Callable[[tuple[str, ...]], list[Any]]
"""The connection's side: send calls to these addresses from now on, and
return the channels that are no longer used."""

_THREAD_CLOSE_MARGIN_S = 1.0
"""Extra wait before the blocking client closes a channel that is no longer
used. A thread that picked the channel just before the swap starts its call
a moment later, and that call's attempt timeout starts then too."""


def node_addresses(nodes: Mapping[str, Any]) -> tuple[str, ...]:
    """The addresses to call, sorted and without repeats, of a snapshot of
    live nodes (:class:`~flashstock.lockmgr.NodeInfo` by node id)."""
    return tuple(sorted({info.address for info in nodes.values()}))


def _reporter(started: asyncio.Future[None] | concurrent.futures.Future[None]) -> Callable[[str | None], None]:
    """How a watch tells its start's waiters the outcome: ``None`` (found a node) or why not, once."""

    def report(why: str | None) -> None:
        if started.done():
            return
        if why is None:
            started.set_result(None)
        else:
            started.set_exception(Unavailable(why))

    return report


class _NodeWatch:
    """The work both discoveries share: follow etcd's list of live nodes, and hand it on."""

    def __init__(self, config: ClientConfig, use: UseAddresses) -> None:
        self.config = config
        """The client's settings: ``etcd``, ``cluster``, the timeouts."""
        self.where = f"cluster {config.cluster!r} in etcd at {','.join(config.etcd)}"
        """The nodes' location, for messages."""
        self._use = use

    async def _follow(self, report: Callable[[str | None], None]) -> None:
        """Read the live nodes, hand them on, and follow them until cancelled.

        Calls ``report(None)`` once there is a node to call. If etcd does not
        answer, or lists no node, within ``discovery_timeout_s``, it calls
        ``report(why)`` and returns instead.
        """
        from flashstock.lockmgr import EtcdAccess, etcd_client, watch_nodes

        config = self.config
        timeout = config.discovery_timeout_s
        access = EtcdAccess(
            config.etcd_tls_ca, config.etcd_tls_cert, config.etcd_tls_key, config.etcd_user, config.etcd_password
        )
        try:
            client = etcd_client(config.etcd, timeout=timeout, access=access)
        except ImportError as exc:
            # The client alone (`pip install flashstock`) has no etcd client.
            # Said here, through report(): raised, it would end the task with
            # nobody told, and an asyncio start would wait for ever.
            report(f"finding the nodes of {self.where} needs aetcd: pip install 'flashstock[etcd]' ({exc})")
            return
        snapshots = watch_nodes(client, self.config.cluster)
        answered = False
        try:
            try:
                async with asyncio.timeout(timeout):
                    addresses = node_addresses(await anext(snapshots))
                    answered = True
                    while not addresses:  # a node may be on its way
                        addresses = node_addresses(await anext(snapshots))
            except TimeoutError:
                if answered:
                    report(f"no node of {self.where} is registered (waited {timeout} s)")
                else:
                    report(f"etcd did not answer within {timeout} s ({self.where})")
                return
            except Exception as exc:
                report(f"cannot read the nodes of {self.where}: {exc!r}")
                return
            self._publish(addresses)
            report(None)
            try:
                async for nodes in snapshots:
                    self._publish(node_addresses(nodes))
            except Exception:
                log.exception("following the nodes of %s failed: the client keeps the ones it has", self.where)
                raise
        finally:
            with contextlib.suppress(Exception):
                await snapshots.aclose()
            with contextlib.suppress(Exception):
                await client.close()

    def _publish(self, addresses: tuple[str, ...]) -> None:
        log.info("nodes of %s: %s", self.where, ", ".join(addresses) or "none")
        retired = self._use(addresses)
        if retired:
            self._retire(retired)

    def _retire(self, channels: list[Any]) -> None:
        """Close ``channels`` once their calls in flight are done."""
        raise NotImplementedError


class AsyncDiscovery(_NodeWatch):
    """The live nodes in etcd, followed on a task of the asyncio client's event loop.

    :meth:`start` (on the client's first call, or in ``async with``) reads
    the nodes and starts the task; :meth:`close` stops it.
    """

    def __init__(self, config: ClientConfig, use: UseAddresses) -> None:
        super().__init__(config, use)
        self._started: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._retired: set[Any] = set()
        self._closers: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        """Read the live nodes and start following them; return once there is a node to call.

        Called again, it returns at once, or waits for the start under way.
        After a failed start the next call tries again. Raises
        :class:`~flashstock.client.Unavailable` (naming the etcd endpoints and
        the cluster) when etcd does not answer, or lists no node, within
        ``discovery_timeout_s``.
        """
        started = self._started
        if started is not None and started.done() and not started.cancelled() and started.exception() is None:
            return
        if self._closed:
            raise RuntimeError("the client is closed")
        if started is None or started.done():
            loop = asyncio.get_running_loop()
            self._started = started = loop.create_future()
            self._task = loop.create_task(
                self._follow(_reporter(started)), name=f"flashstock discovery of {self.where}"
            )
        # Shielded: a caller that gives up does not stop the start others wait for.
        await asyncio.shield(started)

    def _retire(self, channels: list[Any]) -> None:
        for channel in channels:
            self._retired.add(channel)
            closer = asyncio.create_task(self._close_when_idle(channel))
            self._closers.add(closer)
            closer.add_done_callback(self._closers.discard)

    async def _close_when_idle(self, channel: Any) -> None:
        # No attempt lasts longer than attempt_timeout_s, so none is cut off.
        await channel.close(self.config.attempt_timeout_s)
        self._retired.discard(channel)

    async def close(self) -> None:
        """Stop following the nodes, and close at once the channels that were finishing their calls."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        started = self._started
        if started is not None and not started.done():
            started.set_exception(Unavailable(f"the client was closed while it looked for the nodes of {self.where}"))
            started.exception()  # retrieved, even if nobody was waiting
        closers = list(self._closers)
        for closer in closers:
            closer.cancel()
        await asyncio.gather(*closers, return_exceptions=True)
        for channel in list(self._retired):
            await channel.close()
        self._retired.clear()


class Discovery(_NodeWatch):
    """The live nodes in etcd, followed on a daemon thread with an event loop of its own.

    The blocking client's twin of :class:`AsyncDiscovery`: the same watch,
    and the same :meth:`start` and :meth:`close`, which block. The thread
    hands each address set to the connection; calls on other threads see
    the new set on their next attempt.
    """

    def __init__(self, config: ClientConfig, use: UseAddresses) -> None:
        super().__init__(config, use)
        self._lock = threading.Lock()
        self._started: concurrent.futures.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._retired: set[Any] = set()
        self._closed = False

    def start(self) -> None:
        """Read the live nodes and start following them; return once there is a node to call.

        Safe to call from several threads: they wait for the same start.
        After a failed start the next call tries again. Raises
        :class:`~flashstock.client.Unavailable` (naming the etcd endpoints and
        the cluster) when etcd does not answer, or lists no node, within
        ``discovery_timeout_s``.
        """
        started = self._started
        if started is not None and started.done() and started.exception() is None:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            started = self._started
            if started is None or (started.done() and started.exception() is not None):
                if self._thread is not None:
                    self._thread.join()  # the failed start's thread, on its way out
                self._started = started = concurrent.futures.Future()
                # Made here, not on the thread: close() may need it before the thread runs.
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._run,
                    args=(self._loop, started),
                    name=f"flashstock discovery of {self.where}",
                    daemon=True,
                )
                self._thread.start()
        started.result()

    def _run(self, loop: asyncio.AbstractEventLoop, started: concurrent.futures.Future[None]) -> None:
        report = _reporter(started)
        asyncio.set_event_loop(loop)
        try:
            # Set before the loop runs, so the cancel that close() schedules finds it.
            self._task = loop.create_task(self._follow(report))
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("the discovery of %s failed", self.where)
        finally:
            report(f"the discovery of {self.where} stopped before it found a node")
            try:
                leftover = asyncio.all_tasks(loop)
                for task in leftover:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _retire(self, channels: list[Any]) -> None:
        # A blocking channel's close() ends its calls at once: wait until no
        # attempt started on it can still be running.
        loop = asyncio.get_running_loop()
        for channel in channels:
            self._retired.add(channel)
            loop.call_later(self.config.attempt_timeout_s + _THREAD_CLOSE_MARGIN_S, self._close_retired, channel)

    def _close_retired(self, channel: Any) -> None:
        if channel in self._retired:
            self._retired.discard(channel)
            channel.close()

    def close(self) -> None:
        """Stop the thread (and wait for it), and close at once the channels that were finishing their calls."""
        with self._lock:
            self._closed = True
            thread, loop = self._thread, self._loop
            self._thread = None
        if thread is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the thread has ended
                loop.call_soon_threadsafe(self._cancel)
            thread.join()
        for channel in list(self._retired):
            channel.close()
        self._retired.clear()
