"""Process workers share the dataset's large buffers instead of copying them per worker:
they map one read-only copy in shared memory, the main process's own arrays move onto the
same pages, changes between epochs are shipped once, and nothing is left behind."""

from __future__ import annotations

import doctest
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from shared_datasets import (
    MIB,
    EditsArrayInPlace,
    HoldsArray,
    ManyArrays,
    Nested,
    Paths,
    ReplacesArray,
    WritesItsArray,
)

import prefetch

HERE = str(Path(__file__).parent)
SEGMENT = "memfd:prefetch-dataset"


def _segment_maps(pid: int) -> list[dict]:
    """The dataset-segment mappings of a process, from /proc/PID/smaps: range, inode, Rss, Pss (kB)."""
    out: list[dict] = []
    current: dict | None = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                current = None
                if SEGMENT in line:
                    lo, hi = (int(v, 16) for v in head[0].split("-"))
                    current = {"lo": lo, "hi": hi, "inode": int(head[4]), "perms": head[1]}
                    out.append(current)
            elif current is not None and head[0] in ("Rss:", "Pss:"):
                current[head[0][:-1].lower()] = int(head[1])
    return out


def _private_kib(pid: int) -> int:
    """Memory of the process no other process maps (a copy of the dataset would be here),
    leaving out prefetch's segments: their pages are the one shared copy even where only this
    process happens to have touched them (smaps calls those private too)."""
    total, ours = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping's first line
                ours = "memfd:prefetch" in line
            elif head in ("Private_Clean:", "Private_Dirty:") and not ours:
                total += int(line.split()[1])
    return total


def _dataset_fds() -> list[int]:
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("/" + SEGMENT):
                out.append(int(name))
        except OSError:
            pass
    return out


def _part_sums(ds: HoldsArray, plus: float = 0.0) -> list[float]:
    part = len(ds.x) // ds.n
    return [float((np.arange(i * part, (i + 1) * part, dtype=np.float64) + plus).sum()) for i in range(ds.n)]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_workers_map_the_dataset_array_instead_of_unpickling_a_copy(method, no_leaks):
    ds = HoldsArray(mib=64, n=8)
    x = ds.x
    address = x.ctypes.data
    with prefetch.Loader(ds, workers=2, executor="process", start_method=method) as loader:
        batches = list(loader)
        assert [b[1] for b in batches] == _part_sums(ds)
        pids = {int(b[0]) for b in batches}
        assert os.getpid() not in pids
        for pid in pids:
            # (a forked worker also inherits the main process's mappings of it)
            maps = [m for m in _segment_maps(pid) if m["perms"].startswith("r--")]
            assert sum(m["hi"] - m["lo"] for m in maps) >= 64 * MIB, f"worker {pid} maps no read-only dataset"
            # a private copy would be 64 MiB of anonymous memory in the worker
            assert _private_kib(pid) < 40 * 1024, f"worker {pid} holds {_private_kib(pid)} kB of its own"
            touched = sum(m.get("rss", 0) for m in maps)
            shared_pss = sum(m.get("pss", 0) for m in maps)
            assert touched > 0 and shared_pss < touched, "the pages a worker read are shared with others"
        # The main process's own array now lies on the segment's pages: same object, address, values.
        assert ds.x is x and x.ctypes.data == address
        inner = address + 8 * 4096
        assert any(m["lo"] <= inner < m["hi"] for m in _segment_maps(os.getpid()))
        assert x[12345] == 12345.0 and x.flags.writeable
    assert _dataset_fds() == []


@pytest.mark.timeout(60)
def test_writing_to_a_shared_array_in_a_worker_raises_a_clear_error(no_leaks):
    with prefetch.Loader(WritesItsArray(mib=2, n=4), workers=1, executor="process") as loader:
        with pytest.raises(ValueError, match="read-only") as info:
            list(loader)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "share_dataset='copy-on-write'" in notes and "__getitem__(0)" in notes


@pytest.mark.timeout(60)
def test_copy_on_write_lets_each_worker_write_its_own_copy(no_leaks):
    ds = WritesItsArray(mib=2, n=4)
    with prefetch.Loader(ds, workers=2, executor="process", share_dataset="copy-on-write") as loader:
        batches = list(loader)
    assert [b[1] for b in batches] == [-1.0] * 4
    assert ds.x[0] == 0.0 and ds.x[3] == 3.0, "a worker's write never reaches the main process"


@pytest.mark.timeout(60)
def test_private_copies_when_sharing_is_off(no_leaks):
    ds = WritesItsArray(mib=2, n=4)
    with prefetch.Loader(ds, workers=1, executor="process", share_dataset=False) as loader:
        batches = list(loader)
        assert _segment_maps(int(batches[0][0])) == []
    assert [b[1] for b in batches] == [-1.0] * 4 and ds.x[0] == 0.0
    with pytest.raises(ValueError, match="share_dataset"):
        prefetch.Loader(ds, workers=1, executor="process", share_dataset="yes")


@pytest.mark.timeout(90)
def test_an_epoch_hook_that_replaces_the_array_reaches_every_worker_and_frees_the_old_segment(no_leaks):
    ds = ReplacesArray(mib=16, n=8)
    with prefetch.Loader(ds, workers=2, executor="process", max_queue_size=2) as loader:
        first = list(loader)
        assert [b[1] for b in first] == _part_sums(ds)
        second = list(loader)  # on_epoch_end replaced x by x + 1 after the first epoch
        assert [b[1] for b in second] == _part_sums(ds, plus=1.0)
        part = len(ds.x) // ds.n
        assert [b[2] for b in second] == [float(i * part + 1) for i in range(8)]
        assert {int(b[0]) for b in second} == {int(b[0]) for b in first}, "the same workers, synced"
        fds = _dataset_fds()
        assert len(fds) == 1, "only the segment of the state the workers have is kept"
        current = os.fstat(fds[0]).st_ino
        for pid in {int(b[0]) for b in second}:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and {m["inode"] for m in _segment_maps(pid)} != {current}:
                time.sleep(0.05)  # the worker drops the old array when it next runs Python code
            assert {m["inode"] for m in _segment_maps(pid)} == {current}, "the old segment is unmapped"
        for _ in range(5):  # many epochs: descriptors do not grow
            list(loader)
        assert len(_dataset_fds()) == 1
    assert _dataset_fds() == []


@pytest.mark.timeout(60)
def test_the_main_process_editing_its_array_in_place_reaches_workers_next_epoch(no_leaks):
    ds = EditsArrayInPlace(mib=8, n=4)
    x = ds.x
    with prefetch.Loader(ds, workers=2, executor="process") as loader:
        first, second = list(loader), list(loader)
    part = len(x) // 4
    assert [b[2] for b in first] == [float(i * part) for i in range(4)]
    assert [b[2] for b in second] == [float(i * part + 1) for i in range(4)]
    assert ds.x is x and x[0] == 2.0


@pytest.mark.timeout(60)
def test_arrays_inside_containers_and_custom_state_are_shared_read_only(no_leaks):
    with prefetch.Loader(Nested(), workers=1, executor="process") as loader:
        batches = list(loader)
        assert _segment_maps(int(batches[0][0])), "the dict's and list's arrays are in the segment"
    for b in batches:
        assert b[1] == 3 * 2 * MIB and b[2] == 2.0 * (MIB // 4) and b[3] == 0


@pytest.mark.timeout(90)
def test_a_killed_worker_and_close_leave_no_segment_behind(no_leaks):
    ds = HoldsArray(mib=16, n=40)
    with prefetch.Loader(ds, workers=2, executor="process", max_queue_size=4) as loader:
        got = []
        try:
            for k, b in enumerate(loader):
                got.append(b[1])
                if k == 5:
                    victim = next(p for p in psutil.Process().children(recursive=True) if p.pid == int(b[0]))
                    victim.kill()
        except prefetch.WorkerError:
            pass
        else:
            assert got == _part_sums(ds)
        assert [b[1] for b in loader] == _part_sums(ds), "a replacement worker maps the dataset again"
        assert len(_dataset_fds()) == 1
    assert _dataset_fds() == []


@pytest.mark.timeout(60)
def test_ctrl_c_with_a_shared_dataset_leaves_no_process(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {HERE!r})
        import prefetch
        from shared_datasets import HoldsArray
        if __name__ == "__main__":
            loader = prefetch.Loader(HoldsArray(mib=32, n=1000), workers=2, executor="process")
            for k, b in enumerate(loader):
                if k == 3:
                    print(" ".join(str(p.pid) for p in __import__("psutil").Process().children(recursive=True)),
                          flush=True)
                    os.kill(os.getpid(), signal.SIGINT)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50)
    assert "KeyboardInterrupt" in out.stderr, out.stderr[-2000:]
    family = [int(p) for p in out.stdout.split()]
    assert family
    deadline = time.monotonic() + 3
    alive = family
    while time.monotonic() < deadline and alive:
        alive = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.05)
    assert not alive


@pytest.mark.timeout(60)
def test_a_million_paths_packed_cost_workers_no_copy(no_leaks):
    ds = Paths(1_000_000)
    with prefetch.Loader(ds, workers=2, executor="process") as loader:
        batches = list(loader)
        for b in batches:
            assert _segment_maps(int(b[0]))
            assert _private_kib(int(b[0])) < 40 * 1024
    assert [int(b[2]) for b in batches] == [0, 250_000, 500_000, 750_000]
    assert all(b[1] == len("data/000000000.jpg") for b in batches)


@pytest.mark.timeout(60)
def test_stats_show_the_memory_of_the_worker_tree(no_leaks):
    with prefetch.Loader(HoldsArray(mib=32, n=4), workers=2, executor="process") as loader:
        list(loader)
        m = loader.stats.memory()
    assert len(m.workers_mib) == 2 and m.main_mib is not None and m.main_mib > 0
    assert m.shared_dataset_mib >= 32
    assert m.total_mib == pytest.approx(m.main_mib + sum(m.workers_mib.values()))
    assert "workers" in str(m) and "shared memory" in str(m)
    with prefetch.Loader(list(range(4)), workers=2) as threads:
        assert threads.stats.memory().workers_mib == {}


def test_examples_in_the_docstrings_hold():
    import prefetch.engine.process.share as share
    import prefetch.memory as memory
    import prefetch.packed as packed

    for module in (share, memory, packed):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


@pytest.mark.timeout(120)
def test_many_arrays_and_many_syncs_keep_a_booting_worker_to_a_few_segments(no_leaks):
    ds = ManyArrays()
    base = sum(range(40))
    with prefetch.Loader(ds, workers=2, executor="process", max_queue_size=2) as loader:
        for epoch in range(12):  # each epoch's sync ships one replaced array, in a segment of its own
            got = list(loader)
            assert [b[1] for b in got] == [base + epoch] * 4
            pids = {int(b[0]) for b in got}
        assert len(_dataset_fds()) <= 8, "many syncs are compacted into one segment"
        for p in psutil.Process().children(recursive=True):
            if p.pid in pids:
                p.kill()  # replacements boot from the compacted state
        total = []
        try:
            total = list(loader)
        except prefetch.WorkerError:
            total = list(loader)
        assert [b[1] for b in total] == [base + 12] * 4  # (an epoch cut short calls no on_epoch_end)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page tables read from /proc")
def test_whether_remapped_pages_were_written_is_read_from_the_page_tables():
    # What lets an unchanged 512 MiB array be recognised at each epoch's start without
    # comparing 512 MiB: only a page this process wrote, or a mapping no longer in place,
    # sends it to the byte-for-byte comparison.
    import mmap

    from prefetch.engine import shm

    page = mmap.PAGESIZE
    size = 64 * page
    fd = shm.anonymous_fd("prefetch-test", size)
    try:
        os.pwrite(fd, bytes(range(256)) * (size // 256), 0)
        region = mmap.mmap(-1, size + page)  # anonymous memory, as a large malloc block is
        base = np.frombuffer(region, dtype=np.uint8).ctypes.data
        lo = (base + page - 1) // page * page
        hi = lo + 32 * page
        assert not shm.unwritten_since_mapped(lo, hi, fd, page)  # not mapped from fd yet
        shm.map_fd_at(lo, hi - lo, fd, page)
        assert shm.unwritten_since_mapped(lo, hi, fd, page)
        assert not shm.unwritten_since_mapped(lo, hi, fd, 2 * page)  # another part of the file
        view = (np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint8 * (hi - lo)).from_address(lo)))
        assert int(view[5]) == 5 and int(view.sum()) > 0  # read: pages fault in, still the file's
        assert shm.unwritten_since_mapped(lo, hi, fd, page)
        view[page * 3 + 7] = view[page * 3 + 7]  # the same value, written: the page is private now
        assert not shm.unwritten_since_mapped(lo, hi, fd, page)
        del view
        region.close()
    finally:
        os.close(fd)
