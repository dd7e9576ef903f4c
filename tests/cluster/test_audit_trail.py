"""The audit trail in a cluster: a shard change made with the CLI is one ledger row, copied there from etcd,
where it was written in the change's own transaction; with every node down it waits in etcd, and is
copied once when a node is back. A SKU change whose persister dies between Redis and the ledger is
recorded once, together with the change, by the node that takes the shard over.

Real processes: etcd, Redis, nodes (:class:`~tests.helpers.cluster.ClusterStack`), the CLI in this process.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
import uuid
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner, Result

from flashstock.lockmgr import ClusterKeys, audit_records, etcd_client, pin, shard_of
from flashstock.server.cli.app import app
from flashstock.server.cli.shards import audit_record
from flashstock.server.duties.audit import AuditCopier
from flashstock.server.ledger import Ledger
from flashstock.server.local.etcd import EtcdServer
from tests.helpers import aeventually, eventually
from tests.helpers.cluster import CLUSTER, cluster_of
from tests.helpers.failpoints import KillNode, PauseNode
from tests.helpers.stranger import Stranger

pytestmark = pytest.mark.slow


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1"})


def waiting_in_etcd(endpoint: str, cluster: str = CLUSTER) -> list[tuple[str, bytes]]:
    async def read() -> list[tuple[str, bytes]]:
        client = etcd_client([endpoint])
        try:
            return await audit_records(client, cluster)
        finally:
            await client.close()

    return asyncio.run(read())


def shard_rows(ledger: Ledger, method: str) -> list[Any]:
    return [r for r in ledger.audit(limit=1000) if r.method == method]


def test_a_shard_move_with_the_cli_is_one_audit_row_and_waits_in_etcd_while_no_node_runs(request, tmp_path):
    with cluster_of(request, tmp_path, nodes=2) as cluster:
        ledger = cluster.ledger()
        target = ("--etcd", cluster.endpoints, "--cluster", CLUSTER)
        shard = next(s for s, o in cluster.owners().items() if o.node == cluster.node_ids[0])

        moved = cli("shards", "move", str(shard), cluster.node_ids[1], *target)

        assert moved.exit_code == 0, moved.output
        [row] = eventually(lambda: shard_rows(ledger, "shards.move"), until=lambda rows: len(rows) == 1)
        assert row.identity == f"os:{getpass.getuser()}@{socket.gethostname()}"
        assert (row.peer, row.shard, row.sku_id, row.before, row.after) == (
            socket.gethostname(),
            shard,
            None,
            None,
            None,
        )
        assert row.args == {"shard": shard, "node": cluster.node_ids[1], "force": False}
        assert row.source.startswith(f"etcd/{ClusterKeys(CLUSTER).audit}")
        eventually(lambda: waiting_in_etcd(cluster.endpoints), until=lambda left: left == [])

        # Every node down: the record of a change made meanwhile waits in etcd ...
        KillNode(cluster, 0).inject()
        KillNode(cluster, 1).inject()
        drained = cli("shards", "drain", cluster.node_ids[0], "--force", *target)
        assert drained.exit_code == 0, drained.output
        assert len(waiting_in_etcd(cluster.endpoints)) == 1
        assert shard_rows(ledger, "shards.drain") == []

        # ... and is copied once a node is back; `audit ls` of the cluster's folder shows both, newest first.
        KillNode(cluster, 1).recover()
        [drain] = eventually(lambda: shard_rows(ledger, "shards.drain"), until=lambda rows: len(rows) == 1)
        assert drain.args == {"node": cluster.node_ids[0], "force": True} and drain.shard is None
        eventually(lambda: waiting_in_etcd(cluster.endpoints), until=lambda left: left == [])

        listed = cli("audit", "ls", "--dir", str(cluster.folder), "--format", "json")
        assert listed.exit_code == 0, listed.output
        methods = [json.loads(line)["method"] for line in listed.output.splitlines()]
        assert methods[:2] == ["shards.drain", "shards.move"] and methods.count("shards.move") == 1


async def test_two_copiers_at_once_and_a_copy_not_deleted_keep_one_row(tmp_path):
    cluster = f"audit-{uuid.uuid4().hex[:8]}"
    with EtcdServer() as etcd:
        client = etcd_client([etcd.endpoint])
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
        ledger.open()
        try:
            from flashstock.lockmgr import init_cluster

            await init_cluster(client, cluster, 4)
            await pin(client, cluster, 2, "node-a", audit_record("pin", shard=2, node="node-a", force=True))
            [(key, value)] = await audit_records(client, cluster)
            # A copy that reached the ledger but never deleted its record (a crash in between) ...
            from flashstock.server.ledger import row_of_shard_change

            ledger.copy_audit([row_of_shard_change(key, value)])

            # ... and two nodes copying at once: still one row, and nothing left in etcd.
            first, second = AuditCopier(client, cluster, ledger), AuditCopier(client, cluster, ledger)
            await asyncio.gather(first.copy_once(), second.copy_once())

            rows = ledger.audit()
            assert [(r.method, r.shard, r.args["node"]) for r in rows] == [("shards.pin", 2, "node-a")]
            assert await audit_records(client, cluster) == []
            # A record nobody can read stays in etcd (for a person), and holds up no other.
            await client.put(f"{ClusterKeys(cluster).audit}0000000000000-bad".encode(), b"not json")
            await pin(client, cluster, 3, "node-b", audit_record("pin", shard=3, node="node-b", force=True))
            assert await first.copy_once() == 1
            assert [r.shard for r in ledger.audit()] == [3, 2]
            assert [k for k, _ in await audit_records(client, cluster)] == [
                f"{ClusterKeys(cluster).audit}0000000000000-bad"
            ]
        finally:
            ledger.close()
            await client.close()


def test_a_sku_change_whose_persister_stops_before_the_ledger_is_recorded_once_with_it(request, tmp_path):
    with cluster_of(request, tmp_path, nodes=2) as cluster:
        ledger = cluster.ledger()
        sku = next(f"audited-{i}" for i in range(1000) if cluster.owner_of(f"audited-{i}") == 0)

        async def changes() -> None:
            stranger = Stranger([cluster.node_addresses[1]])
            try:

                async def answered(method: str, **fields: Any) -> Any:
                    async def once() -> Any:
                        try:
                            return await stranger.call(method, **fields)
                        except grpc.aio.AioRpcError as err:
                            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                                return None
                            raise

                    return await aeventually(once, timeout=30)

                await answered("PutSku", sku_id=sku, stock=10, request_id=f"p-{sku}")
                # The owner of the SKU's shard (its persister) freezes: the change reaches Redis's log only.
                paused = PauseNode(cluster, 0)
                paused.inject()
                try:
                    with pytest.raises(grpc.aio.AioRpcError):
                        await stranger.call("AdjustStock", sku_id=sku, delta=5, request_id=f"a-{sku}", timeout=1.0)
                    # Node 1 takes the shard over once node 0's lease runs out; its persister applies the entry.
                    reply = await answered("AdjustStock", sku_id=sku, delta=5, request_id=f"a-{sku}")
                    assert reply.duplicate  # the first send took effect; this one gets its answer
                finally:
                    paused.recover()
            finally:
                await stranger.close()

        asyncio.run(changes())
        cluster.wait_owners({0, 1})

        def adjusts() -> list[Any]:
            return [r for r in ledger.audit(sku_id=sku) if r.method == "AdjustStock"]

        [row] = eventually(adjusts, until=lambda rows: len(rows) == 1)
        assert (row.before["total"], row.after["total"]) == (10, 15)
        [state] = ledger.sku_states(sku_id=sku)
        assert state.total == 15  # the change and its record, together
        assert row.shard == shard_of(sku, 64)
        # Node 0, woken, is fenced: it writes the entry again nowhere.
        assert len(adjusts()) == 1
