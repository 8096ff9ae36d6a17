"""The dataset behind `python -m prefetch bench --demo`: a stand-in for reading files.

Each batch waits 10 ms (as a disk or network read would, releasing the GIL) and then does a
little numpy, so threads and processes both help and the serial loop is easy to beat.

Example:
    >>> from prefetch._demo import make
    >>> ds = make()
    >>> x, y = ds[3]
    >>> x.shape, y.shape, len(ds)
    ((32, 64), (32,), 200)
"""

from __future__ import annotations

import time

import numpy as np

from .dataset import PyDataset


class DemoDataset(PyDataset):
    """`n` batches of (32 x 64 float32 features, 32 int64 labels), `io_s` of waiting each."""

    def __init__(self, n: int = 200, io_s: float = 0.010, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.io_s = io_s

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(self.io_s)  # the "read": waiting that releases the GIL
        rng = np.random.default_rng(i)
        x = rng.standard_normal((32, 64), dtype=np.float32)
        x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)  # the "decode": a little CPU
        return x, rng.integers(0, 10, size=32)


def make() -> DemoDataset:
    """Zero-argument factory, as `bench` wants (`prefetch._demo:make`)."""
    return DemoDataset()
