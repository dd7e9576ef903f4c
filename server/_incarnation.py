"""No Redis is trusted before it is checked against the ledger.

A Redis that comes back from a crash, a restored backup or a failover to a
lagging replica may hold an older state than the ledger, yet read "ready".
Every start of a Redis server has a new ``run_id``. :class:`IncarnationGate`
sits in the connect step of every connection of the node's asyncio client
pool: a connection to a Redis whose run id this process has not checked yet
waits until :meth:`ShardRebuilder.verify <.duties.rebuild.ShardRebuilder.verify>`
compared every shard with the ledger and rebuilt those behind. Since a
restart drops every connection, nothing of this process (requests, duties,
the feed) reaches a restarted Redis before that check, whichever node
notices first. The check runs on the rebuilder's own blocking client, so it
does not wait on itself.

The gate is armed once the node has checked its settings against the ones
the cluster bound (a node with the wrong ledger must not rebuild anything).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from flashstock.server.store.redis import RedisConnectionError

log = logging.getLogger(__name__)


def run_id_of(info: bytes | str) -> str:
    """The ``run_id`` in the text of ``INFO server``."""
    text = info.decode() if isinstance(info, bytes) else info
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line.split(":", 1)[1].strip()
    raise ValueError("INFO server has no run_id")


class IncarnationGate:
    """Holds new Redis connections until the Redis behind them was checked against the ledger.

    ``verify``: blocking; checks (and repairs) the Redis as it runs now and
    returns its run id and the shards it rebuilt. ``on_rebuilt``: told those
    shards. ``wait_s``: how long a connection waits for a check under way
    before it fails (the caller gets UNAVAILABLE and comes back).
    """

    def __init__(
        self,
        verify: Callable[[], tuple[str, list[int]]],
        wait_s: float,
        on_rebuilt: Callable[[list[int]], None] | None = None,
    ) -> None:
        self._verify = verify
        self._wait_s = wait_s
        self._on_rebuilt = on_rebuilt
        self._armed = False
        self._verified: str | None = None
        self._check: asyncio.Task[str] | None = None
        self.checks = 0
        """Checks completed by this process (for tests and logs)."""

    @property
    def verified(self) -> str | None:
        """The run id of the last Redis found no older than the ledger (or repaired)."""
        return self._verified

    async def arm(self) -> None:
        """Check the Redis running now, and from then on every Redis a connection meets."""
        self._armed = True
        await self._await_check(None)

    async def on_connect(self, connection: Any) -> None:
        """The connect step of the node's asyncio connections (``on_connect`` of
        :func:`~flashstock.server.store.redis.async_client`)."""
        await connection.on_connect()
        if not self._armed:
            return
        await connection.send_command("INFO", "server")
        run_id = run_id_of(await connection.read_response())
        if run_id != self._verified:
            await self._await_check(run_id)

    async def _await_check(self, run_id: str | None) -> None:
        # Two rounds at most: the Redis may restart again while it is checked.
        for _ in range(2):
            if self._check is None or self._check.done():
                self._check = asyncio.ensure_future(self._run_check())
            try:
                verified = await asyncio.wait_for(asyncio.shield(self._check), self._wait_s)
            except TimeoutError:
                raise RedisConnectionError("Redis restarted: its shards are being checked against the ledger") from None
            if run_id is None or verified == run_id:
                return
        raise RedisConnectionError("Redis restarted again while it was checked against the ledger")

    async def _run_check(self) -> str:
        try:
            run_id, rebuilt = await asyncio.to_thread(self._verify)
        except Exception as exc:  # noqa: BLE001 - the connection fails; the next one checks again
            log.warning("checking Redis against the ledger failed: %s", exc)
            raise RedisConnectionError(f"checking Redis against the ledger failed: {exc}") from exc
        self.checks += 1
        if self._verified is not None and run_id != self._verified:
            log.warning(
                "Redis restarted (run id %s, was %s): %s",
                run_id,
                self._verified,
                f"shards {rebuilt} were older than the ledger and are rebuilt"
                if rebuilt
                else "no shard is behind the ledger",
            )
        self._verified = run_id
        if rebuilt and self._on_rebuilt is not None:
            self._on_rebuilt(rebuilt)
        return run_id
