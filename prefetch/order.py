"""The batch order of an epoch: shuffled by (seed, epoch), then cut to this host's shard.

Positions are counted two ways. A *global* position is an index into the epoch's full order,
the same on every host. A host's *local* position counts only its own batches. Host `index`
of `count` reads global positions `start + index + count * k` (k = 0, 1, ...): `start` is 0
for a fresh epoch and the global progress of every host so far for an epoch resumed on a
different number of hosts (elastic resume, see `prefetch.state`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import numpy as np

from .shard import Shard

_SHUFFLE_DOMAIN = 0x5EED_0003


def global_order(num_batches: int, *, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """Batch indices of one finite epoch in global order (what a single host reads)."""
    if shuffle:
        return np.random.default_rng((_SHUFFLE_DOMAIN, seed, epoch)).permutation(num_batches)
    return np.arange(num_batches)


def part_size(num_batches: int, shard: Shard | None, start: int = 0) -> int:
    """How many batches a host reads of an epoch whose global positions `[start, num_batches)`
    are still to be read (all of them when `start` is 0)."""
    rest = max(0, num_batches - start)
    if shard is None:
        return rest
    return shard.size(rest)


def epoch_order(num_batches: int, *, epoch: int, seed: int, shuffle: bool, shard: Shard | None,
                start: int = 0) -> np.ndarray:
    """Batch indices of one finite epoch in delivery order (this shard's part).

    Every host computes the same full order from (seed, epoch), then keeps every
    `count`-th entry from `start + index`, so the parts are disjoint and equally long.
    With `pad=True` the part wraps around to the start of the full order.

    Example:
        >>> from prefetch import Shard
        >>> epoch_order(10, epoch=0, seed=0, shuffle=False, shard=Shard(1, 3)).tolist()
        [1, 4, 7]
        >>> epoch_order(10, epoch=0, seed=0, shuffle=False, shard=Shard(1, 2), start=6).tolist()
        [7, 9]
    """
    order = global_order(num_batches, epoch=epoch, seed=seed, shuffle=shuffle)
    size = part_size(num_batches, shard, start)
    if shard is None or shard.count == 1:
        return order[start: start + size]
    positions = start + shard.index + shard.count * np.arange(size)
    if num_batches:
        positions %= num_batches  # only pad=True reaches past the end: it wraps around
    return order[positions]


def infinite_order(shard: Shard | None, start: int = 0) -> Iterator[int]:
    """Indices of an infinite dataset: start, start + 1, ... (this shard's part of them)."""
    if shard is None or shard.count == 1:
        return itertools.count(start)
    return itertools.count(start + shard.index, shard.count)


def remaining(order: Iterable[int], skip: int, also_seen: frozenset[int] = frozenset()) -> Iterator[tuple[int, int]]:
    """(position, index) pairs of an epoch order from position `skip`, leaving out positions
    already delivered (`also_seen`: the out-of-order deliveries of an unordered epoch)."""
    it: Iterator[tuple[int, int]] = enumerate(order)
    if skip:
        it = itertools.islice(it, skip, None)
    if also_seen:
        it = ((p, i) for p, i in it if p not in also_seen)
    return it
