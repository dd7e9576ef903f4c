"""A flashstock cluster of a test's own: the local cluster (``flashstock cluster up``) with the readers tests need.

::

    with ClusterStack(tmp_path, nodes=3) as cluster:
        owner = cluster.owner_of(sku)          # the node index owning the SKU's shard
        KillNode(cluster, owner).inject()      # kill -9, workers included (tests.helpers.failpoints)
        cluster.wait_owners(live={1, 2})       # every shard owned by a live node

:class:`ClusterStack` is a :class:`~flashstock.server.local.cluster.LocalCluster`
(etcd, one Redis, nodes on one SQLite ledger, all real processes in the
test's folder) with a 2 s lease, a fast reaper and the cluster name
:data:`CLUSTER`; it adds what a test reads: clients' settings, shard owners,
node metrics, the ledger. ``with`` returns once every shard is owned and
stops every process when the block ends, also when the test fails.
:func:`cluster_of` also prints the nodes' logs of a failed test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import pytest
import redis as redis_py

from flashstock.client import ClientConfig, RetryPolicy
from flashstock.lockmgr import ShardOwner, etcd_client, owners, shard_of
from flashstock.server.ledger import Ledger
from flashstock.server.local.cluster import LocalCluster, StopOutcome
from tests.helpers import eventually, metric

__all__ = ["CLUSTER", "SHARDS", "ClusterStack", "cluster_of"]

SHARDS = 64
"""The shard count of a test cluster."""
CLUSTER = "test"
"""The cluster's name in etcd (``--cluster``)."""


class ClusterStack(LocalCluster):
    """etcd, a Redis and ``nodes`` flashstock nodes in a cluster, on one SQLite ledger, in ``folder``."""

    def __init__(
        self,
        folder: Path,
        nodes: int = 3,
        *,
        lease_ttl_s: int = 2,
        etcd_members: int = 1,
        node_env: Mapping[str, Mapping[str, str]] | None = None,
        workers: int = 1,
    ) -> None:
        super().__init__(
            folder / "cluster",
            nodes=nodes,
            shards=SHARDS,
            lease_ttl_s=lease_ttl_s,
            workers=workers,
            # Holds expire within 0.1 s of their deadline: tests wait less.
            extra_node_args=("--reap-interval-ms", "100"),
            cluster=CLUSTER,
            etcd_members=etcd_members,
            node_env=node_env,
        )
        self._ledgers: list[Ledger] = []

    def up(self) -> Self:
        """Start every process; returns once every shard is owned, each node owning some."""
        super().up()
        try:
            self.wait_owners(live=set(range(self.size)))
        except BaseException:
            self.down()
            raise
        return self

    def down(self, purge: bool = False) -> list[StopOutcome]:
        """Close the ledger readers, then stop every process (nodes first)."""
        for ledger in self._ledgers:
            ledger.close()
        self._ledgers.clear()
        return super().down(purge)

    # -- clients and readers ---------------------------------------------

    @property
    def endpoints(self) -> str:
        """The etcd endpoints, comma-separated, as nodes and clients take them."""
        return self.etcd_endpoint

    def client_config(self, *indexes: int) -> ClientConfig:
        """A client of the nodes ``indexes`` (all by default), retrying within 20 s."""
        chosen = indexes or tuple(range(self.size))
        return ClientConfig(
            addresses=[self.node_addresses[i] for i in chosen],
            deadline_s=20.0,
            attempt_timeout_s=2.0,
            retry=RetryPolicy(max_attempts=40, max_backoff_s=0.5),
            **self.client_tls(),  # type: ignore[arg-type]
        )

    def redis_client(self) -> redis_py.Redis:
        """A Redis client of the cluster's Redis, for inspection (over TLS, as the operator, on a TLS cluster)."""
        return redis_py.Redis.from_url(self.redis_url, **self.redis_tls().kwargs(self.redis_url))

    def logs(self) -> str:
        """The nodes' logs (the last part of each)."""
        out = []
        for record in self.processes:
            if record.role == "node":
                try:
                    text = Path(record.log).read_text(errors="replace")[-4000:]
                except OSError as exc:
                    text = f"(no log: {exc})"
                out.append(f"--- log of {record.name} (pid {record.pid}) ---\n{text}")
        return "\n".join(out)

    def ledger(self) -> Ledger:
        """A reader of the cluster's ledger (closed with the cluster)."""
        ledger = Ledger(self.ledger_url)
        ledger.open(create=False)
        self._ledgers.append(ledger)
        return ledger

    def owners(self) -> dict[int, ShardOwner]:
        """The shard owners in etcd now."""

        async def read() -> dict[int, ShardOwner]:
            client = etcd_client(self.endpoints)
            try:
                return await owners(client, CLUSTER)
            finally:
                await client.close()

        return asyncio.run(read())

    def owner_of(self, sku: str) -> int:
        """The index of the node that owns ``sku``'s shard."""
        return self.node_ids.index(self.owners()[shard_of(sku, SHARDS)].node)

    def shards_of(self, index: int) -> set[int]:
        """The shards node ``index`` owns now."""
        return {s for s, o in self.owners().items() if o.node == self.node_ids[index]}

    def wait_owners(self, live: set[int], timeout: float = 30.0) -> dict[int, ShardOwner]:
        """Wait until every shard is owned, each by a node of ``live``, and each of them owns some."""
        wanted = {self.node_ids[i] for i in live}

        def settled(current: dict[int, ShardOwner]) -> bool:
            return len(current) == SHARDS and set(Counter(o.node for o in current.values())) == wanted

        return eventually(self.owners, timeout=timeout, interval=0.05, until=settled)

    def metric(self, index: int, name: str) -> float:
        """The sum of metric ``name`` (every label set) of node ``index``'s duties process."""
        return metric(self.metrics_ports[index], name)

    def main_pid(self, index: int) -> int:
        """Node ``index``'s main process id (its workers are under it)."""
        return self.node_pids(index)[0]


@contextlib.contextmanager
def cluster_of(request: pytest.FixtureRequest, folder: Path, nodes: int = 3, **kwargs: Any) -> Iterator[ClusterStack]:
    """A started :class:`ClusterStack` in ``folder``; prints its nodes' logs if the test failed."""
    with ClusterStack(folder, nodes, **kwargs) as cluster:
        yield cluster
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(cluster.logs())
