"""A cluster view decides without etcd: a change of the pins and drains moves exactly the shards assign() says."""

from flashstock.lockmgr import ClusterView, NodeInfo, Overrides, ShardOwner, assign

SHARDS = 16
NODES = {n: NodeInfo(n, f"127.0.0.1:{port}", 0, port) for n, port in (("node-a", 1), ("node-b", 2), ("node-c", 3))}


def view(overrides: Overrides | None = None) -> ClusterView:
    """A cluster of three live nodes, each owning the shards assign() gives it."""
    overrides = overrides or Overrides()
    placed = assign(SHARDS, NODES, overrides.pins, overrides.drains)
    owners = {s: ShardOwner(s, n, 100 + s, 0, 1) for s, n in placed.items()}
    return ClusterView("test", SHARDS, NODES, owners, overrides)


def test_override_changes_are_new_values_and_leave_the_old_one_alone():
    start = Overrides({1: "node-a"}, frozenset({"node-b"}))
    assert start.with_pin(2, "node-c") == Overrides({1: "node-a", 2: "node-c"}, frozenset({"node-b"}))
    assert start.with_pin(1, "node-c").pins == {1: "node-c"}
    assert start.without_pin(1) == Overrides({}, frozenset({"node-b"}))
    assert start.without_pin(9) == start
    assert start.without_pins() == Overrides({}, frozenset({"node-b"}))
    assert start.with_drain("node-c").drains == {"node-b", "node-c"}
    assert start.without_drain("node-b") == Overrides({1: "node-a"}, frozenset())
    assert start == Overrides({1: "node-a"}, frozenset({"node-b"}))


def test_a_pin_moves_only_its_shard():
    current = view()
    target = next(n for n in NODES if n != current.desired()[5])
    assert current.moves_if(current.overrides.with_pin(5, target)) == {5: (current.desired()[5], target)}
    assert current.moves_if(current.overrides) == {}


def test_a_drain_moves_exactly_the_drained_nodes_shards():
    current = view()
    planned = current.moves_if(current.overrides.with_drain("node-b"))
    assert set(planned) == {s for s, o in current.owners.items() if o.node == "node-b"}
    assert all(old == "node-b" and new in ("node-a", "node-c") for old, new in planned.values())
    assert sum(current.owned_count(n) for n in NODES) == SHARDS


def test_removing_the_pins_undoes_them():
    pinned = view(Overrides({s: "node-a" for s in range(4)}))
    planned = pinned.moves_if(pinned.overrides.without_pins())
    hashed = assign(SHARDS, NODES)
    assert planned == {s: ("node-a", owner) for s, owner in hashed.items() if s < 4 and owner != "node-a"}
