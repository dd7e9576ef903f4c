"""The audit copier: shard changes' audit records, from etcd into the ledger.

An operator's shard change (``flashstock shards pin|unpin|move|drain|undrain|rebalance``)
writes its audit record in its own etcd transaction, under
``/flashstock/<cluster>/audit/``; the ledger is not the CLI's to reach. Every
node of the cluster copies the records it finds into the ledger's ``audit``
table, then deletes them from etcd. Nodes may do it at once: a row is
inserted only if its ``source`` (the etcd key) is not there yet, so a record
copied twice, or copied and then not deleted (a crash in between), is kept
once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from flashstock.lockmgr import audit_records, forget_audit_records
from flashstock.server._log_gate import LogGate
from flashstock.server.ledger import Ledger, row_of_shard_change

if TYPE_CHECKING:
    import aetcd

log = logging.getLogger(__name__)

COPY_INTERVAL_S = 1.0
"""How often a node looks for audit records in etcd."""


class AuditCopier:
    """Copies the audit records of a cluster's shard changes from etcd into the ledger."""

    def __init__(self, client: aetcd.Client, cluster: str, ledger: Ledger, interval_s: float = COPY_INTERVAL_S) -> None:
        self._client = client
        self._cluster = cluster
        self._ledger = ledger
        self._interval_s = interval_s
        self._unreadable = LogGate(interval_s=600.0)
        self.copied = 0
        """Records this copier wrote into the ledger (or found there) and deleted from etcd."""

    async def copy_once(self) -> int:
        """Copy the records waiting in etcd into the ledger, then delete them there; returns how many."""
        found = await audit_records(self._client, self._cluster)
        rows: list[dict[str, Any]] = []
        done: list[str] = []
        for key, value in found:
            try:
                rows.append(row_of_shard_change(key, value))
            except (ValueError, KeyError, TypeError) as exc:
                # Left in etcd for a person to read; said now and then, not each second.
                if self._unreadable.admit(key) is not None:
                    log.warning("audit: the record %s in etcd is unreadable (%r); it stays there", key, exc)
                continue
            done.append(key)
        if not rows:
            return 0
        # The ledger first: a record deleted from etcd is in the ledger.
        await asyncio.to_thread(self._ledger.copy_audit, rows)
        await forget_audit_records(self._client, done)
        self.copied += len(done)
        return len(done)

    async def run(self) -> None:
        """Copy every ``interval_s`` until cancelled; a failed pass is tried again at the next."""
        while True:
            try:
                await self.copy_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - etcd or the ledger away: the records wait in etcd
                log.warning("audit: copying shard changes' records from etcd failed: %r; trying again", exc)
            await asyncio.sleep(self._interval_s)
