"""Redis refuses a stale owner's duty writes: the epoch checks inside the scripts.

Each duty script (reap.lua, announce.lua, rebuild.lua's begin) and the
claim's fence.lua run here against the session's real Redis, on a shard of
the test's own (the shard number is far above the node's 64, so the node
never touches it).
"""

from __future__ import annotations

import itertools

import pytest

from flashstock.server.store.keys import PERSISTED_CHANNEL, SHARD_READY, ShardKeys
from flashstock.server.store.scripts import script_source

_shards = itertools.count(9000)


@pytest.fixture
def shard(redis):
    number = next(_shards)
    yield number
    keys = list(redis.scan_iter(match=f"fs:{{s{number}}}:*"))
    if keys:
        redis.delete(*keys)


def run(redis, name, keys, args):
    return redis.register_script(script_source(name))(keys=keys, args=args)


def fence(redis, shard, epoch, node="n"):
    k = ShardKeys(shard)
    return run(redis, "fence", [k.meta], [k.prefix, epoch, node])


def test_fence_raises_the_epoch_and_refuses_a_lower_one(redis, shard):
    k = ShardKeys(shard)
    assert fence(redis, shard, 7, "node-a") == [1, 0]
    assert fence(redis, shard, 9, "node-b") == [1, 7]
    assert fence(redis, shard, 8, "node-a") == [-1, 9]

    meta = redis.hgetall(k.meta)
    assert (meta[b"epoch"], meta[b"owner"]) == (b"9", b"node-b")


def test_reap_of_a_stale_owner_is_refused_and_changes_nothing(redis, shard):
    k = ShardKeys(shard)
    redis.hset(k.meta, mapping={"state": SHARD_READY, "gen": "1"})
    redis.zadd(k.hold_expiries, {"sku-1\nhold-1": 0})  # due long ago (its record is gone: reaping just drops it)
    fence(redis, shard, 5)

    assert run(redis, "reap", [k.hold_expiries, k.log], [k.prefix, 100, 86_400_000, 4]) == -1
    assert redis.zcard(k.hold_expiries) == 1
    assert run(redis, "reap", [k.hold_expiries, k.log], [k.prefix, 100, 86_400_000, 5]) == 0
    assert redis.zcard(k.hold_expiries) == 0


def test_announce_of_a_stale_owner_is_refused_and_changes_nothing(redis, shard):
    k = ShardKeys(shard)
    first = redis.xadd(k.log, {"t": "D"}).decode()
    second = redis.xadd(k.log, {"t": "D"}).decode()
    fence(redis, shard, 5)
    ms, seq = first.split("-")
    after_first = f"{ms}-{int(seq) + 1}"

    args = [k.prefix, 3, first, after_first, PERSISTED_CHANNEL, f"{shard} {first}"]
    assert run(redis, "announce", [k.persisted, k.log], args) == -1
    assert redis.get(k.persisted) is None and redis.xlen(k.log) == 2

    args[1] = 5
    assert run(redis, "announce", [k.persisted, k.log], args) == 1
    assert redis.get(k.persisted) == first.encode()
    assert [entry_id.decode() for entry_id, _ in redis.xrange(k.log)] == [second]


def test_unfenced_writes_of_a_standalone_node_pass(redis, shard):
    k = ShardKeys(shard)
    assert run(redis, "reap", [k.hold_expiries, k.log], [k.prefix, 100, 86_400_000, ""]) == 0
    assert redis.hget(k.meta, "epoch") is None


def test_rebuild_restores_the_ledgers_epoch_and_fences_a_stale_warden(redis, shard):
    k = ShardKeys(shard)
    lock = f"lock:{k.rebuild_lock}"
    redis.set(lock, "token")
    # Redis lost the shard (its meta too): the ledger says epoch 12.
    begin = ["begin", "token", 1, k.prefix, 86_400_000, "", "0-0"]
    assert run(redis, "rebuild", [k.meta, lock], [*begin, 12, 11]) == b"FENCED"
    assert redis.hget(k.meta, "epoch") == b"12"  # restored, even though the stale warden wrote nothing else
    assert redis.hget(k.meta, "state") is None
    assert run(redis, "rebuild", [k.meta, lock], [*begin, 12, 12]) == b"OK"
    assert redis.hget(k.meta, "state") == b"building"
    redis.delete(lock)
