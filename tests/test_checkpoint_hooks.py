"""Checkpoint hooks: the Keras callback next to BackupAndRestore (and as a plain file), the
Loader as a `torch.distributed.checkpoint` Stateful, and a real `kill -9` of a training
process resumed to the same final batches (examples/kill_and_resume.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import prefetch
from prefetch.adapters.keras_state import LoaderFile
from prefetch.order import epoch_order
from scale_datasets import Endless, Gated, Indexed

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# -- the plain file ---------------------------------------------------------------------------
def test_a_loader_file_resumes_mid_epoch_in_a_new_loader(tmp_path):
    path = tmp_path / "deep" / "loader.json"
    with prefetch.Loader(Indexed(9), shuffle=True, seed=4, workers=2) as loader:
        it = iter(loader)
        first = [next(it) for _ in range(4)]
        LoaderFile(loader, path).save()
        it.close()
    assert [p.name for p in path.parent.iterdir()] == ["loader.json"]  # no temporary left
    with prefetch.Loader(Indexed(9), shuffle=True, workers=2) as again:
        assert LoaderFile(again, path).restore()
        assert first + list(again) == epoch_order(9, epoch=0, seed=4, shuffle=True, shard=None).tolist()


def test_an_epoch_taken_to_its_last_batch_is_saved_as_the_start_of_the_next(tmp_path):
    path = tmp_path / "loader.json"
    with prefetch.Loader(Indexed(5), workers=1) as loader:
        it = iter(loader)
        for _ in range(5):  # as Keras does: it stops at len(loader), never asking for the end
            next(it)
        LoaderFile(loader, path).save()
        it.close()
    state = json.loads(path.read_text())
    assert (state["epoch"], state["position"]) == (1, 0)


def test_restoring_without_a_file_changes_nothing_and_a_wrong_file_is_refused(tmp_path):
    with prefetch.Loader(Indexed(5), workers=1) as loader:
        assert not LoaderFile(loader, tmp_path / "none.json").restore()
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(dict(loader.state_dict(), num_batches=6)))
        with pytest.raises(ValueError, match="num_batches"):
            LoaderFile(loader, bad).restore()
        assert list(loader) == [0, 1, 2, 3, 4]
    with pytest.raises(TypeError):
        LoaderFile(object(), bad)


# -- Keras: BackupAndRestore, ModelCheckpoint ------------------------------------------------------
def _keras(form: str, phase: str, folder: Path) -> dict:
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(HERE / "keras_state_run.py"), form, phase, str(folder)], cwd=HERE,
                          env=env, capture_output=True, text=True, timeout=250, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.fixture(scope="module")
def keras_whole(tmp_path_factory):
    return _keras("backup", "whole", tmp_path_factory.mktemp("whole"))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("form", ["backup", "file"])
def test_keras_fit_stopped_mid_epoch_resumes_on_the_same_batches_and_weights(form, keras_whole, tmp_path):
    crashed = _keras(form, "crash", tmp_path)
    resumed = _keras(form, "resume", tmp_path)
    whole = keras_whole["seen"]
    assert crashed["seen"]["2"] == whole["2"][:4]  # it stopped in epoch 2, after 4 batches
    # Keras (like BackupAndRestore) restarts the interrupted epoch from its first step: so
    # does the loader, with that epoch's order.
    assert {**{k: crashed["seen"][k] for k in ("0", "1")}, **resumed["seen"]} == whole
    assert resumed["weights"] == keras_whole["weights"]


def test_the_keras_callback_is_importable_without_importing_keras():
    code = "import sys, prefetch.adapters.keras_state; assert 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))


# -- torch.distributed.checkpoint --------------------------------------------------------------------
def _dcp_round_trip(save: prefetch.Loader, load: prefetch.Loader, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.stateful import Stateful

    assert isinstance(save, Stateful)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "assuming the intent is to save in a single process"
        dcp.save({"loader": save}, checkpoint_id=str(folder), no_dist=True)
        dcp.load({"loader": load}, checkpoint_id=str(folder), no_dist=True)


@pytest.mark.timeout(120)
def test_the_loader_is_a_dcp_stateful_and_resumes_exactly(tmp_path):
    with prefetch.Loader(Indexed(12), shuffle=True, seed=8, workers=2, max_failures=1) as loader:
        it = iter(loader)
        first = [next(it) for _ in range(5)]
        it.close()
        with prefetch.Loader(Indexed(12), shuffle=True, workers=2, max_failures=1) as again:
            _dcp_round_trip(loader, again, tmp_path)
            assert again.state_dict() == loader.state_dict()
            assert first + list(again) == epoch_order(12, epoch=0, seed=8, shuffle=True, shard=None).tolist()


@pytest.mark.timeout(120)
def test_dcp_carries_lists_and_none_that_a_fresh_loader_does_not_have(tmp_path):
    import threading

    gate = threading.Event()
    loader = prefetch.Loader(Gated(8, gate), workers=4, max_queue_size=4, ordered=False, seed=1,
                             shard=prefetch.Shard(1, 2))
    try:
        it = iter(loader)
        early = [next(it)]
        it.close()
    finally:
        gate.set()
    with prefetch.Loader(Indexed(8), ordered=False, seed=2, shard=prefetch.Shard(1, 2)) as again:
        _dcp_round_trip(loader, again, tmp_path / "a")
        assert again.state_dict() == loader.state_dict()
        assert sorted(early + list(again)) == [1, 3, 5, 7]
    loader.close()
    with prefetch.Loader(Endless(), workers=1) as endless, prefetch.Loader(Endless(), workers=1) as again:
        it = iter(endless)
        [next(it) for _ in range(3)]
        it.close()
        _dcp_round_trip(endless, again, tmp_path / "b")
        assert next(iter(again)) == 3


# -- kill -9 ---------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_a_training_process_killed_with_sigkill_resumes_to_the_same_final_batches():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "kill_and_resume.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "exit status -9" in proc.stdout and "same final batches and weights" in proc.stdout
    assert "skipped batch 7 of epoch 0 after OSError" in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dcp_on_two_ranks_resumes_elastically_on_three(tmp_path):
    """DCP writes non-tensor values from rank 0 only and every rank loads that copy: the
    state being host-independent is what makes the three new ranks split the rest right."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    for phase, world in (("save", 2), ("load", 3)):
        proc = subprocess.run([sys.executable, str(HERE / "dcp_elastic_run.py"), phase, str(world),
                               str(tmp_path / "ckpt"), str(tmp_path / phase)], env=env, capture_output=True,
                              text=True, timeout=280, check=False)
        assert proc.returncode == 0, proc.stderr[-4000:]
    read = [json.loads((tmp_path / f"save.{r}").read_text()) for r in range(2)]
    rest = [json.loads((tmp_path / f"load.{r}").read_text()) for r in range(3)]
    order = epoch_order(20, epoch=0, seed=3, shuffle=True, shard=None).tolist()
    assert read == [order[r:6:2] for r in range(2)]  # global positions 0-5
    assert rest == [order[6 + r:18:3] for r in range(3)]  # 6-17; the last 2 of 14 do not split 3 ways
