"""Strict state: `load_state_dict` rejects every malformed state at load time with one
`ValueError` naming the field, changes nothing when it does, and never unpickles anything.
Valid states — this version's and version 1's — still load and resume exactly."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import prefetch
from prefetch.order import epoch_order
from prefetch.state import StateError
from scale_datasets import Endless, Indexed

pytestmark = pytest.mark.timeout(60)

N = 10
SHARD = prefetch.Shard(1, 2)  # 5 batches per epoch: local positions 0..4


def _loader(**kwargs) -> prefetch.Loader:
    return prefetch.Loader(Indexed(N), shuffle=True, seed=3, shard=SHARD, workers=1, **kwargs)


def _valid() -> dict:
    """A real state, mid-epoch: position 1 of host 1's part, batch at position 3 seen early."""
    with _loader() as loader:
        next(iter(loader))
        state = loader.state_dict()
    state["delivered_after"] = [3]
    return state


class Pickled:
    """Unpickling this would record that it happened."""

    unpickled = False

    def __reduce__(self):
        return (_mark, ())


def _mark():
    Pickled.unpickled = True
    return 0


PICKLE = pickle.dumps(Pickled(), protocol=0).decode("latin-1")


def _without(key):
    return lambda s: {k: v for k, v in s.items() if k != key}


def _with(**changes):
    return lambda s: dict(s, **changes)


# (id, how the valid state is broken, the field the error must name)
MALFORMED = [
    ("none", lambda s: None, "state"),
    ("list", lambda s: list(s.items()), "state"),
    ("json-text", lambda s: json.dumps(s), "state"),
    ("pickle-text", lambda s: PICKLE, "state"),
    ("pickle-bytes", lambda s: pickle.dumps(s), "state"),
    ("empty", lambda s: {}, "version"),
    ("version-999", _with(version=999), "version"),
    ("version-str", _with(version="2"), "version"),
    ("version-bool", _with(version=True), "version"),
    ("version-float", _with(version=2.0), "version"),
    *[(f"missing-{k}", _without(k), k) for k in
      ("epoch", "start", "position", "delivered_after", "skipped", "seed", "shuffle", "num_batches", "shard")],
    ("extra-key", _with(extra=1), "extra"),
    ("extra-dunder", _with(__reduce__=PICKLE), "__reduce__"),
    ("epoch-negative", _with(epoch=-1), "epoch"),
    ("epoch-huge", _with(epoch=10**18), "epoch"),
    ("epoch-str", _with(epoch="1"), "epoch"),
    ("epoch-float", _with(epoch=1.0), "epoch"),
    ("epoch-bool", _with(epoch=True), "epoch"),
    ("epoch-none", _with(epoch=None), "epoch"),
    ("start-negative", _with(start=-1), "start"),
    ("start-past-end", _with(start=N + 1), "start"),
    ("start-huge", _with(start=10**18), "start"),
    ("start-str", _with(start="0"), "start"),
    ("start-bool", _with(start=False), "start"),
    ("position-negative", _with(position=-1), "position"),
    ("position-past-part", _with(position=6, delivered_after=[]), "position"),
    ("position-huge", _with(position=10**18), "position"),
    ("position-str", _with(position="1"), "position"),
    ("position-float", _with(position=1.0), "position"),
    ("position-bool", _with(position=True), "position"),
    ("position-past-rest", _with(start=8, position=2, delivered_after=[]), "position"),  # 2 left: 1 per host
    ("after-str", _with(delivered_after="123"), "delivered_after"),
    ("after-int", _with(delivered_after=3), "delivered_after"),
    ("after-dict", _with(delivered_after={3: True}), "delivered_after"),
    ("after-bytes", _with(delivered_after=b"\x03"), "delivered_after"),
    ("after-pickle", _with(delivered_after=PICKLE), "delivered_after"),
    ("after-duplicate", _with(delivered_after=[3, 3]), "delivered_after"),
    ("after-unsorted", _with(delivered_after=[4, 3]), "delivered_after"),
    ("after-at-position", _with(delivered_after=[1]), "delivered_after"),
    ("after-below-position", _with(delivered_after=[0]), "delivered_after"),
    ("after-past-part", _with(delivered_after=[5]), "delivered_after"),
    ("after-huge", _with(delivered_after=[10**18]), "delivered_after"),
    ("after-str-entry", _with(delivered_after=["3"]), "delivered_after"),
    ("after-float-entry", _with(delivered_after=[3.0]), "delivered_after"),
    ("after-bool-entry", _with(delivered_after=[True]), "delivered_after"),
    ("after-too-long", _with(delivered_after=list(range(2, 12))), "delivered_after"),
    ("skipped-str", _with(skipped="0"), "skipped"),
    ("skipped-none", _with(skipped=None), "skipped"),
    ("skipped-duplicate", _with(skipped=[0, 0]), "skipped"),
    ("skipped-unsorted", _with(skipped=[3, 0]), "skipped"),
    ("skipped-negative", _with(skipped=[-1]), "skipped"),
    ("skipped-out-of-range", _with(skipped=[5]), "skipped"),
    ("skipped-not-consumed", _with(skipped=[2]), "skipped"),
    ("skipped-bool", _with(skipped=[False]), "skipped"),
    ("seed-negative", _with(seed=-1), "seed"),
    ("seed-huge", _with(seed=2**200), "seed"),
    ("seed-str", _with(seed="3"), "seed"),
    ("seed-float", _with(seed=3.0), "seed"),
    ("seed-bool", _with(seed=True), "seed"),
    ("seed-none", _with(seed=None), "seed"),
    ("seed-pickle", _with(seed=PICKLE), "seed"),
    ("shuffle-str", _with(shuffle="no"), "shuffle"),
    ("shuffle-int", _with(shuffle=1), "shuffle"),
    ("shuffle-none", _with(shuffle=None), "shuffle"),
    ("shuffle-other", _with(shuffle=False), "shuffle"),  # valid type, but not this loader's
    ("length-other", _with(num_batches=N + 1), "num_batches"),
    ("length-negative", _with(num_batches=-1), "num_batches"),
    ("length-str", _with(num_batches="10"), "num_batches"),
    ("length-float", _with(num_batches=10.0), "num_batches"),
    ("length-bool", _with(num_batches=True), "num_batches"),
    ("length-infinite", _with(num_batches=None), "num_batches"),
    ("shard-short", _with(shard=[1, 2]), "shard"),
    ("shard-str", _with(shard="1,2"), "shard"),
    ("shard-dict", _with(shard={"index": 1, "count": 2, "pad": False}), "shard"),
    ("shard-index-out", _with(shard=[2, 2, False]), "shard"),
    ("shard-index-negative", _with(shard=[-1, 2, False]), "shard"),
    ("shard-count-zero", _with(shard=[0, 0, False]), "shard"),
    ("shard-count-huge", _with(shard=[0, 10**18, False]), "shard"),
    ("shard-float", _with(shard=[1.0, 2, False]), "shard"),
    ("shard-bool-index", _with(shard=[True, 2, False]), "shard"),
    ("shard-pad-str", _with(shard=[1, 2, "no"]), "shard"),
    ("v1-with-v2-field", lambda s: {k: v for k, v in s.items() if k not in ("start", "skipped")} | {"version": 1,
                                                                                                   "skipped": []},
     "skipped"),
    ("v1-missing-shard", lambda s: {k: v for k, v in s.items() if k not in ("start", "skipped", "shard")}
     | {"version": 1}, "shard"),
]


@pytest.mark.parametrize("break_it, field", [(b, f) for _, b, f in MALFORMED], ids=[i for i, _, _ in MALFORMED])
def test_a_malformed_state_is_rejected_at_load_naming_the_field(break_it, field):
    bad = break_it(_valid())
    with _loader() as loader:
        for _ in zip(range(2), loader):
            pass
        before = loader.state_dict()
        with pytest.raises(ValueError, match=f"field '{field}") as info:
            loader.load_state_dict(bad)
        assert isinstance(info.value, StateError) and info.value.field == field
        assert loader.state_dict() == before  # nothing was changed
        assert len(list(loader)) == 5  # and the loader goes on as if nothing happened
    assert not Pickled.unpickled


def test_the_valid_state_of_the_table_loads_and_resumes_there():
    state = _valid()
    order = epoch_order(N, epoch=0, seed=3, shuffle=True, shard=SHARD).tolist()
    with _loader() as loader:
        loader.load_state_dict(state)
        assert list(loader) == [order[p] for p in (1, 2, 4)]
        assert list(loader) == epoch_order(N, epoch=1, seed=3, shuffle=True, shard=SHARD).tolist()


def test_numpy_integers_and_tuples_are_accepted():
    state = _valid()
    state.update(epoch=np.int64(1), position=np.int32(2), delivered_after=(np.int64(4),), seed=np.uint64(3),
                 shuffle=np.bool_(True), shard=(1, 2, False))
    with _loader() as loader:
        loader.load_state_dict(state)
        order = epoch_order(N, epoch=1, seed=3, shuffle=True, shard=SHARD).tolist()
        assert list(loader) == [order[2], order[3]]


def test_a_state_at_the_end_of_its_part_loads_and_the_epoch_is_then_empty():
    with _loader() as loader:
        loader.load_state_dict(dict(_valid(), position=5, delivered_after=[]))
        assert list(loader) == []
        assert loader.epoch == 1


def test_a_version_1_state_still_loads_and_resumes_exactly():
    v1 = {"version": 1, "epoch": 2, "position": 1, "delivered_after": [3], "seed": 3, "shuffle": True,
          "num_batches": N, "shard": [1, 2, False]}
    order = epoch_order(N, epoch=2, seed=3, shuffle=True, shard=SHARD).tolist()
    with _loader() as loader:
        loader.load_state_dict(v1)
        assert loader.state_dict()["version"] == 2
        assert list(loader) == [order[p] for p in (1, 2, 4)]


def test_a_version_1_unsharded_state_loads():
    v1 = {"version": 1, "epoch": 0, "position": 4, "delivered_after": [], "seed": 9, "shuffle": True,
          "num_batches": 10, "shard": None}
    with prefetch.Loader(Indexed(10), shuffle=True, workers=1) as loader:
        loader.load_state_dict(v1)
        assert list(loader) == epoch_order(10, epoch=0, seed=9, shuffle=True, shard=None).tolist()[4:]


@pytest.mark.parametrize("state, field", [
    ({"position": -1}, "position"), ({"position": 2**64}, "position"), ({"start": -5}, "start"),
    ({"delivered_after": [2]}, "delivered_after"), ({"num_batches": 5}, "num_batches"),
], ids=repr)
def test_an_infinite_datasets_state_is_checked_too(state, field):
    with prefetch.Loader(Endless(), workers=1) as loader:
        for _ in zip(range(3), loader):
            pass
        good = loader.state_dict()
        with pytest.raises(ValueError, match=f"field '{field}'"):
            loader.load_state_dict(dict(good, **state))
        loader.load_state_dict(good)
        assert next(iter(loader)) == 3
