"""Elastic resume: a state saved on N hosts (`Shard(i, N)`) resumes on M hosts (`Shard(j, M)`).

Hosts are simulated as separate Loaders in one process (threads). Synchronous data-parallel
training keeps every host at the same step, so any one host's state describes the whole
job: the global order of the epoch is consumed up to `P = N * step`, and the rest of it is
re-divided among the M new hosts — across all hosts no batch is lost (except the usual
remainder of fewer than M batches a split without padding drops) and none is read twice;
the following epochs are M-way from their start.
"""

from __future__ import annotations

import itertools
import json
import threading

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import prefetch
from prefetch.order import epoch_order, global_order
from scale_datasets import Endless, Gated, Indexed

pytestmark = pytest.mark.timeout(300)


def _hosts(n: int, count: int, pad: bool, *, seed: int, shuffle: bool, dataset=None) -> list[prefetch.Loader]:
    return [prefetch.Loader(dataset if dataset is not None else Indexed(n), workers=1, max_queue_size=2,
                            shuffle=shuffle, seed=seed, shard=prefetch.Shard(i, count, pad)) for i in range(count)]


def _take(loader: prefetch.Loader, k: int) -> list[int]:
    """The next `k` batches of the loader's epoch (then leave it, as a preempted job does)."""
    it = iter(loader)
    got = list(itertools.islice(it, k))
    it.close()
    return got


def _close(loaders: list[prefetch.Loader]) -> None:
    for loader in loaders:
        loader.close()


def _expected_rest(order: list[int], done: int, count: int, pad: bool) -> list[int]:
    """What `count` hosts read together of an epoch whose global positions [0, done) are
    consumed: the rest, cut to a multiple of `count` (or wrapped around to one with pad)."""
    n = len(order)
    rest = n - done
    size = -(-rest // count) if pad else rest // count
    return [order[(done + k) % n] for k in range(size * count)] if n else []


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), old=st.integers(1, 8), new=st.integers(1, 8), seed=st.integers(0, 2**63 - 1),
       shuffle=st.booleans(), old_pad=st.booleans(), new_pad=st.booleans(), second_epoch=st.booleans(),
       progress=st.floats(0, 1), saver=st.integers(0, 7))
@example(n=10, old=4, new=2, seed=0, shuffle=False, old_pad=False, new_pad=False, second_epoch=False,
         progress=0.5, saver=3)
@example(n=10, old=3, new=4, seed=1, shuffle=True, old_pad=True, new_pad=True, second_epoch=True, progress=1.0,
         saver=0)
def test_a_state_from_n_hosts_resumes_on_m_hosts_without_losing_or_repeating_a_batch(
        n, old, new, seed, shuffle, old_pad, new_pad, second_epoch, progress, saver):
    before = _hosts(n, old, old_pad, seed=seed, shuffle=shuffle)
    try:
        if second_epoch:
            for loader in before:
                list(loader)
        epoch = before[0].epoch
        step = int(progress * len(before[0]))
        read = [_take(loader, step) for loader in before]
        state = json.loads(json.dumps(before[saver % old].state_dict()))
    finally:
        _close(before)
    order = global_order(n, epoch=epoch, seed=seed, shuffle=shuffle).tolist()
    # Every old host read its own part of the global order, up to the common step.
    assert read == [epoch_order(n, epoch=epoch, seed=seed, shuffle=shuffle,
                                shard=prefetch.Shard(i, old, old_pad)).tolist()[:step] for i in range(old)]
    done = min(n, old * step)

    after = _hosts(n, new, new_pad, seed=seed ^ 1, shuffle=shuffle)  # the state's seed wins
    try:
        for loader in after:
            loader.load_state_dict(state)
        rest = [list(loader) for loader in after]
        following = [list(loader) for loader in after]
    finally:
        _close(after)

    assert len({len(part) for part in rest}) <= 1  # the same number of steps on every new host
    union = [b for part in rest for b in part]
    assert sorted(union) == sorted(_expected_rest(order, done, new, new_pad))
    if not new_pad:
        assert len(set(union)) == len(union)  # nothing twice ...
        assert not set(union) & {b for part in read for b in part}  # ... nor again
    if new == old and new_pad == old_pad:
        # The same host count: exactly what the uninterrupted job had left to read.
        uninterrupted = [epoch_order(n, epoch=epoch, seed=seed, shuffle=shuffle,
                                     shard=prefetch.Shard(j, old, old_pad)).tolist()[step:] for j in range(new)]
        assert rest == uninterrupted
    assert following == [epoch_order(n, epoch=epoch + 1, seed=seed, shuffle=shuffle,
                                     shard=prefetch.Shard(j, new, new_pad)).tolist() for j in range(new)]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 40), counts=st.lists(st.integers(1, 6), min_size=3, max_size=3),
       seed=st.integers(0, 2**63 - 1), progress=st.lists(st.floats(0, 1), min_size=2, max_size=2))
def test_an_epoch_resumed_elastically_can_be_resumed_elastically_again(n, counts, seed, progress):
    """N hosts -> M hosts -> K hosts within one epoch: still each batch at most once, and
    only the remainder of the last split unread."""
    state: dict | None = None
    read: list[int] = []
    for count, share in zip(counts[:2], progress):
        hosts = _hosts(n, count, False, seed=seed, shuffle=True)
        try:
            if state is not None:
                for loader in hosts:
                    loader.load_state_dict(state)
            # Every host at the same step: the job read a prefix of the global order.
            steps = int(share * ((n - len(read)) // count))
            for loader in hosts:
                read += _take(loader, steps)
            state = json.loads(json.dumps(hosts[-1].state_dict()))
        finally:
            _close(hosts)
    order = global_order(n, epoch=0, seed=seed, shuffle=True).tolist()
    done = len(read)
    assert sorted(read) == sorted(order[:done])  # a prefix of the global order, once each
    last = _hosts(n, counts[2], False, seed=seed, shuffle=True)
    try:
        for loader in last:
            loader.load_state_dict(state)
        for loader in last:
            read += list(loader)
    finally:
        _close(last)
    assert len(set(read)) == len(read)
    unread = [b for b in order if b not in set(read)]
    assert unread == order[len(order) - len(unread):]  # only a tail of the order: ...
    assert len(unread) == (n - done) % counts[2]  # ... the last split's remainder


def test_four_hosts_resume_on_two_with_the_rest_of_the_global_order():
    hosts = _hosts(10, 4, False, seed=0, shuffle=False)
    read = [_take(h, 1) for h in hosts]  # step 1: global positions 0-3
    state = hosts[2].state_dict()  # any host's state describes the job
    _close(hosts)
    assert read == [[0], [1], [2], [3]]
    two = _hosts(10, 2, False, seed=0, shuffle=False)
    for h in two:
        h.load_state_dict(state)
    assert [list(h) for h in two] == [[4, 6, 8], [5, 7, 9]]  # and 8, 9 are read, unlike on 4 hosts
    assert [list(h) for h in two] == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    assert two[0].state_dict()["start"] == 0
    _close(two)


def test_a_single_host_state_spreads_over_many_hosts_and_back():
    with prefetch.Loader(Indexed(12), workers=1) as one:
        assert _take(one, 5) == [0, 1, 2, 3, 4]
        state = one.state_dict()
    three = _hosts(12, 3, False, seed=0, shuffle=False)
    for h in three:
        h.load_state_dict(state)
    assert [_take(h, 1) for h in three] == [[5], [6], [7]]
    state = three[0].state_dict()
    assert (state["start"], state["position"]) == (5, 1)
    _close(three)
    with prefetch.Loader(Indexed(12), workers=1) as one:
        one.load_state_dict(state)
        assert list(one) == [8, 9, 10, 11]


def test_an_infinite_dataset_resumes_elastically():
    hosts = _hosts(0, 2, False, seed=0, shuffle=False, dataset=Endless())
    assert [_take(h, 3) for h in hosts] == [[0, 2, 4], [1, 3, 5]]
    state = hosts[0].state_dict()
    _close(hosts)
    three = _hosts(0, 3, False, seed=0, shuffle=False, dataset=Endless())
    for h in three:
        h.load_state_dict(state)
    assert [_take(h, 2) for h in three] == [[6, 9], [7, 10], [8, 11]]
    _close(three)


def test_with_unequal_progress_the_state_loaded_sets_the_step_for_everyone():
    """The documented rule: load the state of the host that is furthest behind; batches the
    others read past its step are read again, none is lost."""
    hosts = _hosts(10, 2, False, seed=0, shuffle=False)
    ahead, behind = _take(hosts[0], 3), _take(hosts[1], 2)
    state = hosts[1].state_dict()
    _close(hosts)
    assert (ahead, behind) == ([0, 2, 4], [1, 3])
    three = _hosts(10, 3, False, seed=0, shuffle=False)
    for h in three:
        h.load_state_dict(state)
    rest = [list(h) for h in three]
    _close(three)
    assert rest == [[4, 7], [5, 8], [6, 9]]  # global positions 4.. : batch 4 is read again
    assert set(ahead + behind) | {b for part in rest for b in part} == set(range(10))


def test_an_unordered_state_with_batches_past_a_gap_resumes_only_on_its_own_shard():
    gate = threading.Event()
    loader = prefetch.Loader(Gated(8, gate), workers=4, max_queue_size=4, ordered=False, seed=1,
                             shard=prefetch.Shard(0, 2))
    try:
        it = iter(loader)
        early = [next(it), next(it)]
        state = loader.state_dict()
        it.close()
    finally:
        gate.set()
        loader.close()
    assert 0 not in early and state["position"] == 0 and state["delivered_after"]
    with prefetch.Loader(Indexed(8), ordered=False, seed=1, shard=prefetch.Shard(0, 4)) as other, \
            pytest.raises(ValueError, match="field 'delivered_after'.*out of order"):
        other.load_state_dict(state)
    with prefetch.Loader(Indexed(8), ordered=False, seed=1, shard=prefetch.Shard(0, 2)) as same:
        same.load_state_dict(state)
        assert sorted(early + list(same)) == [0, 2, 4, 6]
