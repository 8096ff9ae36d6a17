"""Datasets for the scale tests (dask, sharding, resume).

Module-level classes, so worker processes and dask workers can unpickle them by reference
(pytest puts `tests/` on `sys.path`; child processes get it from `sys.path` or PYTHONPATH).

Example:
    >>> from scale_datasets import Indexed
    >>> Indexed(3)[2]
    2
"""

from __future__ import annotations

import os
import signal
import time

import prefetch


class Indexed(prefetch.PyDataset):
    """Batch `i` is the int `i`, after `delay` seconds (or `delay * (i % spread)` to make
    completion order differ from submission order)."""

    def __init__(self, n: int, delay: float = 0.0, spread: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.delay = delay
        self.spread = spread

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if self.delay:
            time.sleep(self.delay * ((i * 7) % self.spread + 1) if self.spread else self.delay)
        return int(i)


class BatchError(ValueError):
    """A dataset's own exception type: it must reach the consumer unchanged."""


class Failing(prefetch.PyDataset):
    """Raises `BatchError` for batch `bad`."""

    def __init__(self, n: int, bad: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.bad = bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if i == self.bad:
            raise BatchError(f"cannot build batch {i}")
        return int(i)


class Noisy(prefetch.PyDataset):
    """Batch `i` is `(i, draws from prefetch.rng())`."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return int(i), prefetch.rng().integers(0, 2**62, size=4).tolist()


class Fatal(prefetch.PyDataset):
    """SIGKILLs the process that builds batch `bad` (only ever run it in a worker process)."""

    def __init__(self, n: int, bad: int, parent: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.bad = bad
        self.parent = parent  # never kill the test process itself

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if i == self.bad and os.getpid() != self.parent:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.01)
        return int(i)


class EpochTagged(prefetch.PyDataset):
    """Batch `i` is `(epochs_ended, i)`: `on_epoch_end` changes the dataset between epochs,
    as Keras datasets that reshuffle their samples there do."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.epochs_ended = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.epochs_ended, int(i)

    def on_epoch_end(self) -> None:
        self.epochs_ended += 1


class Endless(prefetch.PyDataset):
    """An infinite dataset: batch `i` is `i`, for ever."""

    @property
    def num_batches(self):
        return None

    def __getitem__(self, i: int) -> int:
        return int(i)


class Gated(prefetch.PyDataset):
    """Batch 0 waits for `gate` (a threading.Event the consumer sets), so with
    `ordered=False` the batches after it are delivered first. Threads only."""

    def __init__(self, n: int, gate, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.gate = gate

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if i == 0:
            self.gate.wait(30)
        return int(i)


class Locked(prefetch.PyDataset):
    """Holds a lock, so it cannot be pickled (fine for threads, not for worker processes)."""

    def __init__(self, n: int, **kwargs):
        import threading

        super().__init__(**kwargs)
        self.n = n
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        with self.lock:
            return int(i)


class FailingSet(prefetch.PyDataset):
    """Raises `BatchError` for every batch in `bad`; records each call's index in `calls`
    (threads only: a worker process has its own copy)."""

    def __init__(self, n: int, bad, delay: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.bad = frozenset(bad)
        self.delay = delay
        self.calls: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        self.calls.append(int(i))
        if self.delay:
            time.sleep(self.delay * ((i * 7) % 5))
        if i in self.bad:
            raise BatchError(f"batch {i} is corrupt")
        return int(i)


class AsyncFailingSet(FailingSet):
    async def __getitem__(self, i: int) -> int:  # type: ignore[override]
        import asyncio

        await asyncio.sleep(0.001 * ((i * 7) % 5))
        return FailingSet.__getitem__(self, i)


class DiesAt(prefetch.PyDataset):
    """SIGKILLs the worker process that builds a batch in `bad` (never the test process)."""

    def __init__(self, n: int, bad, parent: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.bad = frozenset(bad)
        self.parent = parent

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if i in self.bad and os.getpid() != self.parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return int(i)
