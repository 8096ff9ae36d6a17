"""The bounded window and early exits."""

from __future__ import annotations

import gc
import threading
import time

import pytest
from helpers import Indices, Recorder

import prefetch


class Counting(Indices):
    """Counts batches started but not yet taken by the consumer."""

    def __init__(self, n, **kwargs):
        super().__init__(n, **kwargs)
        self.lock = threading.Lock()
        self.started = 0
        self.max_started = 0

    def __getitem__(self, i):
        with self.lock:
            self.started += 1
            self.max_started = max(self.max_started, self.started - self.taken)
        time.sleep(0.001)
        return i

    taken = 0


@pytest.mark.parametrize("window", [1, 3, 8])
@pytest.mark.parametrize("workers", [1, 4, 16])
def test_at_most_max_queue_size_batches_in_flight_or_waiting(window, workers):
    ds = Counting(40)
    with prefetch.Loader(ds, workers=workers, max_queue_size=window) as loader:
        for _ in loader:
            time.sleep(0.003)  # a slow consumer: producers would run ahead if they could
            with ds.lock:
                ds.taken += 1
    # started - taken counts batches in flight or waiting (+1 for the one being handed over)
    assert ds.max_started <= window + 1
    assert ds.max_started >= min(window, workers)  # and the window is actually used


def test_async_window_bounds_concurrent_coroutines():
    from helpers import AsyncIndices

    ds = AsyncIndices(100, delay=0.005)
    with prefetch.Loader(ds, workers=64, max_queue_size=10) as loader:
        assert list(loader) == list(range(100))
    assert ds.max_active <= 10


def test_break_mid_epoch_leaves_no_stale_batches(no_leaks):
    with prefetch.Loader(Indices(100, delay=0.002), workers=4, max_queue_size=16, shuffle=True, seed=3) as loader:
        orders = []
        for epoch in range(4):
            got = []
            for b in loader:
                got.append(b)
                if epoch % 2 == 0 and len(got) == 5:
                    break
            orders.append(got)
    assert [len(o) for o in orders] == [5, 100, 5, 100]
    for full in (orders[1], orders[3]):
        assert sorted(full) == list(range(100))
    # each epoch is its own shuffled order, and the broken epochs were the start of theirs
    ref = prefetch.Loader(Indices(100), shuffle=True, seed=3)
    expected = [list(ref) for _ in range(4)]
    ref.close()
    assert orders[1] == expected[1] and orders[3] == expected[3]
    assert orders[0] == expected[0][:5] and orders[2] == expected[2][:5]


def test_break_lets_hooks_of_the_next_epoch_run_after_stale_work_ended():
    ds = Recorder(50)
    with prefetch.Loader(ds, workers=8, max_queue_size=16) as loader:
        for b in loader:
            break
        n_before = len(ds.events)
        list(loader)
    # nothing of the broken epoch ran after the second epoch's on_epoch_begin
    second_begin = [i for i, e in enumerate(ds.events) if e == "begin"][1]
    assert second_begin >= n_before - 1
    assert ds.active == 0


def test_dropped_iterator_cancels_its_epoch_promptly():
    ds = Indices(10_000, delay=0.001)
    with prefetch.Loader(ds, workers=2, max_queue_size=4) as loader:
        it = iter(loader)
        next(it)
        del it
        gc.collect()
        t0 = time.perf_counter()
        assert list(loader)[:3] == [0, 1, 2]
        assert time.perf_counter() - t0 < 30


def test_a_new_iteration_supersedes_an_unfinished_one():
    with prefetch.Loader(Indices(30), workers=2) as loader:
        first = iter(loader)
        assert next(first) == 0
        second = iter(loader)
        assert list(second) == list(range(30))
        assert list(first) == []  # the superseded epoch just ends


def test_exception_in_consumer_body_aborts_the_epoch_cleanly(no_leaks):
    loader = prefetch.Loader(Indices(50, delay=0.001), workers=4)
    with pytest.raises(ZeroDivisionError):
        for b in loader:
            if b == 3:
                1 / 0
    assert list(loader) == list(range(50))
    loader.close()
