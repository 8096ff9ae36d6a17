"""`prefetch.batched`: a sample-level source (torch `Dataset`, HF `datasets.Dataset`, numpy
array, list of paths...) as a batch-level dataset, with per-epoch sample shuffling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..dataset import PyDataset
from ..randomness import current_batch, enter_batch, exit_batch
from ..shard import Shard
from .cache import Memo
from .collate import stack

# Domain separation from the Loader's batch-order shuffle and from prefetch.rng().
_SAMPLE_DOMAIN = 0x5EED_0010


def sample_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the samples in epoch `epoch` of a loader seeded `seed`.

    Every worker computes it once per epoch: about 0.1 s and 4 MB per million samples.
    """
    order = np.arange(num_samples, dtype=np.int32 if num_samples < 2**31 else np.int64)
    np.random.default_rng((_SAMPLE_DOMAIN, seed, epoch)).shuffle(order)
    return order


class Batched(PyDataset):
    """Batches of a sample-level source; see `prefetch.batched`."""

    def __init__(self, samples: Any, batch_size: int, *, collate: Callable[[list], Any] | None = None,
                 drop_last: bool = False, shuffle: bool = False):
        super().__init__()
        cls = type(samples)
        if not (callable(getattr(cls, "__getitem__", None)) and callable(getattr(cls, "__len__", None))):
            raise TypeError(f"samples must have __len__ and __getitem__(k); {cls.__name__} has not")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if collate is not None and not callable(collate):
            raise TypeError(f"collate must be callable, got {type(collate).__name__}")
        self.samples = samples
        self.batch_size = batch_size
        self.collate = collate
        self.drop_last = bool(drop_last)
        self.shuffle = bool(shuffle)
        self._orders = Memo(size=2)  # the permutation of the current (and the previous) epoch

    def __len__(self) -> int:
        n = len(self.samples)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def permutation(self, seed: int, epoch: int) -> np.ndarray:
        """The sample order of epoch `epoch` of a Loader seeded `seed` (computed once per epoch)."""
        n = len(self.samples)
        return self._orders.get((seed, epoch, n), lambda: sample_permutation(n, seed, epoch))

    def __prefetch_shard__(self, shard: Shard) -> BatchedShard:
        """This host's part at sample level: what `Loader(shard=...)` runs instead of
        splitting the batches (see `BatchedShard`)."""
        return BatchedShard(self, shard)

    def indices(self, index: int, *, seed: int | None = None, epoch: int = 0) -> np.ndarray:
        """The sample indices batch `index` holds in epoch `epoch` of a Loader seeded `seed`
        (with `seed=None`, or without `shuffle`: the source's own order).

        Example:
            >>> import prefetch
            >>> ds = prefetch.batched(list(range(10)), 4, shuffle=True)
            >>> ds.indices(2).tolist()
            [8, 9]
            >>> sorted(sum((ds.indices(i, seed=0, epoch=1).tolist() for i in range(3)), []))
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        """
        n = len(self.samples)
        batches = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        if index < 0:
            index += batches
        if not 0 <= index < batches:
            raise IndexError(f"batch index {index} out of range for {batches} batches")
        start = index * self.batch_size
        stop = min(start + self.batch_size, n)
        if not self.shuffle or seed is None:
            return np.arange(start, stop)
        return self.permutation(seed, epoch)[start:stop]

    def __getitem__(self, index: int) -> Any:
        # The Loader's (seed, epoch) for this batch; outside a Loader, the source's order.
        where = current_batch()
        if where is None:
            keys = self.indices(index)
        else:
            keys = self.indices(index, seed=where[0], epoch=where[1])
        return self.fetch(keys)

    def fetch(self, keys: np.ndarray) -> Any:
        """Read these samples and collate them into one batch."""
        samples = self.samples
        if self.collate is None and isinstance(samples, np.ndarray):
            return samples[keys]  # one fancy-indexing copy is the whole batch, already stacked
        ks = keys.tolist()  # plain ints: what HF datasets and torch Subset expect
        getitems = getattr(samples, "__getitems__", None)
        if getitems:  # as torch's DataLoader fetcher: one call for the batch when offered
            items = getitems(ks)
        else:
            items = [samples[k] for k in ks]
        return (self.collate or stack)(items)

    def __repr__(self) -> str:
        return (f"batched({type(self.samples).__name__} of {len(self.samples)}, batch_size={self.batch_size}, "
                f"drop_last={self.drop_last}, shuffle={self.shuffle})")


def samples_per_host(num_samples: int, count: int, drop_last: bool) -> int:
    """Samples each of `count` hosts reads per epoch: the order padded by wrapping around to a
    multiple of `count` (`drop_last=False`), or cut to one (`drop_last=True`)."""
    return num_samples // count if drop_last else -(-num_samples // count)


class BatchedShard(PyDataset):
    """One host's part of a `Batched` at sample level, as torch's `DistributedSampler` cuts it.

    Every host computes the epoch's global sample order (the permutation of the Loader's seed
    and epoch with `shuffle=True`, else the source's order). With `drop_last=False` it is
    padded by wrapping around to a multiple of the host count `N` (every host reads
    `ceil(S / N)` samples: the first `ceil(S / N) * N - S` samples of the order are read twice
    in the epoch, once on each of two hosts); with `drop_last=True` it is cut to a multiple of
    `N`. Host `j` reads global positions `j, j + N, j + 2N, ...` and batches them in that order:
    every host has the same samples and batches count, its last batch smaller unless
    `drop_last` (which also drops it). `Shard.pad` plays no part: `drop_last` decides.

    `prefetch.rng()` inside the batch sees the global batch number `i * N + j` (host `j`'s
    batch `i`), so no two hosts draw the same numbers.

    Example:
        >>> import prefetch
        >>> ds = prefetch.batched(list(range(10)), 2)
        >>> parts = [ds.__prefetch_shard__(prefetch.Shard(j, 3)) for j in range(3)]
        >>> [[part.indices(i).tolist() for i in range(len(part))] for part in parts]
        [[[0, 3], [6, 9]], [[1, 4], [7, 0]], [[2, 5], [8, 1]]]
    """

    def __init__(self, whole: Batched, shard: Shard):
        super().__init__()
        if not isinstance(shard, Shard):
            raise TypeError(f"shard must be a prefetch.Shard, got {type(shard).__name__}")
        self.whole = whole
        self.shard = shard

    def _sizes(self) -> tuple[int, int, int]:
        """(samples of the source, samples of this host, batches of this host)."""
        whole = self.whole
        n = len(whole.samples)
        mine = samples_per_host(n, self.shard.count, whole.drop_last)
        batches = mine // whole.batch_size if whole.drop_last else -(-mine // whole.batch_size)
        return n, mine, batches

    def __len__(self) -> int:
        return self._sizes()[2]

    def indices(self, index: int, *, seed: int | None = None, epoch: int = 0) -> np.ndarray:
        """The sample indices this host's batch `index` holds in epoch `epoch` of a Loader
        seeded `seed` (as `Batched.indices`)."""
        n, mine, batches = self._sizes()
        if index < 0:
            index += batches
        if not 0 <= index < batches:
            raise IndexError(f"batch index {index} out of range for {batches} batches")
        size = self.whole.batch_size
        local = np.arange(index * size, min(index * size + size, mine))
        positions = self.shard.index + self.shard.count * local
        if n:
            positions %= n  # the padding wraps around to the start of the order
        if not self.whole.shuffle or seed is None:
            return positions
        return self.whole.permutation(seed, epoch)[positions]

    def __getitem__(self, index: int) -> Any:
        where = current_batch()
        if where is None:
            return self.whole.fetch(self.indices(index))
        seed, epoch = where[0], where[1]
        keys = self.indices(index, seed=seed, epoch=epoch)
        if index < 0:
            index += len(self)
        token = enter_batch(seed, epoch, index * self.shard.count + self.shard.index)
        try:
            return self.whole.fetch(keys)
        finally:
            exit_batch(token)

    def on_epoch_begin(self) -> None:
        self.whole.on_epoch_begin()

    def on_epoch_end(self) -> None:
        self.whole.on_epoch_end()

    def __repr__(self) -> str:
        return f"{self.whole!r}.__prefetch_shard__({self.shard!r})"


def batched(samples: Any, batch_size: int, *, collate: Callable[[list], Any] | None = None,
            drop_last: bool = False, shuffle: bool = False) -> Batched:
    """A batch-level dataset over a sample-level source, for `prefetch.Loader` like any other.

    `samples` is any map-style source: `__len__` and `__getitem__(k)` for one sample
    (a `torch.utils.data.Dataset`, a Hugging Face `datasets.Dataset`, a numpy array, a list
    of file names with a decoding `__getitem__`...). Batch `i` reads its samples with one
    `samples.__getitems__(keys)` call when the source has one (torch and HF datasets do),
    else one `samples[k]` at a time, and passes the list to `collate` (default: stack the
    numpy leaves of the samples' dicts/tuples/lists, see `prefetch.sources.stack`; any
    callable works, e.g. `torch.utils.data.default_collate`). A numpy array with the default
    collate is read with one fancy-indexing copy.

    Each sample is in exactly one batch per epoch; the last batch is smaller when the
    batch size does not divide the samples, or left out with `drop_last=True`.

    `shuffle=True` permutes the *samples* every epoch, from the Loader's `seed` and the
    epoch: batch `i` holds different samples each epoch, the same ones on every executor and
    worker count, and a resumed Loader (`load_state_dict`) continues the same permutation.
    (The Loader's own `shuffle=True` only reorders whole batches; it is not needed on top.)
    Iterated by hand outside a Loader (`ds[i]`, `for b in ds`), there is no seed or epoch:
    the batches follow the source's order; `ds.indices(i, seed=s, epoch=e)` tells which
    samples batch `i` holds in epoch `e` of a Loader seeded `s`.

    With `Loader(shard=Shard(j, N))` the dataset is sharded at *sample* level, as torch's
    `DistributedSampler` does it (the Loader runs `ds.__prefetch_shard__(shard)`, a
    `BatchedShard`, and splits no batches itself): host `j` reads positions `j, j + N, ...` of
    each epoch's sample order and batches them, so every host reads the same number of samples
    and of batches. With `drop_last=False` the order is first padded by wrapping around to a
    multiple of `N` — every sample is read at least once per epoch across the hosts, and the
    first `ceil(S / N) * N - S` samples of the order (fewer than `N`) a second time, as with
    torch; when `N` divides the `S` samples, each exactly once. With `drop_last=True` the order
    is cut to a multiple of `N` and each host's last partial batch is dropped: no sample twice.
    `Shard.pad` plays no part (`drop_last` decides). A state saved mid-epoch resumes on the same
    number of hosts and `pad` (any host's state, the hosts being at the same step); on another number
    only from an epoch boundary (`load_state_dict` raises `ValueError` naming `shard` otherwise).

    Process workers get the source pickled once, with the dataset, as for any dataset.

    Example:
        >>> import numpy as np, prefetch
        >>> images = np.arange(10 * 3).reshape(10, 3)
        >>> ds = prefetch.batched(images, 4, shuffle=True)
        >>> loader = prefetch.Loader(ds, workers=2, seed=0)
        >>> epoch0, epoch1 = [b[:, 0] // 3 for b in loader], [b[:, 0] // 3 for b in loader]
        >>> [len(b) for b in epoch0], sorted(np.concatenate(epoch0).tolist()) == list(range(10))
        ([4, 4, 2], True)
        >>> any(set(a) != set(b) for a, b in zip(epoch0, epoch1))
        True
    """
    return Batched(samples, batch_size, collate=collate, drop_last=drop_last, shuffle=shuffle)
