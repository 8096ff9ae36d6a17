"""`prefetch.adapters.keras.to_keras` under real Keras 3 training, on the JAX and torch backends.

Keras chooses its backend when it is imported, so the Keras work happens in one subprocess per
backend (`tests/adapter_keras_checks.py`, which prints its findings as JSON); the tests here
assert on those findings. One Keras import per backend serves every test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import prefetch

HERE = Path(__file__).resolve().parent
CHECKS = HERE / "adapter_keras_checks.py"
BACKENDS = ["jax", "torch"]


@pytest.fixture(scope="module", params=BACKENDS)
def keras_run(request):
    """Run every Keras check once under one backend; returns (results, stderr)."""
    env = dict(os.environ, KERAS_BACKEND=request.param, PYTHONPATH=str(HERE.parent))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, str(CHECKS)], cwd=HERE.parent, env=env, capture_output=True,
                          text=True, timeout=400)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, (
        f"the Keras checks failed to run:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    results = json.loads(lines[-1][len("RESULTS "):])
    assert results["backend"] == request.param
    return results, proc.stderr


def result(keras_run, name):
    results, _ = keras_run
    found = results[name]
    assert "exception" not in found, found.get("exception")
    return found


def decreased(losses):
    return len(losses) >= 2 and losses[-1] < losses[0]


@pytest.mark.timeout(420)
def test_fit_trains_two_epochs_and_loss_decreases(keras_run):
    r = result(keras_run, "fit_two_epochs_with_validation")
    assert decreased(r["loss"]), r["loss"]


@pytest.mark.timeout(420)
def test_fit_sees_each_batch_once_per_epoch(keras_run):
    r = result(keras_run, "fit_two_epochs_with_validation")
    assert r["batches_per_epoch"] == [8, 8]
    # Keras's first look at a batch (to build the model) is replayed, not fetched again.
    assert r["calls"] == [list(range(8))] * 2


@pytest.mark.timeout(420)
def test_dataset_hooks_run_when_keras_calls_them(keras_run):
    # As for a PyDataset Keras runs itself (tests/keras_parity.py compares with the control):
    # once around the look Keras takes to build, then once per epoch; validation: Keras
    # resets its iterator (an end) before each evaluation.
    r = result(keras_run, "fit_two_epochs_with_validation")
    assert r["hooks"] == ["begin", "end"] * 3
    assert r["val_hooks"] == ["end", "begin", "end"] * 2


@pytest.mark.timeout(420)
def test_validation_data_is_evaluated_every_epoch(keras_run):
    r = result(keras_run, "fit_two_epochs_with_validation")
    assert len(r["val_loss"]) == 2 and decreased(r["val_loss"]), r["val_loss"]
    assert r["val_calls"] == [[0, 1, 2]] * 2


def _orders(n, epochs, **kwargs):
    with prefetch.Loader(list(range(n)), **kwargs) as loader:
        return [list(loader) for _ in range(epochs)]


@pytest.mark.timeout(420)
@pytest.mark.parametrize("mode", ["ordered", "shuffle"])
def test_steps_per_epoch_smaller_than_dataset_neither_skips_nor_repeats(keras_run, mode):
    r = result(keras_run, "steps_per_epoch_smaller_than_dataset")[mode]
    # Each batch i has y = 10**i, and a metric sums y over a Keras epoch: its digits say
    # which batches that epoch trained on. 6 batches, steps_per_epoch=4, 3 Keras epochs.
    first, second = _orders(6, 2, shuffle=(mode == "shuffle"), seed=3)
    code = lambda idx: sum(10 ** i for i in idx)  # noqa: E731
    assert r["codes"] == [code(first[:4]), code(first[4:]), code(second[:4])]
    # Hooks follow Keras's epochs (and its build look), not the Loader's passes.
    assert r["hooks"] == ["begin", "end"] * 4


@pytest.mark.timeout(420)
def test_sample_weight_in_batches_is_used(keras_run):
    r = result(keras_run, "sample_weight_batches")
    assert r["zero_weight_loss"] == [0.0] and r["weights_unchanged"]
    assert decreased(r["unit_weight_loss"])


@pytest.mark.timeout(420)
def test_class_weight_becomes_sample_weight(keras_run):
    assert result(keras_run, "class_weight")["loss"] == [0.0]


@pytest.mark.timeout(420)
def test_list_batches_train_and_lone_arrays_predict(keras_run):
    r = result(keras_run, "list_and_lone_array_batches")
    assert decreased(r["list_loss"])
    assert r["lone_predict_shape"] == [24, 1] and r["lone_calls"] == [0, 1, 2]


@pytest.mark.timeout(420)
def test_dict_batches_feed_named_inputs(keras_run):
    r = result(keras_run, "dict_batches")
    assert decreased(r["loss"])
    assert r["hooks"] == ["begin", "end"] * 3
    assert r["predict_shape"] == [24, 1]


@pytest.mark.timeout(420)
def test_evaluate_and_predict_run_one_epoch_in_order(keras_run):
    r = result(keras_run, "evaluate_and_predict")
    assert r["loss"] >= 0
    assert r["eval_calls"] == list(range(5)) and r["eval_hooks"] == ["end", "begin", "end"]
    assert r["predict_shape"] == [40, 1] and r["predict_in_order"]
    assert r["predict_hooks"] == ["begin", "end"]


@pytest.mark.timeout(420)
def test_building_a_fresh_model_does_not_cost_an_epoch(keras_run):
    r = result(keras_run, "evaluate_and_predict")
    assert r["fresh_loss_finite"]
    assert r["fresh_calls"] == list(range(5)) and r["fresh_hooks"] == ["begin", "end"] * 2


@pytest.mark.timeout(420)
def test_keras_pydataset_works_through_loader_and_to_keras(keras_run):
    r = result(keras_run, "keras_pydataset")
    assert r["via_loader"] == {"settings": [3, 4], "batches": [5, 5], "hooks": ["begin", "end"] * 2}
    assert decreased(r["loss"])
    assert r["batches_per_epoch"] == [5, 5] and r["calls"] == [list(range(5))] * 2
    assert r["hooks"] == ["begin", "end"] * 3
    assert r["loader_workers"] == 2  # read from the dataset's `workers`


@pytest.mark.timeout(420)
def test_to_keras_closes_only_the_loader_it_built(keras_run):
    assert result(keras_run, "loader_ownership") == {
        "owned_closed": True, "user_loader_left_open": True, "kwargs_with_loader_rejected": True}


@pytest.mark.timeout(420)
def test_a_batch_keras_cannot_read_raises_value_error(keras_run):
    r = result(keras_run, "bad_batch_structure")
    assert r["error"] == "ValueError" and "tuple of 4" in r["message"]


@pytest.mark.timeout(420)
def test_each_adapter_iteration_is_one_loader_epoch(keras_run):
    r = result(keras_run, "iteration_protocol")
    every = list(range(6))
    assert r["num_batches"] == 6 and r["batch_size"] is None
    assert r["full"] == every and r["backend_iterator"] == every
    # A look at the first batch is handed out again; the epoch goes on from there.
    assert r["looked_at"] == 0 and r["after_look"] == every
    # A newer iteration takes over from one dropped part-way but not yet collected.
    assert r["stale_took"] == [0, 1, 2] and r["after_stale"] == every and r["stale_resumed"] == []
    assert r["after_stale_look"] == every
    # Only Keras calls the dataset's hooks (through the adapter's on_epoch_begin / _end).
    # Loader passes: full, look + after_look, stale (cut), after_stale, after_stale_look,
    # backend_iterator: five complete.
    assert r["hooks"] == [] and r["loader_passes"] == 5
    assert r["closed"]


@pytest.mark.timeout(420)
def test_no_errors_escape_into_finalizers(keras_run):
    _, stderr = keras_run
    assert "Exception ignored" not in stderr, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]


def test_importing_the_adapters_imports_no_framework():
    code = ("import sys, prefetch, prefetch.adapters, prefetch.adapters.keras, prefetch.adapters.torch, "
            "prefetch.adapters.jax\n"
            "print(sorted(m for m in ('keras', 'torch', 'jax', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE.parent, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
