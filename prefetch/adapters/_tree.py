"""Structure-keeping helpers shared by the adapters (no framework imports here)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

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


def converted_ahead(loader: Any, convert: Callable[[Any], Any], depth: int) -> Iterator[Any]:
    """One epoch of `loader`, each batch passed through `convert` `depth` batches ahead of use.

    Converting ahead issues device transfers for the next batches before the current one is
    handed out, so they overlap the training step. A `break` in the training loop ends the
    loader's epoch now, not at garbage collection, so the next epoch starts clean and whole.
    """
    epoch = iter(loader)
    try:
        ahead: deque[Any] = deque()
        for batch in epoch:
            ahead.append(convert(batch))
            if len(ahead) > depth:
                yield ahead.popleft()
        while ahead:
            yield ahead.popleft()
    finally:
        close = getattr(epoch, "close", None)
        if close is not None:
            close()
