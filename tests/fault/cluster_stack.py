"""A flashstock cluster of a test's own: etcd, one Redis, nodes on one ledger, all real processes.

::

    with ClusterStack(tmp_path, nodes=3) as cluster:
        owner = cluster.owner_of(sku)          # the node index owning the SKU's shard
        cluster.kill(owner)                    # kill -9 (a crash)
        cluster.wait_owners(live={1, 2})       # every shard owned by a live node

etcd is one member (``EtcdServer``) or, with ``etcd_members=3``, a three-
member cluster (``EtcdCluster``) every node is given all endpoints of. Each
node has a metrics port, so a test can read its counters
(:meth:`ClusterStack.metric`). Everything is stopped when the ``with``
block ends, also when the test fails; a failed test's nodes' logs are
printed by the fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from pathlib import Path

import psutil
import redis as redis_py
from helpers import metric

from flashstock.client import ClientConfig, RetryPolicy
from flashstock.lockmgr import ShardOwner, etcd_client, owners, shard_of
from flashstock.server.local.etcd import EtcdCluster, EtcdServer
from flashstock.server.local.procs import NodeProcess, RedisServer, free_port
from flashstock.server.ledger import Ledger, sqlite_url

SHARDS = 64
CLUSTER = "test"


class ClusterStack:
    """etcd, a Redis and ``nodes`` flashstock nodes in a cluster, on one SQLite ledger."""

    def __init__(
        self,
        folder: Path,
        nodes: int = 3,
        *,
        lease_ttl_s: int = 2,
        etcd_members: int = 1,
        node_env: dict[str, dict[str, str]] | None = None,
        workers: int = 1,
    ) -> None:
        self.folder = folder
        self.lease_ttl_s = lease_ttl_s
        self.etcd: EtcdServer | EtcdCluster = EtcdServer(folder / "etcd") if etcd_members == 1 else EtcdCluster(etcd_members)
        (folder / "redis").mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(folder / "redis")
        self.ledger_url = sqlite_url(folder / "ledger")
        self.node_ids = [f"node-{i}" for i in range(nodes)]
        self.metrics_ports = [free_port() for _ in range(nodes)]
        self.nodes: list[NodeProcess] = []
        self._node_env = node_env or {}
        self._workers = workers
        self._ledgers: list[Ledger] = []

    @property
    def endpoints(self) -> str:
        """The etcd endpoints, comma-separated, as nodes and clients take them."""
        if isinstance(self.etcd, EtcdCluster):
            return ",".join(self.etcd.endpoints)
        return self.etcd.endpoint

    def start(self) -> ClusterStack:
        """Start etcd and Redis, then the nodes (in parallel); returns once every node serves."""
        self.etcd.start()
        self.redis.start()
        (self.folder / "ledger").mkdir(parents=True, exist_ok=True)
        for i, node_id in enumerate(self.node_ids):
            self.nodes.append(
                NodeProcess(
                    self.redis.url,
                    workers=self._workers,
                    shards=SHARDS,
                    data_dir=self.folder / node_id,
                    ledger=self.ledger_url,
                    env=self._node_env.get(node_id),
                    extra_args=[
                        "--etcd", self.endpoints,
                        "--cluster", CLUSTER,
                        "--node-id", node_id,
                        "--lease-ttl-s", str(self.lease_ttl_s),
                        "--metrics-port", str(self.metrics_ports[i]),
                        "--reap-interval-ms", "100",
                    ],
                )
            )
        # The first node creates the ledger's schema; the others then find it.
        self.nodes[0].start()
        for node in self.nodes[1:]:
            node.start()
        self.wait_owners(live=set(range(len(self.nodes))))
        return self

    def stop(self) -> None:
        """Stop every process (nodes, then Redis and etcd)."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                self.resume(self.nodes.index(node))
            with contextlib.suppress(Exception):
                node.stop()
        for ledger in self._ledgers:
            ledger.close()
        self.redis.stop()
        self.etcd.close()

    def __enter__(self) -> ClusterStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- clients and readers ---------------------------------------------

    def client_config(self, *indexes: int) -> ClientConfig:
        """A client of the nodes ``indexes`` (all by default), retrying within 20 s."""
        chosen = indexes or tuple(range(len(self.nodes)))
        return ClientConfig(
            addresses=[self.nodes[i].address for i in chosen],
            deadline_s=20.0,
            attempt_timeout_s=2.0,
            retry=RetryPolicy(max_attempts=40, max_backoff_s=0.5),
        )

    def redis_client(self) -> redis_py.Redis:
        """A plain Redis client of the cluster's Redis, for inspection."""
        return redis_py.Redis.from_url(self.redis.url)

    def logs(self) -> str:
        """The nodes' logs (the last part of each)."""
        return "\n".join(f"--- log of {node_id} ---\n{node.log()}" for node_id, node in zip(self.node_ids, self.nodes, strict=True))

    def ledger(self) -> Ledger:
        """A reader of the cluster's ledger (closed with the stack)."""
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
        deadline = time.monotonic() + timeout
        current: dict[int, ShardOwner] = {}
        while time.monotonic() < deadline:
            current = self.owners()
            by_node = Counter(o.node for o in current.values())
            if len(current) == SHARDS and set(by_node) == wanted:
                return current
            time.sleep(0.05)
        raise AssertionError(f"owners not settled on {sorted(wanted)} within {timeout} s: {Counter(o.node for o in current.values())}")

    def metric(self, index: int, name: str) -> float:
        """The sum of metric ``name`` (every label set) of node ``index``'s duties process."""
        return metric(self.metrics_ports[index], name)

    # -- faults ----------------------------------------------------------

    def _processes(self, index: int) -> list[psutil.Process]:
        parent = psutil.Process(self.nodes[index].pid)
        return [parent, *parent.children(recursive=True)]

    def kill(self, index: int) -> None:
        """kill -9 node ``index`` and its worker processes (a crash)."""
        self.nodes[index].kill()

    def pause(self, index: int) -> None:
        """SIGSTOP node ``index``'s processes (a long GC pause, a frozen VM)."""
        for proc in self._processes(index):
            proc.send_signal(signal.SIGSTOP)

    def resume(self, index: int) -> None:
        """SIGCONT node ``index``'s processes."""
        node = self.nodes[index]
        if node.proc is None or node.proc.poll() is not None:
            return
        for proc in self._processes(index):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGCONT)
