"""The Lua scripts of flashstock, loaded once and run by SHA.

Each script is one file under ``lua/`` with a header giving its KEYS, ARGV
and reply; ``lua/_lib.lua`` is prepended to each, so shared helpers are
written once and each script is still a single SCRIPT LOAD. redis-py's
``Script`` runs EVALSHA and, on NOSCRIPT (a restarted or flushed Redis),
loads the script again and retries.

:class:`StockScripts` is the one registry: the node's asyncio client and the
rebuilder's blocking client register the same scripts from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, Generic, TypeVar, overload

from flashstock.server.store.redis import AsyncRedis, AsyncScript, BlockingRedis, BlockingScript

_NAMES = ("deduct", "settle", "reap", "batch", "put_sku", "adjust_sku", "rebuild", "announce", "fence", "bind")


def script_source(name: str) -> str:
    """The full source of script ``name``: the shared helpers, then the file."""
    lua = resources.files("flashstock.server.store") / "lua"
    return (lua / "_lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


_S = TypeVar("_S", AsyncScript, BlockingScript)


@dataclass(frozen=True)
class StockScripts(Generic[_S]):
    """The scripts, registered on one Redis client (an asyncio or a blocking one)."""

    deduct: _S
    """Take units of one SKU (Deduct, Hold): deduct.lua."""
    settle: _S
    """Confirm or release a hold: settle.lua."""
    reap: _S
    """Expire a shard's due holds: reap.lua."""
    batch: _S
    """All-or-nothing deduction of several SKUs: batch.lua."""
    put_sku: _S
    """Define a SKU: put_sku.lua."""
    adjust_sku: _S
    """Adjust stock, pause, resume: adjust_sku.lua."""
    rebuild: _S
    """Install a shard's state from the ledger: rebuild.lua."""
    announce: _S
    """Record, announce and trim up to a shard's persisted cursor, fenced: announce.lua."""
    fence: _S
    """Raise a shard's stored owner epoch to a new owner's: fence.lua."""
    bind: _S
    """Bind the settings every node on the Redis must share, once: bind.lua."""

    @overload
    @staticmethod
    def register(redis: AsyncRedis) -> StockScripts[AsyncScript]: ...
    @overload
    @staticmethod
    def register(redis: BlockingRedis) -> StockScripts[BlockingScript]: ...
    @staticmethod
    def register(redis: AsyncRedis | BlockingRedis) -> StockScripts[AsyncScript] | StockScripts[BlockingScript]:
        """Register every script on ``redis`` (loaded lazily, by SHA, on first use)."""
        scripts: dict[str, Any] = {name: redis.register_script(script_source(name)) for name in _NAMES}
        return StockScripts(**scripts)

    async def load(self, redis: AsyncRedis) -> None:
        """Load every script into Redis now, so the first requests find them cached."""
        for name in _NAMES:
            script = getattr(self, name)
            script.sha = await redis.script_load(script.script)
