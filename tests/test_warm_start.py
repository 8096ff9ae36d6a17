"""Opt-in warm start: while process workers boot, the first batches are made in this process."""

from __future__ import annotations

import os

import pytest
from helpers import FailsAt, OpensInGetitem, ReloadFailsHere, ScaledInHook, SlowToStart

import prefetch


def test_first_batches_come_from_this_process_until_a_worker_is_ready(no_leaks):
    with prefetch.Loader(SlowToStart(60, boot=0.5, delay=0.02), workers=2, executor="process", warm_start=True) as loader:
        epoch = list(loader)
        second = list(loader)
    assert [v for v, _ in epoch] == list(range(60))  # in order, each batch once
    makers = [pid for _, pid in epoch]
    assert makers[0] == os.getpid()  # the first batch did not wait for a worker
    assert set(makers[-5:]) - {os.getpid()}  # the workers took over once ready
    assert os.getpid() not in {pid for _, pid in second}


def test_by_default_every_batch_is_made_in_a_worker(no_leaks):
    with prefetch.Loader(SlowToStart(8, boot=0.3), workers=2, executor="process") as loader:
        epoch = list(loader)
    assert [v for v, _ in epoch] == list(range(8))
    assert os.getpid() not in {pid for _, pid in epoch}


def test_warm_start_never_touches_the_users_dataset(no_leaks):
    ds = OpensInGetitem(12, boot=0.3)
    with prefetch.Loader(ds, workers=2, executor="process", warm_start=True) as loader:
        first = list(loader)
        assert first[0][1] == os.getpid()
        assert not hasattr(ds, "handle")  # set on the warm-start copy, not on this object
        assert [v for v, _ in list(loader)] == list(range(12))  # so the next sync still pickles


def test_epoch_hook_changes_reach_batches_made_while_workers_boot(no_leaks):
    ds = ScaledInHook(30, boot=0.3, delay=0.02)
    with prefetch.Loader(ds, workers=2, executor="process", warm_start=True) as loader:
        first = list(loader)
        ds.scale = 7  # by hand, between epochs
        second = list(loader)
    assert first[0][1] == os.getpid()
    assert [v for v, _ in first] == [i * 10 for i in range(30)]
    assert [v for v, _ in second] == [i * 70 for i in range(30)]


@pytest.mark.timeout(30)
def test_a_dataset_change_this_process_cannot_load_leaves_the_batches_to_the_workers(no_leaks):
    # The workers boot for longer than the first epoch takes: the warm start still serves
    # when the second epoch begins, and must reload the changed dataset first.
    ds = ReloadFailsHere(4, boot=1.5)
    with prefetch.Loader(ds, workers=2, executor="process", warm_start=True) as loader:
        first = list(loader)
        ds.scale = 7  # loads in a worker, not in this process
        second = list(loader)
    assert first == [(i, os.getpid()) for i in range(4)]
    assert [v for v, _ in second] == [i * 7 for i in range(4)]
    assert os.getpid() not in {pid for _, pid in second}


@pytest.mark.timeout(30)
def test_workers_that_cannot_load_the_dataset_still_raise_promptly(no_leaks):
    with prefetch.Loader(SlowToStart(10**6, fail_to_start=True, delay=0.001), workers=2,
                         executor="process", warm_start=True) as loader:
        with pytest.raises(LookupError, match="cannot load in a worker") as info:
            for _ in loader:
                pass
    assert "while loading the dataset" in "".join(getattr(info.value, "__notes__", []))


def test_an_exception_in_a_warm_start_batch_names_the_batch_and_where_it_ran(no_leaks):
    with prefetch.Loader(FailsAt(5, bad=2, boot=0.5), workers=1, executor="process", warm_start=True) as loader:
        with pytest.raises(ZeroDivisionError) as info:
            list(loader)
        assert [b[0] for _, b in zip(range(2), loader)] == [0, 1]  # the next epoch works
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "__getitem__(2)" in notes and "main process while process workers start" in notes


@pytest.mark.timeout(30)
def test_closing_while_workers_still_boot_leaves_nothing_behind(no_leaks):
    loader = prefetch.Loader(SlowToStart(10, boot=2.0), workers=2, executor="process", warm_start=True)
    assert next(iter(loader)) == (0, os.getpid())
    loader.close()  # the workers are still unpickling: they end too (no_leaks checks)


@pytest.mark.timeout(30)
def test_closing_right_after_construction_leaves_nothing_behind(no_leaks):
    prefetch.Loader(SlowToStart(10, boot=2.0), workers=2, executor="process", warm_start=True).close()
