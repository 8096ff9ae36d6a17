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

from .dataset import PyDataset
from .errors import BatchTimeout, WorkerError
from .shard import Shard

if TYPE_CHECKING:
    from .batchmem import empty
    from .loader import Loader
    from .packed import PackedStrings
    from .randomness import rng
    from .sources import batched, mix
    from .stats import Stats

__all__ = ["BatchTimeout", "Loader", "PackedStrings", "PyDataset", "Shard", "Stats", "WorkerError", "batched", "empty",
           "mix", "rng"]
__version__ = "0.1.0"


_LAZY = {"Loader": ".loader", "PackedStrings": ".packed", "Stats": ".stats", "empty": ".batchmem", "rng": ".randomness",
         "batched": ".sources", "mix": ".sources"}


def __getattr__(name: str) -> Any:
    # Loaded on first use: a process worker, which imports prefetch only to run __getitem__,
    # starts without the Loader's event-loop machinery, and `import prefetch` itself stays light.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prefetch' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value
