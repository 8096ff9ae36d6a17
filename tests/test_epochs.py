"""Epoch semantics: every batch exactly once, order, shuffle, hooks, infinite datasets."""

from __future__ import annotations

import itertools

import pytest
from helpers import Indices, Infinite, Jittery, Plain, Recorder

import prefetch

EXECUTORS = ["thread", "process"]


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("workers", [1, 3])
def test_each_batch_once_in_index_order_every_epoch(executor, workers):
    with prefetch.Loader(Jittery(40), workers=workers, executor=executor, max_queue_size=8) as loader:
        for _ in range(3):
            assert list(loader) == list(range(40))
        assert loader.stats.epochs == 3


@pytest.mark.parametrize("executor", EXECUTORS)
def test_unordered_delivers_each_batch_exactly_once(executor):
    with prefetch.Loader(Jittery(60), workers=4, executor=executor, ordered=False) as loader:
        for _ in range(2):
            got = list(loader)
            assert sorted(got) == list(range(60))


def test_unordered_really_delivers_in_completion_order():
    class SlowFirst(Indices):
        def __getitem__(self, i):
            import time

            time.sleep(0.2 if i == 0 else 0.001)
            return i

    with prefetch.Loader(SlowFirst(10), workers=4, ordered=False) as loader:
        got = list(loader)
    assert sorted(got) == list(range(10))
    assert got.index(0) > 0  # the slow batch 0 did not hold back the others


def test_shuffle_gives_a_new_order_each_epoch_and_the_same_sequence_for_a_seed():
    def orders(seed):
        with prefetch.Loader(Indices(50), workers=4, shuffle=True, seed=seed) as loader:
            return [list(loader) for _ in range(3)]

    a, b, c = orders(1), orders(1), orders(2)
    assert a == b
    assert a != c
    assert all(sorted(o) == list(range(50)) for o in a)
    assert len({tuple(o) for o in a}) == 3  # differs from epoch to epoch
    assert a[0] != list(range(50))


@pytest.mark.parametrize("executor", EXECUTORS)
def test_infinite_dataset_streams_until_break_then_restarts_clean(executor):
    with prefetch.Loader(Infinite(), workers=2, executor=executor, max_queue_size=4) as loader:
        with pytest.raises(TypeError):
            len(loader)
        assert loader.num_batches is None
        first = list(itertools.islice(loader, 25))
        second = list(itertools.islice(loader, 10))
    assert first == list(range(25))
    assert second == list(range(10))


def test_shuffle_of_an_infinite_dataset_is_rejected():
    with pytest.raises(ValueError, match="finite"):
        prefetch.Loader(Infinite(), shuffle=True)


def test_hooks_wrap_each_epoch_once_in_the_right_place():
    ds = Recorder(12)
    with prefetch.Loader(ds, workers=4, max_queue_size=4) as loader:
        for epoch in range(3):
            seen = []
            for batch in loader:
                seen.append(batch)
                # on_epoch_end must not have run while batches are still being delivered
                assert ds.events.count("end") == epoch
            assert seen == list(range(12))
    events = ds.events
    assert events.count("begin") == 3 and events.count("end") == 3
    # per epoch: begin, then that epoch's 12 gets, then end
    for epoch in range(3):
        start = [i for i, e in enumerate(events) if e == "begin"][epoch]
        stop = [i for i, e in enumerate(events) if e == "end"][epoch]
        assert start < stop
        gets = [e[1] for e in events[start + 1:stop]]
        assert sorted(gets) == list(range(12))


def test_hooks_run_in_the_consumer_thread():
    import threading

    where = []

    class Hooked(Indices):
        def on_epoch_begin(self):
            where.append(threading.current_thread())

        def on_epoch_end(self):
            where.append(threading.current_thread())

    with prefetch.Loader(Hooked(5), workers=2) as loader:
        list(loader)
    assert where == [threading.current_thread()] * 2


def test_duck_typed_dataset_uses_its_attributes_as_defaults():
    loader = prefetch.Loader(Plain())
    assert (loader.workers, loader.max_queue_size) == (3, 5)
    assert list(loader) == [0, 2, 4, 6, 8, 10, 12]
    loader.close()
    assert list(prefetch.Loader(list("abc"))) == ["a", "b", "c"]


def test_loader_arguments_override_dataset_attributes():
    ds = Indices(4, workers=2, max_queue_size=3)
    loader = prefetch.Loader(ds, workers=5, max_queue_size=7)
    assert (loader.workers, loader.max_queue_size, loader.executor) == (5, 7, "thread")
    loader.close()
    ds.use_multiprocessing = True
    loader = prefetch.Loader(ds)
    assert loader.executor == "process"
    loader.close()


def test_len_is_batches_per_epoch_and_can_change_between_epochs():
    ds = Indices(10)
    with prefetch.Loader(ds, workers=2) as loader:
        assert len(loader) == 10
        assert len(list(loader)) == 10
        ds.n = 4
        assert len(loader) == 4
        assert list(loader) == [0, 1, 2, 3]


def test_empty_dataset_gives_empty_epochs_with_hooks():
    ds = Recorder(0)
    with prefetch.Loader(ds) as loader:
        assert list(loader) == []
        assert list(loader) == []
    assert ds.events == ["begin", "end", "begin", "end"]


def test_state_dict_resumes_at_the_next_unseen_batch():
    a = prefetch.Loader(Indices(20), workers=3, shuffle=True, seed=5)
    full = [list(a) for _ in range(2)]
    a.close()
    b = prefetch.Loader(Indices(20), workers=3, shuffle=True, seed=5)
    got = []
    for i, x in enumerate(b):
        got.append(x)
        if i == 6:
            state = b.state_dict()
            break
    b.close()
    c = prefetch.Loader(Indices(20), workers=2, shuffle=True, seed=99)
    c.load_state_dict(state)
    rest = list(c)
    nxt = list(c)
    c.close()
    assert got + rest == full[0]
    assert nxt == full[1]
