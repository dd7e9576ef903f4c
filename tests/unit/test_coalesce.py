"""Coalescing: each request gets its own reply, a batch's failure reaches all of it,
an idle shard's request goes at once, and batches stay within their bound."""

import asyncio

import pytest

from flashstock.server.store.coalesce import ShardCoalescer


class Recorder:
    def __init__(self, fail: Exception | None = None, gate: asyncio.Event | None = None):
        self.batches: list[tuple[int, list]] = []
        self.fail = fail
        self.gate = gate

    async def __call__(self, shard, items):
        self.batches.append((shard, list(items)))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [f"reply:{item}" for item in items]


async def test_each_request_gets_its_own_reply_in_order():
    recorder = Recorder()
    coalescer = ShardCoalescer(recorder, window=0.01)
    replies = await asyncio.gather(*(coalescer.submit(3, i) for i in range(10)))
    assert replies == [f"reply:{i}" for i in range(10)]
    assert sum(len(items) for _, items in recorder.batches) == 10
    assert all(shard == 3 for shard, _ in recorder.batches)


async def test_requests_arriving_during_a_call_share_the_next_one():
    gate = asyncio.Event()
    recorder = Recorder(gate=gate)
    coalescer = ShardCoalescer(recorder, window=0)
    first = asyncio.ensure_future(coalescer.submit(0, "a"))
    while not recorder.batches:
        await asyncio.sleep(0)
    rest = [asyncio.ensure_future(coalescer.submit(0, x)) for x in "bcd"]
    gate.set()
    assert await asyncio.gather(first, *rest) == ["reply:a", "reply:b", "reply:c", "reply:d"]
    assert [items for _, items in recorder.batches] == [["a"], ["b", "c", "d"]]


async def test_an_idle_shard_does_not_wait_for_the_window():
    coalescer = ShardCoalescer(Recorder(), window=60)
    assert await asyncio.wait_for(coalescer.submit(1, "x"), timeout=5) == "reply:x"


async def test_shards_are_independent():
    recorder = Recorder()
    coalescer = ShardCoalescer(recorder, window=0)
    await asyncio.gather(coalescer.submit(1, "x"), coalescer.submit(2, "y"))
    assert sorted((shard, tuple(items)) for shard, items in recorder.batches) == [(1, ("x",)), (2, ("y",))]


async def test_a_failed_call_fails_every_request_of_its_batch():
    coalescer = ShardCoalescer(Recorder(fail=ConnectionError("down")), window=0)
    results = await asyncio.gather(*(coalescer.submit(0, i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_batches_are_bounded():
    recorder = Recorder()
    coalescer = ShardCoalescer(recorder, window=0, max_batch=4)
    await asyncio.gather(*(coalescer.submit(0, i) for i in range(10)))
    assert max(len(items) for _, items in recorder.batches) <= 4


async def test_close_cancels_waiting_requests():
    gate = asyncio.Event()
    coalescer = ShardCoalescer(Recorder(gate=gate), window=0)
    pending = asyncio.ensure_future(coalescer.submit(0, "x"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await coalescer.close()
    with pytest.raises(asyncio.CancelledError):
        await pending


async def test_each_batch_size_is_told_as_it_is_sent():
    recorder = Recorder()
    sizes: list[int] = []
    coalescer = ShardCoalescer(recorder, window=0, max_batch=4, on_batch=sizes.append)
    await asyncio.gather(*(coalescer.submit(0, i) for i in range(10)), coalescer.submit(1, "x"))
    assert sizes == [len(items) for _, items in recorder.batches]
    assert sum(sizes) == 11
