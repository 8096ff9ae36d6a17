"""Exact resume: a run interrupted anywhere and resumed from `state_dict()` in a new process
delivers exactly what the uninterrupted run would have.

Each case interrupts a run after a pseudo-random number of batches (fixed seeds), saves the
state as JSON, and hands it to `scale_resume.py` in a fresh interpreter, which rebuilds the
loader, loads the state and finishes the run.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import prefetch
from prefetch.order import epoch_order
from scale_datasets import Endless, Gated, Indexed
from scale_resume import build

CHILD = Path(__file__).resolve().parent / "scale_resume.py"
EPOCHS = 3
pytestmark = pytest.mark.timeout(180)

CONFIGS = {
    "thread": ({"n": 23}, {"executor": "thread", "workers": 3, "max_queue_size": 5, "shuffle": True, "seed": 41}),
    "thread-unordered": ({"n": 23, "delay": 0.002, "spread": 5},
                         {"executor": "thread", "workers": 4, "max_queue_size": 8, "shuffle": True, "seed": 42,
                          "ordered": False}),
    "thread-sharded": ({"n": 29}, {"executor": "thread", "workers": 2, "max_queue_size": 4, "shuffle": True,
                                   "seed": 43, "shard": [1, 3, False]}),
    "process": ({"n": 23}, {"executor": "process", "workers": 2, "max_queue_size": 5, "shuffle": True, "seed": 44}),
    "process-unordered": ({"n": 23, "delay": 0.002, "spread": 5},
                          {"executor": "process", "workers": 2, "max_queue_size": 6, "shuffle": True, "seed": 45,
                           "ordered": False}),
}


def _job(config: str) -> dict:
    dataset, loader = CONFIGS[config]
    return {"dataset": dataset, "loader": loader, "epochs": EPOCHS}


def _uninterrupted(job: dict) -> list[list[int]]:
    with build(job) as loader:
        return [list(loader) for _ in range(job["epochs"])]


def _interrupted(job: dict, stop_after: int, how: str) -> tuple[list[list[int]], dict]:
    """Deliver `stop_after` batches, then take the state: mid-iteration (a checkpoint right
    before a preemption) or after leaving the loop with `break`."""
    delivered: list[list[int]] = []
    state = None
    with build(job) as loader:
        while state is None and len(delivered) < job["epochs"]:
            got: list[int] = []
            delivered.append(got)
            for batch in loader:
                got.append(batch)
                if sum(map(len, delivered)) == stop_after:
                    if how == "checkpoint":
                        state = loader.state_dict()
                    break
            if sum(map(len, delivered)) == stop_after and state is None:
                state = loader.state_dict()  # after the break
    text = json.dumps(state)  # must be JSON as it is
    return delivered, json.loads(text)


def _resume_in_new_process(jobs: list[dict]) -> list[list[list[int]]]:
    proc = subprocess.run([sys.executable, str(CHILD)], input=json.dumps(jobs), capture_output=True, text=True,
                          timeout=150, cwd=CHILD.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def _cases(config: str, expected: list[list[int]]) -> list[tuple[int, str]]:
    total = sum(map(len, expected))
    rng = random.Random(f"resume-{config}")
    points = sorted({rng.randrange(1, total) for _ in range(3)} | {len(expected[0])})  # and at an epoch's end
    return [(point, how) for point in points for how in ("checkpoint", "break")]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_resume_in_a_new_process_continues_exactly_where_the_run_stopped(config):
    job = _job(config)
    ordered = job["loader"].get("ordered", True)
    expected = _uninterrupted(job)
    cases = _cases(config, expected)
    runs = [_interrupted(job, point, how) for point, how in cases]
    resumed = _resume_in_new_process([dict(job, state=state) for _, state in runs])
    for (point, how), (before, state), after in zip(cases, runs, resumed):
        where = f"{config}: interrupted after {point} batches ({how}), state {state}"
        epoch = len(before) - 1
        assert state["epoch"] == epoch, where
        assert len(after) == EPOCHS - epoch, where
        if ordered:
            assert [b for e in before for b in e] + [b for e in after for b in e] == \
                [b for e in expected for b in e], where
        else:
            # Completion order is the workers' business; each epoch must still be whole, once.
            for got, want in zip(before[:-1], expected):
                assert sorted(got) == sorted(want), where
            assert sorted(before[-1] + after[0]) == sorted(expected[epoch]), where
            for got, want in zip(after[1:], expected[epoch + 1:]):
                assert sorted(got) == sorted(want), where
            _check_delivered_positions(job, state, before[-1])


def _check_delivered_positions(job: dict, state: dict, delivered: list[int]) -> None:
    """The state names exactly the positions whose batches were delivered."""
    shard = job["loader"].get("shard")
    order = epoch_order(job["dataset"]["n"], epoch=state["epoch"], seed=state["seed"], shuffle=state["shuffle"],
                        shard=None if shard is None else prefetch.Shard(*shard)).tolist()
    positions = set(range(state["position"])) | set(state["delivered_after"])
    assert all(p > state["position"] for p in state["delivered_after"])
    assert sorted(order[p] for p in positions) == sorted(delivered)


def test_unordered_state_records_batches_delivered_past_a_gap():
    gate = threading.Event()
    with prefetch.Loader(Gated(8, gate), workers=4, max_queue_size=4, ordered=False, seed=1) as loader:
        early = []
        for batch in loader:
            early.append(batch)
            if len(early) == 3:
                state = loader.state_dict()
                break
        gate.set()  # before close(), which would otherwise wait for batch 0's thread
    assert 0 not in early  # batch 0 was held back: the others overtook it
    assert state["position"] == 0 and state["delivered_after"] == sorted(early)
    job = {"dataset": {"n": 8}, "loader": {"executor": "thread", "workers": 2, "ordered": False, "seed": 1},
           "epochs": 1, "state": json.loads(json.dumps(state))}
    [[rest]] = _resume_in_new_process([job])
    assert sorted(early + rest) == list(range(8))


# -- in the same process ----------------------------------------------------------------------
def test_after_break_the_next_epoch_is_whole_but_the_state_resumes_mid_epoch():
    with prefetch.Loader(Indexed(10), workers=2, shuffle=True, seed=9) as loader:
        order0 = epoch_order(10, epoch=0, seed=9, shuffle=True, shard=None).tolist()
        order1 = epoch_order(10, epoch=1, seed=9, shuffle=True, shard=None).tolist()
        for i, batch in enumerate(loader):
            if i == 3:
                break
        state = loader.state_dict()
        assert (state["epoch"], state["position"]) == (0, 4)
        assert list(loader) == order1  # the contract: the next iteration starts the next epoch, whole
        loader.load_state_dict(state)  # ... while the state goes back right after the last delivered batch
        assert list(loader) == order0[4:]
        assert list(loader) == order1


def test_state_dict_is_json_serialisable():
    states = []
    with prefetch.Loader(Indexed(6), shuffle=True, seed=2**62 + 7, ordered=False,
                         shard=prefetch.Shard(0, 2, pad=True)) as loader:
        states.append(loader.state_dict())
        for _ in loader:
            states.append(loader.state_dict())
        states.append(loader.state_dict())
    with prefetch.Loader(Endless(), workers=2) as loader:
        for i, _ in enumerate(loader):
            if i == 4:
                break
        states.append(loader.state_dict())
    for state in states:
        assert json.loads(json.dumps(state)) == state
    assert states[-1]["num_batches"] is None and states[-1]["position"] == 5


def _state(**overrides) -> dict:
    with prefetch.Loader(Indexed(10), shuffle=True, seed=3, shard=prefetch.Shard(1, 2)) as loader:
        next(iter(loader))
        state = loader.state_dict()
    return dict(state, **overrides)


# (Another shard or host count is not "another setup": that is elastic resume, test_elastic.py.)
@pytest.mark.parametrize("make, match", [
    (lambda: prefetch.Loader(Indexed(11), shuffle=True, shard=prefetch.Shard(1, 2)), "10 batches"),
    (lambda: prefetch.Loader(Indexed(10), shuffle=False, shard=prefetch.Shard(1, 2)), "shuffle"),
], ids=["length", "shuffle"])
def test_loading_a_state_for_another_setup_raises_value_error(make, match):
    state = _state()
    with make() as loader:
        with pytest.raises(ValueError, match=match):
            loader.load_state_dict(state)
        assert loader.epoch == 0  # nothing was changed


@pytest.mark.parametrize("state", [None, {}, {"version": 999}, [1, 2]], ids=repr)
def test_loading_something_that_is_not_a_state_raises_value_error(state):
    with prefetch.Loader(Indexed(4)) as loader:
        with pytest.raises(ValueError):
            loader.load_state_dict(state)
