"""Coordination against a real etcd: leases, membership, shard claims and their epochs.

The promise behind these tests (DESIGN.md, "Shards and their owners"): a
shard has at most one owner whose session is alive, a later owner always
holds a higher epoch, and an owner that stops refreshing (dead, paused, cut
off) knows it is lost by its own clock before anyone else can take over.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from flashstock.lockmgr import (
    ClusterView,
    CoordinationError,
    LeaseLost,
    NodeIdTaken,
    Overrides,
    SettingMismatch,
    ShardCountMismatch,
    ShardLease,
    claim,
    drain,
    etcd_client,
    init_cluster,
    live_nodes,
    owners,
    pin,
    read_overrides,
    read_view,
    release,
    remove_pins,
    undrain,
    unpin,
    wait_for_owner,
    watch_nodes,
    watch_overrides,
    watch_owners,
)
from flashstock.lockmgr._keys import ClusterKeys
from tests.helpers import aeventually

pytest_plugins = ["tests.helpers.etcd"]


async def during(seconds: float, check, interval: float = 0.1) -> None:
    """Run ``check`` (async) every ``interval`` for ``seconds``: a promise that must hold throughout."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await check()
        await asyncio.sleep(interval)


class Follow:
    """Collects what an async iterator yields, on a task of its own, until stopped."""

    def __init__(self, iterator) -> None:
        self.iterator = iterator
        self.seen: list = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for item in self.iterator:
            self.seen.append(item)

    def last(self):
        assert self.seen, "nothing yielded yet"
        return self.seen[-1]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.iterator.aclose()


# -- sessions and membership ---------------------------------------------------


async def test_keepalive_keeps_the_node_registered_past_its_ttl(etcd, cluster_name, open_session):
    session = await open_session("node-a", ttl=1)
    await session.register("127.0.0.1:5001")
    first_deadline = session.deadline()

    async def still_registered() -> None:
        assert session.alive()
        assert "node-a" in await live_nodes(etcd, cluster_name)

    await during(2.5, still_registered)  # two and a half TTLs
    assert session.deadline() > first_deadline + 1.5
    # etcd reports whole seconds left (0 for "under a second") and -1 once the lease is gone.
    assert (await etcd.get_lease_info(session.lease_id, keys=False)).TTL >= 0


async def test_registration_carries_the_address_and_is_bound_to_the_lease(etcd, cluster_name, open_session):
    session = await open_session("node-a")
    info = await session.register("127.0.0.1:5001")
    nodes = await session.live_nodes()
    assert nodes == {"node-a": info}
    assert info.address == "127.0.0.1:5001" and info.lease == session.lease_id
    raw = await etcd.get(ClusterKeys(cluster_name).node("node-a").encode())
    assert raw.lease == session.lease_id and json.loads(raw.value)["address"] == "127.0.0.1:5001"
    # Registering again moves the address, keeps the lease.
    await session.register("127.0.0.1:5002")
    assert (await session.live_nodes())["node-a"].address == "127.0.0.1:5002"


async def test_registration_carries_the_metrics_address_and_reads_old_records(etcd, cluster_name, open_session):
    session = await open_session("node-a")
    info = await session.register("127.0.0.1:5001", metrics="127.0.0.1:9101")
    assert (await session.live_nodes())["node-a"] == info
    assert info.metrics == "127.0.0.1:9101"
    # A registration written before the field existed (no "metrics") is read as metrics "".
    key = ClusterKeys(cluster_name).node("node-b").encode()
    await etcd.put(key, json.dumps({"address": "127.0.0.1:5002", "started_ms": 1}).encode(), lease=session.lease_id)
    assert (await session.live_nodes())["node-b"].metrics == ""


async def test_closing_the_session_removes_the_node_at_once(etcd, cluster_name, open_session):
    session = await open_session("node-a", ttl=5)
    await session.register("127.0.0.1:5001")
    await session.close()
    assert session.lost.is_set() and not session.alive()
    # Revoked, not left to expire: gone right away although the TTL is 5 s.
    assert "node-a" not in await live_nodes(etcd, cluster_name)
    with pytest.raises(LeaseLost):
        await claim(session, 0)


async def test_a_node_id_is_held_by_one_live_session(cluster_name, open_session):
    first = await open_session("node-a", ttl=5)
    await first.register("127.0.0.1:5001")
    second = await open_session("node-a", ttl=5)
    with pytest.raises(NodeIdTaken, match="node-a"):
        await second.register("127.0.0.1:5002", wait=0)
    # Once the first session is gone, a waiting register takes the id.
    closing = asyncio.create_task(first.close())
    info = await second.register("127.0.0.1:5002", wait=5)
    await closing
    assert (await second.live_nodes()) == {"node-a": info}


async def test_watch_nodes_sees_joins_and_leaves(etcd, cluster_name, open_session):
    follow = Follow(watch_nodes(etcd, cluster_name))
    try:
        await aeventually(lambda: follow.seen and follow.last() == {})
        a = await open_session("node-a")
        b = await open_session("node-b")
        await a.register("127.0.0.1:5001")
        await b.register("127.0.0.1:5002")
        await aeventually(lambda: set(follow.last()) == {"node-a", "node-b"})
        await b.close()
        await aeventually(lambda: set(follow.last()) == {"node-a"})
    finally:
        await follow.stop()


async def test_session_is_lost_when_etcd_drops_its_lease(etcd, cluster_name, open_session):
    session = await open_session("node-a", ttl=5, keepalive_interval=0.3)
    await etcd.revoke_lease(session.lease_id)  # e.g. an operator, or etcd after a long partition
    # The next keepalive hears TTL 0, long before the local deadline (4 s away).
    await asyncio.wait_for(session.lost.wait(), timeout=2)
    assert "expired" in session.lost_reason
    with pytest.raises(LeaseLost):
        await claim(session, 0)


# -- claims and epochs ---------------------------------------------------------


async def test_a_claim_is_exclusive_between_sessions(cluster_name, open_session):
    a = await open_session("node-a")
    b = await open_session("node-b")
    for shard in range(16):
        got_a, got_b = await asyncio.gather(claim(a, shard), claim(b, shard))
        assert (got_a is None) != (got_b is None), (shard, got_a, got_b)
        winner, loser = (a, b) if got_a else (b, a)
        lease = got_a or got_b
        # Claiming again is idempotent for the owner and still refused to the other.
        assert await claim(winner, shard) == lease
        assert await claim(loser, shard) is None


async def test_release_then_a_claim_by_another_gives_a_higher_epoch(etcd, cluster_name, open_session):
    a = await open_session("node-a")
    b = await open_session("node-b")
    first = await claim(a, 3)
    assert isinstance(first, ShardLease) and first.node == "node-a" and first.shard == 3
    assert (await owners(etcd, cluster_name))[3].epoch == first.epoch

    assert await release(a, first)
    assert not await release(a, first)  # already gone
    second = await claim(b, 3)
    assert second is not None and second.epoch > first.epoch
    owner = (await owners(etcd, cluster_name))[3]
    assert (owner.node, owner.epoch, owner.lease) == ("node-b", second.epoch, b.lease_id)
    # The old lease cannot free the new owner's shard, and the old owner cannot take it back.
    assert not await release(a, first)
    assert await claim(a, 3) is None


async def test_epoch_is_the_owner_keys_create_revision(etcd, cluster_name, open_session):
    session = await open_session("node-a")
    lease = await claim(session, 7)
    raw = await etcd.get(ClusterKeys(cluster_name).owner(7).encode())
    assert lease.epoch == raw.create_revision == raw.mod_revision
    assert raw.lease == session.lease_id


async def test_owner_paused_past_its_lease_is_lost_before_a_successor_claims(etcd, cluster_name, open_session):
    old = await open_session("node-old", ttl=1)
    new = await open_session("node-new", ttl=1)
    stale = await claim(old, 5)
    lost_at: list[float] = []
    stamp = asyncio.create_task(old.lost.wait())
    stamp.add_done_callback(lambda _t: lost_at.append(time.monotonic()))

    # The old owner's process stops refreshing (a pause, as etcd sees it);
    # nothing tells it so but its own clock.
    old._keepalive_task.cancel()
    paused_at = time.monotonic()
    assert await claim(new, 5) is None  # its lease still holds the shard

    fresh = await aeventually(lambda: claim(new, 5), timeout=5)
    claimed_at = time.monotonic()
    await stamp

    assert "local deadline" in old.lost_reason
    assert lost_at[0] <= paused_at + old.config.ttl  # by its own deadline, not later than the TTL
    assert lost_at[0] < claimed_at  # it knew before the successor took over
    assert fresh.epoch > stale.epoch  # and the store fences its late writes
    assert not await release(old, stale)
    with pytest.raises(LeaseLost):
        await claim(old, 6)
    assert (await owners(etcd, cluster_name))[5].node == "node-new"


async def test_watch_owners_sees_claims_and_expiry(etcd, cluster_name, open_session):
    follow = Follow(watch_owners(etcd, cluster_name))
    try:
        a = await open_session("node-a")
        lease = await claim(a, 2)
        await aeventually(lambda: follow.seen and 2 in follow.last() and follow.last()[2].epoch == lease.epoch)
        await a.close()
        await aeventually(lambda: follow.last() == {})
    finally:
        await follow.stop()


# -- cluster settings ----------------------------------------------------------


async def test_cluster_init_stores_the_shard_count_once_and_refuses_another(etcd, cluster_name):
    assert await init_cluster(etcd, cluster_name, 16) == 16
    assert await init_cluster(etcd, cluster_name, 16) == 16
    assert await init_cluster(etcd, cluster_name) == 16  # None adopts the stored count
    with pytest.raises(ShardCountMismatch, match="shards") as caught:
        await init_cluster(etcd, cluster_name, 32)
    assert (caught.value.stored, caught.value.requested) == (16, 32)
    assert (await etcd.get(ClusterKeys(cluster_name).shards.encode())).value == b"16"


async def test_cluster_init_binds_the_other_settings_once_and_names_one_that_differs(etcd, cluster_name):
    await init_cluster(etcd, cluster_name, 16)  # a cluster from before these settings were bound
    bound = {"ledger_id": "L-1", "request_ttl_s": "86400"}
    assert await init_cluster(etcd, cluster_name, 16, bound) == 16  # bound now, by this node
    assert await init_cluster(etcd, cluster_name, 16, bound) == 16

    with pytest.raises(SettingMismatch) as caught:
        await init_cluster(etcd, cluster_name, 16, {**bound, "request_ttl_s": "600"})

    error = caught.value
    assert (error.setting, error.node_value, error.bound_value) == ("request_ttl_s", "600", "86400")
    assert str(error).startswith(f"request_ttl_s: this node has 600, cluster {cluster_name!r} in etcd has 86400")
    assert (await etcd.get(ClusterKeys(cluster_name).setting("request_ttl_s").encode())).value == b"86400"


async def test_racing_first_nodes_agree_on_one_shard_count(etcd, cluster_name):
    results = await asyncio.gather(
        init_cluster(etcd, cluster_name, 8), init_cluster(etcd, cluster_name, 16), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, int)]
    losers = [r for r in results if isinstance(r, ShardCountMismatch)]
    assert len(winners) == 1 and len(losers) == 1
    assert losers[0].stored == winners[0]


async def test_pins_and_drains_round_trip_and_are_watched(etcd, cluster_name):
    await init_cluster(etcd, cluster_name, 8)
    follow = Follow(watch_overrides(etcd, cluster_name))
    try:
        await aeventually(lambda: follow.seen and follow.last() == Overrides())
        await pin(etcd, cluster_name, 3, "node-a")
        await drain(etcd, cluster_name, "node-b")
        expected = Overrides({3: "node-a"}, frozenset({"node-b"}))
        await aeventually(lambda: follow.last() == expected)
        assert await read_overrides(etcd, cluster_name) == expected

        await pin(etcd, cluster_name, 3, "node-c")  # a pin moves
        await aeventually(lambda: follow.last().pins == {3: "node-c"})
        assert await unpin(etcd, cluster_name, 3)
        assert await undrain(etcd, cluster_name, "node-b")
        assert not await unpin(etcd, cluster_name, 3)
        await aeventually(lambda: follow.last() == Overrides())
    finally:
        await follow.stop()


async def test_overrides_are_refused_outside_an_initialised_cluster(etcd, cluster_name):
    with pytest.raises(CoordinationError, match="not initialised"):
        await pin(etcd, cluster_name, 0, "node-a")
    with pytest.raises(CoordinationError, match="not initialised"):
        await drain(etcd, cluster_name, "node-a")
    await init_cluster(etcd, cluster_name, 8)
    with pytest.raises(ValueError, match=r"0 \.\. 7"):
        await pin(etcd, cluster_name, 8, "node-a")
    assert await read_overrides(etcd, cluster_name) == Overrides()
    with pytest.raises(CoordinationError, match="not initialised"):
        await read_view(etcd, f"{cluster_name}-typo")


async def test_remove_pins_removes_only_the_pins_it_was_shown(etcd, cluster_name):
    await init_cluster(etcd, cluster_name, 8)
    await pin(etcd, cluster_name, 1, "node-a")
    await pin(etcd, cluster_name, 2, "node-b")
    await drain(etcd, cluster_name, "node-c")
    seen = (await read_view(etcd, cluster_name)).overrides.pins
    await pin(etcd, cluster_name, 5, "node-a")  # written after the caller planned

    assert not await remove_pins(etcd, cluster_name, seen)
    assert (await read_overrides(etcd, cluster_name)).pins == {1: "node-a", 2: "node-b", 5: "node-a"}

    assert await remove_pins(etcd, cluster_name, (await read_overrides(etcd, cluster_name)).pins)
    assert await read_overrides(etcd, cluster_name) == Overrides({}, frozenset({"node-c"}))  # the drain stays


async def test_a_view_reads_nodes_owners_and_overrides_at_once(etcd, cluster_name, open_session):
    await init_cluster(etcd, cluster_name, 4)
    session = await open_session("node-a")
    await session.register("127.0.0.1:1")
    lease = await claim(session, 2)
    await pin(etcd, cluster_name, 3, "node-a")

    view = await read_view(etcd, cluster_name)
    assert isinstance(view, ClusterView)
    assert (view.shards, set(view.nodes), view.overrides.pins) == (4, {"node-a"}, {3: "node-a"})
    assert view.owners[2].epoch == lease.epoch and view.owned_count("node-a") == 1
    assert view.desired() == {s: "node-a" for s in range(4)}
    assert (await wait_for_owner(etcd, cluster_name, 2, "node-a", 5.0)).epoch == lease.epoch
    owner = await wait_for_owner(etcd, cluster_name, 1, "node-a", 0.3)  # nobody claims it: the wait ends
    assert owner is None


# -- losing an etcd member -----------------------------------------------------


@pytest.mark.slow
async def test_sessions_keep_their_leases_when_the_etcd_leader_is_lost(etcd_cluster, cluster_name, open_session):
    client = etcd_client(etcd_cluster.endpoints, timeout=2)
    a = b = None
    try:
        await init_cluster(client, cluster_name, 8)
        a = await open_session("node-a", ttl=2, client=client)
        b = await open_session("node-b", ttl=2, client=client)
        await a.register("127.0.0.1:5001")
        held = await claim(a, 0)

        leader = (await client.status()).leader
        # In a thread: a leader's graceful stop (it hands leadership over
        # first) can take longer than a lease, and the sessions' keepalives
        # run on this event loop.
        await asyncio.to_thread(etcd_cluster.stop_member, int(leader.name.removeprefix("m")))

        async def both_alive() -> None:
            assert a.alive() and b.alive(), (a.lost_reason, b.lost_reason)

        await during(3.0, both_alive)  # one and a half TTLs, through the election
        assert (await client.status()).leader.name != leader.name
        assert await claim(a, 0) == held  # still ours, same epoch
        taken = await claim(b, 1)
        assert taken is not None and taken.epoch > held.epoch
        assert await claim(b, 0) is None
        assert set(await live_nodes(client, cluster_name)) == {"node-a"}
        assert {s: o.node for s, o in (await owners(client, cluster_name)).items()} == {0: "node-a", 1: "node-b"}
    finally:
        for session in (a, b):
            if session is not None:
                await session.close()  # before their client goes
        await client.close()


@pytest.mark.slow
async def test_watches_resume_when_their_etcd_member_is_lost(etcd_cluster, cluster_name, open_session):
    client = etcd_client(etcd_cluster.endpoints, timeout=2)
    follow = Follow(watch_nodes(client, cluster_name))
    sessions = []
    try:
        await aeventually(lambda: follow.seen)
        # Lose each member in turn (one at a time: two keep a quorum), so
        # whichever member carries the watch stream is lost at some point.
        for index in range(len(etcd_cluster.members)):
            await asyncio.to_thread(etcd_cluster.stop_member, index)  # not blocking the keepalives
            session = await open_session(f"node-{index}", ttl=2, client=client)
            sessions.append(session)
            await session.register(f"127.0.0.1:{5000 + index}")
            await aeventually(lambda index=index: f"node-{index}" in follow.last())
            await asyncio.to_thread(etcd_cluster.start_member, index)
        assert set(follow.last()) == {"node-0", "node-1", "node-2"}
    finally:
        await follow.stop()
        for session in sessions:
            await session.close()
        await client.close()
