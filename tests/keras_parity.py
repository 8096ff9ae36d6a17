"""Native Keras vs `to_keras` on one backend: the tests, shared by `test_keras_parity_jax.py`
and `test_keras_parity_torch.py` (each defines the `parity` fixture for its backend).

Keras picks its backend at import, so `tests/keras_parity_checks.py` runs in a subprocess
per backend; it gives the same `keras.utils.PyDataset` subclass to Keras natively (the
control) and through `to_keras`, and records every batch each step ran on, the hooks, the
warnings and the errors. Native Keras with `workers=0` (serial, no enqueuer) is the reference
for batches; hooks are compared with native Keras in every mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ["serial", "threads", "processes"]
SCENARIOS = ["n=6 steps=None", "n=6 steps=4", "n=6 steps=6", "n=6 steps=8", "n=None steps=4"]
CALLS = ["fit", "evaluate", "predict"]
TIMEOUT = 400


def run_checks(backend: str) -> dict:
    """Run every parity check under `backend` in a fresh interpreter; the parsed findings."""
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(HERE.parent))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, str(HERE / "keras_parity_checks.py")], cwd=HERE.parent, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT - 20)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"the parity checks failed to run:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    results = json.loads(lines[-1][len("RESULTS "):])
    assert results["backend"] == backend
    for name, found in results.items():
        assert not (isinstance(found, dict) and "exception" in found), f"{name}:\n{found['exception']}"
    return results


def scenario(parity: dict, mode: str, name: str) -> tuple[dict, dict]:
    both = parity["calls"][f"{mode} {name}"]
    return both["native"], both["to_keras"]


# -- the tests ---------------------------------------------------------------------------------------
def test_hooks_run_exactly_as_often_as_native_keras_in_fit_evaluate_and_predict(parity):
    for mode in MODES:
        for name in SCENARIOS:
            native, ours = scenario(parity, mode, name)
            for call in CALLS:
                assert ours[call]["hooks"] == native[call]["hooks"], (mode, name, call)
    # What that is, with Keras 3 today: fit(epochs=3) calls each hook 4 times (3 epochs and
    # the look Keras takes at a batch to build the model); evaluate after fit ends once more
    # than it begins (Keras resets the iterator first); predict once each.
    native, _ = scenario(parity, "threads", "n=6 steps=None")
    assert [native[c]["hooks"] for c in CALLS] == ["bebebebe", "ebe", "be"]


def test_infinite_dataset_gets_epoch_hooks_every_keras_epoch(parity):
    for mode in MODES:
        native, ours = scenario(parity, mode, "n=None steps=4")
        assert ours["fit"]["hooks"] == native["fit"]["hooks"] == "bebebebe"
        assert ours["fit"]["batches"] == list(range(12))


def test_batches_and_their_order_match_native_serial_keras_for_every_executor(parity):
    for mode in MODES:
        for name in SCENARIOS:
            reference, _ = scenario(parity, "serial", name)
            native, ours = scenario(parity, mode, name)
            for call in CALLS:
                assert ours[call]["batches"] == reference[call]["batches"], (mode, name, call)
                assert ours[call]["ran_out"] == native[call]["ran_out"], (mode, name, call)
            assert ours["predict"]["rows"] == native["predict"]["rows"]


def test_steps_smaller_equal_or_larger_than_the_dataset_neither_skip_nor_repeat_batches(parity):
    every = list(range(6))
    expected = {  # fit(epochs=3), evaluate, predict
        "n=6 steps=None": (every * 3, every, every),
        "n=6 steps=4": (every + every[:4], every[:4], every[:4]),  # Keras epoch 1 gets the last 2
        "n=6 steps=6": (every * 3, every, every),
        "n=6 steps=8": (every * 3, every, every),  # Keras warns it ran out, each epoch
        "n=None steps=4": (list(range(12)), [0, 1, 2, 3], [0, 1, 2, 3]),
    }
    for mode in MODES:
        for name, want in expected.items():
            _, ours = scenario(parity, mode, name)
            assert tuple(ours[c]["batches"] for c in CALLS) == want, (mode, name)


def test_native_keras_enqueuer_gives_its_build_batch_to_no_epoch(parity):
    # The control documents a difference (README, "Coming from Keras"): with workers > 0,
    # Keras's enqueuer hands the batch it builds the model from to no epoch, so fit starts at
    # batch 1 (infinite: batch 0 is never trained on) and each finite epoch is rotated.
    # to_keras hands that batch out again. If Keras changes this, this test says so.
    for mode in ("threads", "processes"):
        native, ours = scenario(parity, mode, "n=6 steps=None")
        assert native["fit"]["batches"] == [1, 2, 3, 4, 5, 0] * 3
        assert ours["fit"]["batches"] == list(range(6)) * 3
        native, ours = scenario(parity, mode, "n=None steps=4")
        assert native["fit"]["batches"] == list(range(1, 13))


def test_workers_zero_makes_batches_in_the_calling_thread_like_keras(parity):
    for name in SCENARIOS:
        native, ours = scenario(parity, "serial", name)
        assert native["getitem_threads"] == ours["getitem_threads"] == ["MainThread"]


def test_a_failing_batch_raises_the_same_exception_type_as_native_keras(parity):
    found = parity["exceptions"]
    for mode in MODES:
        assert found[f"{mode} native"]["error"] == found[f"{mode} to_keras"]["error"] == "LookupError"
        # Trained up to the failing batch 3, hooks as serial Keras: the build look, then epoch 0.
        assert found[f"{mode} to_keras"]["batches"] == found["serial native"]["batches"] == [0, 1, 2]
        assert found[f"{mode} to_keras"]["hooks"] == found["serial native"]["hooks"] == "beb"


def test_shuffled_order_is_the_same_for_a_seed_and_each_epoch_is_a_permutation(parity):
    for via in ("native", "to_keras"):
        first, second = parity["shuffle_order"][via]
        assert first == second, via
        epochs = [first[k:k + 6] for k in (0, 6, 12)]
        assert all(sorted(e) == list(range(6)) for e in epochs), via
        assert len({tuple(e) for e in epochs}) > 1, via  # a new order each epoch


def test_shuffle_with_an_infinite_dataset_is_ignored_with_one_warning(parity):
    found = parity["shuffle_infinite"]
    assert found["native"]["warnings"] == found["to_keras"]["warnings"] == 1
    assert found["to_keras"]["batches"] == list(range(6))
    assert found["to_keras"]["hooks"] == found["native"]["hooks"]


def test_validation_data_hooks_and_batches_match_native_keras(parity):
    native, ours = parity["validation_hooks"]["native"], parity["validation_hooks"]["to_keras"]
    assert ours["train_hooks"] == native["train_hooks"] and ours["val_hooks"] == native["val_hooks"]
    assert ours["batches"] == ([0, 1, 2, 3] + [0, 1, 2]) * 3  # each epoch: train 4, validate 3


def test_state_the_hooks_change_reaches_process_workers_by_the_next_keras_epoch(parity):
    # Infinite dataset, steps_per_epoch=5: on_epoch_begin bumps a stage the batches carry
    # (1 at the build look, then 2, 3, 4). Process workers hold a copy: batches made ahead
    # from the old one are made again; only the batch Keras looked at is replayed.
    found = parity["hook_state_reaches_workers"]["processes to_keras"]
    assert found["batches"] == list(range(15))
    stages = found["stages"]  # on CPU: [1] + [2] * 4 + [3] * 5 + [4] * 5
    for k in range(3):
        epoch = stages[5 * k: 5 * k + 5]
        # (Keras's JAX trainer on an accelerator takes one batch ahead: it may be the old stage.)
        assert epoch[1:] == [k + 2] * 4 and epoch[0] in (k + 1, k + 2), stages
    # Threads share the dataset: batches made ahead keep their stage, as with Keras's threads.
    for via in ("native", "to_keras"):
        stages = parity["hook_state_reaches_workers"][f"threads {via}"]["stages"]
        assert stages == sorted(stages) and len(stages) == 15, via
