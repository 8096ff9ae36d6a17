"""Sample-level sources for `benchmarks/sources.py`: `__len__` = samples, `__getitem__(k)` = one sample.

In an importable module so worker processes of every loader can unpickle them by reference.
They build their data deterministically in the constructor and keep it small, so pickling
one to a worker costs little.
"""

from __future__ import annotations

import time

import numpy as np


class SmallSamples:
    """Sample k: ~`work_s` of numpy ufunc work (which releases the GIL) on a `size`-float
    vector, returning 64 floats: the cheap per-sample transform of tabular or audio features."""

    def __init__(self, n: int, size: int):
        self.n = n
        self.size = size
        self.base = np.random.default_rng(0).standard_normal((16, size)).astype(np.float32)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> np.ndarray:
        x = self.base[k % 16]
        y = np.sin(x)
        np.multiply(y, x, out=y)
        np.sqrt(np.abs(y, out=y), out=y)
        out = y[:64].copy()
        out[0] = k  # identifies the sample
        return out


def calibrate_small(target_s: float = 0.0002) -> int:
    """The vector size whose sample costs about `target_s` on this machine."""
    size = 16384
    ds = SmallSamples(64, size)
    for _ in range(3):
        t0 = time.perf_counter()
        for k in range(64):
            ds[k]
        per = (time.perf_counter() - t0) / 64
        size = max(256, int(size * target_s / per))
        ds = SmallSamples(64, size)
    return size


class ImageSamples:
    """Sample k: a 3x224x224 uint8 image (a copy from a pool of 16, flipped for odd k), as a
    decoded, augmented image. 64 of them make a 9.2 MiB batch."""

    def __init__(self, n: int):
        self.n = n
        self.pool = np.random.default_rng(0).integers(0, 255, (16, 3, 224, 224), dtype=np.uint8)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> np.ndarray:
        img = self.pool[k % 16]
        out = img[:, :, ::-1].copy() if k % 2 else img.copy()
        out[0, 0, 0] = k % 251
        return out


class OneByOne:
    """A source seen without its `__getitems__`: one `source[k]` per sample."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, k: int):
        return self.source[k]


def hf_table(n: int, width: int = 128):
    """A Hugging Face `datasets.Dataset` of `n` rows ({"x": float32[width], "label": int}),
    numpy-formatted, built in memory (no download)."""
    import datasets

    x = np.random.default_rng(0).standard_normal((n, width)).astype(np.float32)
    table = datasets.Dataset.from_dict({"x": x, "label": np.arange(n)})
    return table.with_format("numpy")
