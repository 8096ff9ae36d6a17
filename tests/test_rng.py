"""`prefetch.rng()`: the same draws for a batch whatever runs it; distinct worker streams."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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


@pytest.mark.timeout(120)
def test_a_cold_first_batch_does_not_wait_for_numpy_random_yet_workers_never_share_its_stream():
    # A fresh interpreter, so the fork server is cold: its first workers start without
    # numpy.random (~10 ms of a cold first batch), draw from it anyway with their own streams,
    # and workers forked once the server has idled inherit it, seeded per worker and epoch.
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import prefetch
        from helpers import NumpyRandomProbe
        if __name__ == "__main__":
            for round in range(2):
                with prefetch.Loader(NumpyRandomProbe(8), workers=2, executor="process", seed=3) as loader:
                    epochs = [list(loader) for _ in range(2)]
                print(repr(epochs), flush=True)
                time.sleep(1.0)  # the server idles: it imports numpy.random now
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr[-3000:]
    cold, warm = (eval(line) for line in out.stdout.splitlines())  # noqa: S307 - our own repr
    first_batches = {}
    for pid, loaded, _ in cold[0]:
        first_batches.setdefault(pid, loaded)
    assert len(first_batches) == 2 and not any(first_batches.values())
    assert all(loaded for epoch in warm for _, loaded, _ in epoch)
    for epochs in (cold, warm):
        draws = [d for epoch in epochs for _, _, d in epoch]
        assert len(set(draws)) == len(draws)  # no two workers, no two epochs repeat a stream
