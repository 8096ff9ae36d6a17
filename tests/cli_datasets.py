"""Datasets for tests/test_cli.py, named on the command line as `tests.cli_datasets:FACTORY`
(or `tests/cli_datasets.py:FACTORY`). Module-level classes, so process workers can import them."""

from __future__ import annotations

import asyncio
import time

import numpy as np

import prefetch


class Sleepy(prefetch.PyDataset):
    """`n` batches that each wait `delay` seconds (releasing the GIL), then return a small array."""

    def __init__(self, n: int = 40, delay: float = 0.005, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.delay = delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        time.sleep(self.delay)
        return np.full(8, i, dtype=np.int64)


class AsyncSleepy(Sleepy):
    """The same, awaiting instead of blocking: only executor='async' applies."""

    async def __getitem__(self, i: int) -> np.ndarray:
        await asyncio.sleep(self.delay)
        return np.full(8, i, dtype=np.int64)


class Failing(Sleepy):
    """Every batch raises: the bench must report it, not crash."""

    def __getitem__(self, i: int) -> np.ndarray:
        raise KeyError(f"no batch {i} here")


def make_sleepy() -> Sleepy:
    return Sleepy()


def make_slow() -> Sleepy:
    """Long enough that a short --time-limit cuts every setting."""
    return Sleepy(n=10_000, delay=0.005)


def make_async() -> AsyncSleepy:
    return AsyncSleepy()


def make_failing() -> Failing:
    return Failing(n=10)


def make_raises() -> Sleepy:
    raise RuntimeError("the factory itself is broken")


def not_a_dataset() -> int:
    return 42


NOT_CALLABLE = [1, 2, 3]
