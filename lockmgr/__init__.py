"""Coordination: shard placement, etcd membership, leases, shard owners and epochs.

- Which shard a SKU lives in (:func:`shard_of`); the Redis key names of a
  shard are the store's (``flashstock.server.store.keys``).
- Which live node should own each shard: rendezvous hashing with the
  operator's pins and drains (:func:`assign`, pure).
- A node's etcd session: one lease, kept alive, that says when it is lost
  (:class:`EtcdSession`), and the node's registration under it.
- Shard ownership: an etcd transaction on the shard's owner key, bound to
  the session's lease; the key's create revision is the shard's epoch, the
  fencing token every duty's write carries (:func:`claim`, :class:`ShardLease`).
- The cluster's settings in etcd: the shard count and the other settings
  every node must share, bound once (:func:`init_cluster`), and the pins
  and drains (:func:`pin`, :func:`drain`, :func:`remove_pins`, ...).
- One reading of a whole cluster (:func:`read_view`, :class:`ClusterView`):
  what the operator's commands show, and the moves a change of the pins and
  drains would cause.

Every etcd write flashstock makes is in this package.

The etcd key layout is in :class:`ClusterKeys`'s module. etcd is reached
through aetcd (asyncio); :func:`etcd_client` makes a client, and
:func:`grpc_target` and :func:`check_id` are its rules for endpoints and ids
(the client checks its settings with them).

Its errors are a branch of flashstock's one tree, rooted in
:mod:`flashstock.client.errors` (which imports nothing of flashstock, so
lockmgr and the client import each other without a cycle).
"""

from ._assign import assign, moves
from ._client import NO_ACCESS, EtcdAccess, auth_refusal, etcd_client, grpc_target
from ._cluster import (
    Overrides,
    audit_records,
    drain,
    forget_audit_records,
    init_cluster,
    pin,
    read_overrides,
    remove_pins,
    undrain,
    unpin,
    watch_overrides,
)
from ._errors import CoordinationError, LeaseLost, NodeIdTaken, SettingMismatch, ShardCountMismatch
from ._keys import ClusterKeys, check_id
from ._owner import ShardLease, ShardOwner, claim, owner_compare, owners, release, watch_owners
from ._session import DEFAULT_SESSION, EtcdSession, NodeInfo, SessionConfig, live_nodes, watch_nodes
from ._shards import DEFAULT_SHARDS, shard_of, shard_ranges, stable_hash
from ._view import ClusterView, read_view, wait_for_owner

__all__ = [
    "DEFAULT_SESSION",
    "DEFAULT_SHARDS",
    "NO_ACCESS",
    "ClusterKeys",
    "ClusterView",
    "CoordinationError",
    "EtcdAccess",
    "EtcdSession",
    "LeaseLost",
    "NodeIdTaken",
    "NodeInfo",
    "Overrides",
    "SessionConfig",
    "SettingMismatch",
    "ShardCountMismatch",
    "ShardLease",
    "ShardOwner",
    "assign",
    "audit_records",
    "auth_refusal",
    "check_id",
    "claim",
    "drain",
    "etcd_client",
    "forget_audit_records",
    "grpc_target",
    "init_cluster",
    "live_nodes",
    "moves",
    "owner_compare",
    "owners",
    "pin",
    "read_overrides",
    "read_view",
    "release",
    "remove_pins",
    "shard_of",
    "shard_ranges",
    "stable_hash",
    "undrain",
    "unpin",
    "wait_for_owner",
    "watch_nodes",
    "watch_overrides",
    "watch_owners",
]
