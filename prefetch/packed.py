"""`PackedStrings`: a list of strings held in two numpy arrays, so process workers share it.

A dataset holding a list of a million file paths costs every process worker its own copy of
a million Python `str` objects (~60-100 MiB; the main process pays once more for the pickle).
Packed into one UTF-8 byte array and an array of end offsets, the same list is two buffers
that process workers map from shared memory (`Loader(share_dataset=True)`, the default):
no per-worker copy. Reading item i decodes one string (a few hundred nanoseconds).

Example:
    >>> import prefetch
    >>> paths = prefetch.PackedStrings([f"img/{i:07d}.jpg" for i in range(1000)])
    >>> len(paths), paths[3], paths[-1], paths[1:3]
    (1000, 'img/0000003.jpg', 'img/0000999.jpg', ['img/0000001.jpg', 'img/0000002.jpg'])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np


class PackedStrings(Sequence[str]):
    """An immutable sequence of `str`, stored as UTF-8 bytes plus end offsets (two arrays)."""

    __slots__ = ("_data", "_ends")

    def __init__(self, strings: Iterable[str]):
        encoded = [s.encode("utf-8") for s in strings]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        self._ends = np.cumsum(lengths, dtype=np.int64)
        self._data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self._get(k) for k in range(*i.indices(len(self)))]
        n = len(self._ends)
        k = int(i)
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError(f"PackedStrings index {i} out of range for {n} strings")
        return self._get(k)

    def _get(self, k: int) -> str:
        start = int(self._ends[k - 1]) if k else 0
        return self._data[start:int(self._ends[k])].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        for k in range(len(self)):
            yield self._get(k)

    def __getstate__(self) -> tuple[np.ndarray, np.ndarray]:
        return self._data, self._ends

    def __setstate__(self, state: tuple[np.ndarray, np.ndarray]) -> None:
        self._data, self._ends = state

    def __repr__(self) -> str:
        return f"PackedStrings({len(self)} strings, {self._data.nbytes} bytes)"
