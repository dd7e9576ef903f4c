"""One Redis boundary: Redis failures mean one thing everywhere, and only store/redis.py speaks redis-py."""

import ast
import asyncio
from pathlib import Path

import pytest
import redis.exceptions

from flashstock.client import SkuNotFound, Unavailable
from flashstock.server.store.redis import flashstock_error, redis_errors

SERVER = Path(__file__).parents[2] / "server"


@pytest.mark.parametrize(
    "failure, retry_after",
    [
        (redis.exceptions.ConnectionError("refused"), 0.2),
        (redis.exceptions.TimeoutError("timed out"), 0.2),
        (ConnectionResetError("reset by peer"), 0.2),
        (redis.exceptions.BusyLoadingError("loading"), 0.5),
        (redis.exceptions.ReadOnlyError("READONLY"), 0.5),
        (redis.exceptions.NoScriptError("NOSCRIPT"), 0.05),
    ],
)
def test_every_redis_outage_is_unavailable_with_a_retry_delay(failure, retry_after):
    error = flashstock_error(failure, shard=3)
    assert isinstance(error, Unavailable)
    assert error.retry_after == retry_after and error.shard == 3


@pytest.mark.parametrize(
    "other",
    [
        redis.exceptions.ResponseError("ERR user_script:1: oops"),
        ValueError("x"),
        SkuNotFound("gone", sku="s"),
        asyncio.CancelledError(),
    ],
)
def test_a_bug_a_flashstock_error_or_a_cancellation_is_not_mapped(other):
    assert flashstock_error(other) is None


def test_blocking_code_gets_unavailable_from_the_redis_failure():
    failure = redis.exceptions.ConnectionError("refused")
    with pytest.raises(Unavailable) as e, redis_errors(shard=5):
        raise failure
    assert e.value.__cause__ is failure and e.value.shard == 5


async def test_async_code_gets_the_same_mapping_and_other_errors_pass_unchanged():
    with pytest.raises(Unavailable, match="loading"):
        async with redis_errors():
            raise redis.exceptions.BusyLoadingError("loading")
    with pytest.raises(SkuNotFound):
        async with redis_errors():
            raise SkuNotFound("gone", sku="s")
    async with redis_errors():
        pass


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_only_the_redis_adapter_imports_redis_py_in_the_node():
    # The node's core: the composition root and the rooms a request or a duty runs in.
    # (The CLI, the bench and the local stack make their own clients for their own tools.)
    rooms = ("rpc", "store", "duties", "ledger")
    core = [*SERVER.glob("*.py"), *(path for room in rooms for path in (SERVER / room).rglob("*.py"))]
    speaking = {
        str(path.relative_to(SERVER))
        for path in core
        if any(name == "redis" or name.startswith("redis.") for name in _imports(path))
    }
    assert speaking == {"store/redis.py"}
