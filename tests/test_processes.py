"""Process workers: persistence, zero-copy shared memory, crash safety, epoch-state sync."""

from __future__ import annotations

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
from helpers import Arrays, Dies, Indices, Pid, Scaled

import prefetch

HERE = str(Path(__file__).parent)


def test_workers_persist_across_epochs(no_leaks):
    with prefetch.Loader(Pid(40, delay=0.002), workers=2, executor="process") as loader:
        pids = [set(loader) for _ in range(3)]
    assert len(pids[0]) == 2
    assert pids[0] == pids[1] == pids[2]
    assert os.getpid() not in pids[0]


def test_arrays_arrive_in_shared_memory_intact_and_writeable(no_leaks):
    with prefetch.Loader(Arrays(12, shape=(256, 512)), workers=2, executor="process", max_queue_size=4) as loader:
        for epoch in range(2):
            for i, batch in enumerate(loader):
                x = batch["x"]
                assert x.shape == (256, 512) and x.dtype == np.float32
                assert (x == i).all()
                a, (b, label) = batch["pair"][0], batch["pair"][1]
                assert (a == np.arange(3) + i).all() and b == i and label == "label"
                assert (batch["small"] == i).all()
                assert x.flags.writeable
                x[0, 0] = -1  # ours to modify
                if epoch == 1:  # once the first batches sized the segments, big arrays are shared
                    assert _is_shared(x)
                    assert not _is_shared(batch["small"])  # small ones are cheaper pickled


def _is_shared(arr: np.ndarray) -> bool:
    """Whether `arr` lies in one of prefetch's shared-memory segments, as the kernel sees it."""
    from helpers import mapping_of

    return "memfd:prefetch" in mapping_of(arr.ctypes.data)


def test_the_very_first_batches_large_arrays_cross_through_shared_memory_too(no_leaks):
    # Before a batch came back no segment size is known, so the first job of each worker gets
    # no segment: the worker makes one for that batch (taken over by the pool, reused later)
    # instead of pickling its arrays through the socket.
    from helpers import mapping_of

    with prefetch.Loader(Arrays(12, shape=(512, 1024)), workers=2, executor="process", max_queue_size=2) as loader:
        held = list(loader)
        assert all((b["x"] == i).all() for i, b in enumerate(held))
        assert all(_is_shared(b["x"]) for b in held)
        assert "memfd:prefetch-made" in mapping_of(held[0]["x"].ctypes.data)
        held[0]["x"][:] = -1  # the consumer's own
        del held
        again = [b["x"].copy() for b in loader]  # its segment is recycled like any other
        assert all((x == i).all() for i, x in enumerate(again))


def test_held_batches_stay_valid_and_segments_are_recycled(no_leaks):
    with prefetch.Loader(Arrays(30, shape=(128, 256)), workers=2, executor="process", max_queue_size=3) as loader:
        kept = [b["x"] for b in loader]  # the consumer holds every batch: no reuse under its feet
        assert all((x == i).all() for i, x in enumerate(kept))
        pool = loader._engine.executor.pool
        assert len(pool.segments) >= 25
        del kept
        for _ in range(3):
            for b in loader:  # batches dropped at once: a handful of segments serve the epoch
                pass
        assert len(pool.segments) <= 3 + 2 + 2  # window + per-worker depth


def test_read_only_arrays_stay_read_only():
    from helpers import ReadOnly

    with prefetch.Loader(ReadOnly(6), workers=2, executor="process") as loader:
        for i, x in enumerate(loader):
            assert (x == i).all()
            assert not x.flags.writeable


def test_epoch_hook_changes_in_the_main_process_reach_the_workers():
    ds = Scaled(6)
    with prefetch.Loader(ds, workers=2, executor="process") as loader:
        first = list(loader)  # begin: scale 10
        second = list(loader)  # end: 11, begin: 110
        ds.scale = 3  # by hand between epochs: seen too (after begin multiplies it: 30)
        third = list(loader)
    assert first == [i * 10 for i in range(6)]
    assert second == [i * 110 for i in range(6)]
    assert third == [i * 30 for i in range(6)]


@pytest.mark.parametrize("how", ["kill", "segv", "exit"])
def test_dead_worker_raises_worker_error_naming_the_batch_then_recovers(how, no_leaks):
    ds = Dies(40, bad=13, how=how, delay=0.001)
    with prefetch.Loader(ds, workers=2, executor="process") as loader:
        got = []
        t0 = time.perf_counter()
        with pytest.raises(prefetch.WorkerError) as info:
            for b in loader:
                got.append(b)
        assert time.perf_counter() - t0 < 10
        err = info.value
        assert isinstance(err, RuntimeError)
        assert err.index == 13 and "batch 13" in str(err)
        assert err.pid and err.exitcode is not None
        expected = {"kill": "SIGKILL", "segv": "SIGSEGV", "exit": "exit code 7"}[how]
        assert expected in str(err)
        assert got == list(range(13))
        ds.bad = -1  # the pool was replaced; the next epoch works
        assert list(loader) == list(range(40))


def test_worker_killed_from_outside_is_reported_within_a_second(no_leaks):
    with prefetch.Loader(Pid(10**6, delay=0.01), workers=2, executor="process") as loader:
        it = iter(loader)
        pid = next(it)  # batches are the pid of the worker that made them
        time.sleep(0.005)  # it is inside its next batch now (a worker killed between batches loses nothing)
        os.kill(pid, signal.SIGKILL)
        t0 = time.perf_counter()
        with pytest.raises(prefetch.WorkerError, match="SIGKILL"):
            for _ in it:
                pass
        assert time.perf_counter() - t0 < 1.0
        assert len(set(b for _, b in zip(range(20), loader))) == 2  # two live workers again


def test_unimportable_dataset_in_worker_is_a_clear_error():
    # A class defined inside a function pickles by reference and cannot be found by workers.
    class Local(Indices):
        pass

    with pytest.raises(TypeError, match="pickle"):
        prefetch.Loader(Local(3), executor="process")


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # fork is asked for on purpose
@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_every_start_method_works(method):
    with prefetch.Loader(Arrays(8), workers=2, executor="process", start_method=method) as loader:
        assert [int(b["x"][0, 0]) for b in loader] == list(range(8))


def test_default_start_method_is_not_fork():
    loader = prefetch.Loader(Indices(2), executor="process")
    list(loader)
    assert loader._engine.executor.start_method in ("forkserver", "spawn")
    loader.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", ["process", "thread"])
def test_ctrl_c_mid_epoch_returns_promptly_and_leaves_no_process(executor):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {HERE!r})
        import prefetch
        from helpers import Indices
        if __name__ == "__main__":
            loader = prefetch.Loader(Indices(10**6, delay=0.05), workers=2, executor={executor!r})
            try:
                for i, b in enumerate(loader):
                    if i == 2:
                        print("ready", flush=True)
            except KeyboardInterrupt:
                t0 = time.perf_counter()
                loader.close()
                print(f"interrupted {{time.perf_counter() - t0:.3f}}", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        family = psutil.Process(proc.pid).children(recursive=True)
        t0 = time.perf_counter()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
        out, err = proc.communicate(timeout=20)
        elapsed = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "interrupted" in out, err
    assert float(out.split("interrupted")[1]) < 1.0
    assert elapsed < 5
    time.sleep(0.5)
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert "Traceback" not in err, err


@pytest.mark.timeout(60)
def test_parent_killed_leaves_no_orphan_worker():
    script = textwrap.dedent(f"""
        import sys, os
        sys.path.insert(0, {HERE!r})
        import prefetch
        from helpers import Indices
        if __name__ == "__main__":
            loader = prefetch.Loader(Indices(10**6, delay=1.0), workers=2, executor="process")
            it = iter(loader)
            print("ready", flush=True)
            next(it)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    family = psutil.Process(proc.pid).children(recursive=True)
    assert family
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family):
        time.sleep(0.1)
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_nothing_in_dev_shm_even_while_running():
    def ours():
        return [n for n in os.listdir("/dev/shm") if "prefetch" in n]

    with prefetch.Loader(Arrays(10), workers=2, executor="process") as loader:
        it = iter(loader)
        batches = [next(it) for _ in range(5)]
        assert any(_is_shared(b["x"]) for b in batches)  # shared memory in use ...
        assert ours() == []  # ... yet never named in /dev/shm: anonymous memory files
        list(it)


def test_futures_process_pool_executor_is_accepted():
    import concurrent.futures as cf

    import multiprocessing as mp

    with cf.ProcessPoolExecutor(2, mp_context=mp.get_context("forkserver")) as pool:
        with prefetch.Loader(Indices(20), executor=pool, max_queue_size=6) as loader:
            assert list(loader) == list(range(20))
            assert list(loader) == list(range(20))


def test_batches_built_with_prefetch_empty_cross_without_a_copy(no_leaks):
    from helpers import InPlace

    with prefetch.Loader(InPlace(12), workers=2, executor="process", max_queue_size=4) as loader:
        for epoch in range(2):
            for i, (x, tag) in enumerate(loader):
                assert (x == i).all() and tag == i
                if epoch == 1:
                    assert _is_shared(x)
        # the worker wrote into the segment itself: nothing was copied after the first batches
        assert loader._engine.executor.pool.size_hint >= x.nbytes


def test_prefetch_empty_is_plain_numpy_outside_process_workers():
    from helpers import InPlace

    ds = InPlace(3)
    assert [int(x[0, 0]) for x, _ in ds] == [0, 1, 2]
    with prefetch.Loader(ds, workers=2) as loader:
        assert [int(x[0, 0]) for x, _ in loader] == [0, 1, 2]


@pytest.mark.timeout(60)
def test_a_dataset_that_asks_for_processes_starts_the_fork_server_at_once():
    # Built well before its Loader (the model is built in between), such a dataset lets the
    # server's interpreter start and imports overlap that wait instead of the first batch.
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {HERE!r})
        import psutil
        import prefetch
        from helpers import Indices

        def servers():
            return [p for p in psutil.Process().children()
                    if "prefetch.engine.process.zygote" in " ".join(p.cmdline())]

        if __name__ == "__main__":
            Indices(4, workers=2)  # threads: nothing is started
            assert not servers()
            ds = Indices(4, workers=2, use_multiprocessing=True)
            first = servers()
            assert len(first) == 1, first
            with prefetch.Loader(ds) as loader:
                assert list(loader) == [0, 1, 2, 3]
            assert servers() == first  # the Loader's workers came from that server
            print("ok", flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok" in out.stdout



def test_closing_a_reader_closes_the_descriptors_of_frames_never_taken():
    # A worker's socket closed while a frame with descriptors waits in it (a Done with the
    # segments the worker made, say): the descriptors go with it, none is left open.
    import socket

    from prefetch.engine.process.wire import BlockingEnd, FrameReader

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    try:
        BlockingEnd(theirs).send(b"payload", [r])
        reader = FrameReader()
        ours.setblocking(False)
        reader.receive(ours)
        assert len(reader.frames) == 1
        received = reader.frames[0][1][0]
        os.fstat(received)  # open
        reader.close()
        with pytest.raises(OSError):
            os.fstat(received)
    finally:
        for fd in (r, w):
            os.close(fd)
        ours.close()
        theirs.close()


@pytest.mark.timeout(60)
def test_a_dataset_built_when_its_module_is_imported_starts_no_server_from_the_server(tmp_path):
    # The server imports the dataset's module ahead of its workers; a module that builds such
    # a dataset at import time must not make the server (nor a worker) start a server of its own.
    (tmp_path / "builds_one.py").write_text(textwrap.dedent("""
        import prefetch

        class Squares(prefetch.PyDataset):
            def __init__(self, n, **kwargs):
                super().__init__(**kwargs)
                self.n = n
            def __len__(self):
                return self.n
            def __getitem__(self, i):
                return i * i

        DEFAULT = Squares(3, workers=2, use_multiprocessing=True)
    """))
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(tmp_path)!r})
        import psutil
        import prefetch
        from builds_one import Squares

        def helpers():
            return [p for p in psutil.Process().children(recursive=True)
                    if "prefetch.engine.process.zygote" in " ".join(p.cmdline())]

        if __name__ == "__main__":
            with prefetch.Loader(Squares(6, workers=2, use_multiprocessing=True)) as loader:
                assert list(loader) == [i * i for i in range(6)]
                time.sleep(0.5)  # time for any server started from the server to appear
                assert len(helpers()) == 3, helpers()  # the server and its two workers
            print("ok", flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok" in out.stdout
