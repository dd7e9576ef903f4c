"""A node lives and dies whole: its worker and duties processes never outlive it.

Driven from outside, as an operator or a supervisor would: ``flashstock
serve`` as a subprocess, ``kill -9`` or ``kill -TERM`` of its main pid only
(never its process group), raw gRPC stubs, ``/proc`` (psutil) and etcd read
directly.

- ``kill -9`` of the main process: every child (serving workers, the duties
  process) is gone within about a second, the port refuses connections, and
  the dying duties process revokes the node's etcd lease, so its shards fail
  over at once instead of one lease TTL later.
- ``kill -9`` of one worker: the node does not limp on; it stops whole and
  exits non-zero, for its supervisor to restart.
- SIGTERM: the node stops taking calls at once, but a call in flight gets up
  to ``grace_s`` to finish (here a durable Deduct waiting for a ledger that
  the test keeps locked), and the node then exits 0; one still running when
  the grace ends is cut (UNAVAILABLE: the client retries it elsewhere).
- The mechanism alone (``_lifeline.py``), in a two-process tree of the
  test's own: the kernel's notice, the polling fallback, last words that
  hang (cut at the deadline), a parent gone before the child tied itself, a
  parent-death signal sent by hand while the parent lives (ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from flashstock.lockmgr import etcd_client, live_nodes, owners
from flashstock.server.local.procs import NodeProcess, RedisServer, family, gone
from flashstock.v1 import admin_pb2, admin_pb2_grpc, stock_pb2, stock_pb2_grpc
from tests.helpers import eventually
from tests.helpers.processes import running_node

pytest_plugins = ["tests.helpers.etcd"]

CHILDREN_GONE_S = 3.0
"""How long the children of a killed node may take to go: the promise is
about a second; the rest is slack for a busy 2-core machine."""


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis of the test's own (a cluster's epochs stay in it; a standalone node would refuse it)."""
    with RedisServer() as server:
        yield server


def node_process(redis_url: str, data_dir: Path, *, workers: int, extra_args: tuple[str, ...] = ()):
    """A started ``flashstock serve``; afterwards every process of its tree is killed, whatever the test did to it."""
    # Few shards: a node starts faster (its warden looks at each at start).
    return running_node(redis_url, workers=workers, extra_args=extra_args, shards=8, data_dir=data_dir)


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The processes of ``processes`` that still run (a zombie has exited: only its parent has not reaped it)."""
    return [proc for proc in processes if not gone(proc)]


def refuses_connections(port: int) -> bool:
    """True when nothing accepts a TCP connection on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def kill_main_process_only(node: NodeProcess) -> None:
    """``kill -9 <main pid>``: the main process alone, not its group; its children learn of it only by themselves."""
    assert node.proc is not None
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(timeout=5)


def test_children_exit_when_main_process_is_killed(redis_server, tmp_path):
    with node_process(redis_server.url, tmp_path, workers=2) as node:
        children = family(node.pid)[1:]
        names = [c.cmdline() for c in children]
        # Two serving workers and the duties process (plus multiprocessing's helpers, if any).
        assert len(children) >= 3, names
        with grpc.insecure_channel(node.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)

        kill_main_process_only(node)

        left = eventually(lambda: alive(children), until=lambda procs: not procs, timeout=CHILDREN_GONE_S)
        assert left == []
        assert refuses_connections(node.port), "the dead node's port still accepts connections"


def listens_on(proc: psutil.Process, port: int) -> bool:
    """True when ``proc`` has a listening socket on ``port`` (a serving worker, not the duties process)."""
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in proc.net_connections(kind="tcp"))


def test_a_node_whose_worker_dies_stops_whole(redis_server, tmp_path):
    with node_process(redis_server.url, tmp_path, workers=2) as node:
        children = family(node.pid)[1:]
        worker = next(c for c in children if listens_on(c, node.port))

        worker.kill()

        # Not a node limping on with a worker less: the main process stops the rest and exits non-zero,
        # so whatever supervises it starts it again, whole.
        assert node.proc is not None
        assert node.proc.wait(timeout=20) != 0
        eventually(lambda: alive(children), until=lambda procs: not procs, timeout=CHILDREN_GONE_S)
        assert refuses_connections(node.port)
        assert "stopping the others" in node.log()


def etcd_view(endpoint: str, cluster: str) -> tuple[set[str], set[str]]:
    """The live nodes' ids and the shard owners' ids in etcd, read directly."""

    async def read() -> tuple[set[str], set[str]]:
        client = etcd_client([endpoint])
        try:
            nodes = await live_nodes(client, cluster)
            owned = await owners(client, cluster)
            return set(nodes), {o.node for o in owned.values()}
        finally:
            await client.close()

    return asyncio.run(read())


def test_a_killed_nodes_shards_are_freed_at_once_not_a_lease_later(redis_server, etcd_server, cluster_name, tmp_path):
    lease_ttl_s = 30
    args = (
        "--etcd",
        etcd_server.endpoint,
        "--cluster",
        cluster_name,
        "--node-id",
        "doomed",
        "--lease-ttl-s",
        str(lease_ttl_s),
    )
    with node_process(redis_server.url, tmp_path, workers=1, extra_args=args) as node:
        eventually(lambda: etcd_view(etcd_server.endpoint, cluster_name) == ({"doomed"}, {"doomed"}), timeout=15)
        children = family(node.pid)[1:]

        killed_at = time.monotonic()
        kill_main_process_only(node)

        eventually(lambda: alive(children), until=lambda procs: not procs, timeout=CHILDREN_GONE_S)
        # The dying duties process revoked the lease: registration and owner keys are gone long before the TTL.
        eventually(lambda: etcd_view(etcd_server.endpoint, cluster_name) == (set(), set()), timeout=CHILDREN_GONE_S)
        assert time.monotonic() - killed_at < lease_ttl_s / 3


def put_durable_sku(address: str, sku: str, stock: int) -> None:
    with grpc.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        admin.PutSku(
            admin_pb2.PutSkuRequest(sku_id=sku, stock=stock, mode=admin_pb2.MODE_DURABLE, request_id=f"put-{sku}"),
            timeout=10,
        )


def confirmed(address: str, sku: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stock = stock_pb2_grpc.StockServiceStub(channel)
        return stock.GetStock(stock_pb2.GetStockRequest(sku_id=sku), timeout=5).confirmed


@contextlib.contextmanager
def ledger_locked(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """The node's SQLite ledger with a write transaction held open: the persister waits (busy_timeout) until it ends."""
    conn = sqlite3.connect(data_dir / "ledger.sqlite3", isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield conn
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        conn.close()


def test_sigterm_lets_an_in_flight_call_finish_within_grace(redis_server, tmp_path):
    sku = f"drain-{uuid.uuid4().hex[:8]}"
    # A durable reply waits for the ledger; give it longer than the lock is held.
    args = ("--grace-s", "15", "--durable-wait-ms", "15000")
    with node_process(redis_server.url, tmp_path, workers=2, extra_args=args) as node:
        put_durable_sku(node.address, sku, stock=5)
        channel = grpc.insecure_channel(node.address)
        try:
            stub = stock_pb2_grpc.StockServiceStub(channel)
            with ledger_locked(tmp_path) as lock:
                call = stub.Deduct.future(
                    stock_pb2.DeductRequest(sku_id=sku, user_id="u1", qty=1, request_id="in-flight"), timeout=30
                )
                # Redis took the unit; the reply now waits for the ledger, which the lock holds up.
                eventually(lambda: confirmed(node.address, sku) == 1)
                assert not call.done()

                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)

                # No new calls: the port closes at once, while the call in flight goes on.
                eventually(lambda: refuses_connections(node.port), timeout=5)
                assert not call.done(), call
                assert node.proc.poll() is None
                lock.execute("ROLLBACK")

            reply = call.result(timeout=20)
            assert reply.outcome == stock_pb2.OUTCOME_OK
            assert node.proc.wait(timeout=20) == 0
        finally:
            channel.close()


PARENT_AND_CHILD = """
import logging, multiprocessing, os, sys, time
from flashstock.server._lifeline import Lifeline

def child(parent_pid, mode, out):
    logging.basicConfig(filename=out + ".log", level=logging.INFO)
    lifeline = Lifeline(parent_pid, has_last_words=mode != "no-last-words", kernel=mode != "poll")
    lifeline.start()
    open(out + ".tied", "w").close()
    def last_words(seconds):
        with open(out, "w") as f:
            f.write(f"{seconds:.3f}")
        if mode == "hang":
            time.sleep(60)
    lifeline.last_words = last_words
    time.sleep(120)

if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    parent = 1 if mode == "parent-gone-already" else os.getpid()  # not our parent: as if it had died
    p = multiprocessing.get_context("spawn").Process(target=child, args=(parent, mode, out))
    p.start()
    print(p.pid, flush=True)
    p.join()
    sys.exit(p.exitcode)
"""


@pytest.mark.parametrize("mode", ["no-last-words", "last-words", "hang", "poll", "stray-signal", "parent-gone-already"])
def test_a_child_leaves_within_a_second_of_its_parents_death(mode, tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(PARENT_AND_CHILD)
    said = tmp_path / "last-words"
    parent = subprocess.Popen([sys.executable, str(script), mode, str(said)], stdout=subprocess.PIPE, text=True)
    child: psutil.Process | None = None
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        if mode == "parent-gone-already":
            # It finds a parent other than the one it was given: it leaves at once, killed by nobody.
            assert parent.wait(timeout=10) == 1  # the child's exit status, passed on
            assert not (tmp_path / "last-words.tied").exists()
            return
        eventually(lambda: (tmp_path / "last-words.tied").exists())
        if mode == "stray-signal":
            # The parent-death signal sent by hand, the parent alive: the child stays.
            child.send_signal(signal.SIGUSR1)
            eventually(lambda: "ignored" in (tmp_path / "last-words.log").read_text())
            assert alive([child])

        parent.kill()
        parent.wait(timeout=5)
        killed_at = time.monotonic()

        eventually(lambda: alive([child]), until=lambda procs: not procs, timeout=CHILDREN_GONE_S)
        took = time.monotonic() - killed_at
        # The promise is about a second; polling adds up to POLL_S, a busy machine some more.
        assert took < 2.0, f"the child left {took:.2f} s after its parent's death"
        if mode == "no-last-words":
            assert not said.exists()
        else:
            assert said.exists(), "no last words"
            assert 0 < float(said.read_text()) <= 1.0  # the time they were given: within the deadline
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def test_sigterm_cuts_a_call_still_running_when_grace_ends(redis_server, tmp_path):
    sku = f"cut-{uuid.uuid4().hex[:8]}"
    grace_s = 1.0
    args = ("--grace-s", str(grace_s), "--durable-wait-ms", "30000")
    with node_process(redis_server.url, tmp_path, workers=2, extra_args=args) as node:
        put_durable_sku(node.address, sku, stock=5)
        channel = grpc.insecure_channel(node.address)
        try:
            stub = stock_pb2_grpc.StockServiceStub(channel)
            with ledger_locked(tmp_path):
                call = stub.Deduct.future(
                    stock_pb2.DeductRequest(sku_id=sku, user_id="u1", qty=1, request_id="too-slow"), timeout=30
                )
                eventually(lambda: confirmed(node.address, sku) == 1)
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
                signalled_at = time.monotonic()

                # The ledger stays locked: the call cannot finish, and is cut once its grace is over.
                error = call.exception(timeout=15)
                cut_after = time.monotonic() - signalled_at
                assert isinstance(error, grpc.RpcError), error
                assert error.code() == grpc.StatusCode.UNAVAILABLE  # the client retries it, same request id
                assert grace_s * 0.8 <= cut_after < grace_s + 4, f"cut {cut_after:.2f} s after SIGTERM"
            assert node.proc.wait(timeout=30) == 0
        finally:
            channel.close()
