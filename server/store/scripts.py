"""The Lua scripts of flashstock, loaded once and run by SHA.

Each script is one file under ``lua/`` with a header giving its KEYS, ARGV
and reply; ``lua/_lib.lua`` is prepended to each, so shared helpers are
written once and each script is still a single SCRIPT LOAD. redis-py's
``Script`` runs EVALSHA and, on NOSCRIPT (a restarted or flushed Redis),
loads the script again and retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

_NAMES = ("deduct", "settle", "reap", "batch", "put_sku", "adjust_sku", "rebuild", "announce", "fence", "bind")


def script_source(name: str) -> str:
    """The full source of script ``name``: the shared helpers, then the file."""
    lua = resources.files("flashstock.server.store") / "lua"
    return (lua / "_lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


@dataclass(frozen=True)
class StockScripts:
    """The scripts, registered on one Redis client."""

    deduct: AsyncScript
    """Take units of one SKU (Deduct, Hold): deduct.lua."""
    settle: AsyncScript
    """Confirm or release a hold: settle.lua."""
    reap: AsyncScript
    """Expire a shard's due holds: reap.lua."""
    batch: AsyncScript
    """All-or-nothing deduction of several SKUs: batch.lua."""
    put_sku: AsyncScript
    """Define a SKU: put_sku.lua."""
    adjust_sku: AsyncScript
    """Adjust stock, pause, resume: adjust_sku.lua."""
    rebuild: AsyncScript
    """Install a shard's state from the ledger: rebuild.lua."""
    announce: AsyncScript
    """Record, announce and trim up to a shard's persisted cursor, fenced: announce.lua."""
    fence: AsyncScript
    """Raise a shard's stored owner epoch to a new owner's: fence.lua."""
    bind: AsyncScript
    """Bind the settings every node on the Redis must share, once: bind.lua."""

    @classmethod
    def register(cls, redis: aioredis.Redis) -> StockScripts:
        """Register every script on ``redis`` (loaded lazily, by SHA)."""
        return cls(**{name: redis.register_script(script_source(name)) for name in _NAMES})

    async def load(self, redis: aioredis.Redis) -> None:
        """Load every script now, so the first requests find them cached."""
        for name in _NAMES:
            script = getattr(self, name)
            script.sha = await redis.script_load(script.script)
