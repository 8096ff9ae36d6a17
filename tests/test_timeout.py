"""`Loader(timeout=...)`: a stuck `__getitem__` fails its batch with `prefetch.BatchTimeout`
(naming the batch, the worker and the stuck line) within the timeout plus a second, the
loader stays usable, and nothing is left behind."""

from __future__ import annotations

import time

import pytest
from timeout_datasets import RELEASE, AsyncStuckAt, StuckAt

import prefetch

pytestmark = pytest.mark.timeout(60)  # a stuck batch must never hang the suite

EXECUTORS = ["thread", "process", "async"]


@pytest.fixture
def release():
    """Let a thread stuck in this process return once the test is over (it was abandoned)."""
    RELEASE.clear()
    yield
    RELEASE.set()


def _dataset(executor: str, n: int, stuck: int, **kwargs):
    return (AsyncStuckAt if executor == "async" else StuckAt)(n, stuck, **kwargs)


def _loader(executor: str, ds, **kwargs):
    return prefetch.Loader(ds, executor=None if executor == "async" else executor, **kwargs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_stuck_batch_times_out_naming_batch_worker_and_line(executor, tmp_path, no_leaks, release):
    ds = _dataset(executor, 8, stuck=3, flag=str(tmp_path / "stuck-once"))
    with _loader(executor, ds, workers=2, timeout=1) as loader:
        got = []
        t0 = 0.0
        with pytest.raises(prefetch.BatchTimeout) as info:
            for b in loader:
                if not got:  # the workers are up: batch 3 starts about now
                    t0 = time.monotonic()
                got.append(b)
        waited = time.monotonic() - t0
        assert got == [0, 1, 2]
        assert waited <= 2.0, waited
        err = info.value
        assert isinstance(err, TimeoutError)
        assert err.index == 3 and err.timeout_s == 1.0
        assert "batch 3" in str(err)
        assert err.worker and err.worker in str(err)
        kind = {"thread": "thread prefetch-thread-", "process": "process worker ", "async": "coroutine"}[executor]
        assert kind in err.worker
        assert err.stack is not None
        line = "await asyncio.sleep(3600)" if executor == "async" else "time.sleep(0.05)"
        assert line in err.stack, err.stack
        assert "timeout_datasets.py" in str(err)  # the message names where it is stuck
        if executor == "thread":  # abandoned (Python cannot stop it), out of the pool, replaced
            import threading

            names = [t.name for t in threading.enumerate()]
            assert f"prefetch-abandoned-{err.worker.split('prefetch-')[-1]}" in names
            ex = loader._engine.executor
            assert len(ex._threads) == 2 and all(t.name.startswith("prefetch-thread-") for t in ex._threads)
        if executor == "process":  # the stuck worker was killed (and replaced)
            pid = int(err.worker.split()[-1])
            deadline = time.monotonic() + 2
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not _alive(pid)
        # the loader stays usable: the next epoch is whole (batch 3 is stuck only once)
        assert list(loader) == list(range(8))
        assert list(loader) == list(range(8))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_with_max_failures_the_stuck_batch_is_skipped(executor, no_leaks, release, caplog):
    ds = _dataset(executor, 10, stuck=4)  # stuck every time
    with _loader(executor, ds, workers=2, timeout=1, max_failures=1) as loader:
        t0 = time.monotonic()
        assert list(loader) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
        assert time.monotonic() - t0 < 4
        assert loader.stats.skipped == 1
        assert "skipped batch 4 of epoch 0 after BatchTimeout" in caplog.text


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_slow_batch_under_the_timeout_is_not_affected(executor, no_leaks, release):
    ds = _dataset(executor, 6, stuck=-1, slow=0.4)
    with _loader(executor, ds, workers=2, timeout=1, max_queue_size=4) as loader:
        for _ in range(2):
            assert list(loader) == list(range(6))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_breaking_out_while_a_batch_is_stuck_leaves_the_next_epoch_whole(executor, tmp_path, no_leaks, release):
    ds = _dataset(executor, 6, stuck=2, flag=str(tmp_path / "stuck-once"))
    with _loader(executor, ds, workers=1, timeout=1, max_queue_size=3) as loader:
        for b in loader:
            break  # batch 2 is stuck on the only worker
        t0 = time.monotonic()
        assert list(loader) == list(range(6))
        assert time.monotonic() - t0 < 4


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_stuck_batch_inside_a_job_of_several_cheap_batches(executor, no_leaks, release):
    # Cheap batches travel several to a job: the ones before the stuck batch in its job run
    # again elsewhere, the ones after it too, and each arrives once, in order.
    n, stuck = 400, 300
    with prefetch.Loader(StuckAt(n, stuck), executor=executor, workers=2, timeout=1, max_failures=1,
                         max_queue_size=64) as loader:
        assert list(loader) == [i for i in range(n) if i != stuck]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_process_timeout_with_other_start_methods(start_method, no_leaks, release):
    with prefetch.Loader(StuckAt(6, 2), executor="process", workers=1, timeout=1, max_failures=1,
                         start_method=start_method) as loader:
        assert list(loader) == [0, 1, 3, 4, 5]
        assert loader.stats.skipped == 1


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("bad", [0, -1, "1", True, float("nan"), float("inf")])
def test_bad_timeouts_are_rejected_up_front(bad):
    with pytest.raises((TypeError, ValueError), match="timeout"):
        prefetch.Loader(list(range(4)), timeout=bad)


def test_timeout_is_rejected_in_serial_mode():
    with pytest.raises(ValueError, match="timeout needs workers"):
        prefetch.Loader(list(range(4)), workers=0, timeout=1)


def test_batch_timeout_pickles():
    import pickle

    err = prefetch.errors.batch_timeout(3, "thread x", 1.0, 'Stack:\n  File "a.py", line 2, in f\n    g()\n')
    back = pickle.loads(pickle.dumps(err))
    assert (back.index, back.worker, back.timeout_s, back.stack) == (3, "thread x", 1.0, err.stack)
    assert str(back) == str(err) and "a.py:2 in f: g()" in str(err)


@pytest.mark.timeout(60)
def test_a_concurrent_futures_pool_fails_the_batch_without_a_stack(no_leaks, release):
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(2) as pool:
        with prefetch.Loader(StuckAt(6, 2), executor=pool, timeout=0.5, max_queue_size=3) as loader:
            t0 = time.monotonic()
            with pytest.raises(prefetch.BatchTimeout, match="batch 2 ran longer than timeout=0.5 s") as info:
                list(loader)
            assert time.monotonic() - t0 < 2
            assert info.value.index == 2 and info.value.stack is None
            assert "ThreadPoolExecutor" in info.value.worker
        RELEASE.set()  # the pool's thread is still inside the call: let it return before the pool shuts down


@pytest.mark.timeout(90)
def test_dask_fails_the_batch_once_the_cluster_stops_making_progress(no_leaks, release):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        with prefetch.Loader(StuckAt(6, 2), executor=client, timeout=1, max_failures=1,
                             max_queue_size=3) as loader:
            assert list(loader) == [0, 1, 3, 4, 5]
            assert loader.stats.skipped == 1
        RELEASE.set()
