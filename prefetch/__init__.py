"""prefetch: a framework-agnostic async prefetch engine for Python training loops.

Write a dataset as plain Python (Keras `PyDataset` style: `__len__` = batches,
`__getitem__(i)` = one batch) and iterate it through a `Loader`, which produces batches in
parallel ahead of the training loop — threads, processes with shared memory, coroutines or
a dask cluster — and hands them to Keras, PyTorch or JAX through thin adapters.

Example:
    >>> import numpy as np, prefetch
    >>> class Batches(prefetch.PyDataset):
    ...     def __len__(self):
    ...         return 4
    ...     def __getitem__(self, i):
    ...         return np.full((2, 3), i), np.array([i, i])
    >>> for x, y in prefetch.Loader(Batches(workers=2)):
    ...     pass
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .batchmem import empty
    from .dataset import PyDataset
    from .errors import BatchTimeout, WorkerError
    from .loader import Loader
    from .packed import PackedStrings
    from .randomness import rng
    from .shard import Shard
    from .sources import batched, mix
    from .stats import Stats

__all__ = ["BatchTimeout", "Loader", "PackedStrings", "PyDataset", "Shard", "Stats", "WorkerError", "batched", "empty",
           "mix", "rng"]
__version__ = "0.1.0"


_LAZY = {"Loader": ".loader", "PackedStrings": ".packed", "Stats": ".stats", "empty": ".batchmem",
         "rng": ".randomness", "batched": ".sources", "mix": ".sources", "PyDataset": ".dataset", "Shard": ".shard",
         "BatchTimeout": ".errors", "WorkerError": ".errors"}


def __getattr__(name: str) -> Any:
    # Loaded on first use: a process worker (and the fork server, on the way to a cold first
    # batch) imports prefetch only to run __getitem__, so it starts without the Loader's
    # machinery, nor PyDataset's when its dataset is a plain class.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prefetch' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value
