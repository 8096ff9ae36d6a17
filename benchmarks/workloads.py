"""Benchmark datasets: plain classes with `__len__` (batches) and `__getitem__(i)` (one batch).

They live in an importable module (not in the script run as `__main__`) so that worker
processes of every loader - forked, spawned or forkserver'd, prefetch, PyTorch, Keras, Grain,
dask - can unpickle them by reference. They deliberately do not subclass any framework's
dataset class: every loader under test accepts a plain map-style object, and the Keras peer
wraps them in a `keras.utils.PyDataset` subclass (`benchmarks/keras_peer.py`).

Batches that can be checked (`checkable = True`) identify their index: either the int itself
or an array whose first element is the index. The harness checks order and count with that.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np


class Batches:
    """`n` batches; subclasses say what one batch costs."""

    checkable = True

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


class Noop(Batches):
    """No work at all: the batch is the index. Measures per-batch overhead of a loader."""

    def __getitem__(self, i: int) -> int:
        return i


class Sleep(Batches):
    """Waits `seconds` without holding the GIL (`time.sleep`): I/O-like latency."""

    def __init__(self, n: int, seconds: float):
        super().__init__(n)
        self.seconds = seconds

    def __getitem__(self, i: int) -> int:
        time.sleep(self.seconds)
        return i


class AsyncSleep(Sleep):
    """The same wait as `Sleep`, as a coroutine (`await asyncio.sleep`)."""

    async def __getitem__(self, i: int) -> int:  # type: ignore[override]
        await asyncio.sleep(self.seconds)
        return i


class NumpySort(Batches):
    """CPU work in numpy that releases the GIL: `np.sort` of `size` float32 values (a new
    sorted 4-byte-per-value array is the batch). `size` is calibrated to ~10 ms serial."""

    checkable = False

    def __init__(self, n: int, size: int, seed: int = 0):
        super().__init__(n)
        self.size = size
        self.seed = seed
        self._data: np.ndarray | None = None  # built lazily, once per process

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_data"] = None  # workers rebuild it: pickles stay tiny
        return state

    def prepare(self) -> None:
        """Build the data now (the harness calls this before timing); a process that
        unpickles the dataset builds its own copy on first use."""
        if self._data is None:
            self._data = np.random.default_rng(self.seed).random(self.size, dtype=np.float32)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._data is None:
            self.prepare()
        return np.sort(self._data)


def py_work(iters: int) -> int:
    s = 0
    for k in range(iters):
        s += k * k
    return s


class PyLoop(Batches):
    """Pure-Python CPU work that holds the GIL: a loop of `iters` multiply-adds (calibrated
    to ~4 ms serial). Threads cannot speed it up; processes can."""

    def __init__(self, n: int, iters: int):
        super().__init__(n)
        self.iters = iters

    def __getitem__(self, i: int) -> int:
        py_work(self.iters)
        return i


class FreshArray(Batches):
    """Each batch is a freshly allocated float32 array filled with the index (`shape`
    (4608, 1024) = 18 MiB). Cheap to make, expensive to move between processes."""

    def __init__(self, n: int, shape: tuple[int, ...] = (4608, 1024)):
        super().__init__(n)
        self.shape = tuple(shape)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.full(self.shape, i, dtype=np.float32)


class SmallArrays(Sleep):
    """A small, typical thread workload for the memory check: 1 ms wait, then a 64x64 float32
    array filled with the index."""

    def __init__(self, n: int, seconds: float = 0.001):
        super().__init__(n, seconds)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        time.sleep(self.seconds)
        return np.full((64, 64), i, dtype=np.float32)


class FreshArrayInPlace(FreshArray):
    """FreshArray built with `prefetch.empty`: a process worker writes the batch straight into
    shared memory (prefetch only; elsewhere it is numpy.empty)."""

    def __getitem__(self, i: int) -> np.ndarray:
        import prefetch

        out = prefetch.empty(self.shape, dtype=np.float32)
        out.fill(i)
        return out


DATASETS = {
    "noop": Noop,
    "sleep": Sleep,
    "async_sleep": AsyncSleep,
    "numpy_sort": NumpySort,
    "py_loop": PyLoop,
    "fresh_array": FreshArray,
    "fresh_array_inplace": FreshArrayInPlace,
    "small_arrays": SmallArrays,
}


def make_dataset(kind: str, n: int, **params) -> object:
    return DATASETS[kind](n, **params)
