"""`loader.stats` tells the truth: it agrees with a consumer that times itself.

Bounds are generous (the machine is shared and noisy) but still tell the two cases apart
that matter: a loader that makes training wait, and one that keeps up.
"""

from __future__ import annotations

import asyncio
import json
import time
from time import perf_counter

import pytest
from helpers import Indices

import prefetch

DELAY = 0.020  # seconds of time.sleep per batch: a known __getitem__ latency
N = 15


class AsyncIndices(prefetch.PyDataset):
    def __init__(self, n: int, delay: float, **kwargs):
        super().__init__(**kwargs)
        self.n, self.delay = n, delay

    def __len__(self):
        return self.n

    async def __getitem__(self, i):
        await asyncio.sleep(self.delay)
        return i


def timed_epoch(loader, step: float = 0.0) -> tuple[list, float, float]:
    """One epoch, timing every `next()` (the StopIteration one too: stats may wait for the end).
    Returns (batches, seconds spent inside next(), seconds for the whole epoch)."""
    it = iter(loader)
    batches, waited = [], 0.0
    t_epoch = perf_counter()
    while True:
        t = perf_counter()
        try:
            b = next(it)
        except StopIteration:
            waited += perf_counter() - t
            break
        waited += perf_counter() - t
        batches.append(b)
        if step:
            time.sleep(step)
    return batches, waited, perf_counter() - t_epoch


def close_to(measured: float, expected: float, rel: float = 0.25, abs_s: float = 0.010) -> bool:
    return abs(measured - expected) <= max(rel * expected, abs_s)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_slow_producer_shows_as_waiting_that_matches_the_consumers_own_timing(executor):
    with prefetch.Loader(Indices(N, delay=DELAY), workers=1, executor=executor) as loader:
        # First epoch: warms up (process workers boot); stats from the second alone are compared.
        list(loader)
        before = loader.stats.wait_s
        batches, waited, _ = timed_epoch(loader)
        stats = loader.stats
        assert batches == list(range(N))
        # one worker, a consumer that does nothing: it waits ~DELAY for every batch
        assert waited >= 0.8 * N * DELAY
        assert close_to(stats.wait_s - before, waited), (stats.wait_s - before, waited)
        assert stats.batches == 2 * N and stats.epochs == 2
        assert stats.getitems == 2 * N
        p50 = stats.latency(0.5)
        assert 0.9 * DELAY <= p50 <= 3 * DELAY, p50
        assert stats.as_dict()["getitem_p50_s"] == p50
        assert stats.wait_per_batch_s == pytest.approx(stats.wait_s / stats.batches)


@pytest.mark.timeout(30)
def test_a_fast_producer_with_a_slow_consumer_shows_almost_no_stall():
    with prefetch.Loader(Indices(N), workers=2, executor="thread") as loader:
        batches, waited, elapsed = timed_epoch(loader, step=DELAY)  # the "training step" is the slow side
        stats = loader.stats
        assert batches == list(range(N))
        assert stats.stall_fraction < 0.2, stats
        assert stats.wait_s <= max(2 * waited, 0.02), (stats.wait_s, waited)
        assert stats.wait_s < 0.2 * elapsed
        assert stats.batches == N and stats.epochs == 1


@pytest.mark.timeout(30)
def test_the_stall_fraction_tells_a_slow_loader_from_a_fast_one():
    with prefetch.Loader(Indices(N, delay=DELAY), workers=1) as slow:
        timed_epoch(slow)
        slow_stall = slow.stats.stall_fraction
    with prefetch.Loader(Indices(N), workers=1) as fast:
        timed_epoch(fast, step=DELAY)
        fast_stall = fast.stats.stall_fraction
    assert slow_stall > 0.6 and fast_stall < 0.2, (slow_stall, fast_stall)


@pytest.mark.timeout(30)
def test_async_for_waits_are_counted_too():
    async def main():
        loader = prefetch.Loader(AsyncIndices(N, DELAY), workers=1)
        try:
            waited, seen = 0.0, []
            it = loader.__aiter__()
            while True:
                t = perf_counter()
                try:
                    b = await it.__anext__()
                except StopAsyncIteration:
                    waited += perf_counter() - t
                    break
                waited += perf_counter() - t
                seen.append(b)
            return seen, waited, loader.stats
        finally:
            loader.close()

    seen, waited, stats = asyncio.run(main())
    assert seen == list(range(N))
    assert close_to(stats.wait_s, waited), (stats.wait_s, waited)
    assert stats.batches == N and stats.epochs == 1
    assert 0.9 * DELAY <= stats.latency(0.5) <= 3 * DELAY


@pytest.mark.timeout(30)
def test_batches_and_epochs_are_exact_and_a_cut_epoch_is_not_counted():
    with prefetch.Loader(Indices(10), workers=3) as loader:
        for _ in range(3):
            assert len(list(loader)) == 10
        for i, _ in enumerate(loader):
            if i == 3:
                break  # 4 batches delivered, the epoch not complete
        stats = loader.stats
        assert stats.batches == 34
        assert stats.epochs == 3
        assert len(list(loader)) == 10  # the next epoch is whole again
        assert loader.stats.batches == 44 and loader.stats.epochs == 4


@pytest.mark.timeout(30)
def test_first_batch_time_covers_the_first_getitem():
    with prefetch.Loader(Indices(3, delay=DELAY), workers=1) as loader:
        assert loader.stats.first_batch_s is None
        list(loader)
        assert 0.9 * DELAY <= loader.stats.first_batch_s < 2.0


DOCUMENTED_KEYS = {
    "batches", "epochs", "elapsed_s", "wait_s", "wait_per_batch_s", "wait_p95_s", "stall_fraction",
    "first_batch_s", "getitem_p50_s", "getitem_p95_s", "getitems", "workers", "utilisation",
    "inflight_mean", "ready_mean", "worker_changes",
}


@pytest.mark.timeout(30)
def test_as_dict_has_the_documented_keys_and_is_json_serialisable():
    with prefetch.Loader(Indices(5), workers=2) as loader:
        fresh = loader.stats.as_dict()
        assert DOCUMENTED_KEYS <= set(fresh)
        json.dumps(fresh)  # before any batch: None / zeros, still serialisable
        list(loader)
        d = loader.stats.as_dict()
    assert DOCUMENTED_KEYS <= set(d)
    again = json.loads(json.dumps(d))
    assert again["batches"] == 5 and again["epochs"] == 1 and again["workers"] == 2
    assert again["getitem_p50_s"] is not None and again["getitem_p50_s"] >= 0
    assert 0.0 <= again["stall_fraction"] <= 1.0


@pytest.mark.timeout(30)
def test_repr_is_one_readable_line():
    with prefetch.Loader(Indices(N, delay=DELAY), workers=1) as loader:
        list(loader)
        text = repr(loader.stats)
    assert "\n" not in text
    assert text.startswith("Stats(") and f"batches={N}" in text and "epochs=1" in text
    assert "waited=" in text and "getitem p50=" in text and " ms" in text
