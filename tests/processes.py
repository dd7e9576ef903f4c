"""Node processes for tests: started, and stopped with every worker they forked."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psutil

from flashstock.server.local.procs import NodeProcess

QUIET = ("--reconcile-interval-s", "0")
"""Flags of a node that does not reconcile: tests count the Redis calls a
request causes, and a reconciliation pass reads every SKU. The duty has its
own tests (test_reconcile_duty.py)."""


def stop_tree(node: NodeProcess, children: list[psutil.Process]) -> None:
    """Stop ``node`` gracefully, kill any of ``children`` still alive, remove its log (and data, if its own)."""
    node.stop()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    node.remove_data()
    if node.log_path is not None:
        with contextlib.suppress(OSError):
            node.log_path.unlink()


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
    """A started :class:`NodeProcess`, stopped on exit with every worker it forked.

    ``NodeProcess.stop`` SIGTERMs the parent, which forwards the signal to its
    workers; should the parent have to be SIGKILLed, its workers follow it
    within a second. Any still alive afterwards (a test that broke that
    promise) are killed here, so no test leaves a process behind.
    """
    node = NodeProcess(redis_url, workers=workers, extra_args=extra_args, ledger=ledger, shards=shards, data_dir=data_dir)
    children: list[psutil.Process] = []
    try:
        node.start()
        children = psutil.Process(node.pid).children(recursive=True)
        yield node
    finally:
        stop_tree(node, children)
