"""A node in a cluster, on its own: it joins, owns every shard, refuses another shard count, leaves cleanly.

The module has a Redis of its own: the shards' owner epochs stay in it, and a
standalone node (the session's) would refuse such a Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis as redis_py

from flashstock.lockmgr import init_cluster, live_nodes, owners
from flashstock.server.local.procs import NodeProcess, ProcessError, RedisServer
from flashstock.server.store.keys import CONFIG_KEY, ShardKeys
from tests.helpers import aeventually

pytest_plugins = ["tests.helpers.etcd"]

SHARDS = 8


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """This module's own Redis."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[redis_py.Redis]:
    with redis_py.Redis.from_url(redis_server.url) as client:
        yield client


def etcd_args(etcd_server, cluster_name):
    return ["--etcd", etcd_server.endpoint, "--cluster", cluster_name, "--lease-ttl-s", "5"]


async def read(etcd, cluster_name):
    return await live_nodes(etcd, cluster_name), await owners(etcd, cluster_name)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_node_alone_owns_every_shard_and_frees_them_when_it_stops(
    etcd, etcd_server, cluster_name, redis_server, redis, tmp_path
):
    node = NodeProcess(
        redis_server.url, shards=SHARDS, data_dir=tmp_path, extra_args=etcd_args(etcd_server, cluster_name)
    )
    await asyncio.to_thread(node.start)
    try:

        async def all_owned():
            nodes, owned = await read(etcd, cluster_name)
            return len(owned) == SHARDS and {o.node for o in owned.values()} == set(nodes) == {node.address}

        await aeventually(all_owned, timeout=10, interval=0.05)
        nodes, owned = await read(etcd, cluster_name)
        assert nodes[node.address].address == node.address
        # Fenced in Redis under the epochs etcd gave (the node's shards: 8 of the Redis's keyspace).
        for shard, owner in owned.items():
            assert int(redis.hget(ShardKeys(shard).meta, "epoch")) == owner.epoch
    finally:
        await asyncio.to_thread(node.stop)
    # Stopped gracefully: its lease is revoked, so its keys are gone at once, not a TTL later.
    assert await read(etcd, cluster_name) == ({}, {})


@pytest.mark.asyncio(loop_scope="session")
async def test_a_node_with_another_shard_count_refuses_to_start(
    etcd, etcd_server, cluster_name, redis_server, tmp_path
):
    await init_cluster(etcd, cluster_name, 16)
    node = NodeProcess(
        redis_server.url, shards=SHARDS, data_dir=tmp_path, extra_args=etcd_args(etcd_server, cluster_name)
    )

    with pytest.raises(ProcessError) as caught:
        await asyncio.to_thread(node.start)

    assert "shards" in str(caught.value) and "16" in str(caught.value)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_standalone_node_refuses_a_redis_whose_shards_have_owners(redis_server, redis, tmp_path):
    redis.hset(ShardKeys(3).meta, "epoch", 42)  # as a cluster's owner leaves it (fence.lua)
    redis.delete(CONFIG_KEY)  # ...in a Redis from before settings were bound (else: refused naming `cluster`)
    node = NodeProcess(redis_server.url, shards=SHARDS, data_dir=tmp_path)
    try:
        with pytest.raises(ProcessError) as caught:
            await asyncio.to_thread(node.start)
    finally:
        redis.hdel(ShardKeys(3).meta, "epoch")
    assert not redis.exists(CONFIG_KEY)  # refused before binding the Redis as a standalone node's

    assert "this Redis belongs to a cluster" in str(caught.value) and "--etcd" in str(caught.value)
