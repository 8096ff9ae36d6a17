"""Structure-keeping helpers shared by the adapters (no framework imports here)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

# numpy dtype kinds no tensor library holds: objects, byte and unicode strings, datetimes.
# Leaves of these kinds pass through as numpy, as torch's `default_convert` does.
_NON_NUMERIC_KINDS = frozenset("OSUMm")


def is_array_leaf(x: Any) -> bool:
    """A numpy array or scalar a framework can hold (numbers and booleans)."""
    return isinstance(x, (np.ndarray, np.generic)) and x.dtype.kind not in _NON_NUMERIC_KINDS


def map_structure(fn: Callable[[Any], Any], batch: Any) -> Any:
    """Apply `fn` to every leaf of a batch, keeping tuples (namedtuples too), lists and dicts.

    Anything that is not a tuple, list or dict is a leaf, so `fn` decides what to do with
    arrays, scalars, strings and `None`.
    """
    if isinstance(batch, dict):
        items = [(k, map_structure(fn, v)) for k, v in batch.items()]
        try:
            return type(batch)(items)
        except TypeError:  # a dict subclass with another constructor (defaultdict)
            return dict(items)
    if isinstance(batch, tuple):
        values = [map_structure(fn, v) for v in batch]
        if hasattr(batch, "_fields"):  # namedtuple: positional constructor
            return type(batch)(*values)
        return type(batch)(values) if type(batch) is not tuple else tuple(values)
    if isinstance(batch, list):
        return [map_structure(fn, v) for v in batch]
    return fn(batch)
