"""A Redis that comes back older than the ledger is repaired from the ledger, not trusted.

A real ``redis-server --appendonly yes --appendfsync everysec``: its data
folder is copied mid-sale, the sale goes on, Redis is killed -9 and started
again from the copy — a host crash replayed from an older AOF, a restored
backup, a lagging replica promoted. Its shards still read "ready"; the node
must find them behind the ledger before it serves them again. Driven from
outside: raw gRPC built from server reflection (no client library, no retry
flag), the CLI for the reconcile.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest

from flashstock.server.ledger import Ledger, sqlite_url
from flashstock.server.local.procs import NodeProcess, RedisServer
from tests.helpers import aeventually
from tests.helpers.stranger import Stranger

pytestmark = pytest.mark.slow

AOF = ("--appendonly", "yes", "--appendfsync", "everysec")
FAST, DURABLE = "aof-fast", "aof-durable"
STOCK = {FAST: 3000, DURABLE: 800}
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class Sale:
    """Buyers sending raw Deducts; a refused-by-transport call is resent with the same id, unmarked."""

    def __init__(self, stranger: Stranger) -> None:
        self.stranger = stranger
        self.acked: dict[tuple[str, str], float] = {}
        """(sku, request id) -> when its OK arrived (monotonic)."""
        self.sold_out: set[str] = set()
        self.errors: list[str] = []
        self._ids = itertools.count()

    async def buyer(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and len(self.sold_out) < len(STOCK):
            n = next(self._ids)
            sku = DURABLE if n % 4 == 0 else FAST
            request_id = f"order-{uuid.uuid4().hex}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    reply = await self.stranger.call(
                        "Deduct", sku_id=sku, user_id=f"u{n}", qty=1, request_id=request_id, timeout=5
                    )
                    break
                except grpc.aio.AioRpcError as err:
                    if err.code() not in RETRYABLE or time.monotonic() > deadline:
                        self.errors.append(f"{err.code()}: {err.details()}")
                        return
                    await asyncio.sleep(0.05)
            outcome = self.stranger.outcome(reply)
            if outcome in ("OUTCOME_OK", "OUTCOME_DUPLICATE"):
                self.acked.setdefault((sku, request_id), time.monotonic())
            elif outcome == "OUTCOME_SOLD_OUT":
                self.sold_out.add(sku)

    def count(self, sku: str) -> int:
        return sum(1 for s, _ in self.acked if s == sku)


async def test_redis_restarted_from_an_older_aof_is_rebuilt_from_the_ledger(tmp_path: Path) -> None:
    redis_dir, copy_dir = tmp_path / "redis", tmp_path / "aof-copy"
    redis_dir.mkdir()
    servers = [RedisServer(redis_dir, extra_args=AOF).start()]
    node = NodeProcess(servers[0].url, workers=1, data_dir=tmp_path / "data", extra_args=["--rebuild-wait-s", "10"])
    stranger: Stranger | None = None
    try:
        node.start()
        stranger = Stranger([node.address])
        durable = stranger.enum_number("Mode", "MODE_DURABLE")
        for sku, stock in STOCK.items():
            await stranger.call(
                "PutSku", sku_id=sku, stock=stock, request_id=f"put-{sku}", mode=durable if sku == DURABLE else 0
            )
        sale = Sale(stranger)
        stop = asyncio.Event()
        buyers = [asyncio.create_task(sale.buyer(stop)) for _ in range(32)]

        await aeventually(
            lambda: sale.count(FAST) > 0.3 * STOCK[FAST] and sale.count(DURABLE) > 0.3 * STOCK[DURABLE], timeout=60
        )
        shutil.copytree(redis_dir / "appendonlydir", copy_dir)  # the older AOF
        copied = len(sale.acked)
        await aeventually(
            lambda: sale.count(FAST) > 0.6 * STOCK[FAST] and sale.count(DURABLE) > 0.6 * STOCK[DURABLE], timeout=60
        )
        servers[0].kill()
        killed_at, acked_at_kill = time.monotonic(), len(sale.acked)
        shutil.rmtree(redis_dir / "appendonlydir")
        shutil.copytree(copy_dir, redis_dir / "appendonlydir")
        servers.append(RedisServer(redis_dir, extra_args=AOF, port=servers[0].port).start())

        await asyncio.wait_for(asyncio.gather(*buyers), timeout=120)
        assert not sale.errors, sale.errors[:5]
        assert sale.sold_out == set(STOCK)
        print(f"acknowledged: {copied} when the AOF was copied, {acked_at_kill} at the kill, {len(sale.acked)} in all")

        ledger = Ledger(sqlite_url(tmp_path / "data"))
        try:
            rows = {sku: ledger.deductions_of([r for s, r in sale.acked if s == sku], sku_id=sku) for sku in STOCK}
            states = {s.sku_id: s for s in ledger.sku_states()}
        finally:
            ledger.close()

        # No unit handed out twice against the ledger: it holds exactly the stock, sold out.
        for sku, stock in STOCK.items():
            assert (states[sku].confirmed, states[sku].held) == (stock, 0), sku
            level = await stranger.call("GetStock", sku_id=sku)
            assert (level.available, level.confirmed) == (0, stock), sku

        # Every acknowledged durable deduction is in the ledger and answered as taken, unmarked.
        durable_acks = [r for s, r in sale.acked if s == DURABLE]
        assert set(rows[DURABLE]) == set(durable_acks)
        resent = await asyncio.gather(
            *(
                stranger.call("Deduct", sku_id=DURABLE, user_id=rows[DURABLE][r]["user_id"], qty=1, request_id=r)
                for r in durable_acks
            )
        )
        assert {stranger.outcome(x) for x in resent} == {"OUTCOME_DUPLICATE"}

        # Fast mode loses only what never reached the ledger: acknowledged just before the kill.
        lost = [(r, killed_at - sale.acked[(FAST, r)]) for s, r in sale.acked if s == FAST and r not in rows[FAST]]
        latest = max((a for _, a in lost), default=0)
        print(f"fast acknowledgements lost: {len(lost)}; acknowledged at most {latest:.3f} s before the kill")
        assert all(age < 1.0 for _, age in lost), lost[:5]
        assert len(sale.acked) - len(lost) == sum(STOCK.values())

        reconciled = subprocess.run(
            [
                sys.executable,
                "-m",
                "flashstock.server",
                "reconcile",
                "--redis-url",
                servers[-1].url,
                "--data-dir",
                str(tmp_path / "data"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
        log = node.log()
        assert "older than the ledger" in log
    except BaseException:
        print(node.log() if node.log_path else "")
        raise
    finally:
        if stranger is not None:
            await stranger.close()
        node.stop()
        for server in servers:
            server.stop()
