"""The cluster's promises under faults: real etcd, Redis and node processes.

Each test builds its own cluster (:class:`tests.helpers.cluster.ClusterStack`:
three nodes, a 2 s lease so failovers are quick) and breaks it with the
failpoints of :mod:`tests.helpers.failpoints`:

1. kill -9 a node mid-sale: its shards get new owners within a lease and an
   election; nothing oversold; every acknowledged durable deduction is in
   the ledger.
2. SIGSTOP an owner past its lease, let the others take over, SIGCONT it:
   every duty write it then tries is refused by the epoch (counted), nothing
   is doubled and no hold is expired twice.
3. drain a node mid-sale: its shards move, no deduction is lost, and
   ``flashstock shards map`` shows the new owners.
4. one request id sent to three nodes at once, and again after a failover:
   one deduction, the same deduction in every answer.
5. a three-member etcd with one member stopped: the cluster keeps serving
   and failing over.
6. kill -9 of a node's main process only (not its workers): its children
   die with it, and its shards move to the survivors within a lease.

And a node cut off from etcd stops its duties by its own deadline (nobody
tells it), keeps serving, and takes its shards back when etcd returns.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from rich.console import Console

from flashstock.client import (
    AsyncAdminClient,
    AsyncStockClient,
    Mode,
    Outcome,
    StockClient,
)
from flashstock.lockmgr import shard_of
from flashstock.server.cli.reconcile import run_reconcile
from flashstock.server.store.keys import ShardKeys
from tests.helpers import eventually
from tests.helpers.cluster import CLUSTER, SHARDS, ClusterStack, cluster_of
from tests.helpers.failpoints import (
    KillMainProcess,
    KillNode,
    LoseEtcdMember,
    PauseEtcd,
    PauseNode,
)

pytestmark = pytest.mark.slow

TTL = 2
ELECTION_SLACK_S = 3.0
"""After the lease runs out: etcd's expiry check (every 0.5 s), the watch
event, a claim and the fence. Generous, for a busy 2-core machine."""


@pytest.fixture
def cluster(request, tmp_path):
    with cluster_of(request, tmp_path, lease_ttl_s=TTL) as stack:
        yield stack


def skus_on(cluster: ClusterStack, node: int, count: int, prefix: str) -> list[str]:
    """``count`` SKU ids whose shards node ``node`` owns now, in different shards where it can."""
    owned = cluster.shards_of(node)
    out, used = [], set()
    i = 0
    while len(out) < count:
        sku = f"{prefix}-{i}"
        shard = shard_of(sku, SHARDS)
        if shard in owned and (shard not in used or len(used) == len(owned)):
            out.append(sku)
            used.add(shard)
        i += 1
    return out


async def put_skus(cluster: ClusterStack, skus: list[str], stock: int, mode: Mode = Mode.DURABLE) -> None:
    async with AsyncAdminClient(cluster.client_config()) as admin:
        for sku in skus:
            await admin.put_sku(sku, stock, mode=mode)


async def sale(
    cluster: ClusterStack,
    skus: list[str],
    attempts: int,
    *,
    fault_after: int | None = None,
    fault: Callable[[], None] | None = None,
    concurrency: int = 24,
    prefix: str = "sale",
) -> dict[str, tuple[str, Outcome]]:
    """``attempts`` one-unit deductions spread over ``skus`` and every node;
    ``fault`` runs (in a thread) once ``fault_after`` of them succeeded.
    Returns request id -> (sku, outcome) of every acknowledged answer."""
    answers: dict[str, tuple[str, Outcome]] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(attempts):
        queue.put_nowait(i)
    fault_task: list[asyncio.Task[None]] = []

    async with AsyncStockClient(cluster.client_config()) as stock:

        async def buyer() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                sku = skus[i % len(skus)]
                request_id = f"{prefix}-{i}"
                result = await stock.deduct(sku, f"user-{i}", 1, request_id=request_id)
                answers[request_id] = (sku, result.outcome)
                ok = sum(1 for _, o in answers.values() if o is Outcome.OK)
                if fault is not None and not fault_task and fault_after is not None and ok >= fault_after:
                    fault_task.append(asyncio.create_task(asyncio.to_thread(fault)))

        await asyncio.gather(*(buyer() for _ in range(concurrency)))
        if fault_task:
            await fault_task[0]
    return answers


def redis_epochs(cluster: ClusterStack, shards: set[int]) -> dict[int, int]:
    """The owner epoch Redis holds for each of ``shards``."""
    with cluster.redis_client() as r:
        return {shard: int(r.hget(ShardKeys(shard).meta, "epoch") or 0) for shard in shards}


def sold(answers: dict[str, tuple[str, Outcome]]) -> dict[str, set[str]]:
    """sku -> the request ids whose deduction took effect: OK, or DUPLICATE (the
    client's retry of a call whose first answer was lost with a killed node)."""
    out: dict[str, set[str]] = {}
    for request_id, (sku, outcome) in answers.items():
        if outcome in (Outcome.OK, Outcome.DUPLICATE):
            out.setdefault(sku, set()).add(request_id)
    return out


def assert_books_agree(cluster: ClusterStack, answers: dict[str, tuple[str, Outcome]], stock: int) -> None:
    """No oversell; every acknowledged deduction is in the ledger exactly once; Redis agrees with the ledger."""
    by_sku = sold(answers)
    ledger = cluster.ledger()
    with StockClient(cluster.client_config()) as client:
        for sku, ids in by_sku.items():
            level = client.get_stock(sku)
            assert len(ids) <= stock, f"{sku}: {len(ids)} sold of {stock}"
            assert level.confirmed == len(ids), (sku, level, len(ids))
            assert level.available == stock - len(ids), (sku, level)
    acknowledged = {rid for ids in by_sku.values() for rid in ids}

    def missing() -> set[str]:
        return acknowledged - set(ledger.deductions_of(acknowledged))

    lost = eventually(missing, until=lambda ids: not ids, timeout=20, interval=0.1)
    assert not lost, f"{len(lost)} acknowledged deductions not in the ledger"
    states = {s.sku_id: s for s in ledger.sku_states() if s.sku_id in by_sku}
    for sku, ids in by_sku.items():
        assert states[sku].confirmed == len(ids), (sku, states[sku], len(ids))
    out = io.StringIO()
    assert run_reconcile(cluster.redis_url, cluster.ledger_url, SHARDS, Console(file=out, width=200)) == 0, (
        out.getvalue()
    )


def test_kill_9_a_node_mid_sale_fails_its_shards_over_within_a_lease(cluster):
    victim = 1
    skus = skus_on(cluster, victim, 4, "kill") + skus_on(cluster, 0, 2, "kill-other")
    stock = 150
    asyncio.run(put_skus(cluster, skus, stock))
    victim_shards = cluster.shards_of(victim)
    killed_at: list[float] = []
    moved_at: list[float] = []

    def watch_owners() -> None:
        cluster.wait_owners(live={0, 2}, timeout=TTL + ELECTION_SLACK_S + 5)
        moved_at.append(time.monotonic())

    # Timed from the kill while the sale goes on: how long the sale lasts is no part of the failover.
    watcher = threading.Thread(target=watch_owners, daemon=True)

    def kill() -> None:
        KillNode(cluster, victim).inject()
        killed_at.append(time.monotonic())
        watcher.start()

    answers = asyncio.run(sale(cluster, skus, attempts=1200, fault_after=200, fault=kill))

    watcher.join(timeout=TTL + ELECTION_SLACK_S + 10)
    assert moved_at, "the killed node's shards never settled on the survivors"
    owners = cluster.owners()
    failover_s = moved_at[0] - killed_at[0]
    assert failover_s <= TTL + ELECTION_SLACK_S, f"the shards of the killed node moved only after {failover_s:.1f} s"
    # The new owners fenced the shards: Redis holds their epochs.
    eventually(lambda: redis_epochs(cluster, victim_shards) == {s: owners[s].epoch for s in victim_shards})
    # Every SKU sold out exactly, through the survivors.
    assert all(len(ids) == stock for ids in sold(answers).values()), Counter(answers.values())
    assert_books_agree(cluster, answers, stock)


@pytest.fixture
def cluster_with_stale_owner(request, tmp_path):
    # node-0 keeps running its duties after losing its session, until the
    # stores refuse them: as if it were paused right between its own
    # deadline check and a write.
    env = {"node-0": {"FLASHSTOCK_FAILPOINT_KEEP_DUTIES_ON_LOSS": "1"}}
    with cluster_of(request, tmp_path, lease_ttl_s=TTL, node_env=env) as stack:
        yield stack


def test_a_paused_owner_that_wakes_up_is_fenced_off(cluster_with_stale_owner):
    cluster = cluster_with_stale_owner
    stale = 0
    skus = skus_on(cluster, stale, 4, "pause")
    stock = 400
    asyncio.run(put_skus(cluster, skus, stock))
    shards = {shard_of(sku, SHARDS) for sku in skus}
    # Holds that run out while the owner is paused: its successor expires them.
    holds = asyncio.run(hold_each(cluster, skus, hold_ms=1500))
    before = asyncio.run(sale(cluster, skus, attempts=40, prefix="before"))

    pause = PauseNode(cluster, stale)
    pause.inject()
    try:
        owners = cluster.wait_owners(live={1, 2}, timeout=TTL + ELECTION_SLACK_S + 5)
        eventually(lambda: redis_epochs(cluster, shards) == {s: owners[s].epoch for s in shards})
        during = asyncio.run(sale(cluster, skus, attempts=40, prefix="during"))
    finally:
        pause.recover()

    # Awake, it still believes it owns its shards: keep the logs busy until its
    # persister tries to write, and count the refusals.
    after: dict[str, tuple[str, Outcome]] = {}
    rounds = itertools.count()

    def refused_after_a_sale() -> float:
        after.update(asyncio.run(sale(cluster, skus, attempts=20, concurrency=4, prefix=f"after{next(rounds)}")))
        return cluster.metric(stale, "flashstock_fenced_writes_total")

    # Not true within the deadline: "the woken owner wrote nothing that the epoch refused".
    refused = cluster.metric(stale, "flashstock_fenced_writes_total") or eventually(
        refused_after_a_sale, timeout=20, interval=0
    )
    assert refused > 0
    # It dropped the shards, and wrote nothing after: the newer owners kept them.
    assert all(owners[s].node != cluster.node_ids[stale] for s in shards)
    # The review finds it all in the ledger: the stale node's lost session and fenced writes, and the
    # failover of its shards to the others.
    incidents = cluster.ledger()
    stale_id = cluster.node_ids[stale]
    eventually(
        lambda: {
            (r.kind, r.node == stale_id)
            for r in incidents.incidents(kinds=["session_lost", "fenced_write", "failover"])
            if r.node == stale_id or stale_id in r.detail
        },
        until=lambda seen: {("session_lost", True), ("fenced_write", True), ("failover", False)} <= seen,
    )

    answers = {**before, **during, **after}
    assert_books_agree(cluster, answers, stock)
    ledger = cluster.ledger()
    rows = ledger.deductions_of(holds)
    assert {r["state"] for r in rows.values()} == {"expired"}, rows
    with StockClient(cluster.client_config()) as client:
        for sku in skus:
            assert client.get_stock(sku).held == 0


async def hold_each(cluster: ClusterStack, skus: list[str], hold_ms: int) -> list[str]:
    async with AsyncStockClient(cluster.client_config()) as stock:
        ids = []
        for sku in skus:
            result = await stock.hold(sku, "holder", 1, ttl_ms=hold_ms, request_id=f"hold-{sku}")
            assert result.outcome is Outcome.OK
            ids.append(f"hold-{sku}")
        return ids


def test_draining_a_node_mid_sale_moves_its_shards_and_loses_nothing(cluster):
    from typer.testing import CliRunner

    from flashstock.server.cli.app import app

    drained = 2
    skus = skus_on(cluster, drained, 3, "drain") + skus_on(cluster, 1, 2, "drain-other")
    stock = 120
    asyncio.run(put_skus(cluster, skus, stock))
    runner = CliRunner()
    etcd_args = ["--etcd", cluster.endpoints, "--cluster", CLUSTER]

    def drain() -> None:
        result = runner.invoke(app, ["shards", "drain", cluster.node_ids[drained], *etcd_args])
        assert result.exit_code == 0, result.output

    answers = asyncio.run(sale(cluster, skus, attempts=800, fault_after=150, fault=drain))

    cluster.wait_owners(live={0, 1})
    shown = runner.invoke(app, ["shards", "map", *etcd_args])
    assert shown.exit_code == 0, shown.output
    rows = {line.split()[0]: line for line in shown.output.splitlines() if line.strip().startswith(("node-",))}
    assert cluster.node_ids[drained] not in rows or " 0 " in rows[cluster.node_ids[drained]], shown.output
    assert cluster.node_ids[0] in shown.output and cluster.node_ids[1] in shown.output
    # It gave its shards up cleanly: duties stopped first, so none of its writes was refused after.
    assert cluster.metric(drained, "flashstock_shard_releases_total") > 0
    assert cluster.metric(drained, "flashstock_fenced_writes_total") == 0
    assert cluster.metric(drained, "flashstock_owned_shards") == 0
    assert all(len(ids) == stock for ids in sold(answers).values())
    assert_books_agree(cluster, answers, stock)


def test_one_request_id_on_three_nodes_is_one_deduction(cluster):
    sku = skus_on(cluster, 0, 1, "same-id")[0]
    asyncio.run(put_skus(cluster, [sku], 10))
    clients = [StockClient(cluster.client_config(i)) for i in range(3)]
    try:
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda c: c.deduct(sku, "buyer", 2, request_id="order-42"), clients))
        assert sorted(r.outcome for r in results) == sorted([Outcome.OK, Outcome.DUPLICATE, Outcome.DUPLICATE])
        assert len({r.deduction for r in results}) == 1, results

        # The owner of the SKU's shard dies; the answer stays the same on the others.
        KillNode(cluster, 0).inject()
        cluster.wait_owners(live={1, 2})
        again = [c.deduct(sku, "buyer", 2, request_id="order-42") for c in clients[1:]]
        assert [r.outcome for r in again] == [Outcome.DUPLICATE, Outcome.DUPLICATE]
        assert {r.deduction for r in again} == {results[0].deduction}
        level = clients[1].get_stock(sku)
        assert (level.confirmed, level.available) == (2, 8)
    finally:
        for c in clients:
            c.close()
    rows = cluster.ledger().deductions_of(["order-42"])
    assert rows["order-42"]["qty"] == 2


def flashstock(*args: str) -> str:
    """Run the ``flashstock`` CLI as an operator would (a process of its own); returns its output."""
    done = subprocess.run(
        [sys.executable, "-m", "flashstock.server", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_shards_move_when_a_nodes_main_process_is_killed(cluster):
    victim = 1
    victim_shards = cluster.shards_of(victim)
    assert victim_shards
    kill = KillMainProcess(cluster, victim)  # the main pid only: not its process group, not its workers
    try:
        kill.inject()
        killed_at = time.monotonic()
        eventually(kill.still_running, until=lambda procs: not procs, timeout=3)
        owners = cluster.wait_owners(live={0, 2}, timeout=TTL + ELECTION_SLACK_S + 5)
        failover_s = time.monotonic() - killed_at
        assert failover_s <= TTL + ELECTION_SLACK_S, (
            f"the shards of the killed node moved only after {failover_s:.1f} s"
        )
        eventually(lambda: redis_epochs(cluster, victim_shards) == {s: owners[s].epoch for s in victim_shards})

        etcd_args = ("--etcd", cluster.endpoints, "--cluster", CLUSTER)
        shown = flashstock("shards", "map", *etcd_args)
        listed = set(re.findall(r"\bnode-\d+\b", shown))
        assert listed == {cluster.node_ids[0], cluster.node_ids[2]}, shown
        assert cluster.node_ids[victim] not in flashstock("nodes", "ls", *etcd_args)
    finally:
        kill.recover()


@pytest.fixture
def cluster_on_3_etcd(request, tmp_path):
    with cluster_of(request, tmp_path, lease_ttl_s=TTL, etcd_members=3) as stack:
        yield stack


def test_with_one_of_three_etcd_members_down_the_cluster_serves_and_fails_over(cluster_on_3_etcd):
    cluster = cluster_on_3_etcd
    lost = LoseEtcdMember(cluster, 0)
    lost.inject()
    skus = skus_on(cluster, 1, 3, "etcd")
    stock = 100
    asyncio.run(put_skus(cluster, skus, stock))

    answers = asyncio.run(sale(cluster, skus, attempts=600, fault_after=100, fault=KillNode(cluster, 1).inject))

    cluster.wait_owners(live={0, 2}, timeout=TTL + ELECTION_SLACK_S + 5)
    assert all(len(ids) == stock for ids in sold(answers).values())
    assert_books_agree(cluster, answers, stock)

    lost.recover()  # back with its data: it catches up with the others
    assert {p.name: p.state for p in cluster.status().processes if p.role == "etcd"} == {
        "etcd-0": "running",
        "etcd-1": "running",
        "etcd-2": "running",
    }
    assert cluster.owners().keys() == set(range(SHARDS))


def test_a_node_cut_off_from_etcd_stops_its_duties_serves_on_and_rejoins(request, tmp_path):
    with cluster_of(request, tmp_path, nodes=1, lease_ttl_s=TTL) as cluster:
        sku = skus_on(cluster, 0, 1, "cut-off")[0]
        asyncio.run(put_skus(cluster, [sku], 10, mode=Mode.FAST))
        assert cluster.metric(0, "flashstock_owned_shards") == SHARDS

        cut_off = PauseEtcd(cluster)
        cut_off.inject()  # no answer to keepalives: only the node's own deadline can tell it
        try:
            eventually(lambda: cluster.metric(0, "flashstock_owned_shards") == 0, timeout=TTL + 5)
            assert cluster.metric(0, "flashstock_etcd_session_losses_total") == 1
            with StockClient(cluster.client_config()) as client:
                assert client.deduct(sku, "u1", 1, request_id="cut-off-1").outcome is Outcome.OK  # Redis serves on
        finally:
            cut_off.recover()

        cluster.wait_owners(live={0})
        eventually(lambda: cluster.metric(0, "flashstock_owned_shards") == SHARDS, timeout=10)
        assert_books_agree(cluster, {"cut-off-1": (sku, Outcome.OK)}, 10)
