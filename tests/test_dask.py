"""The dask executor on real clusters: in-process, local worker processes, and a scheduler
and worker started from the `dask` command line.

Clusters are module-scoped (starting one costs seconds on two cores); tests that kill
workers wait for the nanny to bring them back before they hand the cluster on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402

import prefetch  # noqa: E402
from scale_datasets import BatchError, EpochTagged, Failing, Fatal, Indexed, Locked, Noisy  # noqa: E402

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.timeout(90)


# -- clusters ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inproc_client():
    """Workers are threads of this process (`processes=False`)."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=4, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def proc_cluster():
    """Two nanny-managed worker processes; the scheduler lives in this process."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        yield cluster, client


@pytest.fixture(scope="module")
def proc_client(proc_cluster):
    return proc_cluster[1]


@pytest.fixture(scope="module")
def fragile_client():
    """One single-threaded worker process, so its death loses every copy of the dataset,
    and a low `allowed-failures`, so a batch that keeps killing workers fails fast."""
    config = {"distributed.scheduler.allowed-failures": 1, "distributed.scheduler.worker-saturation": 1.0}
    with dask.config.set(config), distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        yield client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """End a process group we started (the worker's nanny has a child), politely first."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


@pytest.fixture(scope="module")
def cli_client(tmp_path_factory):
    """`dask scheduler` and `dask worker` as separate processes on 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("dask-cli")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    address = f"tcp://127.0.0.1:{_free_port()}"
    procs: list[subprocess.Popen] = []
    log = open(tmp / "cluster.log", "wb")
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp, start_new_session=True))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--host", "127.0.0.1",
             "--nworkers", "1", "--nthreads", "2", "--no-dashboard"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp, start_new_session=True))
        with distributed.Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=60)
            yield client
    finally:
        for proc in reversed(procs):
            _stop(proc)
        log.close()


CLUSTERS = ["inproc_client", "proc_client", "cli_client"]


def _wait_for_workers(client, n: int) -> None:
    """After a kill: wait until the nanny has the cluster whole again (for the next test)."""
    client.wait_for_workers(n, timeout=60)
    deadline = time.monotonic() + 60
    while len(client.scheduler_info(n_workers=-1)["workers"]) < n and time.monotonic() < deadline:
        time.sleep(0.1)


# -- whole epochs ------------------------------------------------------------------------------
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_every_cluster_delivers_full_ordered_epochs(cluster, request):
    client = request.getfixturevalue(cluster)
    with prefetch.Loader(Indexed(30), executor=client, max_queue_size=5) as loader:
        assert len(loader) == 30
        assert list(loader) == list(range(30))
        assert list(loader) == list(range(30))
        assert loader.stats.epochs == 2


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_every_cluster_delivers_the_same_shuffled_orders_as_threads(cluster, request):
    client = request.getfixturevalue(cluster)
    with prefetch.Loader(Indexed(25), executor="thread", shuffle=True, seed=3) as loader:
        expected = [list(loader) for _ in range(2)]
    with prefetch.Loader(Indexed(25), executor=client, shuffle=True, seed=3, max_queue_size=4) as loader:
        got = [list(loader) for _ in range(2)]
    assert got == expected
    assert sorted(got[0]) == list(range(25)) and got[0] != got[1]


def test_unordered_epoch_delivers_each_batch_exactly_once(proc_client):
    with prefetch.Loader(Indexed(24, delay=0.005, spread=4), executor=proc_client, ordered=False,
                         max_queue_size=6) as loader:
        got = list(loader)
    assert sorted(got) == list(range(24))


def test_plain_list_dataset_is_sent_whole(proc_client):
    # A list is a collection to dask's scatter; it must still arrive as one dataset.
    with prefetch.Loader([f"b{i}" for i in range(7)], executor=proc_client, max_queue_size=3) as loader:
        assert list(loader) == [f"b{i}" for i in range(7)]


@pytest.mark.asyncio
async def test_async_for_on_dask_delivers_an_epoch(inproc_client):
    loader = prefetch.Loader(Indexed(12), executor=inproc_client, max_queue_size=4)
    try:
        got = [batch async for batch in loader]
    finally:
        await asyncio.to_thread(loader.close)
    assert got == list(range(12))


# -- randomness and datasets that change ---------------------------------------------------
def test_rng_gives_the_same_draws_on_dask_as_with_threads(proc_client):
    with prefetch.Loader(Noisy(10), executor="thread", workers=3, seed=11, shuffle=True) as loader:
        expected = [dict(loader) for _ in range(2)]
    with prefetch.Loader(Noisy(10), executor=proc_client, seed=11, shuffle=True, max_queue_size=4) as loader:
        got = [dict(loader) for _ in range(2)]
    assert got == expected
    assert expected[0] != expected[1]  # a new epoch draws anew


def test_changes_made_by_epoch_hooks_reach_the_workers(proc_client):
    with prefetch.Loader(EpochTagged(4), executor=proc_client, max_queue_size=3) as loader:
        epochs = [list(loader) for _ in range(3)]
    assert epochs == [[(e, i) for i in range(4)] for e in range(3)]


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cluster", ["inproc_client", "proc_client"])
def test_getitem_exception_reaches_consumer_with_type_and_index(cluster, request):
    client = request.getfixturevalue(cluster)
    with prefetch.Loader(Failing(10, bad=4), executor=client, max_queue_size=3) as loader:
        for _ in range(2):  # the loader stays usable: the next epoch fails the same way
            got = []
            with pytest.raises(BatchError, match="cannot build batch 4") as info:
                for batch in loader:
                    got.append(batch)
            assert got == [0, 1, 2, 3]
            notes = "\n".join(getattr(info.value, "__notes__", []))
            assert "__getitem__(4)" in notes and "dask worker" in notes
            assert "cannot build batch 4" in notes  # the worker's traceback text


def test_coroutine_dataset_is_rejected_up_front(inproc_client):
    class Coro:
        def __len__(self):
            return 2

        async def __getitem__(self, i):
            return i

    with pytest.raises(TypeError, match="dask"):
        prefetch.Loader(Coro(), executor=inproc_client)


def test_unpicklable_dataset_raises_type_error_naming_it(proc_client):
    loader = prefetch.Loader(Locked(3), executor=proc_client)
    with loader, pytest.raises(TypeError, match="Locked.*cannot be pickled"):
        list(loader)


# -- losing workers ---------------------------------------------------------------------------
def test_worker_killed_mid_epoch_loses_no_batch(proc_client):
    with prefetch.Loader(Indexed(40, delay=0.03), executor=proc_client, max_queue_size=6) as loader:
        got = []
        for batch in loader:
            got.append(batch)
            if batch == 8:
                victim = next(iter(proc_client.run(os.getpid).values()))
                os.kill(victim, signal.SIGKILL)
        assert got == list(range(40))  # none lost, none twice, still in order
        assert list(loader) == list(range(40))
    _wait_for_workers(proc_client, 2)


def test_losing_the_only_worker_mid_epoch_loses_no_batch(fragile_client):
    # The dataset's only copy dies with the worker: it is sent again and the epoch goes on.
    with prefetch.Loader(Indexed(30, delay=0.02), executor=fragile_client, max_queue_size=5, shuffle=True,
                         seed=5) as loader:
        expected = prefetch.order.epoch_order(30, epoch=0, seed=5, shuffle=True, shard=None).tolist()
        got = []
        for batch in loader:
            got.append(batch)
            if len(got) == 6:
                [victim] = fragile_client.run(os.getpid).values()
                os.kill(victim, signal.SIGKILL)
        assert got == expected
    _wait_for_workers(fragile_client, 1)


def test_batch_that_keeps_killing_workers_raises_worker_error(fragile_client):
    with prefetch.Loader(Fatal(6, bad=0, parent=os.getpid()), executor=fragile_client, max_queue_size=3) as loader:
        with pytest.raises(prefetch.WorkerError, match="batch 0") as info:
            list(loader)
        assert info.value.index == 0
        assert isinstance(info.value, RuntimeError)
    _wait_for_workers(fragile_client, 1)


# -- lifetime ---------------------------------------------------------------------------------
def _prefetch_keys(cluster) -> set:
    return {key for key in cluster.scheduler.tasks if str(key).startswith(("prefetch_batch", "Indexed", "_materialize"))}


def test_break_then_close_leaves_the_cluster_clean_and_the_client_open(proc_cluster):
    cluster, client = proc_cluster
    with prefetch.Loader(Indexed(40, delay=0.02), executor=client, max_queue_size=8) as loader:
        for batch in loader:
            if batch == 3:
                break
        assert list(loader) == list(range(40))  # the next epoch starts whole
        for batch in loader:
            if batch == 5:
                break
    deadline = time.monotonic() + 20
    while _prefetch_keys(cluster) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _prefetch_keys(cluster)
    assert client.status == "running"
    assert client.submit(sum, [1, 2]).result() == 3
    assert not [t for t in threading.enumerate() if t.name == "prefetch-dask"]  # close() ended its thread
