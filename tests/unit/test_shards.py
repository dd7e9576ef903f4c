"""Shard placement is stable across processes and languages, and spreads SKUs evenly."""

import hashlib
from collections import Counter

import pytest

from flashstock.lockmgr import shard_of, stable_hash
from flashstock.server.store.keys import ShardKeys


def test_stable_hash_is_blake2b_first_eight_bytes_big_endian():
    # What a Go or Java service would compute from the documented recipe.
    for key in ("hot", "sku-42", "é-unicode", ""):
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        assert stable_hash(key) == int.from_bytes(digest, "big")


def test_shard_of_is_pinned_for_known_skus():
    # Pinned vectors: a change here moves every SKU of a live cluster.
    assert [shard_of(s, 64) for s in ("hot", "demo-hot-sku", "a", "sku-1")] == [
        stable_hash("hot") % 64,
        stable_hash("demo-hot-sku") % 64,
        stable_hash("a") % 64,
        stable_hash("sku-1") % 64,
    ]
    assert shard_of("hot", 64) == 41


def test_shards_spread_evenly():
    counts = Counter(shard_of(f"sku-{i}", 64) for i in range(64_000))
    assert len(counts) == 64
    assert max(counts.values()) < 1.15 * 1000 and min(counts.values()) > 0.85 * 1000


def test_shard_count_must_be_positive():
    with pytest.raises(ValueError):
        shard_of("x", 0)


def test_every_key_of_a_shard_carries_its_hash_tag():
    keys = ShardKeys(7)
    names = [
        keys.sku("a"),
        keys.users("a"),
        keys.record_bucket(3, "a"),
        keys.admin_record("a", "r"),
        keys.admin_record("a:1", "r"),
        keys.admin_record("a", "1:r"),
        keys.log,
        keys.hold_expiries,
        keys.sold_out,
        keys.meta,
        keys.persisted,
        keys.rebuild_lock,
    ]
    assert all("{s7}" in n for n in names)
    assert len(set(names)) == len(names)
