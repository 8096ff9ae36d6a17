"""Did the dataset change? A cheap fingerprint of its state, for executors that keep a copy of
it elsewhere (worker processes, a dask cluster) and must resend what the main process changed
between epochs (in `on_epoch_begin` / `on_epoch_end`, or by hand).

The state is pickled with protocol 5 and its array buffers are hashed in place, not copied.
Example:
    >>> class D:
    ...     def __init__(self):
    ...         self.scale = 1
    >>> d = D(); before = fingerprint(d); d.scale = 2
    >>> [name for name, h in fingerprint(d).items() if before[name] != h]
    ['scale']
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from typing import Any

Dumps = Callable[..., bytes]


def digest(value: Any, dumps: Dumps = pickle.dumps) -> bytes:
    """16 bytes that change when `value`'s pickle would; `dumps` must accept `buffer_callback`."""
    h = hashlib.blake2b(digest_size=16)

    def hash_buffer(buf: pickle.PickleBuffer) -> bool:
        try:
            h.update(buf.raw())
        except BufferError:
            return True  # not contiguous: let pickle copy it in-band, hashed below
        return False

    h.update(dumps(value, protocol=5, buffer_callback=hash_buffer))
    return h.digest()


def plain_state(dataset: Any) -> bool:
    """Whether pickling the dataset is pickling its `__dict__` (so attributes can be diffed)."""
    cls = type(dataset)
    return (hasattr(dataset, "__dict__") and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__
            and getattr(cls, "__getstate__", None) in (None, getattr(object, "__getstate__", None))
            and not getattr(cls, "__slots__", ()))


def fingerprint(dataset: Any, dumps: Dumps = pickle.dumps) -> dict[str, bytes] | bytes:
    """Per attribute where the state is the instance dict, else one digest of the whole."""
    if plain_state(dataset):
        return {name: digest(value, dumps) for name, value in vars(dataset).items()}
    return digest(dataset, dumps)

