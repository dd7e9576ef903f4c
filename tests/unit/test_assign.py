"""Shard assignment moves as few shards as it can, the same way on every node.

Rendezvous hashing over the live nodes, with the operator's pins and
drains: a pure function, checked here on generated inputs.
"""

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from flashstock.lockmgr import assign, moves, stable_hash

node_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
node_sets = st.sets(node_ids, min_size=1, max_size=8)
shard_counts = st.integers(min_value=1, max_value=128)


def test_assignment_is_pinned_for_known_inputs():
    # Pinned vector: a Go or Java tool following the recipe gets this map;
    # a change here moves shards in every live cluster.
    nodes = ["node-a", "node-b", "node-c"]
    expected = {s: max(nodes, key=lambda n: (stable_hash(f"{s}/{n}"), n)) for s in range(16)}
    assert assign(16, nodes) == expected
    assert assign(16, nodes) == {
        0: "node-a",
        1: "node-c",
        2: "node-a",
        3: "node-a",
        4: "node-c",
        5: "node-c",
        6: "node-c",
        7: "node-b",
        8: "node-a",
        9: "node-c",
        10: "node-a",
        11: "node-c",
        12: "node-c",
        13: "node-b",
        14: "node-b",
        15: "node-c",
    }


@given(shard_counts, node_sets, st.randoms())
def test_every_node_computes_the_same_map(shards, nodes, rnd):
    shuffled = list(nodes)
    rnd.shuffle(shuffled)
    assert assign(shards, nodes) == assign(shards, shuffled) == assign(shards, iter(shuffled))


@given(shard_counts, node_sets)
def test_every_shard_gets_a_live_owner(shards, nodes):
    owners = assign(shards, nodes)
    assert set(owners) == set(range(shards))
    assert set(owners.values()) <= nodes


def test_no_live_node_owns_nothing():
    assert assign(64, []) == {}
    assert assign(64, [], pins={1: "a"}, drains=["a"]) == {}
    assert assign(0, ["a"]) == {}


@given(shard_counts, node_sets, node_ids)
def test_a_joining_node_only_takes_shards_for_itself(shards, nodes, newcomer):
    before = assign(shards, nodes - {newcomer})
    after = assign(shards, nodes | {newcomer})
    assert all(new == newcomer for _old, new in moves(before, after).values())


@given(shard_counts, node_sets.filter(lambda s: len(s) >= 2), st.data())
def test_a_leaving_node_only_gives_up_its_own_shards(shards, nodes, data):
    leaver = data.draw(st.sampled_from(sorted(nodes)))
    before = assign(shards, nodes)
    after = assign(shards, nodes - {leaver})
    changed = moves(before, after)
    assert all(old == leaver for old, _new in changed.values())
    assert set(changed) == {s for s, n in before.items() if n == leaver}


@given(shard_counts, node_sets.filter(lambda s: len(s) >= 2), st.data())
def test_draining_moves_only_the_drained_nodes_shards(shards, nodes, data):
    drained = data.draw(st.sampled_from(sorted(nodes)))
    before = assign(shards, nodes)
    after = assign(shards, nodes, drains=[drained])
    assert drained not in after.values()
    assert set(moves(before, after)) == {s for s, n in before.items() if n == drained}
    # Draining is exactly "as if it had left".
    assert after == assign(shards, nodes - {drained})


@given(shard_counts, node_sets)
def test_draining_every_node_keeps_the_shards_owned(shards, nodes):
    assert assign(shards, nodes, drains=nodes) == assign(shards, nodes)


@given(shard_counts, node_sets, st.data())
def test_a_pin_to_a_live_undrained_node_wins(shards, nodes, data):
    shard = data.draw(st.integers(0, shards - 1))
    target = data.draw(st.sampled_from(sorted(nodes)))
    before = assign(shards, nodes)
    after = assign(shards, nodes, pins={shard: target})
    assert after[shard] == target
    assert set(moves(before, after)) <= {shard}


@given(shard_counts, node_sets, node_ids, st.data())
def test_a_pin_to_a_dead_or_drained_node_is_ignored(shards, nodes, other, data):
    shard = data.draw(st.integers(0, shards - 1))
    plain = assign(shards, nodes)
    dead = f"{other}_gone"  # "_" is not in node_ids: never a live node
    assert assign(shards, nodes, pins={shard: dead}) == plain
    if len(nodes) >= 2:
        drained = data.draw(st.sampled_from(sorted(nodes)))
        assert assign(shards, nodes, pins={shard: drained}, drains=[drained]) == assign(shards, nodes - {drained})


def test_pins_outside_the_shard_range_are_ignored():
    assert assign(4, ["a", "b"], pins={4: "a", 99: "b", -1: "a"}) == assign(4, ["a", "b"])


@settings(max_examples=20, deadline=None)
@given(st.sets(node_ids, min_size=2, max_size=6))
def test_shards_spread_roughly_evenly(nodes):
    shards = 4096
    counts = Counter(assign(shards, nodes).values())
    fair = shards / len(nodes)
    assert set(counts) == nodes
    assert max(counts.values()) < 1.2 * fair and min(counts.values()) > 0.8 * fair


def test_moves_names_old_and_new_owner():
    assert moves({0: "a", 1: "b", 2: "c"}, {0: "a", 1: "c", 3: "d"}) == {1: ("b", "c"), 2: ("c", None), 3: (None, "d")}
    assert moves({}, {}) == {}
