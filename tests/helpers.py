"""Datasets shared by the core tests. Module-level classes, so process workers can import them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time

import numpy as np

import prefetch


class Indices(prefetch.PyDataset):
    """Batch i is the int i (after an optional sleep)."""

    def __init__(self, n: int, delay: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.delay = delay

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.delay:
            time.sleep(self.delay)
        return i


class Jittery(Indices):
    """Random per-batch delays so completion order differs from index order."""

    def __getitem__(self, i):
        time.sleep(((i * 7919) % 13) / 2000)
        return i


class Arrays(prefetch.PyDataset):
    """A tree of arrays per batch: big ones travel through shared memory."""

    def __init__(self, n: int, shape=(512, 256), **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.shape = shape

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = np.full(self.shape, i, dtype=np.float32)
        return {"x": x, "pair": (np.arange(3) + i, [np.int64(i), "label"]), "small": np.ones(4) * i}


class Recorder(prefetch.PyDataset):
    """Records hook calls and __getitem__ calls (thread executor only: state is in-process)."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.events: list = []
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    def __len__(self):
        return self.n

    def on_epoch_begin(self):
        self.events.append("begin")

    def on_epoch_end(self):
        self.events.append("end")

    def __getitem__(self, i):
        with self.lock:
            self.events.append(("get", i))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(0.002)
        with self.lock:
            self.active -= 1
        return i


class Failing(Indices):
    """Raises at `bad` with a distinctive exception type."""

    def __init__(self, n: int, bad: int, **kwargs):
        super().__init__(n, **kwargs)
        self.bad = bad

    def __getitem__(self, i):
        if i == self.bad:
            raise LookupError(f"batch {i} is corrupt")
        return i


class Dies(Indices):
    """The worker process dies at batch `bad`: how = 'kill' | 'segv' | 'exit'."""

    def __init__(self, n: int, bad: int, how: str = "kill", **kwargs):
        super().__init__(n, **kwargs)
        self.bad = bad
        self.how = how

    def __getitem__(self, i):
        if i == self.bad:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif self.how == "segv":
                import ctypes

                ctypes.string_at(0)  # a real segmentation fault
            else:
                os._exit(7)
        return i


class Scaled(Indices):
    """Batch i is i * scale; the hooks change scale in the main process."""

    def __init__(self, n: int, **kwargs):
        super().__init__(n, **kwargs)
        self.scale = 1
        self.table = np.zeros(1000)  # state that does not change between epochs

    def on_epoch_begin(self):
        self.scale *= 10

    def on_epoch_end(self):
        self.scale += 1

    def __getitem__(self, i):
        return i * self.scale


class Pid(Indices):
    def __getitem__(self, i):
        time.sleep(self.delay)
        return os.getpid()


class Draws(Indices):
    """prefetch.rng() draws, plus the worker's global numpy draw."""

    def __getitem__(self, i):
        r = prefetch.rng()
        return r.integers(0, 2**62, size=3), prefetch.rng().random()


class GlobalDraws(Indices):
    def __getitem__(self, i):
        time.sleep(0.01)
        return os.getpid(), float(np.random.random()), __import__("random").random()


class NumpyRandomProbe(Indices):
    """Whether `numpy.random` was loaded in this process before the batch, then a draw from
    numpy's global generator (which loads it)."""

    def __getitem__(self, i):
        time.sleep(0.01)
        loaded = "numpy.random" in sys.modules
        return os.getpid(), loaded, float(np.random.random())


class AsyncIndices(prefetch.PyDataset):
    """`async def __getitem__`: counts how many run at once."""

    def __init__(self, n: int, delay: float = 0.005, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.delay = delay
        self.active = 0
        self.max_active = 0

    def __len__(self):
        return self.n

    async def __getitem__(self, i):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delay) if self.delay else None
        finally:
            self.active -= 1
        return i


class AnyioIndices(AsyncIndices):
    """Works on any anyio backend (trio included)."""

    async def __getitem__(self, i):
        import anyio

        await anyio.sleep(self.delay)
        return i


class Infinite(prefetch.PyDataset):
    @property
    def num_batches(self):
        return None

    def __getitem__(self, i):
        return i


class Unpicklable(Indices):
    def __init__(self, n: int, **kwargs):
        super().__init__(n, **kwargs)
        self.handle = threading.Lock()


class Plain:
    """Duck-typed: no prefetch base class at all."""

    workers = 3
    max_queue_size = 5

    def __len__(self):
        return 7

    def __getitem__(self, i):
        return i * 2


class ReadOnly(Indices):
    """Batches are read-only arrays."""

    def __getitem__(self, i):
        x = np.full((200, 200), i, dtype=np.float64)
        x.flags.writeable = False
        return x


class InPlace(Indices):
    """Builds its batch with prefetch.empty (zero-copy from process workers)."""

    def __getitem__(self, i):
        x = prefetch.empty((300, 300), np.float32)
        x.fill(i)
        return x, i


class SlowToStart(Indices):
    """Unpickling takes `boot` seconds in any process but the one that made it, so worker
    processes are certainly not ready for the first batches; batch i is (i * scale, pid)."""

    def __init__(self, n: int, boot: float = 1.0, fail_to_start: bool = False, **kwargs):
        super().__init__(n, **kwargs)
        self.boot = boot
        self.fail_to_start = fail_to_start
        self.scale = 1
        self.home = os.getpid()

    def __setstate__(self, state):
        self.__dict__.update(state)
        if os.getpid() != self.home:
            if self.fail_to_start:
                raise LookupError("this dataset cannot load in a worker")
            time.sleep(self.boot)

    def __getitem__(self, i):
        super().__getitem__(i)
        return i * self.scale, os.getpid()


class OpensInGetitem(SlowToStart):
    """Stores an unpicklable handle on itself in __getitem__ (a file, a lock), as datasets
    that open resources lazily do."""

    def __getitem__(self, i):
        self.handle = threading.Lock()
        return super().__getitem__(i)


class ScaledInHook(SlowToStart):
    def on_epoch_begin(self):
        self.scale *= 10


class ReloadFailsHere(SlowToStart):
    """Loads in a worker, but not in the main process once `scale` is 7 (a `__setstate__`
    that cannot restore that state here: a file only the workers can open, say)."""

    def __setstate__(self, state):
        if os.getpid() == state["home"] and state["scale"] == 7:
            raise OSError("this state cannot load in the main process")
        super().__setstate__(state)


class FailsAt(SlowToStart):
    def __init__(self, n: int, bad: int, **kwargs):
        super().__init__(n, **kwargs)
        self.bad = bad

    def __getitem__(self, i):
        if i == self.bad:
            return 1 / 0
        return super().__getitem__(i)


def mapping_of(address: int) -> str:
    """What /proc/self/maps says `address` lies in (a memfd segment, the heap, ...)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, *rest = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= address < hi:
                return rest[-1].strip() if len(rest) == 5 else "[anonymous]"
    return "?"
