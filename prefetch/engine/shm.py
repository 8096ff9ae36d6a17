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

Descriptors: a mapping needs no open file descriptor. Segments are mapped with `mmap(2)`
directly (Python's `mmap.mmap` keeps a duplicate descriptor per mapping), and the main
process closes a segment's descriptor as soon as the live workers have theirs, so the
descriptors in use do not grow with the number of batches a consumer holds.

The ownership rule (what the consumer may rely on): memory behind a delivered batch is never
reused or grown into while any array of that batch is alive, in any process; an array the
dataset kept in its worker is never handed over (the consumer gets a copy of it instead).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

MIN_SHARED = 32 * 1024  # bytes; smaller arrays are cheaper to pickle in-band (the allocator's threshold too)
ALIGN = 64  # bytes; every array placed in a segment starts on this boundary (_shmalloc.c: ALIGN, HDR)
_PAGE = mmap.PAGESIZE


def align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


# -- mappings without a descriptor ------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def map_fd(fd: int, size: int, *, populate: bool = False, writable: bool = True, private: bool = False) -> np.ndarray:
    """Map `size` bytes of `fd`; the descriptor may be closed right after.

    Shared and writeable by default; `writable=False` maps it read-only (the array is
    read-only too), `private=True` copy-on-write (writes stay in this process).
    Returns a uint8 array over the whole mapping. Arrays made from it keep the mapping alive;
    it is unmapped when the last of them is collected.
    """
    flags = (mmap.MAP_PRIVATE if private else mmap.MAP_SHARED) | (_POPULATE if populate else 0)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    addr = _libc.mmap(None, size, prot, flags, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of a {size}-byte shared-memory segment failed: {os.strerror(err)}")
    buf = (ctypes.c_uint8 * size).from_address(addr)
    weakref.finalize(buf, _libc.munmap, addr, size).atexit = False
    view = memoryview(buf)
    return np.frombuffer(view if writable else view.toreadonly(), dtype=np.uint8)


_libc.memcmp.restype = ctypes.c_int
_libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]


def same_bytes(a: int, b: int, n: int) -> bool:
    """Whether the `n` bytes at addresses `a` and `b` are equal (memcmp; no copy, no hash)."""
    return _libc.memcmp(a, b, n) == 0


def map_fd_at(addr: int, size: int, fd: int, offset: int) -> None:
    """Map `size` bytes of `fd` from `offset` copy-on-write over this process's memory at
    `addr` (page-aligned), replacing what was mapped there (MAP_FIXED)."""
    got = _libc.mmap(addr, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | getattr(mmap, "MAP_FIXED", 0x10),
                     fd, offset)
    if got != addr:  # pragma: no cover - MAP_FIXED over our own mapping does not fail short of ENOMEM
        err = ctypes.get_errno()
        raise OSError(err, f"mmap at a fixed address failed: {os.strerror(err)}")


def unwritten_since_mapped(lo: int, hi: int, fd: int, offset: int) -> bool:
    """Whether this process's pages [lo, hi) (page-aligned) are still what `map_fd_at` put
    there — `fd`'s pages from `offset`, copy-on-write — and none was written since: the
    mapping is in place (`/proc/self/maps`), and no page of it became private
    (`/proc/self/pagemap`: every page is either not faulted in, or the file's own).
    Reads about 8 bytes per page instead of comparing every byte. False when it cannot tell.
    """
    try:
        inode = os.fstat(fd).st_ino
        with open("/proc/self/maps") as f:
            maps = f.read().splitlines()
        at = lo
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if end <= at or start > at:
                continue
            # the pages here map `fd` at the offset that lines up with `lo`
            if int(fields[2], 16) != offset + (start - lo) or int(fields[4]) != inode or fields[1][3] != "p":
                return False
            at = end
            if at >= hi:
                break
        if at < hi:
            return False
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(lo // _PAGE * 8)
            entries = np.frombuffer(f.read((hi - lo) // _PAGE * 8), dtype=np.uint64)
    except (OSError, ValueError, IndexError):
        return False
    if len(entries) != (hi - lo) // _PAGE:
        return False
    present, swapped, file_page = (entries >> np.uint64(63)) & 1, (entries >> np.uint64(62)) & 1, (entries >> np.uint64(61)) & 1
    return not bool(np.any(swapped | (present & (file_page ^ 1))))


def owner_buffer(view: np.ndarray) -> Any:
    """The object that owns the mapping under `view` (what `holder` arrays are built on)."""
    return view.base


def anonymous_fd(name: str, size: int) -> int:
    """A file descriptor for `size` bytes of shared memory with no name left anywhere."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(name, getattr(os, "MFD_CLOEXEC", 0))
    else:  # pragma: no cover - macOS/BSD: POSIX shm, unlinked before anyone else can see it
        import _posixshmem  # type: ignore[import-not-found]

        shm_name = f"/{name}-{os.getpid()}-{os.urandom(6).hex()}"
        fd = _posixshmem.shm_open(shm_name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        _posixshmem.shm_unlink(shm_name)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def segment_size(needed: int) -> int:
    """The size of a segment for batches whose large arrays take `needed` bytes: rounded up
    so that batches which vary a little in size reuse segments."""
    return -(-int(needed * 1.125) // _PAGE) * _PAGE


class Segment:
    """One shared-memory segment, mapped in this process.

    `fd` is open only until every worker alive when the segment was made has its own copy
    (`drop_fd`); `known` holds the slots of the workers that mapped it — only they may be
    given a job that writes into it. `fd`: one to take over (a segment a worker made)
    instead of making a new one.
    """

    __slots__ = ("__weakref__", "buf", "fd", "id", "kept", "known", "size")

    def __init__(self, seg_id: int, size: int, fd: int | None = None):
        self.id = seg_id
        self.size = size
        self.kept = False  # a worker still holds an array in it: never reuse it
        self.known: set[int] = set()
        self.fd = anonymous_fd(f"prefetch-{seg_id}", size) if fd is None else fd
        try:
            self.buf = owner_buffer(map_fd(self.fd, size))
        except BaseException:
            os.close(self.fd)
            raise

    def drop_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        """Drop our fd and our reference; arrays of a batch the user still holds keep the
        mapping until they die."""
        self.drop_fd()
        self.buf = None


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
        self.retired: list[Segment] = []  # segments the workers that mapped them should unmap

    def observe(self, needed: int) -> None:
        if needed > self.size_hint:
            self.size_hint = segment_size(needed)

    def acquire(self, slot: int) -> tuple[Segment | None, bool]:
        """A free segment of at least `size_hint` bytes that worker `slot` has mapped, or a new
        one (then True: send it to the workers); (None, False) while batch sizes are unknown."""
        if not self.size_hint or self.closed:
            return None, False
        self._collect()
        free = self._free
        for seg in list(free):
            if seg.size < self.size_hint:
                free.remove(seg)
                self._retire(seg)
            elif slot in seg.known:
                free.remove(seg)
                return seg, False
        seg = Segment(self._next_id, self.size_hint)
        self._next_id += 1
        self.segments[seg.id] = seg
        return seg, True

    def adopt(self, fd: int) -> Segment:
        """A segment a worker made for a batch before batch sizes were known: the pool's
        from now on (recycled like any other once that batch is gone). Takes over `fd`."""
        try:
            seg = Segment(self._next_id, os.fstat(fd).st_size, fd=fd)
        except BaseException:
            os.close(fd)
            raise
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
        self.retired.append(seg)
        seg.close()

    def close(self) -> None:
        self.closed = True
        for seg in list(self.segments.values()):
            seg.close()
        self.segments.clear()
        self._free.clear()
        self._returned.clear()


# -- batches ---------------------------------------------------------------------------------------
def shared_bytes(value: Any) -> int:
    """Bytes the arrays of a batch (a tree of tuple/list/dict) would take in a segment: a
    first size for segments, from batches made before any went through one."""
    if isinstance(value, np.ndarray):
        n = value.nbytes
        return align(n) if n >= MIN_SHARED else 0
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
        needed = align(needed) + n
        start = align(offset)
        if segment is None or start + n > capacity:
            return True  # in-band this time; `needed` makes the next segments big enough
        np.copyto(segment[start:start + n], src)
        placed.append((start, n))
        offset = start + n
        return False

    data = pickle.dumps(value, protocol=5, buffer_callback=place)
    # An array that did not fit is in `floor` already and again among the copies: not twice.
    return data, placed, max(needed, floor)


Placed = "tuple[int, int] | bytearray"  # (offset, nbytes) in the segment, or a private copy


def decode(data: bytes, seg: Segment | None, placed: list, release: Callable[[Segment], None]) -> tuple[Any, bool]:
    """Rebuild a batch; its arrays view `seg` and hand it back to `release` when all are gone.

    `placed` lists the out-of-band buffers in order: `(offset, nbytes)` in `seg`, or a
    `bytearray` (a copy the worker made because its dataset kept that array). Returns the
    batch and whether it uses `seg` (if not, the caller recycles `seg` at once).
    """
    spans = [p for p in placed if isinstance(p, tuple)] if placed else ()
    if not spans:
        return pickle.loads(data, buffers=placed), False
    assert seg is not None and seg.buf is not None
    end = max(o + n for o, n in spans)
    # One holder per batch: numpy collapses view chains to the first array that owns or
    # borrows memory from a non-array, so every array of the batch keeps `holder` alive.
    holder = np.frombuffer(seg.buf, dtype=np.uint8, count=end)
    weakref.finalize(holder, release, seg).atexit = False
    buffers = [holder[p[0]:p[0] + p[1]] if isinstance(p, tuple) else p for p in placed]
    return pickle.loads(data, buffers=buffers), True


class ControlBlock:
    """Two int64 per worker slot, shared: the batch index each worker is inside of (-1: none),
    so a worker that dies names the batch it died on without any message; and when that
    `__getitem__` began (`time.monotonic_ns()`, system-wide on Linux), so the main process
    can tell a batch past its timeout. A worker writes `started` before `slots`: a reader
    that sees an index sees that batch's start time (or a later one).

    The creator keeps `fd` (to hand to workers started later); a worker maps it and closes its copy.
    """

    def __init__(self, slots: int, fd: int | None = None):
        self.size = max(_PAGE, slots * 16)
        self.fd = anonymous_fd("prefetch-control", self.size) if fd is None else fd
        words = map_fd(self.fd, self.size).view(np.int64)
        self.slots: np.ndarray | None = words[:slots]
        self.started: np.ndarray | None = words[slots:2 * slots]
        if fd is None:
            self.slots[:] = -1
        else:
            os.close(fd)
            self.fd = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.slots = self.started = None
