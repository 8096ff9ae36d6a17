"""Small datasets shared by the PyTorch and JAX adapter tests (numpy only, no framework)."""

from __future__ import annotations

import threading
from collections import namedtuple
from typing import Any

import numpy as np

import prefetch

Pair = namedtuple("Pair", ["x", "y"])

TRUE_W = np.array([[2.0], [-1.0], [0.5]], dtype=np.float32)
TRUE_B = np.float32(0.3)


class Records:
    """Mixin for a dataset class: remembers which batches were made (from any thread) and
    the epoch hooks, for counting. `__getitem__` calls `self.record(i)`."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []
        self.hooks: list[str] = []
        self._lock = threading.Lock()

    def record(self, i: int) -> None:
        with self._lock:
            self.calls.append(int(i))

    def on_epoch_begin(self) -> None:
        self.hooks.append("begin")

    def on_epoch_end(self) -> None:
        self.hooks.append("end")


class Regression(Records, prefetch.PyDataset):
    """Batch i: 16 rows of a noisy linear function of 3 features (the same rows every epoch)."""

    def __init__(self, n: int = 8, rows: int = 16, **kwargs: Any):
        super().__init__(**kwargs)
        self.n, self.rows = n, rows

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.record(i)
        g = np.random.default_rng(i)
        x = g.standard_normal((self.rows, 3), dtype=np.float32)
        y = x @ TRUE_W + TRUE_B + 0.01 * g.standard_normal((self.rows, 1), dtype=np.float32)
        return x, y


def assert_trained_two_epochs(ds: Regression, epoch_losses: list[float], batches_per_epoch: list[int]) -> None:
    """What a two-epoch training loop over `Regression(n=8)` must show."""
    assert epoch_losses[1] < epoch_losses[0], epoch_losses
    assert batches_per_epoch == [8, 8]
    assert sorted(ds.calls) == sorted(list(range(8)) * 2)
    assert ds.hooks == ["begin", "end"] * 2


class Kept(prefetch.PyDataset):
    """Returns the very arrays it holds (built up front), so a test can check for copies."""

    def __init__(self, batches: list[Any], **kwargs: Any):
        super().__init__(**kwargs)
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return self.batches[i]


def nested_batch(i: int) -> dict[str, Any]:
    """Every structure and leaf kind an adapter meets."""
    return {
        "pair": Pair(np.full((2, 3), i, np.float32), np.arange(2, dtype=np.int64) + i),
        "list": [np.ones(4, np.float64) * i, (np.zeros((1,), np.int32), np.array([True, False]))],
        "scalar": np.float32(i),
        "index": i,  # a Python number
        "name": f"batch-{i}",
        "names": np.array([f"a{i}", f"b{i}"]),  # strings: no tensor holds them
        "none": None,
    }


class Nested(prefetch.PyDataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int):
        return nested_batch(i)


class Endless(prefetch.PyDataset):
    """An infinite dataset: no len()."""

    @property
    def num_batches(self):
        return None

    def __getitem__(self, i: int):
        return np.full(2, i)
