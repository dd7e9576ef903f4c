"""The settings a node's peers must share, bound once by the first node, in Redis and etcd.

Nodes on one Redis serve the same keys and drain the same shard logs, so
some settings must be equal on all of them, or data is lost or doubled
without a word:

- ``ledger_id`` (the identity of the node's ledger, made with its schema):
  whichever node runs a shard's persister writes its log into *its* ledger,
  and a rebuild reads *its* ledger back. Two ledgers each hold part of the
  sales; after a Redis loss the rebuild from one of them forgets the other's
  (642 units sold of a stock of 600).
- ``shards``: ``stable_hash(sku) mod shards`` places every SKU's keys; with
  another count a node finds a SKU nowhere and puts it again under another
  shard (two stocks for one SKU).
- ``request_ttl_s``: records live in buckets numbered ``now // ttl``; a node
  with another TTL looks in other buckets, so a resend takes a second unit,
  and a hold recorded by one node is not found when another settles or
  reaps it (its units never come back).
- ``cluster`` (its name, or none for a standalone node): a standalone node's
  duties write without epochs, and two clusters fence with epochs from two
  etcds that cannot be compared: either way two nodes run one shard's
  duties.

Not bound: what changes only the node's own behaviour (workers, pools,
timeouts, intervals, the default hold length): a difference there loses
nothing.

The first node writes its values into Redis (``fs:config``, bind.lua) and,
for a cluster, into etcd (:func:`~flashstock.lockmgr.init_cluster`); every
later node compares and refuses to start on a difference, naming the
setting, its value and the value in force. etcd keeps the binding when
Redis loses everything; a running node binds Redis again then (see
``Node._recheck_binding``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import cast

from flashstock.lockmgr import (
    NO_ACCESS,
    EtcdAccess,
    SettingMismatch,
    ShardCountMismatch,
    etcd_client,
    init_cluster,
    stable_hash,
)
from flashstock.server.store.keys import CONFIG_KEY, SKU_INDEX_KEY, ShardKeys
from flashstock.server.store.redis import AsyncRedis, AsyncScript
from flashstock.server.store.replies import BindReply

REDIS = f"Redis ({CONFIG_KEY})"
"""Where a Redis binding lives, as messages name it."""

_MOST_SHARDS = 16384
"""The largest ``shards`` setting (``_config.py`` refuses more): the counts an old Redis is searched for."""

_SAMPLE = 16
"""SKUs of an unbound Redis checked for their placement."""


@dataclass(frozen=True, slots=True)
class BoundSettings:
    """This node's values of the settings its peers must share (see the module docstring)."""

    ledger_id: str
    """The identity of the node's ledger (``Ledger.identity``)."""
    shards: int
    """The ``shards`` setting."""
    request_ttl_s: int
    """The ``request_ttl_s`` setting."""
    cluster: str
    """The ``cluster`` setting for a node with etcd; ``""`` for a standalone node."""

    def fields(self) -> dict[str, str]:
        """The settings as Redis and etcd store them: name -> decimal or text."""
        return {name: str(value) for name, value in asdict(self).items()}


def shown(setting: str, value: str) -> str:
    """A bound value as a message shows it."""
    if setting == "cluster":
        return f"{value!r}" if value else "none (standalone)"
    return value


def first_mismatch(mine: BoundSettings, bound: Mapping[str, str], where: str) -> SettingMismatch | None:
    """The first of this node's settings that differs from ``bound`` (absent ones are not compared)."""
    for setting, value in mine.fields().items():
        if setting in bound and bound[setting] != value:
            return SettingMismatch(setting, shown(setting, value), shown(setting, bound[setting]), where)
    return None


def explain(error: SettingMismatch | ShardCountMismatch) -> str:
    """The error's message, with what the operator should do about it."""
    setting = getattr(error, "setting", "shards")
    advice = {
        "ledger_id": "give this node the ledger the others use (`ledger`, or the `data_dir` of its embedded "
        "SQLite file); `flashstock ledger status` shows a ledger's ledger_id",
        "request_ttl_s": "set `request_ttl_s` to the value in force",
        "cluster": "start this node with the `etcd` and `cluster` of the nodes already on this Redis, "
        "or give it a Redis of its own",
        "shards": "set `shards` to the value in force (a shard count never changes)",
    }
    return f"{error}: {advice[setting]}" if isinstance(error, SettingMismatch) else str(error)


async def bind_in_redis(
    redis: AsyncRedis, script: AsyncScript, mine: BoundSettings, check_placement: bool = True
) -> bool:
    """Compare with, or make, the Redis binding; True when this call made it.

    Raises :class:`SettingMismatch` for a setting that differs. A bound Redis
    costs one HGETALL (this runs again every few seconds); an unbound one
    that holds SKUs (from before the binding) is checked for where its SKUs
    live before it is bound (``check_placement``; a running node that finds
    the binding gone after a Redis loss binds again without: the SKUs then
    in Redis are the ones rebuilt since, by nodes bound as it is).
    """
    # The node's clients do not decode replies: bytes, which redis-py's types (bytes | str) cannot tell.
    raw = cast("dict[bytes, bytes]", await redis.hgetall(CONFIG_KEY))
    bound = {k.decode(): v.decode() for k, v in raw.items()}
    if set(bound) >= set(mine.fields()):
        created = False
    else:
        if not bound and check_placement:
            await _check_placement(redis, mine.shards)
        reply = BindReply.decode(
            await script(keys=[CONFIG_KEY], args=[x for pair in mine.fields().items() for x in pair])
        )
        created, bound = reply.created, reply.bound
    error = first_mismatch(mine, bound, REDIS)
    if error is not None:
        raise error
    return created


async def _check_placement(redis: AsyncRedis, shards: int) -> None:
    """Refuse ``shards`` when an unbound Redis's SKUs are not where that many shards would put them."""
    sampled = [s.decode() for s in cast("list[bytes]", await redis.zrange(SKU_INDEX_KEY, 0, _SAMPLE - 1))]
    if not sampled:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for sku_id in sampled:
            pipe.exists(ShardKeys(stable_hash(sku_id) % shards).sku(sku_id))
        here = await pipe.execute()
    for sku_id in (s for s, found in zip(sampled, here, strict=True) if not found):
        # A SKU whose keys are nowhere lost its state (a rebuild brings it
        # back): it says nothing; nor does one that a rebuild has just put
        # where this count puts it. One found only under another count does.
        counts = await _counts_placing(redis, sku_id)
        if shards in counts:
            continue
        for count in counts:
            if await _all_placed(redis, sampled, count):
                raise SettingMismatch(
                    "shards",
                    str(shards),
                    str(count),
                    "Redis",
                    f"where its SKUs are, e.g. {sku_id!r} under shard {stable_hash(sku_id) % count} of {count}: "
                    "a Redis from before settings were bound",
                )
        if counts:
            raise SettingMismatch(
                "shards",
                str(shards),
                "another count",
                "Redis",
                f"SKU {sku_id!r} is not under shard {stable_hash(sku_id) % shards} but elsewhere: "
                "a Redis from before settings were bound",
            )


async def _counts_placing(redis: AsyncRedis, sku_id: str) -> list[int]:
    """The shard counts under which ``sku_id``'s hash exists in Redis, smallest first."""
    digest = stable_hash(sku_id)
    by_shard: dict[int, list[int]] = {}
    for count in range(1, _MOST_SHARDS + 1):
        by_shard.setdefault(digest % count, []).append(count)
    async with redis.pipeline(transaction=False) as pipe:
        for shard in by_shard:
            pipe.exists(ShardKeys(shard).sku(sku_id))
        found = await pipe.execute()
    return sorted(count for shard, hit in zip(by_shard, found, strict=True) if hit for count in by_shard[shard])


async def _all_placed(redis: AsyncRedis, sku_ids: list[str], count: int) -> bool:
    """Whether every SKU of ``sku_ids`` is where ``count`` shards put it."""
    async with redis.pipeline(transaction=False) as pipe:
        for sku_id in sku_ids:
            pipe.exists(ShardKeys(stable_hash(sku_id) % count).sku(sku_id))
        found = await pipe.execute()
    return all(found)


async def bind_in_etcd(
    endpoints: list[str], cluster: str, mine: BoundSettings, timeout: float = 10.0, *, access: EtcdAccess = NO_ACCESS
) -> None:
    """Compare with, or make, the cluster's binding in etcd (it outlives a Redis loss).

    Raises :class:`ShardCountMismatch` or :class:`SettingMismatch` for a
    setting that differs, ``TimeoutError`` or the client's error when etcd
    does not answer.
    """
    client = etcd_client(endpoints, access=access)
    try:
        settings = {"ledger_id": mine.ledger_id, "request_ttl_s": str(mine.request_ttl_s)}
        await asyncio.wait_for(init_cluster(client, cluster, mine.shards, settings), timeout)
    finally:
        await client.close()
