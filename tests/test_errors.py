"""Errors: a batch's exception reaches the consumer intact; bad configuration fails up front."""

from __future__ import annotations

import concurrent.futures as cf

import pytest
from helpers import AsyncIndices, Failing, Indices, Unpicklable

import prefetch


@pytest.mark.parametrize("executor", ["thread", "process", "pool"])
def test_getitem_exception_keeps_its_type_index_and_worker_traceback(executor):
    pool = cf.ThreadPoolExecutor(2) if executor == "pool" else None
    ds = Failing(20, bad=7)
    loader = prefetch.Loader(ds, workers=3, executor=pool or executor)
    got = []
    with pytest.raises(LookupError, match="batch 7 is corrupt") as info:
        for b in loader:
            got.append(b)
    assert got == list(range(7))  # everything before the bad batch, in order
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "__getitem__(7)" in notes
    assert "Traceback" in notes and "__getitem__" in notes and "helpers.py" in notes
    # the loader stays usable
    ds.bad = -1
    assert list(loader) == list(range(20))
    loader.close()
    if pool:
        pool.shutdown()


def test_coroutine_getitem_exception_reaches_the_consumer():
    class Bad(AsyncIndices):
        async def __getitem__(self, i):
            if i == 3:
                raise KeyError(i)
            return i

    with prefetch.Loader(Bad(10), workers=4) as loader:
        with pytest.raises(KeyError) as info:
            list(loader)
        assert "__getitem__(3)" in "\n".join(info.value.__notes__)


def test_unordered_epoch_raises_as_soon_as_a_batch_fails():
    ds = Failing(200, bad=2, delay=0.005)
    with prefetch.Loader(ds, workers=4, ordered=False) as loader:
        got = []
        with pytest.raises(LookupError):
            for b in loader:
                got.append(b)
        assert len(got) < 50


class NoLen:
    def __getitem__(self, i):
        return i


class NoGetitem:
    def __len__(self):
        return 3


class NegativeLen(Indices):
    def __len__(self):
        return -1


class FloatLen(Indices):
    def __len__(self):
        return 2.5


@pytest.mark.parametrize("kwargs, error, match", [
    ({"workers": -1}, ValueError, "workers"),
    ({"workers": -2}, ValueError, "workers"),
    ({"workers": 1.5}, TypeError, "workers"),
    ({"workers": True}, TypeError, "workers"),
    ({"max_queue_size": -1}, ValueError, "max_queue_size"),
    ({"max_queue_size": "10"}, TypeError, "max_queue_size"),
    ({"executor": "gpu"}, ValueError, "executor"),
    ({"executor": object()}, TypeError, "executor"),
    ({"executor": "async"}, TypeError, "async def"),
    ({"seed": "abc"}, TypeError, "seed"),
    ({"shard": (0, 2)}, TypeError, "Shard"),
    ({"start_method": "magic"}, ValueError, "start_method"),
])
def test_bad_configuration_is_rejected_up_front(kwargs, error, match):
    with pytest.raises(error, match=match):
        prefetch.Loader(Indices(3), **kwargs)


@pytest.mark.parametrize("dataset, error, match", [
    (NoLen(), TypeError, "__len__"),
    (NoGetitem(), TypeError, "__getitem__"),
    (NegativeLen(3), ValueError, ">= 0"),
    (FloatLen(3), TypeError, "int"),
    (prefetch.PyDataset(), TypeError, "__getitem__"),
])
def test_bad_datasets_are_rejected_up_front(dataset, error, match):
    with pytest.raises(error, match=match):
        prefetch.Loader(dataset)


def test_unpicklable_dataset_with_processes_names_the_attribute():
    with pytest.raises(TypeError, match=r"attribute 'handle'.*lock"):
        prefetch.Loader(Unpicklable(3), use_multiprocessing=True)
    # threads do not need pickling
    with prefetch.Loader(Unpicklable(3)) as loader:
        assert list(loader) == [0, 1, 2]


def test_shard_arguments_are_checked():
    with pytest.raises(ValueError):
        prefetch.Shard(2, 2)
    with pytest.raises(ValueError):
        prefetch.Shard(0, 0)
    with pytest.raises(TypeError):
        prefetch.Shard(0.5, 2)


def test_closed_loader_refuses_to_iterate():
    loader = prefetch.Loader(Indices(3))
    loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        list(loader)
