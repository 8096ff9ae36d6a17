"""`Shard`: which disjoint part of every epoch this host reads."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Host `index` of `count` reads every `count`-th batch of each epoch's (shuffled) order.

    Every host gets the same number of batches: by default the last `len % count` batches
    of the order are dropped; with `pad=True` the order wraps around instead, so every
    batch is read and a few are read twice.

    A dataset with a `__prefetch_shard__(shard)` method shards itself instead: the Loader runs
    the view it returns, whole. `prefetch.batched` does, at sample level (equal sample counts
    per host, like torch's `DistributedSampler`; there `drop_last`, not `pad`, decides).

    Example:
        >>> import prefetch
        >>> loader = prefetch.Loader(list(range(10)), shard=prefetch.Shard(1, 4))
        >>> list(loader), len(loader)
        ([1, 5], 2)
    """

    index: int
    count: int
    pad: bool = False

    def __post_init__(self) -> None:
        for name in ("index", "count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Shard.{name} must be an int, got {value!r}")
        if self.count < 1:
            raise ValueError(f"Shard.count must be >= 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"Shard.index must be in [0, {self.count}), got {self.index}")

    @classmethod
    def auto(cls, *, pad: bool = False) -> Shard:
        """This process's shard, from the first of: an initialised `torch.distributed`,
        a multi-process JAX, the `RANK`/`WORLD_SIZE` environment; else the single shard."""
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), pad)
        jax = sys.modules.get("jax")
        if jax is not None:
            # Only asked when the user already imported JAX: prefetch never imports it itself.
            count = jax.process_count()
            if count > 1:
                return cls(jax.process_index(), count, pad)
        if "WORLD_SIZE" in os.environ:
            return cls(int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]), pad)
        return cls(0, 1, pad)

    def size(self, num_batches: int) -> int:
        """Batches this shard reads from an epoch of `num_batches`."""
        if self.pad:
            return -(-num_batches // self.count)
        return num_batches // self.count
