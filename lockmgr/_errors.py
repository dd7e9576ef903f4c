"""The errors of coordination, a branch of flashstock's one error tree
(the whole tree is drawn in :mod:`flashstock.client.errors`).

::

    FlashstockError
    ├── SettingMismatch         .setting .node_value .bound_value .where
    │                           a setting the node's peers must share differs from the one bound
    └── CoordinationError       etcd refused or cannot do what was asked
        ├── ShardCountMismatch  .stored .requested   the node's `shards` is not the cluster's
        ├── LeaseLost                                the session's lease is gone: stop every duty
        └── NodeIdTaken         .node                another live session registered this node id

A shard that someone else owns is not an error: :func:`~flashstock.lockmgr.claim`
returns ``None``.
"""

from __future__ import annotations

from flashstock.client.errors import FlashstockError


class SettingMismatch(FlashstockError):
    """A setting that every node of a cluster (or on one Redis) must share differs from the bound one.

    The first node binds such settings (in etcd for a cluster, in Redis for
    every node using it); a node that disagrees must not start, or must stop.
    """

    reason = "SETTING_MISMATCH"

    def __init__(
        self, setting: str, node_value: str, bound_value: str, where: str, how: str = "bound by the first node"
    ) -> None:
        super().__init__(f"{setting}: this node has {node_value}, {where} has {bound_value} ({how})")
        self.setting = setting
        """The setting's name (as in ``flashstock serve --help``, or ``ledger_id``)."""
        self.node_value = node_value
        """This node's value."""
        self.bound_value = bound_value
        """The value in force."""
        self.where = where
        """Where the value in force is bound: etcd (a cluster) or Redis."""


class CoordinationError(FlashstockError):
    """etcd refused or cannot do what was asked."""

    reason = "COORDINATION"


class ShardCountMismatch(CoordinationError):
    """The node was started with another shard count than the cluster's."""

    reason = "SHARD_COUNT_MISMATCH"

    def __init__(self, cluster: str, stored: int, requested: int) -> None:
        super().__init__(
            f"cluster {cluster!r} has shards={stored} (set at cluster init, kept in etcd), "
            f"but this node was started with shards={requested}: set the `shards` setting to {stored} "
            "(a cluster's shard count never changes)"
        )
        self.cluster = cluster
        """The cluster's name."""
        self.stored = stored
        """The shard count the cluster was initialised with."""
        self.requested = requested
        """The shard count this node asked for."""


class LeaseLost(CoordinationError):
    """The session's lease expired, was revoked, or its local deadline passed.

    A lost session stays lost: open a new one (a new lease) to take part again.
    """

    reason = "LEASE_LOST"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class NodeIdTaken(CoordinationError):
    """Another live session has registered this node id."""

    reason = "NODE_ID_TAKEN"

    def __init__(self, cluster: str, node: str) -> None:
        super().__init__(
            f"node id {node!r} is registered in cluster {cluster!r} by another live session: "
            "give every node its own id, or wait for the old session's lease to expire"
        )
        self.cluster = cluster
        """The cluster's name."""
        self.node = node
        """The node id that is taken."""
