"""The dataset's large buffers, placed once in shared memory that every worker maps.

A dataset holding a 512 MiB array would otherwise cost 512 MiB per worker (each unpickles
its own copy) plus the pickle the main process keeps to send. Here the dataset is pickled
with protocol 5 and every buffer of at least `SHARE_MIN` bytes goes *out of band*: its bytes
are written once into an anonymous shared-memory segment (`memfd`), and the pickle only
says where (`Piece.buffers`). Workers map the segment — read-only by default, so writing to
a dataset array raises numpy's "assignment destination is read-only"; copy-on-write on
request — and unpickle with those buffers: no worker holds a private copy.

The main process does not keep a second copy either: where an array's memory is a block of
its own (glibc serves every large allocation with a private `mmap`, tagged in the block's
header), the whole pages of that block are remapped in place, copy-on-write, onto the
segment. The array keeps its identity, address and contents; its pages are now the ones the
workers map, until the main process writes to one (that page becomes private again, and the
next epoch's sync sees the change). An array that does not qualify (a view into a larger
block, memory from another allocator, a file mapping) keeps its own memory here.

Change detection is by content, without hashing: a buffer already placed is found again by
its address and length and compared byte for byte (memcmp) with its copy in the segment —
equal: the same reference is sent; different: it is placed anew. For a remapped buffer the
page tables answer first: if its pages are still the segment's and none was written since
(`shm.unwritten_since_mapped`), only the partial pages at its ends are compared. A segment is kept (its
descriptor open, to boot workers later) while the dataset state refers to it, and closed
otherwise; its memory is freed when the last worker's array over it is gone.

Example:
    >>> import numpy as np, pickle
    >>> store = SharedBuffers(remap=False)
    >>> piece = store.pickle({"x": np.arange(300_000)})
    >>> [(length) for _, _, length in piece.buffers]
    [2400000]
    >>> views = store.views([piece])
    >>> value = pickle.loads(piece.data, buffers=[views[s][o:o + n] for s, o, n in piece.buffers])
    >>> int(value["x"][-1]), value["x"].flags.writeable
    (299999, False)
    >>> store.close()
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import mmap
import os
import pickle
import platform
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import shm
from .protocol import Piece

SHARE_MIN = 1 << 20  # bytes: smaller buffers ride inside the pickle (a page table entry is not free either)
_PAGE = mmap.PAGESIZE
_IS_MMAPPED = 0x2  # glibc: the flag bit in a block's size word for a block with an mmap of its own
_HEADER = 2 * ctypes.sizeof(ctypes.c_size_t)  # glibc: a block's header before the pointer malloc returns

@functools.cache
def _glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _address(buf: memoryview) -> int:
    return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data)


class _Segment:
    """One segment of dataset buffers: its descriptor (to send to workers that start later)
    and a read-only mapping here (what buffers are compared with, and warm start reads)."""

    __slots__ = ("fd", "id", "size", "view")

    def __init__(self, seg_id: int, fd: int, size: int):
        self.id = seg_id
        self.fd = fd
        self.size = size
        self.view = shm.map_fd(fd, size, writable=False)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SharedBuffers:
    """Where the dataset's large buffers live (main process side).

    Invariants:
      * `_homes[(address, nbytes)] = (segment id, offset)`: those bytes of this process were
        copied there; they are sent by reference only after memcmp says they still match.
      * a segment in `_segments` has an open descriptor; `release` closes the ones no
        current piece refers to (workers keep their mappings as long as their arrays live).
    """

    def __init__(self, *, remap: bool = True, threshold: int = SHARE_MIN):
        self.remap = remap and _glibc()
        self.threshold = threshold
        self._segments: dict[int, _Segment] = {}
        self._homes: dict[tuple[int, int], tuple[int, int]] = {}
        self._ids = itertools.count()
        self._unwritten: list[tuple[memoryview, _Segment, int]] = []  # (buffer, its segment, offset)
        # (address, nbytes) of a buffer whose whole pages `flush` remapped onto its copy ->
        # (first, end) of those pages: whether they changed is read from the page tables.
        self._remapped: dict[tuple[int, int], tuple[int, int]] = {}

    # -- pickling ---------------------------------------------------------------------------
    def pickle(self, obj: Any) -> Piece:
        """`obj` pickled (protocol 5) with its large buffers by reference to shared segments."""
        return self.pieces([self.dumps(obj)])[0]

    def dumps(self, obj: Any) -> tuple[bytes, list[memoryview]]:
        """First half of `pickle`: the pickle and its large buffers, not placed yet."""
        big: list[memoryview] = []

        def out_of_band(buf: pickle.PickleBuffer) -> bool:
            try:
                raw = buf.raw()
            except BufferError:  # not contiguous: pickle copies it in-band
                return True
            if raw.nbytes < self.threshold:
                return True
            big.append(raw)
            return False

        self.flush()  # buffers are compared with their copies next
        return pickle.dumps(obj, protocol=5, buffer_callback=out_of_band), big

    def pieces(self, dumped: list[tuple[bytes, list[memoryview]]]) -> list[Piece]:
        """Second half: buffers already in a segment (unchanged) by reference; the others
        placed together in one new segment (one descriptor more, whatever their number)."""
        refs = [[self._find(raw) for raw in raws] for _, raws in dumped]
        new = [(i, j) for i, row in enumerate(refs) for j, ref in enumerate(row) if ref is None]
        if new:
            placed = self._place([dumped[i][1][j] for i, j in new])
            for (i, j), ref in zip(new, placed):
                refs[i][j] = ref
        return [Piece(data, [r for r in row if r is not None]) for (data, _), row in zip(dumped, refs)]

    def compact(self) -> None:
        """Forget where buffers are: the next pickles place them all anew, in one segment (when
        many small syncs left many segments: a worker gets one descriptor per segment)."""
        self.flush()
        self._homes.clear()
        self._remapped.clear()

    def _find(self, raw: memoryview) -> tuple[int, int, int] | None:
        addr, n = _address(raw), raw.nbytes
        home = self._homes.get((addr, n))
        if home is None:
            return None
        seg_id, offset = home
        seg = self._segments.get(seg_id)
        if seg is None or not self._unchanged(addr, n, seg, offset):
            return None
        return (seg_id, offset, n)

    def _unchanged(self, addr: int, n: int, seg: _Segment, offset: int) -> bool:
        """Whether the `n` bytes at `addr` still equal their copy at `offset` in `seg`."""
        copy = seg.view.ctypes.data + offset
        pages = self._remapped.get((addr, n))
        if pages is not None:
            lo, hi = pages
            # A 512 MiB array read byte for byte takes ~0.1 s at every epoch's start: its
            # remapped pages are known unchanged from the page tables; only the partial pages
            # at both ends are compared.
            if shm.unwritten_since_mapped(lo, hi, seg.fd, offset + (lo - addr)):
                return (shm.same_bytes(addr, copy, lo - addr)
                        and shm.same_bytes(hi, copy + (hi - addr), addr + n - hi))
        return shm.same_bytes(addr, copy, n)

    def _place(self, raws: list[memoryview]) -> list[tuple[int, int, int]]:
        """Lay `raws` out in one new segment; each starts at the same offset within a page as
        in this process, so its whole pages can be remapped onto the segment's. The bytes are
        copied by `flush()` — at the latest before anything hands the segment out — so that
        the copy runs while the worker processes start."""
        layout, end = [], 0
        for raw in raws:
            offset = _round_up(end, _PAGE) + _address(raw) % _PAGE
            layout.append(offset)
            end = offset + raw.nbytes
        size = max(_round_up(end, _PAGE), _PAGE)
        fd = shm.anonymous_fd("prefetch-dataset", size)
        try:
            seg = _Segment(next(self._ids), fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._segments[seg.id] = seg
        refs = []
        for raw, offset in zip(raws, layout):
            self._homes[(_address(raw), raw.nbytes)] = (seg.id, offset)
            self._unwritten.append((raw, seg, offset))
            refs.append((seg.id, offset, raw.nbytes))
        return refs

    def flush(self) -> None:
        """Copy the buffers placed since the last flush into their segments (and remap this
        process's own blocks onto them)."""
        while self._unwritten:
            raw, seg, offset = self._unwritten.pop(0)
            if seg.fd < 0:
                continue  # released before it was ever sent
            _write_all(seg.fd, raw, offset)
            addr, n = _address(raw), raw.nbytes
            if self.remap and _own_block(addr, n):
                pages = _remap(addr, n, seg.fd, offset)
                if pages is not None:
                    self._remapped[(addr, n)] = pages

    # -- what workers are sent ----------------------------------------------------------------
    def specs(self, pieces: Iterable[Piece]) -> tuple[list[tuple[int, int]], list[int]]:
        """The segments `pieces` refer to: their (id, size) and descriptors, in one order."""
        self.flush()
        ids = sorted({seg_id for p in pieces for seg_id, _, _ in p.buffers})
        segs = [self._segments[i] for i in ids]
        return [(s.id, s.size) for s in segs], [s.fd for s in segs]

    def views(self, pieces: Iterable[Piece]) -> dict[int, np.ndarray]:
        """This process's read-only mappings of the segments `pieces` refer to, by id."""
        self.flush()
        return {seg_id: self._segments[seg_id].view for p in pieces for seg_id, _, _ in p.buffers}

    def release(self, keep: Iterable[Piece]) -> None:
        """Close the segments none of `keep` refers to."""
        used = {seg_id for p in keep for seg_id, _, _ in p.buffers}
        for seg_id in [i for i in self._segments if i not in used]:
            self._segments.pop(seg_id).close()
        self._unwritten = [u for u in self._unwritten if u[1].fd >= 0]
        self._homes = {k: v for k, v in self._homes.items() if v[0] in self._segments}
        self._remapped = {k: v for k, v in self._remapped.items() if k in self._homes}

    @property
    def shared_bytes(self) -> int:
        """Bytes of the segments held for the dataset now."""
        return sum(s.size for s in list(self._segments.values()))  # read from any thread

    def close(self) -> None:
        self.release(())


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _write_all(fd: int, raw: memoryview, offset: int) -> None:
    """(`raw` is a `PickleBuffer.raw()`: one-dimensional bytes.)"""
    done = 0
    while done < len(raw):
        done += os.pwrite(fd, raw[done:], offset + done)


def _own_block(addr: int, nbytes: int) -> bool:
    """Whether [addr, addr+nbytes) lies in a glibc block with an mmap of its own, in
    anonymous private memory: remapping its inner pages cannot touch anything else, and
    `free` unmaps them with the block."""
    if addr % _PAGE != _HEADER:  # such a block starts on a page; the pointer follows its header
        return False
    word = ctypes.c_size_t.from_address(addr - ctypes.sizeof(ctypes.c_size_t)).value
    block = word & ~0x7
    if not word & _IS_MMAPPED or block % _PAGE or block < nbytes + _HEADER:
        return False
    return _anonymous(addr - _HEADER, addr - _HEADER + block)


def _anonymous(lo: int, hi: int) -> bool:
    """Whether [lo, hi) is covered by anonymous, private, read-write mappings."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    at = lo
    for line in lines:
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if end <= at or start > at:
            continue
        if fields[1] != "rw-p" or fields[4] != "0" or len(fields) > 5:
            return False
        at = end
        if at >= hi:
            return True
    return False


def _remap(addr: int, nbytes: int, fd: int, offset: int) -> tuple[int, int] | None:
    """Map the whole pages of [addr, addr+nbytes) copy-on-write onto the segment's copy;
    returns (first, end) of those pages (None: no whole page)."""
    lo = _round_up(addr, _PAGE)
    hi = (addr + nbytes) // _PAGE * _PAGE
    if hi <= lo:
        return None
    shm.map_fd_at(lo, hi - lo, fd, offset + (lo - addr))
    return lo, hi
