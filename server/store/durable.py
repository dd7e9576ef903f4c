"""Durable mode: knowing which log entries the ledger holds, and waiting for one.

The persister announces ``"<shard> <last entry id>"`` after every commit
(and keeps it in the shard's ``pc`` key for late joiners); a durable reply
waits until its entry's id is at or below that. Stream ids are
``<ms>-<seq>`` and grow within a shard's log.
"""

from __future__ import annotations

import asyncio

StreamId = tuple[int, int]


def parse_id(entry_id: str) -> StreamId:
    """``"1700000000000-3"`` as ``(1700000000000, 3)``."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class PersistWatch:
    """Per shard, the last log entry the ledger holds; and the replies waiting on it."""

    def __init__(self) -> None:
        self._persisted: dict[int, StreamId] = {}
        self._waiting: dict[int, list[tuple[StreamId, asyncio.Future[None]]]] = {}

    def holds(self, shard: int, entry_id: str) -> bool:
        """True once the ledger holds ``entry_id`` of ``shard`` (as far as we heard)."""
        return parse_id(entry_id) <= self._persisted.get(shard, (-1, -1))

    def learn(self, shard: int, last_id: str) -> None:
        """The ledger holds ``shard``'s log up to ``last_id``: wake whoever waited for it."""
        last = parse_id(last_id)
        if last <= self._persisted.get(shard, (-1, -1)):
            return
        self._persisted[shard] = last
        waiting = self._waiting.get(shard)
        if waiting:
            still = []
            for entry, future in waiting:
                if entry <= last:
                    if not future.done():
                        future.set_result(None)
                else:
                    still.append((entry, future))
            self._waiting[shard] = still

    def apply_message(self, message: str) -> None:
        """Take in a persister's announcement ``"<shard> <last id>"``."""
        shard, last_id = message.split(" ", 1)
        self.learn(int(shard), last_id)

    async def wait(self, shard: int, entry_id: str, timeout: float) -> bool:
        """Wait until the ledger holds ``entry_id``; False when ``timeout`` passed first."""
        if self.holds(shard, entry_id):
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (parse_id(entry_id), future)
        self._waiting.setdefault(shard, []).append(entry)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiting = self._waiting.get(shard, [])
            if entry in waiting:
                waiting.remove(entry)
