"""Node processes for tests: started, and stopped with every worker they forked."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from flashstock.server.local.procs import NodeProcess

__all__ = ["QUIET", "running_node"]

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
