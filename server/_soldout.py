"""Node memory of sold-out SKUs, kept in step with Redis over pub/sub.

Once a SKU sells out, every node refuses further attempts from this memory,
without a Redis round trip. Every change of a SKU's sold-out state comes with
a stock version ``sv`` that only grows (put, adjust and every flip bump it),
so the book keeps, per SKU, the newest state it has heard of, whatever order
the snapshot and the announcements arrive in.

:class:`SoldOutBook` is pure; :class:`~._feed.RedisFeed` feeds it from Redis.
"""

from __future__ import annotations



class SoldOutBook:
    """Which SKUs are sold out, as of the newest stock version heard of."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[int, bool]] = {}
        self._sold_out: set[str] = set()

    def __contains__(self, sku_id: str) -> bool:
        """True when ``sku_id`` is known to be sold out."""
        return sku_id in self._sold_out

    def __len__(self) -> int:
        return len(self._sold_out)

    def learn(self, sku_id: str, version: int, sold_out: bool) -> None:
        """Take in a state of ``sku_id`` as of ``version``; older news is ignored."""
        known = self._state.get(sku_id)
        if known is not None and known[0] >= version:
            return
        self._state[sku_id] = (version, sold_out)
        if sold_out:
            self._sold_out.add(sku_id)
        else:
            self._sold_out.discard(sku_id)

    def apply_message(self, message: str) -> None:
        """Take in an announcement: ``"S <sv> <sku>"`` (sold out) or ``"A <sv> <sku>"``."""
        kind, version, sku_id = message.split(" ", 2)
        self.learn(sku_id, int(version), kind == "S")

    def forget_all(self) -> None:
        """Drop everything: with no news flowing, ask Redis every time instead."""
        self._state.clear()
        self._sold_out.clear()
