"""The operator's cluster commands against a real etcd, and a local cluster brought up and down.

The promises: ``nodes ls``, ``shards ls`` and ``shards map`` show what etcd
holds (registrations and claims made here by real sessions); each changing
command writes exactly its override, in one transaction, and prints the moves
``assign()`` predicts; ``--dry-run`` writes nothing; bad input is refused
with a message, not a traceback. ``cluster up / status / down`` start real
processes that outlive the command, and ``down`` stops exactly those.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio
from typer.testing import CliRunner, Result

from flashstock.lockmgr import (
    ClusterKeys,
    EtcdSession,
    Overrides,
    SessionConfig,
    assign,
    claim,
    drain,
    etcd_client,
    init_cluster,
    moves,
    owners,
    pin,
    read_overrides,
    release,
    shard_ranges,
)
from flashstock.server.cli.app import app
from flashstock.server.cli.common import local_time
from flashstock.server.local.cluster import LocalCluster
from flashstock.server.local.etcd import EtcdServer
from flashstock.server.local.procs import free_port
from tests.helpers import aeventually, eventually

SHARDS = 16

Join = Callable[..., Awaitable[EtcdSession]]


# -- running the CLI, reading its tables ---------------------------------------------------


def cli(*args: str) -> Result:
    """Run ``flashstock *args`` in this process."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1"})


async def acli(*args: str) -> Result:
    """:func:`cli` from async code: on a thread, as the command runs an event loop of its own."""
    return await asyncio.to_thread(cli, *args)


def rows(output: str) -> list[list[str]]:
    """The body rows of the rich tables in ``output``, as lists of cells."""
    return [
        [cell.strip() for cell in line.strip()[1:-1].split("│")] for line in output.splitlines() if line.startswith("│")
    ]


def moves_in(output: str) -> dict[int, tuple[str | None, str | None]]:
    """The moves table of a changing command's output: shard -> (from, to)."""
    return {
        int(r[0]): (None if r[1] == "-" else r[1], None if r[2] == "-" else r[2]) for r in rows(output) if len(r) == 3
    }


def gone(pid: int) -> bool:
    """True when ``pid`` runs nothing (a zombie nobody reaps counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- a real etcd, real sessions ----------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd_member() -> Iterator[EtcdServer]:
    """This module's one-member etcd."""
    with EtcdServer() as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def etcd_kv(etcd_member: EtcdServer) -> AsyncIterator[Any]:
    """An aetcd client of the module's etcd, for setting up and checking."""
    client = etcd_client([etcd_member.endpoint])
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def cluster(etcd_kv: Any) -> str:
    """A cluster name only this test uses, initialised with :data:`SHARDS` shards."""
    name = f"cli-{uuid.uuid4().hex[:10]}"
    await init_cluster(etcd_kv, name, SHARDS)
    return name


@pytest.fixture
def target(etcd_member: EtcdServer, cluster: str) -> tuple[str, ...]:
    """The common options that point a command at this test's cluster."""
    return ("--etcd", etcd_member.endpoint, "--cluster", cluster)


@pytest_asyncio.fixture(loop_scope="session")
async def join(etcd_kv: Any, cluster: str) -> AsyncIterator[Join]:
    """``await join("node-a")``: a node's registered session (closed after the test)."""
    opened: list[EtcdSession] = []

    async def join_(node_id: str, address: str | None = None) -> EtcdSession:
        session = await EtcdSession.open(etcd_kv, cluster, node_id, SessionConfig(ttl=10))
        opened.append(session)
        await session.register(address or f"127.0.0.1:{5000 + len(opened)}")
        return session

    try:
        yield join_
    finally:
        for session in opened:
            await session.close()


async def revision(etcd_kv: Any, cluster: str) -> int:
    """etcd's revision now: it grows by one per transaction that writes."""
    return (await etcd_kv.get_prefix(ClusterKeys(cluster).prefix.encode())).header.revision


def desired(nodes: list[str], overrides: Overrides) -> dict[int, str]:
    return assign(SHARDS, nodes, overrides.pins, overrides.drains)


def shard_desired_on(node: str, nodes: list[str]) -> int:
    """A shard the hash gives ``node`` among ``nodes``."""
    return next(s for s, n in desired(nodes, Overrides()).items() if n == node)


# -- pure helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shards, text",
    [([], "-"), ([5], "5"), ([0, 1, 2, 3, 7], "0-3,7"), ([9, 8, 1, 3, 2], "1-3,8-9"), ([0, 2, 4], "0,2,4")],
)
def test_shard_lists_are_printed_as_ranges(shards, text):
    assert shard_ranges(shards) == text


# -- reading -------------------------------------------------------------------------------------


async def test_nodes_ls_shows_each_registration_its_lease_shards_and_drain(etcd_kv, cluster, target, join):
    a = await join("node-a", "127.0.0.1:7001")
    b = await join("node-b", "127.0.0.1:7002")
    for shard in (0, 1, 2):
        assert await claim(a, shard)
    assert await claim(b, 5)
    await drain(etcd_kv, cluster, "node-b")
    nodes = await a.live_nodes()

    result = await acli("nodes", "ls", *target)

    assert result.exit_code == 0, result.output
    assert rows(result.output) == [
        ["node-a", "127.0.0.1:7001", local_time(nodes["node-a"].started_ms), f"{a.lease_id:x}", "3", "no"],
        ["node-b", "127.0.0.1:7002", local_time(nodes["node-b"].started_ms), f"{b.lease_id:x}", "1", "yes"],
    ]


async def test_shards_ls_shows_owner_epoch_pin_desired_and_flags_the_moving(etcd_kv, cluster, target, join):
    await join("node-a")
    b = await join("node-b")
    want = desired(["node-a", "node-b"], Overrides())
    wrong = shard_desired_on("node-a", ["node-a", "node-b"])
    leases = {wrong: await claim(b, wrong)}  # owned by the node the hash does not want
    right = next(s for s, n in want.items() if n == "node-b")
    leases[right] = await claim(b, right)
    await pin(etcd_kv, cluster, right, "node-b")
    claims = {s: o for s, o in (await owners(etcd_kv, cluster)).items()}

    result = await acli("shards", "ls", *target)

    assert result.exit_code == 0, result.output
    table = {int(r[0]): r[1:] for r in rows(result.output)}
    assert sorted(table) == list(range(SHARDS))
    for shard, (owner, epoch, since, _pinned, wanted, state) in table.items():
        assert wanted == want[shard]
        if shard in leases:
            assert (owner, epoch, since) == ("node-b", str(leases[shard].epoch), local_time(claims[shard].since_ms))
        else:
            assert (owner, epoch, state) == ("-", "-", "unowned")
    assert table[wrong][5] == "moving"
    assert table[right][3:] == ["node-b", "node-b", ""]
    assert "1 moving" in result.output and f"{SHARDS - 2} unowned" in result.output


async def test_shards_map_lists_each_nodes_shards_as_ranges_with_their_epochs(cluster, target, join):
    a = await join("node-a")
    await join("node-b")
    epochs = [(await claim(a, s)).epoch for s in (0, 1, 2, 3, 7)]

    result = await acli("shards", "map", *target)

    assert result.exit_code == 0, result.output
    table = {r[0]: r[1:4] for r in rows(result.output)}
    assert table["node-a"] == ["0-3,7", "5", f"{min(epochs)}-{max(epochs)}"]
    assert table["node-b"] == ["-", "0", "-"]
    assert table["(unowned)"] == ["4-6,8-15", str(SHARDS - 5), "-"]


# -- changing ---------------------------------------------------------------------------------------


async def test_pin_and_unpin_each_write_one_key_and_print_the_moves_assign_predicts(etcd_kv, cluster, target, join):
    await join("node-a")
    await join("node-b")
    nodes = ["node-a", "node-b"]
    shard = shard_desired_on("node-a", nodes)
    before = await revision(etcd_kv, cluster)

    pinned = await acli("shards", "pin", str(shard), "node-b", *target)

    assert pinned.exit_code == 0, pinned.output
    assert await read_overrides(etcd_kv, cluster) == Overrides({shard: "node-b"})
    assert await revision(etcd_kv, cluster) == before + 1
    assert moves_in(pinned.output) == {shard: ("node-a", "node-b")}

    unpinned = await acli("shards", "unpin", str(shard), *target)

    assert unpinned.exit_code == 0, unpinned.output
    assert await read_overrides(etcd_kv, cluster) == Overrides()
    assert moves_in(unpinned.output) == {shard: ("node-b", "node-a")}


async def test_drain_and_undrain_mark_the_node_and_print_its_shards_moving_away_and_back(
    etcd_kv, cluster, target, join
):
    for node in ("node-a", "node-b", "node-c"):
        await join(node)
    nodes = ["node-a", "node-b", "node-c"]
    expected = moves(desired(nodes, Overrides()), desired(nodes, Overrides(drains=frozenset({"node-c"}))))
    assert expected and all(old == "node-c" for old, _ in expected.values())

    drained = await acli("shards", "drain", "node-c", *target)

    assert drained.exit_code == 0, drained.output
    assert await read_overrides(etcd_kv, cluster) == Overrides(drains=frozenset({"node-c"}))
    assert moves_in(drained.output) == expected

    undrained = await acli("shards", "undrain", "node-c", *target)

    assert undrained.exit_code == 0, undrained.output
    assert await read_overrides(etcd_kv, cluster) == Overrides()
    assert moves_in(undrained.output) == {s: (new, old) for s, (old, new) in expected.items()}


async def test_rebalance_removes_every_pin_in_one_transaction_and_keeps_the_drains(etcd_kv, cluster, target, join):
    for node in ("node-a", "node-b", "node-c"):
        await join(node)
    for shard in (1, 2, 3):
        await pin(etcd_kv, cluster, shard, "node-a")
    await drain(etcd_kv, cluster, "node-c")
    nodes = ["node-a", "node-b", "node-c"]
    overrides = await read_overrides(etcd_kv, cluster)
    expected = moves(desired(nodes, overrides), desired(nodes, Overrides(drains=overrides.drains)))
    before = await revision(etcd_kv, cluster)

    result = await acli("shards", "rebalance", *target)

    assert result.exit_code == 0, result.output
    assert await read_overrides(etcd_kv, cluster) == Overrides(drains=frozenset({"node-c"}))
    assert await revision(etcd_kv, cluster) == before + 1  # three deletes, one transaction
    assert moves_in(result.output) == expected


@pytest.mark.parametrize(
    "command",
    [
        ("pin", "{shard}", "node-b"),
        ("move", "{shard}", "node-b"),
        ("unpin", "{pinned}"),
        ("drain", "node-a"),
        ("undrain", "node-c"),
        ("rebalance",),
    ],
)
async def test_dry_run_writes_nothing_and_lists_the_moves_assign_predicts(etcd_kv, cluster, target, join, command):
    for node in ("node-a", "node-b", "node-c"):
        await join(node)
    nodes = ["node-a", "node-b", "node-c"]
    # node-c drained, and one of node-a's shards pinned to node-b: every command below moves something.
    on_a = [s for s, n in desired(nodes, Overrides(drains=frozenset({"node-c"}))).items() if n == "node-a"]
    pinned, shard = on_a[0], on_a[1]
    await pin(etcd_kv, cluster, pinned, "node-b")
    await drain(etcd_kv, cluster, "node-c")
    now = await read_overrides(etcd_kv, cluster)
    changed = {
        "pin": Overrides({**now.pins, shard: "node-b"}, now.drains),
        "move": Overrides({**now.pins, shard: "node-b"}, now.drains),
        "unpin": Overrides({}, now.drains),
        "drain": Overrides(now.pins, now.drains | {"node-a"}),
        "undrain": Overrides(now.pins, frozenset()),
        "rebalance": Overrides({}, now.drains),
    }[command[0]]
    expected = moves(desired(nodes, now), desired(nodes, changed))
    assert expected, "a change that moves nothing would not check the moves table"
    before = await revision(etcd_kv, cluster)

    result = await acli("shards", *(part.format(shard=shard, pinned=pinned) for part in command), "--dry-run", *target)

    assert result.exit_code == 0, result.output
    assert "dry run: nothing written" in result.output
    assert moves_in(result.output) == expected
    assert await revision(etcd_kv, cluster) == before
    assert await read_overrides(etcd_kv, cluster) == now


async def test_move_pins_the_shard_and_waits_until_the_node_owns_it(etcd_kv, cluster, target, join):
    a, b = await join("node-a"), await join("node-b")
    shard = shard_desired_on("node-a", ["node-a", "node-b"])
    old = await claim(a, shard)

    async def hand_over_once_pinned() -> Any:
        # What the nodes do on a pin: the old owner lets go, the pinned one claims.
        await aeventually(lambda: read_overrides(etcd_kv, cluster), until=lambda o: o.pins.get(shard) == "node-b")
        await release(a, old)
        return await claim(b, shard)

    result, new = await asyncio.gather(
        acli("shards", "move", str(shard), "node-b", "--wait", "10", *target), hand_over_once_pinned()
    )

    assert result.exit_code == 0, result.output
    assert new is not None and new.epoch > old.epoch
    assert f"shard {shard}: owned by node-b, epoch {new.epoch}" in result.output
    assert (await owners(etcd_kv, cluster))[shard].node == "node-b"


async def test_move_fails_when_the_node_does_not_take_the_shard_in_time(etcd_kv, cluster, target, join):
    a = await join("node-a")
    await join("node-b")
    shard = shard_desired_on("node-a", ["node-a", "node-b"])
    await claim(a, shard)

    result = await acli("shards", "move", str(shard), "node-b", "--wait", "0.5", *target)

    assert result.exit_code == 1
    assert f"shard {shard} is not owned by node-b after 0.5 s (owner now: node-a" in result.output
    assert (await read_overrides(etcd_kv, cluster)).pins == {shard: "node-b"}  # the pin stays


# -- refusing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (("pin", "3", "node-x"), "node 'node-x' is not live"),
        (("move", "3", "node-x"), "node 'node-x' is not live"),
        (("drain", "node-x"), "node 'node-x' is not live"),
        (("pin", "16", "node-a"), f"shard 16 is out of range: cluster '{{cluster}}' has shards 0-{SHARDS - 1}"),
        (("unpin", "99"), f"has shards 0-{SHARDS - 1}"),
        (("pin", "3", "node-b"), "node 'node-b' is drained"),
    ],
)
async def test_bad_input_is_refused_with_a_message_and_nothing_written(etcd_kv, cluster, target, join, args, message):
    await join("node-a")
    await join("node-b")
    await drain(etcd_kv, cluster, "node-b")
    before = await revision(etcd_kv, cluster)

    result = await acli("shards", *args, *target)

    assert result.exit_code == 1
    assert message.format(cluster=cluster) in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert await revision(etcd_kv, cluster) == before


async def test_force_pins_to_a_node_that_is_not_live_yet(etcd_kv, cluster, target, join):
    await join("node-a")

    result = await acli("shards", "pin", "3", "node-later", "--force", *target)

    assert result.exit_code == 0, result.output
    assert (await read_overrides(etcd_kv, cluster)).pins == {3: "node-later"}


@pytest.mark.parametrize("command", [("nodes", "ls"), ("shards", "ls"), ("shards", "map"), ("shards", "rebalance")])
async def test_a_cluster_not_initialised_is_named(etcd_member, command):
    result = await acli(*command, "--etcd", etcd_member.endpoint, "--cluster", f"typo-{uuid.uuid4().hex[:8]}")

    assert result.exit_code == 1
    assert "is not initialised in etcd" in result.output and "Traceback" not in result.output


async def test_unreachable_etcd_is_one_line_and_exit_2():
    endpoint = f"127.0.0.1:{free_port()}"

    result = await acli("shards", "ls", "--etcd", endpoint)

    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert f"etcd at {endpoint} cannot be reached" in result.output and "Traceback" not in result.output


# -- a local cluster ----------------------------------------------------------------------------------


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen]:
    """A process that is no part of any cluster: it must outlive every `down`."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _add_impostor(folder: Path, pid: int) -> None:
    """Record ``pid`` (another program's) as if it were the cluster's: `down` must not touch it."""
    path = folder / "cluster.json"
    data = json.loads(path.read_text())
    data["processes"].append(
        {
            "name": "impostor",
            "role": "redis",
            "pid": pid,
            "argv": ["redis-server", "--port", "1"],
            "create_time": psutil.Process(pid).create_time(),
            "started_ms": 0,
            "ports": {},
            "log": "",
            "address": "",
        }
    )
    path.write_text(json.dumps(data))


def test_cluster_up_status_down_stops_exactly_its_processes(tmp_path, bystander):
    folder = tmp_path / "cluster"
    up = cli("cluster", "up", "--nodes", "2", "--dir", str(folder), "--shards", "8", "--lease-ttl-s", "2")
    assert up.exit_code == 0, up.output
    local = LocalCluster.load(folder)
    assert [p.name for p in local.processes] == ["etcd", "redis", "node-0", "node-1"]
    assert f"--etcd {local.etcd_endpoint}" in up.output
    assert local.ledger_url == f"sqlite:///{folder.resolve() / 'ledger.sqlite3'}"
    pids = [p.pid for p in local.processes] + local.node_pids(0) + local.node_pids(1)
    assert all(psutil.Process(pid).is_running() for pid in pids)
    for p in local.processes:  # in sessions of their own: a Ctrl-C where `up` ran does not reach them
        assert os.getsid(p.pid) == p.pid

    again = cli("cluster", "up", "--nodes", "2", "--dir", str(folder))
    assert again.exit_code == 1 and "a cluster is running in" in again.output

    status = eventually(
        lambda: cli("cluster", "status", "--dir", str(folder)), until=lambda r: r.exit_code == 0, timeout=15
    )
    table = {r[0]: r[1:] for r in rows(status.output)}
    assert [table[name][1] for name in ("etcd", "redis", "node-0", "node-1")] == ["running"] * 4
    assert table["node-0"][3] == table["node-1"][3] == "SERVING"
    assert table["node-0"][4].isdigit() and table["node-1"][4].isdigit()  # owners read from etcd

    _add_impostor(folder, bystander.pid)
    down = cli("cluster", "down", "--dir", str(folder))

    assert down.exit_code == 0, down.output
    outcomes = {r[0]: r[2] for r in rows(down.output)}
    stopped = {name: "stopped" for name in ("node-0", "node-1", "redis", "etcd")}
    assert outcomes == {**stopped, "impostor": "not running"}
    assert [pid for pid in pids if not gone(pid)] == []
    assert bystander.poll() is None
    assert json.loads((folder / "cluster.json").read_text())["state"] == "down"
    assert (folder / "logs" / "node-0.log").read_text()
    after = cli("cluster", "status", "--dir", str(folder))
    assert after.exit_code == 1 and {r[2] for r in rows(after.output)} == {"gone"}

    purged = cli("cluster", "down", "--dir", str(folder), "--purge")
    assert purged.exit_code == 0, purged.output
    assert not folder.exists()


class _Boom(Exception):
    pass


def test_local_cluster_kills_pauses_and_restarts_a_node_and_stops_everything_on_error(tmp_path):
    cluster = LocalCluster(tmp_path / "c", nodes=1, shards=4, lease_ttl_s=2)
    seen: list[int] = []
    with pytest.raises(_Boom), cluster:
        address = cluster.node_addresses[0]
        family = cluster.node_pids(0)
        seen += [p.pid for p in cluster.processes] + family
        assert len(family) >= 2  # the node and its worker / duties processes

        cluster.pause(0)
        assert {psutil.Process(pid).status() for pid in family} == {psutil.STATUS_STOPPED}
        assert cluster.status().processes[-1].state == "paused"
        cluster.resume(0)
        assert psutil.STATUS_STOPPED not in {psutil.Process(pid).status() for pid in family}

        cluster.kill(0)
        assert all(gone(pid) for pid in family) and cluster.node_pids(0) == []
        assert cluster.status().processes[-1].state == "gone"

        restarted = cluster.start_node(0)
        seen += cluster.node_pids(0)
        assert restarted.pid not in family and cluster.node_addresses[0] == address
        node = eventually(lambda: cluster.status().processes[-1], until=lambda p: p.health == "SERVING")
        assert node.address == address
        raise _Boom
    assert [pid for pid in seen if not gone(pid)] == []
    assert LocalCluster.load(tmp_path / "c").state == "down"


def test_status_of_a_folder_without_a_cluster_says_so(tmp_path):
    result = cli("cluster", "status", "--dir", str(tmp_path))

    assert result.exit_code == 2
    assert "no cluster recorded in" in " ".join(result.output.split())


def test_cluster_up_with_the_board_serves_its_nodes_and_down_stops_it(tmp_path):
    folder = tmp_path / "cluster"
    up = cli("cluster", "up", "--nodes", "1", "--dir", str(folder), "--shards", "4", "--board")
    try:
        assert up.exit_code == 0, up.output
        local = LocalCluster.load(folder)
        assert [p.name for p in local.processes] == ["etcd", "redis", "node-0", "board"]
        assert f"the live board: {local.board_url}" in up.output
        # The board found the node through etcd and reads its health.
        state = eventually(
            lambda: json.loads(urllib.request.urlopen(f"{local.board_url}api/state", timeout=5).read()),
            until=lambda s: [(n["id"], n["health"]) for n in s["nodes"]] == [("node-0", "SERVING")],
            timeout=20,
        )
        assert state["problems"] == []
        board = next(p for p in local.processes if p.name == "board")
    finally:
        down = cli("cluster", "down", "--dir", str(folder))
    assert down.exit_code == 0, down.output
    assert {r[0]: r[2] for r in rows(down.output)}["board"] == "stopped"
    assert gone(board.pid)
