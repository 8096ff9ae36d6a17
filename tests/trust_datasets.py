"""Datasets for the process-trust tests (module level: process workers import them)."""

from __future__ import annotations

import os
import time

import numpy as np

import prefetch

MB = 1 << 20


class BigInBand(prefetch.PyDataset):
    """Batches of a few MB pickled in-band (a list of strings), and an 8 MB attribute that
    `on_epoch_begin` replaces: the sync and the results cross on one socket at once."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.blob = np.zeros(8 * MB, np.uint8)
        self.epochs = 0

    def __len__(self):
        return self.n

    def on_epoch_begin(self):
        self.epochs += 1
        self.blob = np.full(8 * MB, self.epochs % 256, np.uint8)

    def __getitem__(self, i):
        return (int(self.blob[0]), [f"{i}-{k:06d}-padding-padding-padding" for k in range(30_000)])


class TwoArgError(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


class BreaksOnLoad:
    def __reduce__(self):
        return (_refuse, ("no",))


def _refuse(arg):
    raise ValueError(f"this value refuses to be unpickled ({arg})")


class Undecodable(prefetch.PyDataset):
    """Batch `bad` returns a value that pickles in the worker but cannot be unpickled here."""

    def __init__(self, n: int, bad: int, kind: str, **kwargs):
        super().__init__(**kwargs)
        self.n, self.bad, self.kind = n, bad, kind

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i != self.bad:
            return i
        return TwoArgError("x", "y") if self.kind == "init" else BreaksOnLoad()


class GrowsItsCache(prefetch.PyDataset):
    """Keeps an array it made in batch 3 and grows it (numpy realloc) in batch 5."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.cache = None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == 3:
            self.cache = np.ones(MB // 16, np.uint8)  # allocated first: lowest in the segment
        out = np.full(MB, i, np.uint8)
        if i == 5 and self.cache is not None:
            self.cache.resize(MB // 2, refcheck=False)  # zero-fills what it grows into
        return out


class ReusesItsBuffer(prefetch.PyDataset):
    """Returns the same output buffer every time (a common speed trick)."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.buf = None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.buf is None:
            self.buf = np.empty(MB // 8, np.int64)
        self.buf[:] = i
        return self.buf


class EditsItsCache(prefetch.PyDataset):
    """Caches every batch it returns and, two batches later, scribbles on the cached array."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.cache: dict = {}

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i - 2 in self.cache:
            self.cache[i - 2][:] = -7
        self.cache[i] = np.full(MB // 8, i, np.int64)
        return self.cache[i]


class CachesBatches(prefetch.PyDataset):
    """Makes each batch once and returns the cached array from then on."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.cache: dict = {}

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i not in self.cache:
            self.cache[i] = np.full(MB // 8, i, np.int64)
        return self.cache[i]


class Crashes(prefetch.PyDataset):
    def __init__(self, n: int, how: str, at: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.n, self.how, self.at = n, how, at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.at:
            if self.how == "segfault":
                import ctypes

                ctypes.string_at(0)
            elif self.how == "exit":
                os._exit(3)
            elif self.how == "unpicklable":
                return lambda: i
        return i


class SleepsForever(prefetch.PyDataset):
    def __len__(self):
        return 10**6

    def __getitem__(self, i):
        time.sleep(3600)
        return i


class SlowToLoad(prefetch.PyDataset):
    """Takes `boot` seconds to unpickle in a worker, and writes its pid to `pid_file` first."""

    def __init__(self, n: int, pid_file: str, boot: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        self.n, self.pid_file, self.boot = n, pid_file, boot

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i

    def __setstate__(self, state):
        self.__dict__.update(state)
        with open(self.pid_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(self.boot)


class CheapArrays(prefetch.PyDataset):
    """Batch i: a 64 KiB array full of i (travels through shared memory)."""

    def __init__(self, n: int, delay_s: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.delay_s = delay_s

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.delay_s:
            time.sleep(self.delay_s)
        return np.full(8192, i, np.int64)
