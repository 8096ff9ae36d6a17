"""`prefetch.mix`: several datasets interleaved by weight, deterministically from a seed.

The schedule (which dataset, and which of its batches, mixed batch `j` is) is a pure
function of (seed, epoch, j), so any worker computes it alone and a resumed Loader continues
it exactly. Within an epoch (or, when infinite, a block of `_BLOCK` or more batches) each dataset
gets a fixed count; its batches are spread over the span at jittered, evenly spaced times
(the k-th at `(k + u) / rate`, `u` uniform from the seed), and the spans are merged by
time: proportional everywhere, no long runs of one dataset, a new arrangement every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..dataset import PyDataset, num_batches_of
from ..randomness import current_batch, enter_batch, exit_batch
from .cache import Memo

_MIX_DOMAIN = 0x5EED_0011
_BLOCK = 1024  # batches per schedule block of an infinite mix (more when a weight is tiny)
_STOPS = ("first", "last", "never")


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """`total` split in proportion to `weights` by largest remainders (sums to `total`).

    Example:
        >>> apportion(10, [1, 1, 1])
        [4, 3, 3]
    """
    s = float(sum(weights))
    exact = [total * w / s for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda d: (counts[d] - exact[d], d))
    for d in by_remainder[: total - sum(counts)]:
        counts[d] += 1
    return counts


def interleave(counts: Sequence[int], rates: Sequence[float], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Merge `counts[d]` items of each dataset `d`, the k-th at time `(k + u) / rates[d]`.

    Returns (dataset, rank within that dataset) for each merged position.
    """
    times, which, rank = [], [], []
    for d, (c, r) in enumerate(zip(counts, rates)):
        if c:
            k = np.arange(c)
            times.append((k + rng.random(c)) / r)
            which.append(np.full(c, d, dtype=np.int64))
            rank.append(k)
    if not times:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(np.concatenate(times), kind="stable")
    return np.concatenate(which)[order], np.concatenate(rank)[order]


def _derived_seed(seed: int, d: int) -> int:
    # Each mixed dataset behaves as if under its own Loader: its own seed for prefetch.rng()
    # and for a `batched` source's permutation, so two sources never draw the same numbers.
    return int(np.random.SeedSequence((_MIX_DOMAIN, seed, d)).generate_state(1, np.uint64)[0] >> 1)


class Mix(PyDataset):
    """Several datasets interleaved by weight; see `prefetch.mix`."""

    def __init__(self, datasets: Sequence[Any], weights: Sequence[float] | None = None, *,
                 seed: int | None = None, stop: str = "first"):
        super().__init__()
        datasets = list(datasets)
        if not datasets:
            raise ValueError("mix needs at least one dataset")
        for ds in datasets:
            if not callable(getattr(type(ds), "__getitem__", None)):
                raise TypeError(f"a dataset needs __getitem__(index); {type(ds).__name__} has none")
        if weights is None:
            weights = [1.0] * len(datasets)
        weights = [float(w) for w in weights]
        if len(weights) != len(datasets):
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        if any(not (w > 0 and math.isfinite(w)) for w in weights):
            raise ValueError(f"weights must be finite and > 0, got {weights}")
        if stop not in _STOPS:
            raise ValueError(f"stop must be one of {_STOPS}, got {stop!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.datasets = datasets
        self.weights = weights
        self.seed = seed
        self.stop = stop
        sizes = self._sizes()
        if stop == "last" and None in sizes:
            raise ValueError("stop='last' needs finite datasets; an infinite one never runs out (use stop='first')")
        if stop == "first" and all(n is None for n in sizes):
            raise ValueError("stop='first' needs at least one finite dataset (or stop='never')")
        # Every dataset gets at least 2 batches per block, so the cumulative floors below
        # never give a negative count.
        self._block_size = max(_BLOCK, math.ceil(2 * sum(weights) / min(weights)))
        self._schedules = Memo(size=4)

    # -- sizes ------------------------------------------------------------------------------------
    def _sizes(self) -> list[int | None]:
        return [num_batches_of(ds) for ds in self.datasets]

    def _epoch_counts(self, sizes: list[int | None]) -> list[int]:
        """Batches each dataset gives per epoch (finite modes)."""
        if self.stop == "last":
            return [int(n) for n in sizes]  # type: ignore[arg-type]
        # "first": the epoch ends when, drawing in proportion, the first dataset runs out.
        total_w = sum(self.weights)
        length = min(math.floor(n * total_w / w + 1e-9) for n, w in zip(sizes, self.weights) if n is not None)
        counts = apportion(length, self.weights)
        return [c if n is None else min(c, n) for c, n in zip(counts, sizes)]

    @property
    def num_batches(self) -> int | None:
        if self.stop == "never":
            return None
        return sum(self._epoch_counts(self._sizes()))

    def __len__(self) -> int:
        n = self.num_batches
        if n is None:
            raise TypeError("an infinite mix (stop='never') has no len()")
        return n

    # -- the schedule ---------------------------------------------------------------------------
    def locate(self, index: int, *, seed: int = 0, epoch: int = 0) -> tuple[int, int, int]:
        """(dataset, its batch index, its epoch) that mixed batch `index` of `epoch` reads.

        Example:
            >>> import prefetch
            >>> m = prefetch.mix([list("ab"), list("xyz")], [1, 1], stop="last")
            >>> sorted(m.locate(j, seed=3) for j in range(len(m)))
            [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0), (1, 2, 0)]
        """
        sizes = self._sizes()
        if self.stop == "never":
            if index < 0:
                raise IndexError(f"batch index {index} out of range for an infinite mix")
            block, r = divmod(index, self._block_size)
            which, rank, before = self._memo(("block", seed, epoch, block, tuple(sizes)),
                                             lambda: self._block(seed, epoch, block))
            d = int(which[r])
            use = before[d] + int(rank[r])
        else:
            counts = self._epoch_counts(sizes)
            total = sum(counts)
            if index < 0:
                index += total
            if not 0 <= index < total:
                raise IndexError(f"batch index {index} out of range for {total} batches")
            rates = counts if self.stop == "first" else self.weights
            which, rank = self._memo(("epoch", seed, epoch, tuple(sizes)),
                                     lambda: interleave(counts, rates, self._rng(seed, epoch)))
            d = int(which[index])
            # A dataset that gives only part of itself per epoch continues where the last
            # epoch stopped, so every batch of it comes round in turn.
            use = epoch * counts[d] + int(rank[index])
        n = sizes[d]
        if n is None:
            return d, use, 0
        return d, use % n, use // n

    def _memo(self, key: tuple, compute: Any) -> Any:
        return self._schedules.get(key, compute)

    @staticmethod
    def _rng(seed: int, epoch: int, block: int = -1) -> np.random.Generator:
        return np.random.default_rng((_MIX_DOMAIN, seed, epoch, block + 1))

    def _block(self, seed: int, epoch: int, block: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """One block of an infinite mix: (dataset, rank) per position, and how many batches of
        each dataset all earlier blocks used (cumulative floors: exact in the long run, and a
        closed form, so block b needs no blocks before it)."""
        total_w = sum(self.weights)
        cum = np.cumsum(self.weights) / total_w
        cum[-1] = 1.0
        size = self._block_size

        def used_before(b: int) -> list[int]:
            edges = [0] + [math.floor(c * b * size) for c in cum]
            return [edges[d + 1] - edges[d] for d in range(len(cum))]

        before, after = used_before(block), used_before(block + 1)
        counts = [a - b for a, b in zip(after, before)]
        which, rank = interleave(counts, counts, self._rng(seed, epoch, block))
        return which, rank, before

    # -- batches ---------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> Any:
        where = current_batch()
        seed, epoch = (where[0], where[1]) if where is not None else (0, 0)
        if self.seed is not None:
            seed = self.seed
        d, inner, inner_epoch = self.locate(index, seed=seed, epoch=epoch)
        token = enter_batch(_derived_seed(seed, d), inner_epoch, inner)
        try:
            return self.datasets[d][inner]
        finally:
            exit_batch(token)

    def on_epoch_begin(self) -> None:
        for ds in self.datasets:
            hook = getattr(ds, "on_epoch_begin", None)
            if hook is not None:
                hook()

    def on_epoch_end(self) -> None:
        for ds in self.datasets:
            hook = getattr(ds, "on_epoch_end", None)
            if hook is not None:
                hook()

    def __repr__(self) -> str:
        names = ", ".join(type(ds).__name__ for ds in self.datasets)
        return f"mix([{names}], weights={self.weights}, seed={self.seed}, stop={self.stop!r})"


def mix(datasets: Sequence[Any], weights: Sequence[float] | None = None, *, seed: int | None = None,
        stop: str = "first") -> Mix:
    """One dataset that interleaves several by weight, deterministically from a seed.

    `datasets` are batch-level datasets (a `PyDataset`, a `prefetch.batched(...)`, anything
    with `__getitem__` and a length, or an infinite one); `weights` (default: equal) are the
    shares of the mixed batches each one gives. The arrangement is a pure function of the
    seed, the epoch and the batch index: the same on every executor and worker count, new
    each epoch, and continued exactly by a resumed Loader. `seed=None` follows the Loader's
    seed.

    `stop` says when an epoch ends:

    - `"first"` (default, Grain's and HF's "first exhausted"): when drawing in proportion, the
      first dataset runs out. The others give their share and continue where they stopped in
      the next epoch, so every batch of each comes round in turn.
    - `"last"` (tf.data `sample_from_datasets`): every batch of every dataset once per epoch;
      a dataset that runs out drops out and the rest keep their relative weights.
    - `"never"`: an infinite dataset (`num_batches` is `None`); each dataset restarts when it
      runs out (each pass is a new epoch for it: a `batched(shuffle=True)` source reshuffles).

    Each dataset's batch runs as if under its own Loader: `prefetch.rng()` and a `batched`
    source's shuffle see a seed derived from the mix's seed and the dataset's position, and
    the dataset's own batch index and epoch. `on_epoch_begin`/`on_epoch_end` reach every
    dataset. Outside a Loader, a mix is epoch 0 of its seed (0 when `None`).

    With `Loader(shard=Shard(j, N))` a mix is sharded at batch level, as any dataset: host `j`
    reads every N-th *mixed* batch, and the datasets inside are not sharded themselves (a
    `batched` source inside a mix is not split at sample level).

    Example:
        >>> import prefetch
        >>> a, b = ["a"] * 6, ["b"] * 3
        >>> m = prefetch.mix([a, b], [2, 1], seed=0)
        >>> batches = list(prefetch.Loader(m))
        >>> len(batches), batches.count("a"), batches.count("b")
        (9, 6, 3)
    """
    return Mix(datasets, weights, seed=seed, stop=stop)
