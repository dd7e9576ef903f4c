"""Every Lua script states its contract in its header, and shares the channel name with Python."""

import re
from dataclasses import fields
from pathlib import Path

import pytest

from flashstock.server.store.keys import SOLD_OUT_CHANNEL
from flashstock.server.store.scripts import _NAMES, StockScripts, script_source

LUA = Path(__file__).parents[2] / "server" / "store" / "lua"


@pytest.mark.parametrize("name", _NAMES)
def test_script_header_names_keys_argv_and_reply(name):
    lines = (LUA / f"{name}.lua").read_text().splitlines()
    header = "\n".join(line for line in lines[: next(i for i, s in enumerate(lines) if not s.startswith("--"))])
    assert "KEYS" in header and "ARGV[1]" in header and "Returns" in header


@pytest.mark.parametrize("name", _NAMES)
def test_script_source_starts_with_the_shared_helpers(name):
    assert script_source(name).startswith((LUA / "_lib.lua").read_text())


def test_sold_out_channel_is_the_same_in_lua_and_python():
    match = re.search(r"SOLD_OUT_CHANNEL = '([^']+)'", (LUA / "_lib.lua").read_text())
    assert match and match[1] == SOLD_OUT_CHANNEL


def test_every_script_file_is_registered():
    files = {p.stem for p in LUA.glob("*.lua")} - {"_lib"}
    assert files == set(_NAMES)


def test_the_one_registry_has_a_script_per_file_for_async_and_blocking_clients():
    import redis
    import redis.asyncio

    assert tuple(f.name for f in fields(StockScripts)) == _NAMES
    blocking = StockScripts.register(redis.Redis())  # registering computes SHAs; it sends nothing
    on_async = StockScripts.register(redis.asyncio.Redis())
    for name in _NAMES:
        assert getattr(blocking, name).sha == getattr(on_async, name).sha
        assert getattr(blocking, name).script == script_source(name)
