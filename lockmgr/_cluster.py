"""Cluster-wide settings in etcd: the shard count and the other bound settings, and the operator's pins and drains.

The shard count is chosen once, by the first node of a cluster, and never
changes: ``shard = stable_hash(sku) mod S`` places every SKU's Redis keys,
so another S would look for every SKU in the wrong shard. A node started
with another S is refused (:class:`~flashstock.lockmgr.ShardCountMismatch`).
Other settings every node must share (the ledger's identity, the record
TTL) are bound with it, the same way (:class:`~flashstock.lockmgr.SettingMismatch`).

Pins and drains are the overrides :func:`~flashstock.lockmgr.assign` applies.
They are written only into an initialised cluster, so a typo in the cluster
name cannot create an override nobody reads.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._client import snapshots
from ._errors import CoordinationError, SettingMismatch, ShardCountMismatch
from ._keys import ClusterKeys, check_id, tail
from ._shards import DEFAULT_SHARDS

if TYPE_CHECKING:
    import aetcd

log = logging.getLogger(__name__)


def _check_shards(shards: int) -> int:
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be an int >= 1, not {shards!r}")
    return shards


async def init_cluster(
    client: aetcd.Client, cluster: str, shards: int | None = None, settings: Mapping[str, str] | None = None
) -> int:
    """Bind the cluster's shard count (and ``settings``) if not bound yet; return the stored count.

    ``shards=None`` adopts the stored count (or :data:`DEFAULT_SHARDS` for a
    new cluster). A count other than the stored one raises
    :class:`ShardCountMismatch`, which names the ``shards`` setting.

    ``settings`` (name -> value: the ledger's identity, the record TTL, ...)
    are bound alike, in the same transaction: written where absent,
    compared where present; the first that differs raises
    :class:`SettingMismatch` naming it, this value and the bound one.
    """
    keys = ClusterKeys(cluster)
    want = DEFAULT_SHARDS if shards is None else _check_shards(shards)
    settings = {name: str(value) for name, value in (settings or {}).items()}
    stored = await _bind(client, {keys.shards: str(want), **{keys.setting(n): v for n, v in settings.items()}})
    stored_shards = int(stored[keys.shards])
    if shards is not None and stored_shards != shards:
        raise ShardCountMismatch(cluster, stored_shards, shards)
    for name, value in settings.items():
        if stored[keys.setting(name)] != value:
            raise SettingMismatch(name, value, stored[keys.setting(name)], f"cluster {cluster!r} in etcd")
    return stored_shards


async def _bind(client: aetcd.Client, wanted: dict[str, str]) -> dict[str, str]:
    """Write each key of ``wanted`` that is absent; returns every key's stored value."""
    tx = client.transactions
    stored: dict[str, str] = {}
    missing = dict(wanted)
    while missing:
        ok, responses = await client.transaction(
            # All absent (the cluster's first node): its values become the
            # cluster's. Any present: adopt it, never overwrite it (every
            # SKU's shard, every record's life, the ledger depend on it).
            compare=[tx.create(key.encode()) == 0 for key in missing],
            success=[tx.put(key.encode(), value.encode()) for key, value in missing.items()],
            failure=[tx.get(key.encode()) for key in missing],
        )
        if ok:
            stored.update(missing)
            break
        # Some present: keep them; bind the rest in another round (a cluster
        # initialised before a setting was bound). A failed round found at
        # least one present, so the rounds end.
        for key, found in zip(list(missing), responses, strict=True):
            if found:
                stored[key] = found[0][0].decode()
                del missing[key]
    return stored


async def _stored_shards(client: aetcd.Client, keys: ClusterKeys) -> tuple[int, int]:
    current = await client.get(keys.shards.encode())
    if current is None:
        raise CoordinationError(
            f"cluster {keys.cluster!r} is not initialised in etcd (no {keys.shards}): "
            "check the cluster name, or start its first node"
        )
    return int(current.value), current.mod_revision


@dataclass(frozen=True, slots=True)
class Overrides:
    """The operator's overrides of shard placement."""

    pins: Mapping[int, str] = field(default_factory=dict)
    """shard -> the node that should own it (while live and not drained)."""
    drains: frozenset[str] = frozenset()
    """Nodes that should own no shard (while another node can)."""

    def with_pin(self, shard: int, node: str) -> Overrides:
        """These overrides with ``shard`` pinned to ``node``."""
        return Overrides({**self.pins, shard: node}, self.drains)

    def without_pin(self, shard: int) -> Overrides:
        """These overrides without the pin of ``shard``."""
        return Overrides({s: n for s, n in self.pins.items() if s != shard}, self.drains)

    def without_pins(self) -> Overrides:
        """These overrides with no pin at all (the drains stay)."""
        return Overrides({}, self.drains)

    def with_drain(self, node: str) -> Overrides:
        """These overrides with ``node`` drained."""
        return Overrides(self.pins, self.drains | {node})

    def without_drain(self, node: str) -> Overrides:
        """These overrides with ``node`` not drained."""
        return Overrides(self.pins, self.drains - {node})


async def _read_pins(client: aetcd.Client, keys: ClusterKeys) -> tuple[dict[int, str], int]:
    found = await client.get_prefix(keys.pins.encode())
    pins = {}
    for kv in found:
        name = tail(kv.key, keys.pins)
        if name.isdigit():
            pins[int(name)] = kv.value.decode()
        else:
            log.warning("ignoring a malformed pin key %r", kv.key)
    return pins, found.header.revision


async def _read_overrides(client: aetcd.Client, keys: ClusterKeys) -> tuple[Overrides, int]:
    pins, pins_revision = await _read_pins(client, keys)
    drains_read = await client.get_prefix(keys.drains.encode())
    drains = frozenset(tail(kv.key, keys.drains) for kv in drains_read)
    # Two reads: a watch from just after the earlier one misses nothing.
    return Overrides(pins, drains), min(pins_revision, drains_read.header.revision)


async def read_overrides(client: aetcd.Client, cluster: str) -> Overrides:
    """The pins and drains of ``cluster`` now."""
    overrides, _ = await _read_overrides(client, ClusterKeys(cluster))
    return overrides


def watch_overrides(client: aetcd.Client, cluster: str) -> AsyncGenerator[Overrides, None]:
    """The pins and drains now, then again whenever one changes (snapshots, not events)."""
    keys = ClusterKeys(cluster)
    return snapshots(client, [keys.pins, keys.drains], lambda: _read_overrides(client, keys))


def _audit_puts(client: aetcd.Client, keys: ClusterKeys, audit: bytes | None) -> list[Any]:
    """The put of an operator change's audit record, for the change's own transaction (none without one).

    The key is ``<prefix>audit/<ms>-<uuid>``: unique, and in time order; a
    node copies the records into the ledger, then deletes them
    (:func:`audit_records`, :func:`forget_audit_records`).
    """
    if audit is None:
        return []
    name = f"{keys.audit}{int(time.time() * 1000):013d}-{uuid.uuid4().hex}"
    return [client.transactions.put(name.encode(), audit)]


async def audit_records(client: aetcd.Client, cluster: str, most: int = 500) -> list[tuple[str, bytes]]:
    """The audit records waiting in etcd, oldest first: (key, value), at most ``most``."""
    got = await client.get_prefix(ClusterKeys(cluster).audit.encode(), sort_order="ascend", sort_target="key")
    return [(kv.key.decode(), kv.value) for kv in list(got)[:most]]


async def forget_audit_records(client: aetcd.Client, keys: list[str]) -> None:
    """Delete audit records the ledger holds now, in one transaction."""
    if keys:
        tx = client.transactions
        await client.transaction(compare=[], success=[tx.delete(key.encode()) for key in keys], failure=[])


async def pin(client: aetcd.Client, cluster: str, shard: int, node: str, audit: bytes | None = None) -> None:
    """Pin ``shard`` to ``node``: it owns the shard whenever it is live and not drained.

    ``audit``: an audit record of the change, written in its transaction (see :func:`_audit_puts`)."""
    keys = ClusterKeys(cluster)
    check_id("node id", node)
    stored, revision = await _stored_shards(client, keys)
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < stored:
        raise ValueError(f"shard must be 0 .. {stored - 1} in cluster {cluster!r}, not {shard!r}")
    tx = client.transactions
    ok, _ = await client.transaction(
        # The shard count the shard was checked against is still the
        # cluster's: it was not deleted and initialised anew meanwhile.
        compare=[tx.mod(keys.shards) == revision],
        success=[tx.put(keys.pin(shard).encode(), node.encode()), *_audit_puts(client, keys, audit)],
        failure=[],
    )
    if not ok:
        raise CoordinationError(f"the configuration of cluster {cluster!r} changed while pinning; retry")


async def unpin(client: aetcd.Client, cluster: str, shard: int, audit: bytes | None = None) -> bool:
    """Remove the pin of ``shard``; False (and no audit record) if it had none."""
    return await _delete_one(client, ClusterKeys(cluster), ClusterKeys(cluster).pin(shard), audit)


async def _delete_one(client: aetcd.Client, keys: ClusterKeys, key: str, audit: bytes | None) -> bool:
    tx = client.transactions
    ok, _ = await client.transaction(
        # Only a key that exists: a change that changed nothing leaves no record.
        compare=[tx.version(key.encode()) > 0],
        success=[tx.delete(key.encode()), *_audit_puts(client, keys, audit)],
        failure=[],
    )
    return bool(ok)


async def drain(client: aetcd.Client, cluster: str, node: str, audit: bytes | None = None) -> None:
    """Drain ``node``: its shards move to the other live nodes (it may be live or not); ``audit`` as for :func:`pin`."""
    keys = ClusterKeys(cluster)
    key = keys.drain(node).encode()
    tx = client.transactions
    ok, _ = await client.transaction(
        # Only into an initialised cluster (see the module docstring).
        compare=[tx.version(keys.shards) > 0],
        success=[
            tx.put(key, json.dumps({"since_ms": int(time.time() * 1000)}).encode()),
            *_audit_puts(client, keys, audit),
        ],
        failure=[],
    )
    if not ok:
        await _stored_shards(client, keys)  # raises, naming what is missing
        raise CoordinationError(f"cluster {cluster!r} changed while draining {node!r}; retry")


async def undrain(client: aetcd.Client, cluster: str, node: str, audit: bytes | None = None) -> bool:
    """End the drain of ``node``; False (and no audit record) if it was not drained."""
    keys = ClusterKeys(cluster)
    return await _delete_one(client, keys, keys.drain(node), audit)


async def remove_pins(
    client: aetcd.Client, cluster: str, expected: Mapping[int, str], audit: bytes | None = None
) -> bool:
    """Remove every pin of ``cluster`` in one transaction, if its pins are still ``expected``.

    ``expected`` is what the caller planned with (``Overrides.pins`` of its
    read): False, and nothing removed, when the pins differ from it now or
    change before the removal, so the moves the caller predicted are the
    moves made. Drains stay. ``audit`` as for :func:`pin`.
    """
    from aetcd.utils import prefix_range_end

    keys = ClusterKeys(cluster)
    pins, revision = await _read_pins(client, keys)
    if pins != dict(expected):
        return False
    prefix = keys.pins.encode()
    end = prefix_range_end(prefix)
    tx = client.transactions
    ok, _ = await client.transaction(
        compare=[
            # Only in an initialised cluster (as every override write).
            tx.version(keys.shards) > 0,
            # No pin written since the read: the pins removed are the pins compared.
            tx.mod(prefix, end) < revision + 1,
        ],
        success=[tx.delete(prefix, end), *_audit_puts(client, keys, audit)],
        failure=[],
    )
    return bool(ok)
