"""One reading of a cluster in etcd, and what a change of its overrides would do.

:class:`ClusterView` holds what etcd says at one moment: the shard count,
the live nodes, the shards' owners and the operator's pins and drains. Its
methods are pure (:func:`~flashstock.lockmgr.assign` of what was read), so a
tool decides on one read, tested without etcd; :func:`read_view` is the read.
The operator's commands (``flashstock nodes`` and ``shards``), the demo and
the cluster bench look at a cluster through it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._assign import assign, moves
from ._cluster import Overrides, _stored_shards, read_overrides
from ._keys import ClusterKeys
from ._owner import ShardOwner, owners
from ._session import NodeInfo, live_nodes

if TYPE_CHECKING:
    import aetcd

OWNER_POLL_S = 0.2
"""How often :func:`wait_for_owner` looks at the shard's owner."""


@dataclass(frozen=True)
class ClusterView:
    """One reading of a cluster in etcd (:func:`read_view`)."""

    cluster: str
    """The cluster's name."""
    shards: int
    """Its shard count."""
    nodes: Mapping[str, NodeInfo]
    """The live nodes, by id."""
    owners: Mapping[int, ShardOwner]
    """The owned shards' owners (unowned shards are absent)."""
    overrides: Overrides
    """The pins and drains."""

    def desired(self, overrides: Overrides | None = None) -> dict[int, str]:
        """Where :func:`assign` puts each shard, with ``overrides`` (default: the current ones)."""
        chosen = self.overrides if overrides is None else overrides
        return assign(self.shards, self.nodes, chosen.pins, chosen.drains)

    def moves_if(self, overrides: Overrides) -> dict[int, tuple[str | None, str | None]]:
        """The shards whose desired owner changes should the overrides become ``overrides``."""
        return moves(self.desired(), self.desired(overrides))

    def owned_count(self, node: str) -> int:
        """How many shards ``node`` owns."""
        return sum(1 for o in self.owners.values() if o.node == node)


async def read_view(client: aetcd.Client, cluster: str) -> ClusterView:
    """Read the cluster's shard count, live nodes, owners and overrides.

    An uninitialised cluster (no shard count in etcd: a typo in its name, or
    another etcd) raises :class:`~flashstock.lockmgr.CoordinationError`.
    """
    shards, _ = await _stored_shards(client, ClusterKeys(cluster))
    return ClusterView(
        cluster,
        shards,
        await live_nodes(client, cluster),
        await owners(client, cluster),
        await read_overrides(client, cluster),
    )


async def wait_for_owner(
    client: aetcd.Client, cluster: str, shard: int, node: str, wait_s: float, *, poll_s: float = OWNER_POLL_S
) -> ShardOwner | None:
    """The shard's owner once it is ``node``, polling for up to ``wait_s``; the last owner seen (or None) if not."""
    deadline = time.monotonic() + wait_s
    while True:
        owner = (await owners(client, cluster)).get(shard)
        if (owner is not None and owner.node == node) or time.monotonic() >= deadline:
            return owner
        await asyncio.sleep(poll_s)
