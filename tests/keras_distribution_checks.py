"""One process of a two-process `keras.distribution` (JAX on CPU), run by the JAX parity tests.

    KERAS_BACKEND=jax python tests/keras_distribution_checks.py PROCESS_ID PORT

Each process joins a real multi-process JAX runtime (`keras.distribution.initialize`), makes a
data-parallel distribution over both processes' CPUs active, and records what native Keras
and `to_keras` do with the same `keras.utils.PyDataset`: which batches this process gets,
and whether training runs. Prints its findings as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras

import prefetch
from prefetch.adapters.keras import distribution_shard, to_keras


class Numbered(keras.utils.PyDataset):
    """7 batches (an odd count: a remainder to split); batch i holds i."""

    def __len__(self):
        return 7

    def __getitem__(self, i):
        x = np.full((2, 1), float(i), "float32")
        return x, x


def batch_ids(adapter) -> list[int]:
    return [int(np.asarray(x)[0, 0]) for x, _ in adapter.get_numpy_iterator()]


def main(process_id: int, port: str) -> dict:
    keras.distribution.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    dist = keras.distribution.DataParallel()
    keras.distribution.set_distribution(dist)
    out: dict = {"process": process_id, "num_processes": dist.num_processes}

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(learning_rate=0.01), "mse")
    try:  # the control: Keras itself given the dataset under this distribution
        model.fit(Numbered(workers=2), epochs=1, verbose=0)
        out["native"] = "trained"
    except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
        out["native"] = f"{type(exc).__name__}: {str(exc)[:120]}"

    adapter = to_keras(Numbered(workers=2))
    shard = adapter.loader.shard
    out["shard"] = None if shard is None else [shard.index, shard.count]
    out["batches"] = batch_ids(adapter)
    steps: list[int] = []
    counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(batch))
    try:  # real data-parallel training across both processes, each on its shard
        history = model.fit(adapter, epochs=1, verbose=0, callbacks=[counter])
        out["fit_steps"] = len(steps)
        out["fit_loss_finite"] = bool(np.isfinite(history.history["loss"][-1]))
    except Exception as exc:  # noqa: BLE001
        out["fit_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    adapter.close()

    explicit = to_keras(Numbered(), shard=prefetch.Shard(0, 1))
    out["explicit_shard_wins"] = explicit.loader.shard == prefetch.Shard(0, 1)
    explicit.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        to_keras(prefetch.Loader(Numbered())).close()
    out["unsharded_loader_warns"] = sum("every process reads every batch" in str(w.message) for w in caught)
    dist.auto_shard_dataset = False
    out["auto_shard_off"] = distribution_shard()
    return out


if __name__ == "__main__":
    try:
        result = main(int(sys.argv[1]), sys.argv[2])
    except Exception:  # noqa: BLE001
        result = {"exception": traceback.format_exc()}
    print("RESULT " + json.dumps(result), flush=True)
