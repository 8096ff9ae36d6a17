"""Shared memory for process workers: anonymous segments, fd passing, and zero-copy batches.

Segments are anonymous memory files (`memfd_create` on Linux; elsewhere `shm_open` unlinked
at once) that never have a name in `/dev/shm`: nothing can leak there, even when the main
process is SIGKILLed, and the container's `/dev/shm` size limit does not apply. A worker gets
a segment's file descriptor over its socket (SCM_RIGHTS) and maps it once.

A batch crosses with pickle protocol 5: numpy arrays of at least `MIN_SHARED` bytes are
written by the worker straight into the job's segment as out-of-band buffers, and the main
process rebuilds them as views of its own mapping — no copy on the consumer's side. Each
delivered batch owns a small numpy "holder" array over its segment; when the consumer drops
the last array of the batch, the holder dies and a finalizer returns the segment to the pool.
"""

from __future__ import annotations

import array
import mmap
import os
import pickle
import socket
import weakref
from collections import deque
from typing import Any, Callable

import numpy as np

MIN_SHARED = 32 * 1024  # smaller arrays are cheaper to pickle in-band
_ALIGN = 64
_PAGE = mmap.PAGESIZE


def _align(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


def anonymous_fd(name: str, size: int) -> int:
    """A file descriptor for `size` bytes of shared memory with no name left anywhere."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(name, getattr(os, "MFD_CLOEXEC", 0))
    else:  # pragma: no cover - macOS/BSD: POSIX shm, unlinked before anyone else can see it
        import _posixshmem

        shm_name = f"/{name}-{os.getpid()}-{os.urandom(6).hex()}"
        fd = _posixshmem.shm_open(shm_name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        _posixshmem.shm_unlink(shm_name)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Segment:
    """One shared-memory segment, mapped in this process."""

    __slots__ = ("id", "size", "fd", "mm", "kept", "__weakref__")

    def __init__(self, seg_id: int, size: int):
        self.id = seg_id
        self.size = size
        self.kept = False  # a worker still holds an array in it: never reuse it
        self.fd = anonymous_fd(f"prefetch-{seg_id}", size)
        self.mm = mmap.mmap(self.fd, size)

    def close(self) -> None:
        """Drop our fd and mapping; a mapping still exported to live arrays is left to them."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            self.mm.close()
        except BufferError:
            pass  # arrays of a batch the user still holds keep it mapped until they die


class SegmentPool:
    """Segments for in-flight batches, recycled as the consumer drops batches.

    At most `keep` free segments are kept for reuse (the window size): memory stays bounded
    by the window, plus whatever batches the consumer chooses to hold on to.
    All methods but `release` run on the engine loop; `release` runs wherever the last
    array of a batch dies, so it only appends to a thread-safe deque.
    """

    def __init__(self, keep: int):
        self.keep = keep
        self.size_hint = 0  # bytes one batch's shared arrays took, at most so far
        self.segments: dict[int, Segment] = {}
        self._free: deque[Segment] = deque()
        self._returned: deque[Segment] = deque()
        self._next_id = 0
        self.closed = False
        self.retired: list[int] = []  # ids workers should unmap

    def observe(self, needed: int) -> None:
        if needed > self.size_hint:
            # Round up so batches that vary a little in size reuse segments.
            self.size_hint = -(-int(needed * 1.125) // _PAGE) * _PAGE

    def acquire(self) -> Segment | None:
        """A free segment of at least `size_hint` bytes, or None while batch sizes are unknown."""
        if not self.size_hint or self.closed:
            return None
        self._collect()
        free = self._free
        while free:
            seg = free.popleft()
            if seg.size >= self.size_hint:
                return seg
            self._retire(seg)
        seg = Segment(self._next_id, self.size_hint)
        self._next_id += 1
        self.segments[seg.id] = seg
        return seg

    def release(self, seg: Segment) -> None:
        """Any thread: the batch that used `seg` is gone."""
        self._returned.append(seg)

    def give_back(self, seg: Segment) -> None:
        """On the loop: `seg` was assigned but not used."""
        self._recycle(seg)

    def _recycle(self, seg: Segment) -> None:
        if seg.kept:  # a worker still holds an array in it
            self._retire(seg)
        else:
            self._free.append(seg)

    def _collect(self) -> None:
        returned, free = self._returned, self._free
        while returned:
            self._recycle(returned.popleft())
        while len(free) > self.keep:
            self._retire(free.popleft())

    def _retire(self, seg: Segment) -> None:
        self.segments.pop(seg.id, None)
        self.retired.append(seg.id)
        seg.close()

    def close(self) -> None:
        self.closed = True
        for seg in list(self.segments.values()):
            seg.close()
        self.segments.clear()
        self._free.clear()
        self._returned.clear()


# -- fd passing over a Unix socket -------------------------------------------------------------
def send_fds(sock: socket.socket, fds: list[int]) -> None:
    sock.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def recv_fds(sock: socket.socket, n: int) -> list[int]:
    fds = array.array("i")
    msg, ancdata, _flags, _addr = sock.recvmsg(1, socket.CMSG_SPACE(n * fds.itemsize))
    if not msg:
        raise EOFError("socket closed while receiving file descriptors")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    if len(fds) != n:
        raise RuntimeError(f"expected {n} file descriptors, got {len(fds)}")
    return list(fds)


# -- batches ---------------------------------------------------------------------------------------
def shared_bytes(value: Any) -> int:
    """Bytes the arrays of a batch (a tree of tuple/list/dict) would take in a segment: a
    first size for segments, from batches made before any went through one."""
    if isinstance(value, np.ndarray):
        n = value.nbytes
        return _align(n) if n >= MIN_SHARED else 0
    if isinstance(value, (tuple, list)):
        return sum(shared_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(shared_bytes(v) for v in value.values())
    return 0


def encode(value: Any, segment: np.ndarray | None, used: int = 0, floor: int = 0
           ) -> tuple[bytes, list[tuple[int, int]], int]:
    """Pickle `value`; its large contiguous buffers go into `segment` instead.

    Buffers already inside `segment` (allocated there while the batch was made: its first
    `used` bytes) are referenced where they are; others are copied after them when they fit.
    `floor`: the bytes the batch's own allocations would have needed had they all fitted.
    Returns (pickle bytes, [(offset, nbytes)] of the out-of-band buffers in order, bytes the
    batch needed in all — so the main process can size the next segments).
    """
    placed: list[tuple[int, int]] = []
    offset = needed = used
    capacity = segment.nbytes if segment is not None else 0
    base = segment.ctypes.data if segment is not None else 0

    def place(buf: pickle.PickleBuffer) -> bool:
        nonlocal offset, needed
        try:
            raw = buf.raw()
        except BufferError:  # not contiguous: pickle copies it in-band
            return True
        n = raw.nbytes
        if n < MIN_SHARED:
            return True
        src = np.frombuffer(raw, dtype=np.uint8)
        at = src.ctypes.data - base
        if segment is not None and 0 <= at and at + n <= capacity:
            placed.append((at, n))  # allocated in the segment already: nothing to copy
            return False
        needed = _align(needed) + n
        start = _align(offset)
        if segment is None or start + n > capacity:
            return True  # in-band this time; `needed` makes the next segments big enough
        np.copyto(segment[start:start + n], src)
        placed.append((start, n))
        offset = start + n
        return False

    data = pickle.dumps(value, protocol=5, buffer_callback=place)
    # An array that did not fit is in `floor` already and again among the copies: not twice.
    return data, placed, max(needed, floor)


def decode(data: bytes, seg: Segment | None, placed: list[tuple[int, int]],
           release: Callable[[Segment], None]) -> Any:
    """Rebuild a batch; its arrays view `seg` and hand it back to `release` when all are gone."""
    if not placed:
        return pickle.loads(data)
    assert seg is not None
    end = max(o + n for o, n in placed)
    # One holder per batch: numpy collapses view chains to the first array that owns or
    # borrows memory from a non-array, so every array of the batch keeps `holder` alive.
    holder = np.frombuffer(seg.mm, dtype=np.uint8, count=end)
    fin = weakref.finalize(holder, release, seg)
    fin.atexit = False
    return pickle.loads(data, buffers=[holder[o:o + n] for o, n in placed])


class ControlBlock:
    """One int64 per worker slot, shared: the batch index each worker is inside of (-1: none),
    so a worker that dies names the batch it died on without any message."""

    def __init__(self, slots: int, fd: int | None = None):
        self.size = max(_PAGE, slots * 8)
        self.fd = anonymous_fd("prefetch-control", self.size) if fd is None else fd
        self.mm = mmap.mmap(self.fd, self.size)
        self.slots = np.frombuffer(self.mm, dtype=np.int64)
        if fd is None:
            self.slots[:] = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        del self.slots
        try:
            self.mm.close()
        except BufferError:
            pass

