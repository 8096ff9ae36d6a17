"""Process workers build large numpy arrays straight in the batch's shared memory.

The allocator (`prefetch/engine/_shmalloc.c`) is exercised twice: directly, in this process,
against a mapped segment (every allocation pattern numpy uses: malloc, calloc, realloc, frees
in any order), and end to end through worker processes (plain-numpy datasets, arrays kept by
the dataset, temporaries, threads, failures).
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers import mapping_of

import prefetch
from prefetch.engine import arena

try:
    from numpy._core.multiarray import get_handler_name
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import get_handler_name

needs_allocator = pytest.mark.skipif(not arena.available, reason="the _shmalloc extension is not built here")
BIG = 1 << 20


def test_the_allocator_is_built_on_linux():
    # CI installs with a compiler: a silently missing extension would cost 2x on big batches.
    if os.environ.get("PREFETCH_SHM_ALLOCATOR", "1") == "0":
        pytest.skip("turned off on purpose with PREFETCH_SHM_ALLOCATOR=0")
    if sys.platform.startswith("linux"):
        assert arena.available


class _Segment:
    """A mapped segment registered with the allocator, as a worker has them."""

    def __init__(self, size: int):
        self.mm = mmap.mmap(-1, size)
        self.view = np.frombuffer(self.mm, dtype=np.uint8)
        arena.register(self.view)

    def owns(self, a: np.ndarray) -> bool:
        start = self.view.ctypes.data
        return start <= a.ctypes.data < start + self.view.nbytes

    def close(self) -> None:
        assert arena.unregister(self.view) == 0
        del self.view
        self.mm.close()


@pytest.fixture
def segment():
    """Makes registered segments; each is closed (and checked empty) after the test."""
    made: list[_Segment] = []

    def make(size: int) -> _Segment:
        made.append(_Segment(size))
        return made[-1]

    yield make
    for seg in made:
        seg.close()


@needs_allocator
def test_large_arrays_land_in_the_segment_and_small_ones_do_not(segment):
    seg = segment(8 * BIG)
    place = arena.Placement(seg.view)
    big, small = np.ones(BIG // 8), np.ones(10)
    zeros = np.zeros(BIG // 8)  # calloc: zeros even where an older batch left data
    used, peak, wanted = place.finish()
    outside = np.ones(BIG // 8)  # after finish: the usual allocator again
    assert seg.owns(big) and seg.owns(zeros) and not seg.owns(small) and not seg.owns(outside)
    assert get_handler_name(big) == arena.HANDLER_NAME
    assert get_handler_name(outside) != arena.HANDLER_NAME
    assert (big == 1).all() and not zeros.any()
    assert used == peak == wanted >= 2 * BIG
    assert arena.live(seg.view) == 2
    del big, zeros
    assert arena.live(seg.view) == 0


@needs_allocator
def test_a_freed_temporary_is_reused_by_the_next_allocation(segment):
    seg = segment(8 * BIG)
    place = arena.Placement(seg.view)
    tmp = np.empty(BIG, np.uint8)
    keep = np.empty(BIG, np.uint8)
    hole = tmp.ctypes.data
    del tmp
    again = np.empty(BIG // 2, np.uint8)  # fits in the hole the temporary left
    _, peak, _ = place.finish()
    assert again.ctypes.data == hole and seg.owns(keep)
    assert peak < 3 * BIG


@needs_allocator
def test_what_does_not_fit_spills_to_ordinary_memory_and_sizes_the_next_segment(segment):
    seg = segment(2 * BIG)
    place = arena.Placement(seg.view)
    a = np.full(BIG, 1, np.uint8)
    b = np.full(2 * BIG, 2, np.uint8)  # too big for what is left
    _, _, wanted = place.finish()
    assert seg.owns(a) and not seg.owns(b)
    assert wanted >= 3 * BIG
    assert (a == 1).all() and (b == 2).all()


@needs_allocator
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["new", "zeros", "free", "grow", "shrink"]),
                          st.integers(32 * 1024, 3 * BIG), st.integers(0, 1000)), max_size=40))
def test_any_sequence_of_allocations_keeps_every_array_intact(ops):
    """Arrays never overlap and keep their data through frees, merges, splits and reallocs."""
    seg = _Segment(16 * BIG)
    try:
        _run_ops(seg, ops)
        assert arena.live(seg.view) == 0  # every array is gone: nothing left in use
    finally:
        seg.close()


def _run_ops(seg: _Segment, ops: list) -> None:
    arrays: list[tuple[np.ndarray, int]] = []
    place = arena.Placement(seg.view)
    for k, (op, size, pick) in enumerate(ops):
        tag = k % 251 + 1
        if op in ("new", "zeros"):
            a = np.zeros(size, np.uint8) if op == "zeros" else np.empty(size, np.uint8)
            if op == "zeros":
                assert not a.any()
            a[:] = tag
            arrays.append((a, tag))
        elif arrays:
            a, t = arrays.pop(pick % len(arrays))
            if op == "free":
                del a
                continue
            n = a.size
            new = max(size, n + 1) if op == "grow" else max(1, n // 2)
            a.resize(new, refcheck=False)  # realloc
            assert (a[:min(n, new)] == t).all()
            a[:] = tag
            arrays.append((a, tag))
        a = None
    place.finish()
    for a, t in arrays:
        assert (a == t).all()
    a = None
    assert arena.live(seg.view) == sum(seg.owns(a) for a, _ in arrays)


# -- end to end, through worker processes ---------------------------------------------------------
class PlainNumpy(prefetch.PyDataset):
    """Batches built the everyday way: temporaries, zeros, growth, a cache of some outputs."""

    def __init__(self, n: int, keep_every: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.keep_every = keep_every
        self.cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        tmp = np.full((512, 256), i, np.float64)  # 1 MiB temporary
        image = np.full((1024, 1024), i, np.float32)
        del tmp
        zeros = np.zeros((256, 256))
        grown = np.fromiter((float(i) for _ in range(10_000)), dtype=np.float64)  # realloc growth
        if self.keep_every and i % self.keep_every == 0:
            self.cache[i] = image
        for k, kept in self.cache.items():  # kept arrays are never overwritten by later batches
            if not (kept[0, 0] == k and kept[-1, -1] == k):
                raise AssertionError(f"cached batch {k} was overwritten with {kept[0, 0]}")
        return {"image": image, "zeros": zeros, "grown": grown, "where": get_handler_name(image),
                "mapping": mapping_of(image.ctypes.data)}


def _check(batch: dict, i: int) -> None:
    assert (batch["image"] == i).all()
    assert not batch["zeros"].any()
    assert batch["grown"].shape == (10_000,) and (batch["grown"] == i).all()


@needs_allocator
def test_plain_numpy_batches_are_built_in_shared_memory(no_leaks):
    with prefetch.Loader(PlainNumpy(16), workers=2, executor="process", max_queue_size=3) as loader:
        for epoch in range(2):
            held = []
            for i, batch in enumerate(loader):
                _check(batch, i)
                # the first batches tell the main process how big segments must be
                if epoch:
                    assert batch["where"] == arena.HANDLER_NAME
                    assert "memfd:prefetch" in batch["mapping"], batch["mapping"]  # really in the segment
                batch["image"][0, 0] = -1  # writeable, and the consumer's own
                if i % 4 == 0:
                    held.append((i, batch))
            for i, batch in held:  # held batches are not recycled under the consumer
                assert batch["image"][-1, -1] == i


def test_arrays_a_dataset_keeps_are_not_overwritten_by_later_batches(no_leaks):
    with prefetch.Loader(PlainNumpy(30, keep_every=4), workers=2, executor="process", max_queue_size=2) as loader:
        for _ in range(3):
            for i, batch in enumerate(loader):
                _check(batch, i)


class Failing(PlainNumpy):
    def __getitem__(self, i: int) -> dict:
        batch = super().__getitem__(i)
        if i == 3:
            raise ValueError("bad sample")
        return batch


def test_a_batch_that_fails_after_allocating_leaves_later_batches_intact(no_leaks):
    with prefetch.Loader(Failing(8), workers=1, executor="process", max_queue_size=2) as loader:
        with pytest.raises(ValueError, match="bad sample"):
            for i, batch in enumerate(loader):
                _check(batch, i)
        for i, batch in zip(range(3), loader):
            _check(batch, i)


class Threaded(PlainNumpy):
    def __getitem__(self, i: int) -> dict:
        with ThreadPoolExecutor(2) as pool:  # arrays made and dropped on other threads
            parts = list(pool.map(lambda k: np.full((256, 1024), i, np.float32), range(4)))
        image = np.concatenate(parts)
        del parts
        return {"image": image, "thread": threading.current_thread().name}


def test_arrays_made_on_the_datasets_own_threads_arrive_intact(no_leaks):
    with prefetch.Loader(Threaded(10), workers=2, executor="process") as loader:
        for i, batch in enumerate(loader):
            assert batch["image"].shape == (1024, 1024) and (batch["image"] == i).all()


class Temporaries(PlainNumpy):
    def __getitem__(self, i: int) -> np.ndarray:
        out = np.empty((16, 256, 256), np.float32)  # 4 MiB
        for k in range(16):
            decoded = np.full((512, 512), i, np.float32)  # 1 MiB each, dropped at once
            out[k] = decoded[::2, ::2]
        return out


@needs_allocator
def test_temporaries_do_not_grow_shared_memory(no_leaks):
    with prefetch.Loader(Temporaries(12), workers=1, executor="process", max_queue_size=2) as loader:
        for i, batch in enumerate(loader):
            assert (batch == i).all()
        size = loader._engine.executor.pool.size_hint
    # the 16 temporaries reuse one slot: the segment holds the output and about one temporary
    assert 4 * BIG <= size < 7 * BIG


class ForksInside(PlainNumpy):
    """Forks a child inside __getitem__ that allocates and frees large arrays of its own."""

    def __getitem__(self, i: int) -> np.ndarray:
        import os

        out = np.full((512, 1024), i, np.float32)  # 2 MiB, in the batch's segment
        r, w = os.pipe()
        pid = os.fork()  # what a library forking a helper from inside __getitem__ does
        if pid == 0:
            try:
                del out  # the child's reference only; the batch lives on in the worker
                # the child's own arrays: they must not land where the batch is
                a = np.full((512, 1024), -1, np.float32)
                b = np.concatenate([a.ravel(), a.ravel()])
                b.resize(4 * BIG, refcheck=False)
                os.write(w, b"ok" if a[0, 0] == -1 else b"bad")
            finally:
                os._exit(0)
        os.close(w)
        said = os.read(r, 8)
        os.close(r)
        os.waitpid(pid, 0)
        assert said == b"ok", said
        return out


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_a_child_forked_inside_getitem_leaves_the_batch_alone(no_leaks):
    with prefetch.Loader(ForksInside(6), workers=1, executor="process", max_queue_size=2) as loader:
        for _ in range(2):
            for i, batch in enumerate(loader):
                assert (batch == i).all()


class Growing(PlainNumpy):
    """Batch i is (i + 1) MiB: each batch outgrows the segment sized for the one before."""

    def __getitem__(self, i: int) -> np.ndarray:
        return np.full((i + 1) * BIG, i, np.uint8)


def test_a_batch_that_outgrows_its_segment_sizes_the_next_ones_once_not_twice(no_leaks):
    with prefetch.Loader(Growing(8), workers=1, executor="process", max_queue_size=1) as loader:
        for i, batch in enumerate(loader):
            assert batch.nbytes == (i + 1) * BIG and (batch == i).all()
        size = loader._engine.executor.pool.size_hint
    assert 8 * BIG <= size < 10 * BIG  # the largest batch plus rounding (9 MiB), not more
