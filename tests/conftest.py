from __future__ import annotations

import gc
import os
import threading
import time

import psutil
import pytest


def _prefetch_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("prefetch"))


def _children() -> set[int]:
    # The fork servers (prefetch's and multiprocessing's) and the resource tracker are shared
    # helpers, started once per interpreter and ended with it; they are not workers of ours.
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            # (workers forked by the server inherit its command line, but not its parent)
            helper = any(name in cmd for name in ("multiprocessing.forkserver", "multiprocessing.resource_tracker",
                                                  "prefetch.engine.process.zygote"))
            if helper and p.ppid() == os.getpid():
                continue
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        out.add(p.pid)
    return out


def _shm() -> set[str]:
    # Only our own names: /dev/shm is machine-wide, and other programs (a concurrent test run,
    # torch's DataLoader, multiprocessing's semaphores) come and go there.
    try:
        return {name for name in os.listdir("/dev/shm") if "prefetch" in name}
    except FileNotFoundError:
        return set()


def _memfds() -> set[str]:
    """This process's descriptors of prefetch's anonymous segments (batches, the shared dataset)."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("/memfd:prefetch"):
            out.add(f"{name} -> {target}")
    return out


@pytest.fixture
def no_leaks():
    """Nothing left behind: no prefetch thread, no child process, no /dev/shm entry, no
    descriptor of a shared-memory segment."""
    gc.collect()
    threads, children, shm, memfds = _prefetch_threads(), _children(), _shm(), _memfds()
    yield
    gc.collect()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if _prefetch_threads() == threads and _children() <= children and _shm() <= shm and _memfds() <= memfds:
            break
        time.sleep(0.05)
    assert _prefetch_threads() == threads
    assert _children() <= children, f"child processes left: {_children() - children}"
    assert _shm() <= shm, f"/dev/shm entries left: {_shm() - shm}"
    assert _memfds() <= memfds, f"shared-memory descriptors left: {_memfds() - memfds}"
