"""Coordination: shard placement, and (later) etcd membership, leases and epochs.

Today it holds what every part agrees on about shards: which shard a SKU lives
in and the Redis key names of a shard. The etcd leases, shard owners and
fencing epochs of the cluster issue land here.
"""

from ._shards import (
    DEFAULT_SHARDS,
    PERSISTED_CHANNEL,
    SKU_INDEX_KEY,
    SOLD_OUT_CHANNEL,
    ShardKeys,
    shard_of,
    stable_hash,
)

__all__ = [
    "DEFAULT_SHARDS",
    "PERSISTED_CHANNEL",
    "SKU_INDEX_KEY",
    "SOLD_OUT_CHANNEL",
    "ShardKeys",
    "shard_of",
    "stable_hash",
]
