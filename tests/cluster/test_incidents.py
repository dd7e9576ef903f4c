"""A node records what went wrong in the ledger, for a sale's review: here, the failover after a node dies."""

from __future__ import annotations

import re
import time

import pytest

from tests.helpers import eventually
from tests.helpers.cluster import cluster_of
from tests.helpers.failpoints import KillNode

pytestmark = pytest.mark.slow


def shards_named(detail: str) -> set[int]:
    """The shards of a failover's detail: ``took shards 0-3,7 over from ...``."""
    match = re.search(r"took shards (\S+) over", detail)
    assert match, detail
    out: set[int] = set()
    for part in match[1].split(","):
        low, _, high = part.partition("-")
        out |= set(range(int(low), int(high or low) + 1))
    return out


def test_the_node_that_takes_a_dead_nodes_shards_records_the_failover(request, tmp_path):
    with cluster_of(request, tmp_path, nodes=2) as cluster:
        ledger = cluster.ledger()
        survivor, victim = cluster.node_ids
        # Settled: the ledger names node 1 the owner of the shards etcd gives it (a claim is fenced there last).
        taken = eventually(
            lambda: cluster.shards_of(1),
            until=lambda shards: shards and shards == {s for s, (_, o) in ledger.epochs().items() if o == victim},
        )
        killed_at = int(time.time() * 1000)

        KillNode(cluster, 1).inject()
        cluster.wait_owners(live={0})

        def failovers():
            return ledger.incidents(since_ms=killed_at, kinds=["failover"])

        rows = eventually(failovers, until=lambda rows: set().union(*(shards_named(r.detail) for r in rows)) >= taken)
        assert {r.node for r in rows} == {survivor}
        assert all(victim in r.detail and "gone from the cluster" in r.detail for r in rows)
        assert set().union(*(shards_named(r.detail) for r in rows)) == taken
        # Read up to the kill, the ledger holds no failover from the dead node: the reader bounds by time.
        assert not [r for r in ledger.incidents(until_ms=killed_at, kinds=["failover"]) if "gone from" in r.detail]
