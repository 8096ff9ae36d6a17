"""The default collate of `prefetch.batched`: a list of samples becomes one batch of numpy arrays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def stack(samples: Sequence[Any]) -> Any:
    """Stack a list of samples into one batch, keeping the samples' structure.

    Dicts are collated per key, tuples (namedtuples too) and lists per position — as
    `torch.utils.data.default_collate` does — and every leaf is stacked along a new first
    axis: numpy arrays, numbers and anything numpy reads as a numeric array (a PIL image, a
    tensor). Strings, bytes, `None` and other objects stay a plain list.

    Example:
        >>> import numpy as np
        >>> batch = stack([{"x": np.zeros(3), "y": 1}, {"x": np.ones(3), "y": 0}])
        >>> batch["x"].shape, batch["y"].tolist()
        ((2, 3), [1, 0])
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    first = samples[0]
    if isinstance(first, dict):
        return {key: stack([s[key] for s in samples]) for key in first}
    if isinstance(first, (tuple, list)):
        width = len(first)
        if any(len(s) != width for s in samples):
            raise ValueError("samples are sequences of different lengths; pass collate= to batch them yourself")
        columns = [stack([s[j] for s in samples]) for j in range(width)]
        if hasattr(first, "_fields"):  # namedtuple: positional constructor
            return type(first)(*columns)
        return tuple(columns) if isinstance(first, tuple) else columns
    if isinstance(first, np.ndarray):
        return np.stack(samples)
    if isinstance(first, (bool, int, float, complex, np.generic)):
        return np.asarray(samples)
    if isinstance(first, (str, bytes)) or first is None:
        return list(samples)
    if hasattr(first, "__array__") or hasattr(first, "__array_interface__"):
        # PIL images, tensors, other array-likes: one array each, then one stack (the
        # conversion is a copy, so the batch never aliases the source).
        arrays = [np.asarray(s) for s in samples]
        if arrays[0].dtype.kind not in "OSUV":
            return np.stack(arrays)
    return list(samples)
