"""The changes an operator makes to a SKU, by name and by their letter in the shard log.

AdminService's PutSku, AdjustStock, PauseSku and ResumeSku each make one
change; its script (``put_sku.lua``, ``adjust_sku.lua``, which takes the
change by name) appends it to the shard's log as one entry whose ``t`` is
the change's letter, and the ledger applies the entry. The values are the
strings the scripts and the log have always used, so nothing stored changes.
"""

from __future__ import annotations

import enum


class SkuChange(enum.StrEnum):
    """An operator's change of a SKU; its value is its name in ``adjust_sku.lua``'s ``ARGV[2]``."""

    PUT = "put"
    """Define the SKU (again): a new sale (``put_sku.lua``)."""
    ADJUST = "adjust"
    """Add or take away stock, never below the units handed out."""
    PAUSE = "pause"
    """Stop the sale: attempts get NOT_ON_SALE."""
    RESUME = "resume"
    """Resume the sale."""

    @property
    def log_event(self) -> str:
        """The change's letter: the ``t`` field of its entry in the shard log."""
        return _LOG_EVENTS[self]

    @classmethod
    def of_log_event(cls, letter: str) -> SkuChange | None:
        """The change a log entry's ``t`` stands for; None for an entry that is no SKU change."""
        return _BY_LETTER.get(letter)


_LOG_EVENTS = {SkuChange.PUT: "P", SkuChange.ADJUST: "A", SkuChange.PAUSE: "Z", SkuChange.RESUME: "U"}
_BY_LETTER = {letter: change for change, letter in _LOG_EVENTS.items()}
