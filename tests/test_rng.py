"""`prefetch.rng()`: the same draws for a batch whatever runs it; distinct worker streams."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import Draws, GlobalDraws

import prefetch


def _draws(**kwargs):
    with prefetch.Loader(Draws(16), seed=1234, **kwargs) as loader:
        epochs = [list(loader) for _ in range(2)]
    return [[(tuple(a.tolist()), b) for a, b in e] for e in epochs]


def test_same_draws_whatever_the_executor_workers_or_order():
    ref = _draws(workers=1, executor="thread")
    assert ref == _draws(workers=2, executor="thread")
    assert ref == _draws(workers=2, executor="process")
    assert ref == _draws(workers=1, executor="process")
    unordered = _draws(workers=4, executor="thread", ordered=False)
    assert sorted(map(sorted, unordered)) == sorted(map(sorted, ref))


def test_draws_differ_between_batches_epochs_and_seeds():
    ref = _draws(workers=2)
    first, second = ref
    assert len({d for d in first}) == 16  # every batch its own stream
    assert first != second  # a new epoch, new draws
    with prefetch.Loader(Draws(16), seed=99) as loader:
        other = [(tuple(a.tolist()), b) for a, b in loader]
    assert other != first


def test_rng_outside_a_loader_is_a_fresh_generator():
    assert isinstance(prefetch.rng(), np.random.Generator)
    assert prefetch.rng().random() != prefetch.rng().random()


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # fork is asked for on purpose
@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_worker_processes_do_not_share_global_random_streams(method):
    with prefetch.Loader(GlobalDraws(12), workers=2, executor="process", seed=5, start_method=method) as loader:
        e1 = list(loader)
        e2 = list(loader)
    by_pid = {}
    for pid, a, b in e1:
        by_pid.setdefault(pid, []).append((a, b))
    assert len(by_pid) == 2
    streams = list(by_pid.values())
    assert not set(streams[0]) & set(streams[1])  # forked workers would repeat each other
    assert not {x[1:] for x in e1} & {x[1:] for x in e2}  # and epochs do not repeat either
