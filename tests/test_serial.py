"""`workers=0` / `max_queue_size=0`: Keras's serial mode — each batch made in the consumer's
thread when it asks for it, with everything else (hooks, order, rng, resume) unchanged."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import prefetch


class Traced(prefetch.PyDataset):
    """Records which thread made each batch and when, relative to the consumer."""

    def __init__(self, n=5, fail_at=None, **kwargs):
        super().__init__(**kwargs)
        self.n, self.fail_at = n, fail_at
        self.events: list = []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.fail_at:
            raise KeyError(f"no batch {i}")
        self.events.append(("get", i, threading.current_thread().name))
        return i, float(prefetch.rng().random())

    def on_epoch_begin(self):
        self.events.append(("begin",))

    def on_epoch_end(self):
        self.events.append(("end",))


class Endless(Traced):
    @property
    def num_batches(self):
        return None


pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("kwargs", [{"workers": 0}, {"max_queue_size": 0}, {"workers": 0, "use_multiprocessing": True}])
def test_zero_workers_or_queue_runs_each_batch_in_the_calling_thread_when_asked(kwargs):
    ds = Traced(3)
    threads_before = set(threading.enumerate())
    loader = prefetch.Loader(ds, **kwargs)
    assert (loader.executor, loader.workers, loader.max_queue_size) == ("serial", 0, 0)
    it = iter(loader)
    assert ds.events == [("begin",)]  # nothing made ahead
    assert next(it)[0] == 0
    assert ds.events == [("begin",), ("get", 0, threading.current_thread().name)]
    assert [b[0] for b in it] == [1, 2]
    assert ds.events[-1] == ("end",)
    assert set(threading.enumerate()) == threads_before  # no thread was started
    loader.close()


def test_a_datasets_own_workers_zero_is_honoured_as_in_keras():
    loader = prefetch.Loader(Traced(2, workers=0))
    assert loader.executor == "serial" and [b[0] for b in loader] == [0, 1]


def test_serial_gives_the_same_batches_order_and_draws_as_threads_for_a_seed():
    def epochs(**kwargs):
        with prefetch.Loader(Traced(7), shuffle=True, seed=11, **kwargs) as loader:
            return [list(loader) for _ in range(3)]

    assert epochs(workers=0) == epochs(workers=3)


def test_serial_hooks_run_once_per_epoch_and_a_break_skips_on_epoch_end():
    ds = Traced(3)
    loader = prefetch.Loader(ds, workers=0)
    list(loader)
    for _ in loader:
        break
    assert [b[0] for b in loader] == [0, 1, 2]  # the next epoch is whole
    hooks = [e[0] for e in ds.events if e[0] != "get"]
    assert hooks == ["begin", "end", "begin", "begin", "end"]


def test_serial_error_keeps_its_type_names_the_index_and_the_loader_stays_usable():
    ds = Traced(4, fail_at=2)
    loader = prefetch.Loader(ds, workers=0)
    got = []
    with pytest.raises(KeyError) as info:
        for b in loader:
            got.append(b[0])
    assert got == [0, 1]
    assert any("__getitem__(2)" in note for note in getattr(info.value, "__notes__", []))
    ds.fail_at = None
    assert [b[0] for b in loader] == [0, 1, 2, 3]


def test_serial_resumes_from_a_state_dict_at_the_next_unseen_batch():
    first = prefetch.Loader(Traced(6), workers=0, shuffle=True, seed=5)
    it = iter(first)
    seen = [next(it)[0] for _ in range(2)]
    state = first.state_dict()
    second = prefetch.Loader(Traced(6), workers=2, shuffle=True, seed=5)
    second.load_state_dict(state)
    rest = [b[0] for b in second]
    assert sorted(seen + rest) == list(range(6)) and len(rest) == 4
    second.close()


def test_serial_infinite_dataset_streams_until_break():
    loader = prefetch.Loader(Endless(), workers=0)
    got = []
    for b in loader:
        got.append(b[0])
        if len(got) == 5:
            break
    assert got == [0, 1, 2, 3, 4]


def test_serial_coroutine_getitem_is_awaited_with_and_without_a_loop():
    class Async(prefetch.PyDataset):
        def __len__(self):
            return 3

        async def __getitem__(self, i):
            await asyncio.sleep(0)
            return i, float(prefetch.rng().random())

    sync = list(prefetch.Loader(Async(workers=0), seed=2))

    async def consume():
        return [b async for b in prefetch.Loader(Async(workers=0), seed=2)]

    assert sync == asyncio.run(consume()) == list(prefetch.Loader(Async(), seed=2))


def test_serial_stats_count_batches_and_waits():
    loader = prefetch.Loader(Traced(4), workers=0)
    list(loader)
    assert loader.stats.batches == 4 and loader.stats.getitems == 4 and loader.stats.epochs == 1


def test_closed_serial_loader_refuses_to_iterate():
    loader = prefetch.Loader(Traced(2), workers=0)
    loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        list(loader)


def test_serial_with_an_explicit_executor_is_rejected():
    with pytest.raises(ValueError, match="serial"):
        prefetch.Loader(Traced(2), workers=0, executor="process")
    with pytest.raises(ValueError, match="workers"):
        prefetch.Loader(Traced(2), workers=-1, max_queue_size=0)


def test_serial_batches_are_plain_numpy_trees_untouched():
    arr = np.arange(4)

    class Same(prefetch.PyDataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return arr

    assert next(iter(prefetch.Loader(Same(), workers=0))) is arr  # serial: no copy, as in Keras
