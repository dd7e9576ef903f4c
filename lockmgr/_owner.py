"""Shard ownership: claimed with an etcd transaction, fenced by an epoch.

Modelled on etcd's ``client/v3/concurrency/mutex.go``. A shard's owner key,
``/flashstock/<cluster>/owners/<shard>``, is created by its owner and bound
to the owner's session lease, so it goes when the owner stops refreshing.
The key's **create revision is the shard's epoch**: etcd's revision counter
only grows, so every later owner's key is created at a higher revision, and
a stale owner's epoch is always lower than the current one's.

The epoch is the fencing token (:class:`ShardLease`): every write a shard's
duties make carries it, and the store refuses a write whose epoch is lower
than one it has seen. That, not the lease, is what keeps a paused old owner
from writing after its successor: etcd's own docs warn that a lease-based
lock alone is not mutual exclusion.

Checked against etcd 3.4: a put inside a transaction gets the transaction's
revision (header revision == the put's revision == the new key's create and
mod revision), and a put bound to an expired or revoked lease fails the
whole transaction with "requested lease not found".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._client import is_lease_not_found, snapshots
from ._keys import ClusterKeys, tail

if TYPE_CHECKING:
    import aetcd

    from ._session import EtcdSession

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShardLease:
    """The right to run one shard's duties, and the fencing token their writes carry.

    Pass it into every write (Lua script, ledger transaction); the store
    refuses the write when it has seen a higher ``epoch`` for the shard.
    Holding one says nothing about *now*: the session that claimed it may
    since be lost (:attr:`EtcdSession.lost`).
    """

    shard: int
    """The shard."""
    epoch: int
    """The create revision of the shard's owner key: higher for every later owner."""
    node: str
    """The node that claimed it."""


@dataclass(frozen=True, slots=True)
class ShardOwner:
    """A shard's current owner, as etcd has it."""

    shard: int
    """The shard."""
    node: str
    """The owning node's id."""
    epoch: int
    """The owner's epoch (the owner key's create revision)."""
    since_ms: int
    """When it claimed the shard, unix ms on its own clock (for people, not for decisions)."""
    lease: int
    """The id of the owner's session lease."""


def _owner_value(node: str) -> bytes:
    return json.dumps({"node": node, "since_ms": int(time.time() * 1000)}).encode()


def _owner(shard: int, kv: Any) -> ShardOwner | None:
    try:
        data = json.loads(kv.value)
        return ShardOwner(shard, str(data["node"]), kv.create_revision, int(data.get("since_ms", 0)), kv.lease)
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed owner key %r: %r", kv.key, kv.value)
        return None


async def claim(session: EtcdSession, shard: int) -> ShardLease | None:
    """Claim ``shard`` for the session's node; its :class:`ShardLease`, or None if another owns it.

    Claiming a shard this session already owns returns the same lease
    (same epoch) again. Raises :class:`~flashstock.lockmgr.LeaseLost` if the
    session is lost (locally, or etcd no longer knows its lease).
    """
    session.ensure_alive()
    client, tx = session.client, session.client.transactions
    key = session.keys.owner(shard).encode()
    try:
        ok, responses = await client.transaction(
            # Nobody owns the shard: its key was never written, was
            # released, or went with its owner's lease. A create (not a
            # plain put) so that exactly one of any racing claimers wins,
            # and so the key's create revision is a fresh, higher epoch.
            compare=[tx.create(key) == 0],
            # Bound to our lease: the shard is freed by itself if we stop
            # refreshing. Read back in the same transaction: the epoch is
            # the create revision etcd gave the key.
            success=[tx.put(key, _owner_value(session.node_id), lease=session.lease_id), tx.get(key)],
            # Someone owns it: read who, to tell "us already" from "another".
            failure=[tx.get(key)],
        )
    except Exception as exc:
        if is_lease_not_found(exc):
            raise session.lease_gone() from None
        raise
    kv = responses[-1][0][1]
    if ok:
        return ShardLease(shard, kv.create_revision, session.node_id)
    if kv.lease == session.lease_id:
        # Ours already (a repeated claim): same key, same epoch. The lease
        # id, not the node id, decides: an earlier session of this node
        # that is not expired yet is another owner.
        return ShardLease(shard, kv.create_revision, session.node_id)
    return None


async def release(session: EtcdSession, lease: ShardLease) -> bool:
    """Give up ``lease``'s shard now (instead of when the session ends); False if it was no longer ours.

    Stop the shard's duties first: after this, another node may claim it.
    """
    tx = session.client.transactions
    key = session.keys.owner(lease.shard).encode()
    ok, _ = await session.client.transaction(
        # Still the key we created: a successor's key has a higher create
        # revision. Comparing the value (the node id) would not do: this
        # node may have lost the shard and claimed it again since, under
        # another epoch.
        compare=[tx.create(key) == lease.epoch],
        success=[tx.delete(key)],
        failure=[],
    )
    return bool(ok)


def owner_compare(client: aetcd.Client, cluster: str, lease: ShardLease) -> Any:
    """An etcd compare that holds while ``lease`` is its shard's current ownership.

    For the caller's own transactions (etcd's ``Mutex.IsOwner()``): add it to
    ``compare=`` and the writes happen only if the shard is still ours.
    """
    return client.transactions.create(ClusterKeys(cluster).owner(lease.shard)) == lease.epoch


async def _read_owners(client: aetcd.Client, keys: ClusterKeys) -> tuple[dict[int, ShardOwner], int]:
    result = await client.get_prefix(keys.owners.encode())
    out = {}
    for kv in result:
        name = tail(kv.key, keys.owners)
        owner = _owner(int(name), kv) if name.isdigit() else None
        if owner is not None:
            out[owner.shard] = owner
    return out, result.header.revision


async def owners(client: aetcd.Client, cluster: str) -> dict[int, ShardOwner]:
    """The owned shards of ``cluster`` now: shard -> :class:`ShardOwner` (unowned shards are absent)."""
    result, _ = await _read_owners(client, ClusterKeys(cluster))
    return result


def watch_owners(client: aetcd.Client, cluster: str) -> AsyncGenerator[dict[int, ShardOwner], None]:
    """The owners now, then again after every claim, release or expiry (snapshots, not events)."""
    keys = ClusterKeys(cluster)
    return snapshots(client, [keys.owners], lambda: _read_owners(client, keys))
