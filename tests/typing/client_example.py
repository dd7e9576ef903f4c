"""A caller of the client as a mypy user writes one: checked with ``mypy --strict``, never run.

``scripts/check_package.sh`` installs the client-only wheel into a fresh
venv and type-checks this file against it. The package's ``py.typed`` is
what makes that pass: without it every ``flashstock.client`` import is an
untyped module, which ``--strict`` refuses, and the annotations below
could not be checked against the client's own.

Not a test module (no ``test_`` prefix): pytest does not collect it.
"""

from __future__ import annotations

import asyncio

from flashstock.client import (
    AsyncStockClient,
    ClientConfig,
    Deduction,
    DeductResult,
    FlashstockError,
    Outcome,
    Overloaded,
    RequestIdReused,
    StockClient,
    StockLevel,
    Unavailable,
)

CONFIG = ClientConfig(addresses=("10.0.0.5:50051", "10.0.0.6:50051"), deadline_s=2.0)


def buy(stock: StockClient, order_id: str) -> Deduction | None:
    """Take one unit for an order, blocking; the deduction, or None when refused."""
    result: DeductResult = stock.deduct("hot", user_id="u-7", qty=1, request_id=order_id)
    if result.outcome in (Outcome.OK, Outcome.DUPLICATE):
        return result.deduction
    return None


async def hold_then_confirm(stock: AsyncStockClient, cart_id: str) -> int:
    """Hold a unit for a cart and confirm it; the units left, or -1."""
    hold = await stock.hold("hot", "u-7", ttl_ms=60_000, request_id=cart_id)
    if hold.outcome is not Outcome.OK:
        return -1
    settled = await stock.confirm("hot", hold_id=cart_id)
    left: int = settled.stock_left
    return left


def backoff(error: FlashstockError) -> float | None:
    """How long to wait before sending the same request again; None: do not send it again."""
    if isinstance(error, (Overloaded, Unavailable)):
        return error.retry_after
    if isinstance(error, RequestIdReused):
        return None  # the id belongs to another call: a new id, or a bug
    return None


async def main() -> None:
    """Both clients, as a service would hold them."""
    with StockClient(CONFIG) as blocking:
        level: StockLevel = blocking.get_stock("hot")
        print(level.available, buy(blocking, "order-1"))
    async with AsyncStockClient(CONFIG) as stock:
        try:
            print(await hold_then_confirm(stock, "cart-1"))
        except FlashstockError as exc:
            print(exc.message, exc.sku, backoff(exc))


if __name__ == "__main__":
    asyncio.run(main())
