"""``flashstock bench-cluster`` computes its figures the way its docs say.

Only the pure parts: parsing etcd's metrics and Redis's meta hashes, telling
a moved shard from one still fenced by the victim, the failover times, the
settled test, the plan's checks and the throughput explanation. No sockets.
"""

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from flashstock.lockmgr import assign, shard_of
from flashstock.server.bench.cluster import (
    ClusterBenchPlan,
    ShardFence,
    counter_rates,
    disturbed,
    expected_window_ms,
    failover_ms,
    handed_out_check,
    keepalive_interval_s,
    limit_note,
    moved,
    parse_fence,
    parse_metrics,
    parse_skip,
    ratio,
    skus_by_node,
    spread,
    unsettled,
    victims,
)

METRICS_TEXT = """\
# HELP etcd_mvcc_put_total Total number of puts seen by this member.
# TYPE etcd_mvcc_put_total counter
etcd_mvcc_put_total 126
etcd_mvcc_put_total_extra 5
etcd_debugging_lease_renewed_total 10
etcd_server_proposals_committed_total 4.45e+02
grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 3
grpc_server_handled_total{grpc_code="OK",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 4
broken_metric not-a-number
"""


def test_metrics_are_read_by_exact_name_and_summed_over_labels():
    values = parse_metrics(
        METRICS_TEXT,
        [
            "etcd_mvcc_put_total",
            "etcd_server_proposals_committed_total",
            "grpc_server_handled_total",
            "broken_metric",
            "absent",
        ],
    )
    assert values == {
        "etcd_mvcc_put_total": 126.0,  # not etcd_mvcc_put_total_extra, not the HELP line
        "etcd_server_proposals_committed_total": 445.0,
        "grpc_server_handled_total": 7.0,
    }


def test_counter_rates_per_second_and_missing_counters():
    rates = counter_rates({"a": 10.0, "b": 4.0}, {"a": 30.0, "b": 4.0, "c": 1.0}, 4.0)
    assert rates == {"a": 5.0, "b": 0.0, "c": None}
    assert counter_rates({"a": 1.0}, {"a": 2.0}, 0.0) == {"a": None}


def test_spread_uses_nearest_rank_percentiles():
    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    s = spread(list(reversed(values)))
    assert (s["min"], s["p50"], s["p99"], s["max"], s["mean"]) == (1.0, 50.0, 99.0, 100.0, 50.5)
    assert spread([4200.0]) == {"min": 4200.0, "p50": 4200.0, "p99": 4200.0, "max": 4200.0, "mean": 4200.0}
    assert all(math.isnan(v) for v in spread([]).values())


def test_ratio():
    assert ratio(4157.0, 3252.0) == 1.278
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 2.0) is None


def test_a_fence_is_parsed_from_its_hmget_reply():
    assert parse_fence(["241", "node-0", "1795609259497"]) == ShardFence(241, "node-0", 1795609259497)
    assert parse_fence([b"7", b"node-2", b"5"]) == ShardFence(7, "node-2", 5)
    assert parse_fence([None, None, None]) is None  # a shard never fenced
    assert parse_fence(["7", "node-2", None]) is None
    assert parse_fence(["seven", "node-2", "5"]) is None
    assert parse_fence(["7", "node-2"]) is None


def test_a_shard_moved_once_another_owner_fenced_it_with_a_higher_epoch():
    before = {1: 100, 2: 100, 3: 120, 4: 90}
    fences = {
        1: ShardFence(100, "node-0", 1_000),  # still the victim's fence
        2: ShardFence(150, "node-1", 6_000),  # moved
        3: ShardFence(130, "node-0", 6_500),  # a higher epoch, but the victim's own (it came back): not a move
        4: None,  # unreadable
    }
    assert moved("node-0", before, fences) == {2: fences[2]}


def test_failover_times_are_from_the_kill_to_the_first_and_last_new_fence():
    fences = {
        1: ShardFence(5, "node-1", 10_400),
        2: ShardFence(6, "node-2", 10_950),
        3: ShardFence(7, "node-1", 10_500),
    }
    assert failover_ms(6_000.0, fences) == (4400.0, 4950.0)
    with pytest.raises(ValueError):
        failover_ms(6_000.0, {})


def test_settled_needs_the_mapped_owner_in_etcd_and_its_fence_in_redis():
    expected = {0: "node-0", 1: "node-1", 2: "node-2", 3: "node-0"}
    owners = {0: ("node-0", 10), 1: ("node-1", 11), 2: ("node-0", 12), 3: ("node-0", 13)}
    fences = {
        0: ShardFence(10, "node-0", 1),
        1: ShardFence(9, "node-1", 1),  # claimed in etcd, not fenced yet
        2: ShardFence(12, "node-0", 1),  # owned, but not by the node the map names
        3: None,
    }
    assert unsettled(expected, owners, fences) == [1, 2, 3]
    fences[1] = ShardFence(11, "node-1", 2)
    fences[3] = ShardFence(13, "node-0", 2)
    owners[2] = ("node-2", 14)
    fences[2] = ShardFence(14, "node-2", 3)
    assert unsettled(expected, owners, fences) == []
    assert unsettled(expected, {}, fences) == [0, 1, 2, 3]


def test_the_expected_failover_window_follows_the_lease():
    # Refreshed every TTL/3: killed right after a refresh, the lease lives a whole TTL (and up to
    # 0.5 s more until etcd's expiry check); killed right before one, TTL - TTL/3.
    assert keepalive_interval_s(5) == pytest.approx(5 / 3)
    assert expected_window_ms(5) == (3333.3, 5500.0)
    assert expected_window_ms(3) == (2000.0, 3500.0)


def test_victims_rotate():
    assert victims(7, 3) == [0, 1, 2, 0, 1, 2, 0]


@given(st.integers(min_value=1, max_value=12), st.integers(min_value=12, max_value=256))
def test_skus_land_in_distinct_shards_of_the_nodes_in_turn(count, shards):
    nodes = ["node-0", "node-1", "node-2"]
    placement = assign(shards, nodes)
    # Each node must own enough shards for its SKUs.
    assume(all(list(placement.values()).count(n) >= len(range(i, count, 3)) for i, n in enumerate(nodes)))
    skus = skus_by_node("bench-load-", count, placement, nodes, shards)
    assert len(skus) == count
    assert len({shard_of(s, shards) for s in skus}) == count
    assert [placement[shard_of(s, shards)] for s in skus] == [nodes[k % 3] for k in range(count)]


def test_skus_by_node_refuses_more_skus_than_shards():
    with pytest.raises(ValueError):
        skus_by_node("x-", 5, assign(4, ["a"]), ["a"], 4)


def test_handed_out_units_must_fit_the_answers():
    assert handed_out_check(100, 100, 0) is None
    assert handed_out_check(103, 100, 5) is None  # failed calls may have taken effect
    assert "oversell" in handed_out_check(106, 100, 5)
    assert "lost" in handed_out_check(99, 100, 0)


def test_skip_values_may_repeat_or_be_comma_separated():
    assert parse_skip(["failover", "Etcd, throughput", ""]) == frozenset({"failover", "etcd", "throughput"})
    assert parse_skip([]) == frozenset()


def test_plan_problems_name_their_options():
    assert ClusterBenchPlan().problems() == []
    problems = ClusterBenchPlan(runs=0, client_procs=0, skip=frozenset({"nope"})).problems()
    assert any("--runs" in p for p in problems)
    assert any("--client-procs" in p for p in problems)
    assert any("--skip" in p and "nope" in p for p in problems)
    assert any(
        "nothing to measure" in p
        for p in ClusterBenchPlan(skip=frozenset({"failover", "throughput", "etcd"})).problems()
    )
    assert not ClusterBenchPlan(skip=frozenset({"failover"})).runs_part("failover")
    assert ClusterBenchPlan(skip=frozenset({"failover"})).runs_part("etcd")


def _phase(ok_per_s: float, machine: float, nodes: float, split: list[float] | None = None) -> dict:
    cpu = {"machine": machine, "nodes": nodes, "load": 50.0, "redis": 12.0, "etcd": 1.0, "rest": 5.0}
    if split:
        cpu["nodes_per_process"] = split
    return {"ok_per_s": ok_per_s, "buyers": 64, "cpu_percent": cpu}


def test_limit_note_says_cpu_bound_when_both_phases_fill_the_cores():
    note = limit_note(_phase(3250.0, 182.0, 110.0, [30.0, 80.0]), _phase(4150.0, 192.0, 130.0), cores=2)
    assert note.startswith("CPU-bound")
    assert "182% and 192% of 200%" in note
    assert "338 µs → 313 µs" in note  # node CPU per deduction: 110% of a core / 3,250 per s
    assert "busiest process (80% of a core" in note


def test_limit_note_otherwise_points_at_the_closed_loop():
    note = limit_note(_phase(3000.0, 120.0, 80.0), _phase(3100.0, 190.0, 100.0), cores=2)
    assert note.startswith("Not CPU-bound")
    assert "64 buyers" in note


def test_a_run_is_disturbed_when_others_use_more_than_a_quarter_core():
    assert disturbed({"rest": 30.0})
    assert not disturbed({"rest": 10.0})
    assert not disturbed({})
