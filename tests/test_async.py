"""`async for` on the caller's loop (asyncio, trio) and coroutine `__getitem__`."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio
from helpers import AnyioIndices, AsyncIndices, Indices, Recorder

import prefetch


@pytest.mark.asyncio
async def test_async_for_under_asyncio_runs_on_the_callers_loop():
    ds = AsyncIndices(50, delay=0.002)
    loops = []

    class Where(AsyncIndices):
        async def __getitem__(self, i):
            loops.append(asyncio.get_running_loop())
            return i

    loader = prefetch.Loader(Where(10), workers=4)
    assert [b async for b in loader] == list(range(10))
    assert set(loops) == {asyncio.get_running_loop()}
    loader.close()
    with prefetch.Loader(ds, workers=8) as loader:
        for _ in range(2):
            assert [b async for b in loader] == list(range(50))


@pytest.mark.asyncio
async def test_async_for_over_a_sync_dataset_with_threads():
    ds = Recorder(20)
    with prefetch.Loader(ds, workers=4) as loader:
        assert [b async for b in loader] == list(range(20))
        assert [b async for b in loader] == list(range(20))
    assert ds.events.count("begin") == 2 and ds.events.count("end") == 2


@pytest.mark.asyncio
async def test_async_for_over_processes():
    with prefetch.Loader(Indices(30), workers=2, executor="process") as loader:
        assert [b async for b in loader] == list(range(30))


@pytest.mark.asyncio
async def test_coroutine_getitem_runs_workers_at_once():
    ds = AsyncIndices(64, delay=0.02)
    with prefetch.Loader(ds, workers=16, max_queue_size=32) as loader:
        assert [b async for b in loader] == list(range(64))
    assert ds.max_active == 16


def test_coroutine_getitem_from_sync_iteration():
    ds = AsyncIndices(40, delay=0.005)
    with prefetch.Loader(ds, workers=8) as loader:
        assert list(loader) == list(range(40))
    assert 1 < ds.max_active <= 8


@pytest.mark.asyncio
async def test_break_out_of_async_for_then_a_full_epoch():
    with prefetch.Loader(AsyncIndices(100, delay=0.001), workers=8) as loader:
        async for b in loader:
            if b == 4:
                break
        assert [b async for b in loader] == list(range(100))


def test_async_for_under_trio():
    async def main():
        with prefetch.Loader(AnyioIndices(40, delay=0.002), workers=8) as loader:
            first = [b async for b in loader]
            second = [b async for b in loader]
        with prefetch.Loader(Indices(25, delay=0.001), workers=4) as loader:
            threads = [b async for b in loader]
        return first, second, threads

    first, second, threads = trio.run(main)
    assert first == second == list(range(40))
    assert threads == list(range(25))


def test_trio_cancellation_mid_epoch_leaves_the_loader_usable():
    async def main():
        with prefetch.Loader(Indices(1000, delay=0.01), workers=2) as loader:
            got = []
            with trio.move_on_after(0.2):
                async for b in loader:
                    got.append(b)
            again = [b async for b in loader]
        return got, again

    got, again = trio.run(main)
    assert got == list(range(len(got))) and len(got) < 1000
    assert again == list(range(1000))


def test_same_loader_sync_then_async_then_sync():
    with prefetch.Loader(Indices(15), workers=3) as loader:
        assert list(loader) == list(range(15))

        async def consume():
            return [b async for b in loader]

        assert asyncio.run(consume()) == list(range(15))
        assert list(loader) == list(range(15))
        assert asyncio.run(consume()) == list(range(15))
    assert not [t for t in threading.enumerate() if t.name.startswith("prefetch")]


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_async_for_over_a_closed_loader_raises_instead_of_hanging():
    loader = prefetch.Loader(Indices(5), workers=2)
    assert [b async for b in loader] == list(range(5))
    loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        async for _ in loader:
            pass


class FailsToBegin(Indices):
    def __init__(self, n, **kwargs):
        super().__init__(n, **kwargs)
        self.refuse = True

    def on_epoch_begin(self):
        if self.refuse:
            raise LookupError("not ready yet")


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_an_async_epoch_whose_start_fails_ends_cleanly_and_the_next_works():
    ds = FailsToBegin(6)
    with prefetch.Loader(ds, workers=2) as loader:
        it = loader.__aiter__()
        with pytest.raises(LookupError):
            await it.__anext__()
        with pytest.raises(StopAsyncIteration):  # not an internal assertion
            await it.__anext__()
        ds.refuse = False
        assert [b async for b in loader] == list(range(6))


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_task_awaiting_a_batch_wakes_when_another_task_closes_the_loader():
    loader = prefetch.Loader(AsyncIndices(10**6, delay=30), workers=1)  # no batch comes soon

    async def consume():
        async for _ in loader:
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.2)
    loader.close()
    with pytest.raises(RuntimeError, match="ended"):
        await asyncio.wait_for(task, 5)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_break_then_close_leaves_no_worker_task_on_the_callers_loop():
    loader = prefetch.Loader(AsyncIndices(100, delay=0.01), workers=4)
    async for b in loader:
        if b == 3:
            break
    loader.close()
    await asyncio.sleep(0.05)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
