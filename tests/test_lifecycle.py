"""Ownership: close(), the context manager and garbage collection end everything."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest
from helpers import Indices

import prefetch


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("prefetch")]


@pytest.mark.parametrize("executor", ["thread", "process", "async"])
def test_close_leaves_no_thread_process_or_segment(executor, no_leaks):
    from helpers import Arrays, AsyncIndices

    ds = AsyncIndices(30) if executor == "async" else Arrays(30) if executor == "process" else Indices(30)
    loader = prefetch.Loader(ds, workers=3, executor=executor)
    assert len(list(loader)) == 30
    assert _prefetch_threads()
    loader.close()
    loader.close()  # idempotent
    assert loader.closed


def test_context_manager_closes_mid_epoch(no_leaks):
    with prefetch.Loader(Indices(1000, delay=0.005), workers=4) as loader:
        for b in loader:
            if b == 2:
                break
        it = iter(loader)
        next(it)
    assert not _prefetch_threads()


def test_garbage_collection_closes_a_forgotten_loader(no_leaks):
    loader = prefetch.Loader(Indices(100), workers=4)
    it = iter(loader)
    next(it)
    del loader, it
    gc.collect()
    deadline = time.monotonic() + 5
    while _prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _prefetch_threads()


def test_close_while_a_thread_is_stuck_in_getitem_warns_instead_of_hanging():
    release = threading.Event()

    class Stuck(Indices):
        def __getitem__(self, i):
            release.wait(30)
            return i

    loader = prefetch.Loader(Stuck(10), workers=2)
    it = iter(loader)
    outcome = []

    def consume():
        try:
            next(it)
        except RuntimeError as exc:  # the loader closed under a waiting consumer: it is told so
            outcome.append(exc)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    time.sleep(0.1)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader.close()
    assert time.perf_counter() - t0 < 5
    assert any("still inside __getitem__" in str(w.message) for w in caught)
    t.join(5)
    assert outcome and "closed" in str(outcome[0])
    release.set()


def test_manual_iteration_of_a_dataset_is_serial():
    before = threading.active_count()
    seen = []

    class Where(Indices):
        def __getitem__(self, i):
            seen.append(threading.current_thread())
            return i

    ds = Where(5, workers=8)
    assert list(ds) == list(range(5))
    assert ds[3] == 3
    assert set(seen) == {threading.current_thread()}
    assert threading.active_count() == before


@pytest.mark.timeout(60)
def test_interpreter_exit_with_an_open_loader_mid_epoch_is_prompt():
    script = textwrap.dedent("""
        import sys, time
        sys.path.insert(0, %r)
        import prefetch
        from helpers import Indices
        if __name__ == "__main__":
            for executor in ("thread", "process"):
                loader = prefetch.Loader(Indices(10**6, delay=0.01), workers=2, executor=executor)
                it = iter(loader)
                next(it)
            print("exiting", flush=True)
    """ % str(__import__("pathlib").Path(__file__).parent))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "exiting" in out.stdout
    assert time.perf_counter() - t0 < 15
    assert "Traceback" not in out.stderr, out.stderr
