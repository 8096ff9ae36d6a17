"""`max_failures`: failing batches within the epoch's budget are skipped — the rest arrive
once each, in order — each skip is logged once, counted and recorded in the state, and a
resumed run skips the same batches without running them again."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import prefetch
from prefetch.order import epoch_order
from scale_datasets import AsyncFailingSet, BatchError, DiesAt, Endless, FailingSet, Indexed

pytestmark = pytest.mark.timeout(120)


def _expected(n: int, bad, *, epoch: int = 0, shuffle: bool = False, seed: int = 0) -> list[int]:
    order = epoch_order(n, epoch=epoch, seed=seed, shuffle=shuffle, shard=None).tolist()
    return [i for i in order if i not in bad]


def _same(got: list[int], want: list[int], ordered: bool) -> bool:
    return got == want if ordered else sorted(got) == sorted(want)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), data=st.data(), ordered=st.booleans(), shuffle=st.booleans(),
       workers=st.integers(1, 3), window=st.integers(1, 6), spare=st.integers(0, 2))
def test_failing_batches_within_the_budget_are_skipped_and_the_rest_arrive_once_in_order(
        n, data, ordered, shuffle, workers, window, spare):
    bad = data.draw(st.sets(st.integers(0, n - 1)), label="bad")
    dataset = FailingSet(n, bad)
    with prefetch.Loader(dataset, workers=workers, max_queue_size=window, ordered=ordered, shuffle=shuffle,
                         seed=5, max_failures=len(bad) + spare) as loader:
        for epoch in range(2):
            got = list(loader)
            assert _same(got, _expected(n, bad, epoch=epoch, shuffle=shuffle, seed=5), ordered)
            assert len(set(got)) == len(got)
        assert loader.stats.skipped == 2 * len(bad)
        assert loader.stats.as_dict()["skipped"] == 2 * len(bad)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), data=st.data(), workers=st.integers(1, 3), window=st.integers(1, 5))
def test_past_the_budget_the_next_failure_is_raised_where_it_falls(n, data, workers, window):
    bad = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1), label="bad"))
    allowed = data.draw(st.integers(0, len(bad) - 1), label="allowed")
    raised_at = bad[allowed]
    with prefetch.Loader(FailingSet(n, bad), workers=workers, max_queue_size=window,
                         max_failures=allowed) as loader:
        for _ in range(2):  # and again in the next epoch: the loader stays usable
            got = []
            with pytest.raises(BatchError, match=f"batch {raised_at} is corrupt"):
                for batch in loader:
                    got.append(batch)  # noqa: PERF402 - keeps what arrived before the raise
            assert got == [i for i in range(raised_at) if i not in bad]
        assert loader.stats.skipped == 2 * allowed


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), data=st.data(), ordered=st.booleans(), workers=st.integers(1, 3),
       short=st.booleans())
def test_a_resumed_run_skips_the_same_batches_without_running_them_again(n, data, ordered, workers, short):
    bad = data.draw(st.sets(st.integers(0, n - 1)), label="bad")
    # With one failure too many, the budget the state carries decides where the run ends
    # (in completion order that place is the workers' business: only ordered runs compare).
    allowed = max(0, len(bad) - 1) if short and bad and ordered else len(bad)
    cut = data.draw(st.integers(1, n), label="cut")

    def run(dataset, state=None, stop=None):
        got, error, broke = [], None, False
        with prefetch.Loader(dataset, workers=workers, max_queue_size=3, ordered=ordered, seed=2,
                             max_failures=allowed) as loader:
            if state is not None:
                loader.load_state_dict(state)
            try:
                for batch in loader:
                    got.append(batch)
                    if stop is not None and len(got) == stop:
                        broke = True
                        break
            except BatchError as exc:
                error = str(exc)
            return got, error if not broke else "cut", json.loads(json.dumps(loader.state_dict()))

    whole, whole_error, _ = run(FailingSet(n, bad))
    first, first_error, state = run(FailingSet(n, bad), stop=cut)
    if first_error != "cut":
        return  # the run ended (raised, or the epoch was shorter) before the cut
    second = FailingSet(n, bad)
    rest, rest_error, _ = run(second, state)
    assert _same(first + rest, whole, ordered)
    assert rest_error == whole_error
    for position in state["skipped"]:  # recorded skips are not run again
        assert position not in second.calls  # (unsharded, unshuffled: position == index)
    assert set(state["skipped"]) <= bad


def test_each_skip_is_logged_once_with_the_batch_and_the_exception(caplog):
    caplog.set_level(logging.WARNING, logger="prefetch")
    with prefetch.Loader(FailingSet(8, {2, 5}), workers=2, max_failures=2) as loader:
        assert list(loader) == [0, 1, 3, 4, 6, 7]
    records = [r for r in caplog.records if r.name == "prefetch"]
    assert len(records) == 2
    for record, index in zip(records, (2, 5)):
        message = record.getMessage()
        assert f"batch {index} " in message and "BatchError" in message and f"batch {index} is corrupt" in message
        assert record.levelno == logging.WARNING


def test_the_state_records_skipped_positions():
    with prefetch.Loader(FailingSet(10, {1, 4}), workers=1, shuffle=True, seed=4, max_failures=2) as loader:
        order = epoch_order(10, epoch=0, seed=4, shuffle=True, shard=None).tolist()
        failed = sorted(order.index(i) for i in (1, 4))
        for batch in loader:
            here = order.index(batch)
            state = loader.state_dict()
            assert state["skipped"] == [p for p in failed if p < here]
            assert state["position"] == here + 1
        assert loader.state_dict()["skipped"] == []  # a new epoch, a new budget


def test_a_fraction_is_a_share_of_the_epoch_rounded_down():
    with prefetch.Loader(FailingSet(10, {1, 2, 3}), workers=1, max_failures=0.25) as loader:  # 2 of 10
        got = []
        with pytest.raises(BatchError, match="batch 3"):
            for batch in loader:
                got.append(batch)  # noqa: PERF402 - keeps what arrived before the raise
        assert got == [0] and loader.stats.skipped == 2


def test_every_batch_failing_within_the_budget_is_an_empty_epoch():
    with prefetch.Loader(FailingSet(12, range(12)), workers=2, max_queue_size=1, max_failures=1.0) as loader:
        assert list(loader) == [] and list(loader) == []
        assert loader.stats.skipped == 24


def test_by_default_nothing_is_skipped():
    with prefetch.Loader(FailingSet(5, {3}), workers=1) as loader:
        with pytest.raises(BatchError):
            list(loader)
        assert loader.stats.skipped == 0 and loader.max_failures == 0


def test_coroutines_skip_too():
    with prefetch.Loader(AsyncFailingSet(20, {0, 7, 19}), workers=4, max_failures=3) as loader:
        assert list(loader) == [i for i in range(20) if i not in {0, 7, 19}]


def test_an_infinite_dataset_takes_a_count_not_a_fraction():
    with pytest.raises(ValueError, match="fraction"):
        prefetch.Loader(Endless(), max_failures=0.1)
    with prefetch.Loader(Endless(), workers=1, max_failures=1) as loader:
        assert list(itertools.islice(loader, 3)) == [0, 1, 2]


@pytest.mark.parametrize("value, error", [
    (-1, ValueError), (1.5, ValueError), (-0.1, ValueError), (math.nan, ValueError), (True, TypeError),
    ("1", TypeError), (None, TypeError),
], ids=repr)
def test_a_bad_max_failures_is_rejected_up_front(value, error):
    with pytest.raises(error, match="max_failures"):
        prefetch.Loader(Indexed(3), max_failures=value)


# -- process workers ------------------------------------------------------------------------------
@pytest.mark.parametrize("ordered", [True, False])
def test_process_workers_skip_exceptions(ordered, no_leaks):
    with prefetch.Loader(FailingSet(30, {0, 11, 29}), executor="process", workers=2, ordered=ordered,
                         max_failures=3) as loader:
        assert _same(list(loader), [i for i in range(30) if i not in {0, 11, 29}], ordered)
        assert loader.stats.skipped == 3


def test_a_dead_worker_process_is_skipped_and_the_pool_refilled(caplog, no_leaks):
    caplog.set_level(logging.WARNING, logger="prefetch")
    with prefetch.Loader(DiesAt(16, {5}, parent=os.getpid()), executor="process", workers=2, warm_start=False,
                         max_failures=1) as loader:
        assert list(loader) == [i for i in range(16) if i != 5]
        assert list(loader) == [i for i in range(16) if i != 5]  # the next epoch too
        assert loader.stats.skipped == 2
    assert any("WorkerError" in r.getMessage() and "batch 5 " in r.getMessage() for r in caplog.records)


class _Busy(FailingSet):
    """Counts how many `__getitem__` calls run at once."""

    def __init__(self, n: int, bad, **kwargs):
        super().__init__(n, bad, **kwargs)
        self.lock = threading.Lock()
        self.active = self.max_active = 0

    def __getitem__(self, i: int) -> int:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(0.003)
            return super().__getitem__(i)
        finally:
            with self.lock:
                self.active -= 1


def test_skipped_batches_hold_their_window_slot_until_passed():
    dataset = _Busy(40, range(0, 40, 2))
    with prefetch.Loader(dataset, workers=8, max_queue_size=3, max_failures=20) as loader:
        assert list(loader) == list(range(1, 40, 2))
    assert dataset.max_active <= 3


def test_async_for_skips_too():
    async def main():
        with prefetch.Loader(FailingSet(10, {0, 9}), workers=2, max_failures=2) as loader:
            return [batch async for batch in loader], loader.stats.skipped

    assert asyncio.run(main()) == ([1, 2, 3, 4, 5, 6, 7, 8], 2)


@pytest.mark.timeout(120)
def test_a_dask_cluster_skips_too():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client, \
            prefetch.Loader(FailingSet(12, {3, 4}), executor=client, workers=2, max_failures=2) as loader:
        assert list(loader) == [i for i in range(12) if i not in {3, 4}]
        assert loader.stats.skipped == 2
