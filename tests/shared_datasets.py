"""Datasets for the shared-dataset-memory tests (importable by worker processes)."""

from __future__ import annotations

import os

import numpy as np

import prefetch

MIB = 2**20


class HoldsArray(prefetch.PyDataset):
    """One large float64 array; batch i: (worker pid, sum of the array's i-th part, its first value)."""

    def __init__(self, mib: int = 64, n: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.x = np.arange(mib * MIB // 8, dtype=np.float64)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        part = len(self.x) // self.n
        chunk = self.x[i * part:(i + 1) * part]
        return np.array([os.getpid(), chunk.sum(), chunk[0]])


class WritesItsArray(HoldsArray):
    """Writes into its array in `__getitem__` (what read-only sharing forbids)."""

    def __getitem__(self, i):
        self.x[i] = -1.0
        return np.array([os.getpid(), self.x[i], self.x[(i + 1) % self.n]])


class ReplacesArray(HoldsArray):
    """`on_epoch_end` replaces the array with a new one: every value + 1."""

    def on_epoch_end(self):
        self.x = self.x + 1.0


class EditsArrayInPlace(HoldsArray):
    """`on_epoch_end` adds 1 to the array in place (the main process's copy)."""

    def on_epoch_end(self):
        self.x += 1.0


class Nested(prefetch.PyDataset):
    """Large arrays inside a dict and a list, and a state set by `__getstate__`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tables = {"a": np.full(2 * MIB, 3, dtype=np.uint8), "b": [np.ones(MIB // 4, dtype=np.float32) * 2]}

    def __getstate__(self):
        return dict(vars(self))

    def __setstate__(self, state):
        vars(self).update(state)

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return np.array([os.getpid(), int(self.tables["a"].sum()), float(self.tables["b"][0].sum()),
                         int(self.tables["a"].flags.writeable)])


class Paths(prefetch.PyDataset):
    """A `PackedStrings` of file paths; batch i: (worker pid, a path's length, its number)."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.paths = prefetch.PackedStrings(f"data/{i:09d}.jpg" for i in range(n))

    def __len__(self):
        return 4

    def __getitem__(self, i):
        k = i * (len(self.paths) // 4)
        return np.array([os.getpid(), len(self.paths[k]), int(self.paths[k][5:14])])


class ManyArrays(prefetch.PyDataset):
    """40 attributes, each a 1 MiB array; `on_epoch_end` replaces one of them (the next in turn)
    by its value + 1. Batch i: (worker pid, the sum of every array's first value)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for k in range(40):
            setattr(self, f"a{k}", np.full(MIB // 8, float(k)))
        self.turn = 0

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return np.array([os.getpid(), sum(float(getattr(self, f"a{k}")[0]) for k in range(40))])

    def on_epoch_end(self):
        name = f"a{self.turn % 40}"
        setattr(self, name, getattr(self, name) + 1.0)
        self.turn += 1
