"""`prefetch.empty`: allocate a batch's arrays where the consumer will read them.

In a process worker each batch has a shared-memory segment waiting for it. Where the
compiled allocator is installed (`engine/arena.py`), numpy itself already puts large arrays
there and `prefetch.empty` is plain `numpy.empty`; without it, an array made with
`prefetch.empty` inside `__getitem__` is placed in that segment by this module, so handing
the batch over copies nothing either way. Anywhere else (threads, coroutines, serial
iteration, a batch whose size is not known yet) it is plain `numpy.empty`.
"""

from __future__ import annotations

import contextvars
import weakref
from typing import Any, Literal

import numpy as np

from .engine.shm import align

# [segment as a uint8 array, bytes used so far, bytes that did not fit, weakrefs to the arrays
# made] of the batch being produced, in a process worker
_arena: contextvars.ContextVar[list | None] = contextvars.ContextVar("prefetch_arena", default=None)


def empty(shape: Any, dtype: Any = float, order: Literal["C", "F"] = "C") -> np.ndarray:
    """An uninitialised array for the batch being produced, zero-copy across processes.

    Use it for the arrays a `__getitem__` returns (fill it, do not keep it: it belongs to
    the batch). With process workers the array is placed in the batch's shared memory, so
    the 18 MiB image batch a worker builds reaches the training loop without being copied.

    Example:
        >>> import numpy as np, prefetch
        >>> class Images(prefetch.PyDataset):
        ...     def __len__(self):
        ...         return 2
        ...     def __getitem__(self, i):
        ...         out = prefetch.empty((8, 32, 32, 3), np.uint8)
        ...         out[:] = i  # decode images into it
        ...         return out
        >>> [int(b[0, 0, 0, 0]) for b in prefetch.Loader(Images(), executor="process")]
        [0, 1]
    """
    dtype = np.dtype(dtype)
    arena = _arena.get()
    if arena is not None:
        segment, used = arena[0], arena[1]
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        start = align(used)
        if start + n <= segment.nbytes and n > 0:
            arena[1] = start + n
            out = np.ndarray(shape, dtype=dtype, buffer=segment, offset=start, order=order)
            arena[3].append(weakref.ref(out))  # one the dataset keeps is copied out of the batch
            return out
        arena[2] += n  # does not fit (yet): the next segments will be big enough
    return np.empty(shape, dtype=dtype, order=order)


def enter(segment: np.ndarray | None, made: list | None = None) -> Any:
    """Worker side: `empty` allocates from `segment` until `leave`; weak references to the
    arrays it makes are appended to `made`."""
    return _arena.set(None if segment is None else [segment, 0, 0, [] if made is None else made])


def usage() -> tuple[int, int]:
    """(bytes allocated in the segment, bytes all `empty` arrays would have needed) of the
    current batch."""
    arena = _arena.get()
    return (0, 0) if arena is None else (arena[1], arena[1] + arena[2])


def leave(token: Any) -> None:
    _arena.reset(token)
