"""Node processes for tests: started, and stopped with every worker they forked."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from flashstock.client import ClientConfig, StockClient
from flashstock.server.local.procs import NodeProcess, family

__all__ = ["QUIET", "client_reaching_every_worker", "running_node"]

QUIET = ("--reconcile-interval-s", "0")
"""Flags of a node that does not reconcile: tests count the Redis calls a
request causes, and a reconciliation pass reads every SKU. The duty has its
own tests (test_reconcile_duty.py)."""


@contextlib.contextmanager
def running_node(
    redis_url: str,
    *,
    workers: int = 1,
    extra_args: tuple[str, ...] = (),
    ledger: str | None = None,
    shards: int = 64,
    data_dir: Path | None = None,
) -> Iterator[NodeProcess]:
    """A started :class:`NodeProcess`; on exit stopped with every worker it forked, its log and own data removed.

    ``NodeProcess.stop`` SIGTERMs the parent, which forwards the signal to its
    workers, and kills whichever of them (found when the node became ready)
    still runs afterwards: a test that SIGKILLs the parent leaves nothing behind.
    """
    with NodeProcess(
        redis_url, workers=workers, extra_args=extra_args, ledger=ledger, shards=shards, data_dir=data_dir
    ) as node:
        yield node


def _established(pid: int, local_port: int | None = None, remote_port: int | None = None) -> list:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return []
    return [
        c
        for c in conns
        if c.status == psutil.CONN_ESTABLISHED
        and c.raddr
        and (local_port is None or c.laddr.port == local_port)
        and (remote_port is None or c.raddr.port == remote_port)
    ]


def _our_ports_to(node: NodeProcess) -> set[int]:
    return {c.laddr.port for c in _established(psutil.Process().pid, remote_port=node.port)}


def _worker_by_our_port(node: NodeProcess) -> dict[int, int]:
    """Our local port of each connection to ``node`` -> pid of the worker that accepted it."""
    return {
        c.raddr.port: child.pid for child in family(node.pid)[1:] for c in _established(child.pid, local_port=node.port)
    }


@contextlib.contextmanager
def client_reaching_every_worker(node: NodeProcess, admin: Any, connections: int = 8) -> Iterator[StockClient]:
    """A client of ``node`` whose ``connections`` reach every one of its worker processes.

    The kernel spreads the connections over the workers (SO_REUSEPORT); in the
    unlikely case that all of them land on one worker, a new client is opened.
    ``admin`` (a client of any node on the same Redis) puts the probe SKU.
    """
    probe = f"spread-{uuid.uuid4().hex}"
    admin.put_sku(probe, 1)
    clients = []
    try:
        for _ in range(10):
            before = _our_ports_to(node)
            client = StockClient(ClientConfig(addresses=[node.address], connections_per_address=connections))
            clients.append(client)
            for _ in range(connections):  # calls go round-robin: this opens every connection
                client.get_stock(probe)
            ports = _our_ports_to(node) - before
            workers = {_worker_by_our_port(node).get(p) for p in ports} - {None}
            if len(ports) == connections and len(workers) == node.workers:
                yield client
                return
        pytest.fail(f"no client reached all {node.workers} workers of {node.address}")
    finally:
        for client in clients:
            client.close()
