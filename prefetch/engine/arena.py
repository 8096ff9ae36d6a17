"""Worker side: numpy's large allocations inside `__getitem__` go straight into the batch's
shared-memory segment (see `_shmalloc.c`), so a batch built with plain numpy crosses to the
consumer without being copied.

Optional: without the compiled `_shmalloc` (no C compiler at install time, or
`PREFETCH_SHM_ALLOCATOR=0`), `available` is False and large arrays are copied into shared
memory when the batch is encoded instead.

Safety: a segment is recycled for a later batch only if no array the worker allocated in it
is still alive once the batch is encoded. A dataset that keeps such an array (a cache, say)
marks the segment as kept: the main process retires it instead of reusing it, the worker
keeps it mapped until the array dies, and the consumer gets a copy of whatever part of the
batch lies in kept memory (`live_ranges`), so neither side can change the other's data.
Blocks grow in place only in the segment of the batch being made (never under a consumer).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .shm import ALIGN, MIN_SHARED

try:
    if os.environ.get("PREFETCH_SHM_ALLOCATOR", "1") == "0":
        raise ImportError("disabled by PREFETCH_SHM_ALLOCATOR=0")
    from . import _shmalloc as _native  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the install
    _native = None


def _numpy_c_api() -> Any:
    try:
        from numpy._core import _multiarray_umath as m  # type: ignore[attr-defined]  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import _multiarray_umath as m  # type: ignore[no-redef]
    return m._ARRAY_API


available = False
if _native is not None:
    try:
        if getattr(_native, "ALIGN", None) != ALIGN:
            raise ImportError("the compiled allocator was built for another alignment: rebuild it")
        _native.bind(_numpy_c_api())
        _native.set_threshold(MIN_SHARED)  # what is smaller is pickled in-band anyway
        available = True
    except Exception:  # noqa: BLE001 - an unexpected numpy build or a stale build: fall back to copying
        available = False

HANDLER_NAME = "prefetch_shared_memory"



def enable() -> None:
    """In a worker process, before its first batch: children it forks later (a library's
    helper process started inside __getitem__) must neither write into nor free blocks of the
    segments they share with it. Only here: the forkserver imports this module too, and the
    workers it forks must not start detached."""
    if available and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_native.detach)


def register(segment: np.ndarray) -> None:
    """A segment this worker mapped (a uint8 array over the whole mapping)."""
    if available:
        _native.register(segment.ctypes.data, segment.nbytes)


def unregister(segment: np.ndarray) -> int:
    """Forget a segment before unmapping it; returns how many arrays in it are still alive
    (then it stays registered and must stay mapped)."""
    return _native.unregister(segment.ctypes.data) if available else 0


def live(segment: np.ndarray) -> int:
    """Arrays allocated in `segment` and still alive."""
    return _native.live(segment.ctypes.data) if available else 0


def live_ranges(segment: np.ndarray) -> list[tuple[int, int]]:
    """(offset, bytes) of every block in `segment` still in use: memory the dataset kept."""
    return _native.used_blocks(segment.ctypes.data) if available else []


class Placement:
    """Around one `__getitem__`: numpy places large new arrays in `segment`."""

    __slots__ = ("active", "previous")

    def __init__(self, segment: np.ndarray | None):
        self.previous = None
        self.active = available and segment is not None and _native.begin(segment.ctypes.data)
        if self.active:
            self.previous = _native.install()

    def finish(self) -> tuple[int, int, int]:
        """Stop placing; (bytes in use, peak bytes, bytes the segment would have needed to
        hold every large allocation — more than its size when some did not fit)."""
        if not self.active:
            return 0, 0, 0
        self.active = False
        _native.restore(self.previous)
        self.previous = None
        return _native.end()
