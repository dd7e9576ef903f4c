"""Node memory of sold-out SKUs, kept in step with Redis over pub/sub.

Once a SKU sells out, every node refuses further attempts from this memory,
without a Redis round trip. Every change of a SKU's sold-out state comes with
a stock version ``sv`` that only grows (put, adjust and every flip bump it),
so the book keeps, per SKU, the newest state it has heard of, whatever order
the snapshot and the announcements arrive in.

Exactly-once comes first: a resend of a request that took units before the
sell-out must get its first answer (DUPLICATE), not SOLD_OUT, whether or not
its sender marked it as a retry. So a sold-out SKU is refused from memory
only once the book also holds the ids that took its units (the fields of the
SKU's record buckets in Redis, a set bounded by the SKU's sales), loaded for
that very stock version; those ids still go to Redis, which answers them from
their records. Until the ids are in, every request goes to Redis, which is
always right.

:class:`SoldOutBook` is pure; :class:`~.feed.TakersLoader` loads the ids,
:class:`~.feed.RedisFeed` brings the news.
"""

from __future__ import annotations

from collections.abc import Callable


class SoldOutBook:
    """Which SKUs are sold out, as of the newest stock version heard of, and which ids took their units."""

    def __init__(self, on_sell_out: Callable[[str, int], None] | None = None) -> None:
        self._state: dict[str, tuple[int, bool]] = {}
        self._sold_out: set[str] = set()
        self._takers: dict[str, frozenset[str]] = {}
        self.on_sell_out = on_sell_out
        """Called with (sku_id, version) when a sell-out is heard of whose takers must be loaded."""

    def __contains__(self, sku_id: str) -> bool:
        """True when ``sku_id`` is known to be sold out (takers loaded or not)."""
        return sku_id in self._sold_out

    def __len__(self) -> int:
        return len(self._sold_out)

    def refuses(self, sku_id: str, request_id: str) -> bool:
        """True when a request may be answered SOLD_OUT from memory: the SKU is
        sold out, its takers are known, and ``request_id`` is not one of them."""
        takers = self._takers.get(sku_id)
        return takers is not None and request_id not in takers

    def learn(self, sku_id: str, version: int, sold_out: bool) -> None:
        """Take in a state of ``sku_id`` as of ``version``; older news is ignored."""
        known = self._state.get(sku_id)
        if known is not None and known[0] >= version:
            return
        self._state[sku_id] = (version, sold_out)
        self._takers.pop(sku_id, None)
        if sold_out:
            self._sold_out.add(sku_id)
            if self.on_sell_out is not None:
                self.on_sell_out(sku_id, version)
        else:
            self._sold_out.discard(sku_id)

    def install_takers(self, sku_id: str, version: int, takers: frozenset[str]) -> bool:
        """The ids that took units of ``sku_id`` as of its sell-out at ``version``.

        Taken only while that sell-out is still the newest state heard of (a
        restock since makes them stale); returns whether they were taken.
        """
        if self._state.get(sku_id) != (version, True):
            return False
        self._takers[sku_id] = takers
        return True

    def takers_held(self) -> int:
        """Ids held in memory over every sold-out SKU (for metrics and the bench)."""
        return sum(len(t) for t in self._takers.values())

    def apply_message(self, message: str) -> None:
        """Take in an announcement: ``"S <sv> <sku>"`` (sold out) or ``"A <sv> <sku>"``."""
        kind, version, sku_id = message.split(" ", 2)
        self.learn(sku_id, int(version), kind == "S")

    def forget_all(self) -> None:
        """Drop everything: with no news flowing, ask Redis every time instead."""
        self._state.clear()
        self._sold_out.clear()
        self._takers.clear()
