"""JAX adapter: a `prefetch.Loader`'s numpy batches as `jax.Array` trees, already on device.

`import prefetch.adapters.jax` does not import JAX; `to_jax` does.

Leaf conversion (the structure is walked with `jax.tree_util`, so tuples, namedtuples, lists,
dicts and registered pytrees are kept; `None` stays `None`):

- numpy arrays and scalars, and `jax.Array` leaves, are put on the device (or `sharding`)
  with `jax.device_put`, which returns at once and copies in the background.
- everything else passes through unchanged: Python numbers (they usually are static values
  such as a step or a flag, not data), strings, and numpy arrays of strings, objects or
  datetimes, which JAX cannot hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ._tree import converted_ahead, is_array_leaf

if TYPE_CHECKING:
    import jax

__all__ = ["JaxBatches", "to_jax"]


class JaxBatches:
    """An iterable over a loader's epochs with `jax.Array` leaves on device; see `to_jax`."""

    def __init__(self, loader: Iterable[Any], device_prefetch: int = 2,
                 sharding: jax.sharding.Sharding | jax.Device | None = None):
        if isinstance(device_prefetch, bool) or not isinstance(device_prefetch, int):
            raise TypeError(f"device_prefetch must be an int >= 0, got {device_prefetch!r}")
        if device_prefetch < 0:
            raise ValueError(f"device_prefetch must be >= 0, got {device_prefetch}")
        self.loader = loader
        self.device_prefetch = device_prefetch
        self.sharding = sharding
        self._global: bool | None = None  # a Sharding across processes: decided at the first batch

    def __len__(self) -> int:
        """Batches per epoch: `len(loader)`; `TypeError` when the loader is infinite."""
        return len(self.loader)  # type: ignore[arg-type]

    def put(self, batch: Any) -> Any:
        """Start moving one batch's array leaves to the device; returns without waiting."""
        import jax

        leaves, treedef = jax.tree_util.tree_flatten(batch)
        where = [i for i, leaf in enumerate(leaves) if is_array_leaf(leaf) or isinstance(leaf, jax.Array)]
        if not where:
            return batch
        arrays = [leaves[i] for i in where]
        if self._global is None:
            self._global = isinstance(self.sharding, jax.sharding.Sharding) and jax.process_count() > 1
        if self._global:
            # Each host holds only its own rows: assemble the global array from the
            # process-local parts instead of copying one host's data everywhere.
            placed = [jax.make_array_from_process_local_data(self.sharding, np.asarray(a)) for a in arrays]
        else:
            # One call for the whole batch: the transfers are dispatched together.
            placed = jax.device_put(arrays, self.sharding)
        for i, a in zip(where, placed):
            leaves[i] = a
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def __iter__(self) -> Iterator[Any]:
        return converted_ahead(self.loader, self.put, self.device_prefetch)

    def __repr__(self) -> str:
        return f"JaxBatches({self.loader!r}, device_prefetch={self.device_prefetch}, sharding={self.sharding!r})"


def to_jax(loader: Iterable[Any], device_prefetch: int = 2,
           sharding: jax.sharding.Sharding | jax.Device | None = None) -> JaxBatches:
    """Iterate a loader's batches as `jax.Array` trees, put on device ahead of use.

    Each `iter()` of the result is one epoch of `loader` (a `prefetch.Loader`, or any
    iterable of numpy batches); `len()` is `len(loader)`.

    Args:
        loader: usually a `prefetch.Loader`.
        device_prefetch: how many batches beyond the one in use are already on their way to
            the device; `0` puts each batch when it is asked for. Each costs device memory.
        sharding: a `jax.sharding.Sharding` (or a `jax.Device`) for every array leaf;
            `None` is the default device. With several JAX processes, each process's batch
            is its local part and the global arrays are built with
            `jax.make_array_from_process_local_data(sharding, part)`.

    Example:
        >>> import numpy as np, prefetch
        >>> from prefetch.adapters.jax import to_jax
        >>> class Squares(prefetch.PyDataset):
        ...     def __len__(self):
        ...         return 3
        ...     def __getitem__(self, i):
        ...         return {"x": np.full((2, 2), i * i, np.float32)}
        >>> with prefetch.Loader(Squares()) as loader:
        ...     [float(b["x"].sum()) for b in to_jax(loader, device_prefetch=2)]
        [0.0, 4.0, 16.0]
    """
    return JaxBatches(loader, device_prefetch=device_prefetch, sharding=sharding)
