"""Process workers never hang, never change a batch after delivery, isolate crashes and leave
nothing behind — one regression test per way they used to fail."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from trust_datasets import (
    MB,
    BigInBand,
    CachesBatches,
    CheapArrays,
    Crashes,
    EditsItsCache,
    GrowsItsCache,
    ReusesItsBuffer,
    SlowToLoad,
    Undecodable,
)

import prefetch

HERE = str(Path(__file__).parent)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- 1. both sides sending on one socket -------------------------------------------------------------
@pytest.mark.timeout(60)
def test_cut_short_epoch_with_a_large_sync_and_large_results_does_not_hang(no_leaks):
    with prefetch.Loader(BigInBand(12), workers=1, executor="process", max_queue_size=4) as loader:
        list(loader)  # the worker is up and busy from here on
        for _ in range(3):
            for first, _strings in loader:
                break  # the worker is still sending results while the next epoch's sync goes out
        epoch = list(loader)
    assert len(epoch) == 12
    assert {tag for tag, _ in epoch} == {5}  # the fifth epoch's on_epoch_begin reached the worker
    assert epoch[5][1][0].startswith("5-")


# -- 2. a value the consumer cannot unpickle -----------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["init", "reduce"])
def test_a_batch_that_cannot_be_unpickled_here_fails_as_that_batch(kind, no_leaks):
    with prefetch.Loader(Undecodable(8, bad=3, kind=kind), workers=2, executor="process") as loader:
        got = []
        with pytest.raises(RuntimeError, match="batch 3 was made in process worker") as info:
            for b in loader:
                got.append(b)
        assert got == [0, 1, 2]
        assert "cannot unpickle" in str(info.value)
        assert next(iter(loader)) == 0  # ... for the next epoch


# -- 3. realloc growing into a delivered batch --------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_kept_array_growing_never_overwrites_a_delivered_batch(no_leaks):
    with prefetch.Loader(GrowsItsCache(8), workers=1, executor="process", max_queue_size=2) as loader:
        held = list(loader)  # the consumer holds batch 3 while the dataset grows its cache
    for i, x in enumerate(held):
        assert (x == i).all(), f"batch {i} changed after delivery: {np.unique(x)[:5]}"


# -- 4. aliasing between the dataset and the consumer -------------------------------------------------
@pytest.mark.timeout(60)
def test_a_reused_output_buffer_does_not_change_held_batches(no_leaks):
    with prefetch.Loader(ReusesItsBuffer(10), workers=1, executor="process", max_queue_size=3) as loader:
        for _ in range(2):
            held = list(loader)
            assert [int(x[0]) for x in held] == list(range(10))
            assert all((x == i).all() for i, x in enumerate(held))


@pytest.mark.timeout(60)
def test_the_dataset_editing_its_cache_later_does_not_reach_delivered_batches(no_leaks):
    with prefetch.Loader(EditsItsCache(10), workers=1, executor="process", max_queue_size=3) as loader:
        for _ in range(2):
            held = list(loader)
            assert all((x == i).all() for i, x in enumerate(held)), [int(x[0]) for x in held]


@pytest.mark.timeout(60)
def test_the_consumers_writes_do_not_reach_the_datasets_cache(no_leaks):
    with prefetch.Loader(CachesBatches(8), workers=1, executor="process", max_queue_size=3) as loader:
        for x in loader:
            x -= 100  # the consumer owns its batch
        again = list(loader)  # the worker returns its cached arrays again
    assert [int(x[0]) for x in again] == list(range(8))


# -- 5. crash isolation by default ----------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["segfault", "exit"])
def test_a_crash_in_the_very_first_batch_raises_worker_error_by_default(how, no_leaks):
    with prefetch.Loader(Crashes(6, how=how, at=0), workers=2, executor="process") as loader:
        with pytest.raises(prefetch.WorkerError, match="batch 0") as info:
            list(loader)
    assert info.value.index == 0
    assert info.value.exitcode == (-signal.SIGSEGV if how == "segfault" else 3)


@pytest.mark.timeout(30)
def test_a_value_that_cannot_be_pickled_fails_from_the_first_batch(no_leaks):
    with prefetch.Loader(Crashes(6, how="unpicklable", at=0), workers=2, executor="process") as loader:
        with pytest.raises(Exception, match="__getitem__\\(0\\)|pickle") as info:
            list(loader)
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "__getitem__(0)" in notes


# -- 6. orphans ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_parent_killed_mid_getitem_leaves_no_process(method):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {HERE!r})
        import prefetch
        from trust_datasets import SleepsForever
        if __name__ == "__main__":
            loader = prefetch.Loader(SleepsForever(), workers=2, executor="process", start_method={method!r})
            it = iter(loader)
            print("ready", flush=True)
            next(it)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 10
    family: list = []
    while time.monotonic() < deadline:  # the workers, inside __getitem__ by now
        family = psutil.Process(proc.pid).children(recursive=True)
        if len(family) >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.3)
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(family) >= 2
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 3
    alive = family
    while time.monotonic() < deadline and alive:
        alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.05)
    assert not alive, [p.cmdline() for p in alive]


# -- 7. descriptors ------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_held_batches_cost_no_file_descriptors(no_leaks):
    with prefetch.Loader(CheapArrays(4), workers=2, executor="process") as warm_up:
        list(warm_up)  # the fork server (one socket for the whole process) is running now
    before = _fds()
    with prefetch.Loader(CheapArrays(400), workers=2, executor="process", max_queue_size=10) as loader:
        held = list(loader)  # 400 batches in shared memory, all held
        during = _fds()
        assert all((x == i).all() for i, x in enumerate(held))
    assert during - before < 40, f"{during - before} descriptors for 400 held batches"
    assert _fds() - before <= 2  # close() released its descriptors, batches still held
    assert all((x == i).all() for i, x in enumerate(held))  # and the batches stay valid


@pytest.mark.timeout(120)
def test_holding_many_batches_works_under_a_small_descriptor_limit():
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {HERE!r})
        import prefetch
        from trust_datasets import CheapArrays
        if __name__ == "__main__":
            resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
            with prefetch.Loader(CheapArrays(1000), workers=2, executor="process") as loader:
                held = list(loader)  # a replay buffer: 1000 shared-memory batches, all held
            assert all(int(x[0]) == i for i, x in enumerate(held))
            print("held", len(held), flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "held 1000" in out.stdout


def test_segments_are_unmapped_once_closed_and_dropped(no_leaks):
    def mapped() -> int:
        with open("/proc/self/maps") as f:
            return sum("memfd:prefetch-" in line and "control" not in line for line in f)

    before = mapped()
    loader = prefetch.Loader(CheapArrays(50), workers=2, executor="process")
    held = list(loader)
    loader.close()
    assert mapped() > before  # the held batches keep their memory ...
    del held
    assert mapped() == before  # ... and nothing else does, though the Loader object lives on
    assert loader.closed


# -- 8. fork while torch is still being imported -----------------------------------------------------------
@pytest.mark.timeout(120)
def test_fork_workers_started_while_torch_imports_do_not_touch_it():
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {HERE!r})
        import prefetch
        from helpers import Arrays
        from prefetch.adapters import torch as pt
        if __name__ == "__main__":
            for _ in range(3):
                loader = prefetch.Loader(Arrays(6), executor="process", workers=2, start_method="fork")
                batches = list(pt.to_torch(loader))
                assert len(batches) == 6, len(batches)
                loader.close()
            print("ok", flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok" in out.stdout


# -- 9. messages -------------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_worker_killed_while_loading_is_named_with_its_batch(tmp_path, no_leaks):
    pid_file = tmp_path / "pids"
    with prefetch.Loader(SlowToLoad(6, str(pid_file)), workers=1, executor="process") as loader:
        it = iter(loader)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (pid_file.exists() and pid_file.read_text().strip()):
            time.sleep(0.02)
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        with pytest.raises(prefetch.WorkerError) as info:
            next(it)
    text = str(info.value)
    assert "batch 0" in text and "SIGKILL" in text and "loading the dataset" in text
    assert "traceback above" not in text


# -- fault injection ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_of_a_random_worker_at_a_random_moment_never_hangs_loses_or_duplicates(no_leaks):
    rnd = random.Random(1234)
    with prefetch.Loader(CheapArrays(4), workers=2, executor="process") as warm_up:
        list(warm_up)  # the fork server (one socket for the whole process) is running now
    fds_before = _fds()
    outcomes = {"whole": 0, "error": 0}
    for trial in range(50):
        n = 40
        # 2 ms batches: a kill lands inside a batch (an error) or between two (nothing lost) alike
        with prefetch.Loader(CheapArrays(n, delay_s=0.002), workers=2, executor="process", max_queue_size=6,
                             ordered=bool(trial % 2)) as loader:
            delay = rnd.uniform(0.0, 0.15)
            got = []
            t0 = time.monotonic()
            killed = False
            try:
                for x in loader:
                    got.append(int(x[0]))
                    if not killed and time.monotonic() - t0 >= delay:
                        workers = [w for w in loader._engine.executor._workers if w.pid]
                        if workers:
                            os.kill(rnd.choice(workers).pid, signal.SIGKILL)
                            killed = True
                    time.sleep(0.002)
                outcomes["whole"] += 1
                assert sorted(got) == list(range(n))
            except prefetch.WorkerError as exc:
                outcomes["error"] += 1
                assert exc.index is not None and exc.index not in got
            assert len(got) == len(set(got)), "a batch was delivered twice"
            again = [int(x[0]) for x in loader]  # the pool is whole again
            assert sorted(again) == list(range(n))
    assert outcomes["error"] > 0
    assert _fds() - fds_before <= 2


@pytest.mark.timeout(60)
def test_a_worker_killed_between_batches_loses_nothing(no_leaks):
    with prefetch.Loader(CheapArrays(30), workers=2, executor="process", max_queue_size=2) as loader:
        got = []
        for x in loader:
            got.append(int(x[0]))
            if len(got) == 5:
                time.sleep(0.3)  # the window is full: both workers sit idle
                executor = loader._engine.executor
                idle = [w for w in executor._workers if executor.control.slots[w.slot] == -1]
                os.kill(idle[0].pid, signal.SIGKILL)
        assert got == list(range(30))
        assert sorted(int(x[0]) for x in loader) == list(range(30))
