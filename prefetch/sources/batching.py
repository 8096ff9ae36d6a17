"""`prefetch.batched`: a sample-level source (torch `Dataset`, HF `datasets.Dataset`, numpy
array, list of paths...) as a batch-level dataset, with per-epoch sample shuffling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..dataset import PyDataset
from ..randomness import current_batch
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
        order = self._orders.get((seed, epoch, n), lambda: sample_permutation(n, seed, epoch))
        return order[start:stop]

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

    With `Loader(shard=Shard(k, N))` each host reads every N-th batch of each epoch's
    permutation: disjoint samples, and the same number of batches on every host. For the same
    number of *samples* on every host, every batch must be full: use `drop_last=True` (or a
    batch size that divides the samples); otherwise the one smaller batch goes to one host.

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
