"""Which shard a SKU lives in.

``shard = stable_hash(sku_id) mod S``: the first eight bytes of BLAKE2b over
the UTF-8 SKU id, read big-endian. BLAKE2b is in every language's standard
library, so a Go or Java service computes the same shard as this one; Python's
``hash()`` is salted per process and would not.

The Redis key names of a shard are the store's (``flashstock.server.store.keys``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache

DEFAULT_SHARDS = 64
"""Logical shards of a cluster unless set otherwise at cluster init."""


def stable_hash(key: str) -> int:
    """A 64-bit hash of ``key`` that is the same in every process and language."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


@lru_cache(maxsize=65536)
def shard_of(sku_id: str, shards: int = DEFAULT_SHARDS) -> int:
    """The shard of ``sku_id`` among ``shards`` logical shards."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, not {shards}")
    return stable_hash(sku_id) % shards


def shard_ranges(shards: Iterable[int]) -> str:
    """Shard numbers as ranges: ``[0, 1, 2, 3, 7]`` -> ``"0-3,7"`` (``"-"`` for none)."""
    ordered = sorted(set(shards))
    if not ordered:
        return "-"
    parts = []
    start = prev = ordered[0]
    for shard in [*ordered[1:], None]:
        if shard is not None and shard == prev + 1:
            prev = shard
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if shard is not None:
            start = prev = shard
    return ",".join(parts)
