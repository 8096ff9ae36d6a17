"""Sample-level sources for tests/test_sources.py. Module-level, so process workers can import them."""

from __future__ import annotations

import threading

import numpy as np


class Rows:
    """A plain map-style source: sample k is {"id": k, "x": a small array}."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> dict:
        if not 0 <= k < self.n:
            raise IndexError(k)
        return {"id": k, "x": np.full(3, k, dtype=np.float32)}


class RowsWithGetitems(Rows):
    """Also offers `__getitems__` (as torch and HF datasets do) and counts both kinds of call."""

    def __init__(self, n: int):
        super().__init__(n)
        self.lock = threading.Lock()
        self.single = 0
        self.many = 0

    def __getitem__(self, k: int) -> dict:
        with self.lock:
            self.single += 1
        return super().__getitem__(k)

    def __getitems__(self, ks: list) -> list:
        assert all(type(k) is int for k in ks), "keys are plain ints"
        with self.lock:
            self.many += 1
        return [Rows.__getitem__(self, k) for k in ks]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, lock=threading.Lock())


class ImageFolder:
    """Image files decoded with Pillow: sample k is (H×W×3 uint8 array, label)."""

    def __init__(self, paths: list, labels: list):
        self.paths = [str(p) for p in paths]
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int) -> tuple:
        from PIL import Image

        with Image.open(self.paths[k]) as img:
            return np.asarray(img.convert("RGB")), self.labels[k]
