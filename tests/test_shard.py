"""Multi-host sharding: every host computes the same epoch order and keeps its own part."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import prefetch
from prefetch.order import epoch_order, infinite_order
from scale_datasets import Endless, Indexed

pytestmark = pytest.mark.timeout(120)

sizes = st.integers(min_value=0, max_value=300)
counts = st.integers(min_value=1, max_value=9)
seeds = st.integers(min_value=0, max_value=2**63 - 1)
epochs = st.integers(min_value=0, max_value=10_000)


def _parts(n: int, count: int, *, seed: int, epoch: int, shuffle: bool, pad: bool = False) -> list[list[int]]:
    return [epoch_order(n, epoch=epoch, seed=seed, shuffle=shuffle, shard=prefetch.Shard(i, count, pad)).tolist()
            for i in range(count)]


def _full(n: int, *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    return epoch_order(n, epoch=epoch, seed=seed, shuffle=shuffle, shard=None).tolist()


# -- the order itself ----------------------------------------------------------------------------
@given(n=sizes, count=counts, seed=seeds, epoch=epochs, shuffle=st.booleans())
def test_shards_are_disjoint_equal_and_cover_the_epoch_minus_the_remainder(n, count, seed, epoch, shuffle):
    full = _full(n, seed=seed, epoch=epoch, shuffle=shuffle)
    parts = _parts(n, count, seed=seed, epoch=epoch, shuffle=shuffle)
    assert {len(p) for p in parts} == {n // count}  # the same number on every host
    flat = [i for p in parts for i in p]
    assert len(set(flat)) == len(flat)  # disjoint
    kept = (n // count) * count
    assert sorted(flat) == sorted(full[:kept])  # the last n % count of the order are dropped
    assert set(full) == set(range(n))


@given(n=sizes, count=counts, seed=seeds, epoch=epochs, shuffle=st.booleans())
@example(n=1, count=3, seed=0, epoch=0, shuffle=False)  # wraps around more than once
def test_padded_shards_are_equal_and_cover_every_batch(n, count, seed, epoch, shuffle):
    full = _full(n, seed=seed, epoch=epoch, shuffle=shuffle)
    parts = _parts(n, count, seed=seed, epoch=epoch, shuffle=shuffle, pad=True)
    per_host = -(-n // count)
    assert {len(p) for p in parts} == {per_host}
    flat = [i for p in parts for i in p]
    assert set(flat) == set(range(n))  # nothing dropped
    # Padding wraps around to the start of the order (more than once when count > n): those
    # few batches are read again.
    assert sorted(flat) == sorted(full[k % n] for k in range(per_host * count))


@given(n=sizes, count=counts, seed=seeds, epoch=epochs, shuffle=st.booleans(), pad=st.booleans())
def test_every_host_computes_the_same_full_order(n, count, seed, epoch, shuffle, pad):
    # Host i's part is positions i, i + count, ... of one order that no host needs to share.
    full = _full(n, seed=seed, epoch=epoch, shuffle=shuffle)
    if pad and n:
        full = [full[k % n] for k in range(-(-n // count) * count)]
    parts = _parts(n, count, seed=seed, epoch=epoch, shuffle=shuffle, pad=pad)
    for i, part in enumerate(parts):
        assert part == full[i::count][:len(part)]


@given(n=sizes, count=counts, seed=seeds, epoch=epochs, shuffle=st.booleans(), pad=st.booleans())
def test_shards_are_deterministic_per_seed_and_epoch(n, count, seed, epoch, shuffle, pad):
    assert _parts(n, count, seed=seed, epoch=epoch, shuffle=shuffle, pad=pad) == \
        _parts(n, count, seed=seed, epoch=epoch, shuffle=shuffle, pad=pad)


@given(n=st.integers(min_value=12, max_value=300), count=counts, seed=seeds, epoch=epochs)
def test_shuffled_orders_differ_across_epochs_and_seeds(n, count, seed, epoch):
    # 12! orders: a collision would be a bug, not bad luck.
    assert _full(n, seed=seed, epoch=epoch, shuffle=True) != _full(n, seed=seed, epoch=epoch + 1, shuffle=True)
    assert _full(n, seed=seed, epoch=epoch, shuffle=True) != _full(n, seed=seed ^ 1, epoch=epoch, shuffle=True)
    assert _parts(n, count, seed=seed, epoch=epoch, shuffle=True) != \
        _parts(n, count, seed=seed, epoch=epoch + 1, shuffle=True)


@given(n=sizes, count=counts, seed=seeds, epoch=epochs)
def test_unshuffled_shards_ignore_seed_and_epoch(n, count, seed, epoch):
    assert _parts(n, count, seed=seed, epoch=epoch, shuffle=False) == \
        [list(range(i, (n // count) * count, count)) for i in range(count)]


@given(count=counts, take=st.integers(min_value=0, max_value=50))
def test_infinite_datasets_shard_by_residue_class(count, take):
    parts = [list(itertools.islice(infinite_order(prefetch.Shard(i, count)), take)) for i in range(count)]
    for i, part in enumerate(parts):
        assert part == [i + k * count for k in range(take)]
    assert list(itertools.islice(infinite_order(None), take)) == list(range(take))


# -- through the Loader ------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(n=st.integers(min_value=0, max_value=60), count=st.integers(min_value=1, max_value=5), seed=seeds,
       shuffle=st.booleans(), pad=st.booleans())
def test_loaders_on_every_host_split_each_epoch(n, count, seed, shuffle, pad):
    loaders = [prefetch.Loader(Indexed(n), workers=2, max_queue_size=4, shuffle=shuffle, seed=seed,
                               shard=prefetch.Shard(i, count, pad)) for i in range(count)]
    try:
        for epoch in range(2):
            parts = [list(loader) for loader in loaders]
            assert parts == _parts(n, count, seed=seed, epoch=epoch, shuffle=shuffle, pad=pad)
            size = prefetch.Shard(0, count, pad).size(n)
            assert all(len(loader) == size == len(part) for loader, part in zip(loaders, parts))
            flat = [i for p in parts for i in p]
            if pad:
                assert set(flat) == set(range(n))
            else:
                assert len(set(flat)) == len(flat) == size * count
    finally:
        for loader in loaders:
            loader.close()


def test_len_of_a_sharded_loader_is_the_shard_size():
    with prefetch.Loader(Indexed(10), shard=prefetch.Shard(1, 4)) as loader:
        assert len(loader) == 2 and loader.num_batches == 2
        assert list(loader) == [1, 5]
    with prefetch.Loader(Indexed(10), shard=prefetch.Shard(3, 4, pad=True)) as loader:
        assert len(loader) == 3
        assert list(loader) == [3, 7, 1]  # wrapped around
    with prefetch.Loader(Indexed(3), shard=prefetch.Shard(3, 4)) as loader:
        assert len(loader) == 0 and list(loader) == []


def test_infinite_loader_reads_its_residue_class():
    with prefetch.Loader(Endless(), workers=2, shard=prefetch.Shard(2, 3)) as loader:
        assert list(itertools.islice(loader, 5)) == [2, 5, 8, 11, 14]
        with pytest.raises(TypeError):
            len(loader)


# -- Shard.auto and validation ---------------------------------------------------------------
def test_auto_reads_rank_and_world_size_from_the_environment(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert prefetch.Shard.auto() == prefetch.Shard(2, 4)
    assert prefetch.Shard.auto(pad=True) == prefetch.Shard(2, 4, pad=True)
    monkeypatch.delenv("RANK")
    assert prefetch.Shard.auto() == prefetch.Shard(0, 4)  # RANK defaults to 0


def test_auto_without_a_distributed_environment_is_the_single_shard(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert prefetch.Shard.auto() == prefetch.Shard(0, 1)
    with prefetch.Loader(Indexed(5), shard=prefetch.Shard.auto()) as loader:
        assert list(loader) == list(range(5)) and len(loader) == 5


@pytest.mark.parametrize("rank, world", [("4", "4"), ("-1", "2"), ("one", "2"), ("0", "0")])
def test_auto_rejects_a_bad_environment(monkeypatch, rank, world):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(ValueError):
        prefetch.Shard.auto()


@pytest.mark.parametrize("args, error", [
    ((2, 2), ValueError), ((-1, 2), ValueError), ((0, 0), ValueError), ((0, -3), ValueError),
    ((0.0, 2), TypeError), ((0, 2.0), TypeError), ((True, 2), TypeError), ((0, True), TypeError),
    (("0", 2), TypeError), ((None, 2), TypeError),
])
def test_bad_shard_arguments_are_rejected(args, error):
    with pytest.raises(error):
        prefetch.Shard(*args)


def test_loader_rejects_a_shard_that_is_not_a_shard():
    with pytest.raises(TypeError, match="Shard"):
        prefetch.Loader(Indexed(4), shard=(0, 2))
