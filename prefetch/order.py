"""The batch order of an epoch: shuffled by (seed, epoch), then cut to this host's shard."""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import numpy as np

from .shard import Shard

_SHUFFLE_DOMAIN = 0x5EED_0003


def epoch_order(num_batches: int, *, epoch: int, seed: int, shuffle: bool, shard: Shard | None) -> np.ndarray:
    """Batch indices of one finite epoch in delivery order (this shard's part).

    Every host computes the same full order from (seed, epoch), then keeps every
    `count`-th entry from its `index`, so the parts are disjoint and equally long.
    """
    if shuffle:
        order = np.random.default_rng((_SHUFFLE_DOMAIN, seed, epoch)).permutation(num_batches)
    else:
        order = np.arange(num_batches)
    if shard is None or shard.count == 1:
        return order
    per_host = shard.size(num_batches)
    if shard.pad and num_batches and per_host * shard.count > num_batches:
        order = np.resize(order, per_host * shard.count)  # wraps around to the start
    return order[shard.index: per_host * shard.count: shard.count]


def infinite_order(shard: Shard | None) -> Iterator[int]:
    """Indices of an infinite dataset: 0, 1, 2, ... (this shard's residue class)."""
    if shard is None or shard.count == 1:
        return itertools.count()
    return itertools.count(shard.index, shard.count)


def remaining(order: Iterable[int], skip: int, also_seen: frozenset[int] = frozenset()) -> Iterator[tuple[int, int]]:
    """(position, index) pairs of an epoch order from position `skip`, leaving out positions
    already delivered (`also_seen`: the out-of-order deliveries of an unordered epoch)."""
    it = enumerate(order)
    if skip:
        it = itertools.islice(it, skip, None)
    if also_seen:
        it = ((p, i) for p, i in it if p not in also_seen)
    return it
