"""workers="auto": grows while the consumer waits, stops where more workers stop paying."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import Indices

import prefetch

_ONE_AT_A_TIME = threading.Lock()


class OneAtATime(Indices):
    """Each batch holds one lock for a fixed time: extra threads cannot help, however loaded
    the machine is. (Pure-Python work under the GIL would not do on a loaded machine: there
    more threads win the process a larger share of a contended CPU, so they do help, and a
    tuner that adds them is right. Nor would a loop on the clock: other threads' turns would
    count as its work.)"""

    def __getitem__(self, i):
        with _ONE_AT_A_TIME:
            time.sleep(0.0015)
        return i


def _changes(loader):
    return [w for _, w in loader.stats.as_dict()["worker_changes"]]


@pytest.mark.timeout(90)
def test_auto_grows_threads_for_io_bound_batches_and_settles():
    with prefetch.Loader(Indices(6000, delay=0.005), workers="auto", max_queue_size=32) as loader:
        assert list(loader) == list(range(6000))
        tuner = loader._autotune
        assert tuner.state == "settled"
        assert loader.stats.workers >= 16  # 1 worker makes ~190 batches/s; the consumer wanted more
        # settled, it stays put: the last part of the run saw no change of workers
        t_last_change = loader.stats.as_dict()["worker_changes"][-1][0]
        assert loader.stats.elapsed_s - t_last_change > 0.3
        counts = _changes(loader)
        assert counts[0] == 1 and max(counts) <= 32


@pytest.mark.timeout(90)
def test_auto_does_not_add_threads_that_do_not_help():
    with prefetch.Loader(OneAtATime(1000), workers="auto", max_queue_size=32) as loader:
        assert len(list(loader)) == 1000
        assert loader.stats.workers <= 4  # 1, or 2 when noise made one probe look useful
        assert loader._autotune.state == "settled"
        assert len(_changes(loader)) <= 4  # at most: up, back, (and once more up/back): no see-saw


@pytest.mark.timeout(90)
def test_auto_leaves_workers_alone_when_the_consumer_is_the_bottleneck():
    with prefetch.Loader(Indices(300, delay=0.0005), workers="auto", max_queue_size=16) as loader:
        for _ in loader:
            time.sleep(0.003)  # training is slower than the data
        assert loader.stats.workers == 1
        assert loader.stats.stall_fraction < 0.2


@pytest.mark.timeout(120)
def test_auto_resizes_a_process_pool(no_leaks):
    from helpers import Pid

    with prefetch.Loader(Pid(1200, delay=0.01), workers="auto", executor="process", max_queue_size=16) as loader:
        pids = set(loader)
        assert loader.stats.workers >= 2
        assert len(pids) >= 2


@pytest.mark.timeout(90)
def test_auto_keeps_tuning_after_an_epoch_under_asyncio_run():
    import asyncio

    with prefetch.Loader(Indices(1500, delay=0.005), workers="auto", max_queue_size=32) as loader:
        async def a_few():
            async for i in loader:
                if i == 5:
                    break

        asyncio.run(a_few())  # that loop is closed now; the tuner must follow the next epoch
        before = loader.stats.workers
        assert list(loader) == list(range(1500))
        assert loader.stats.workers >= max(4, before + 1)
