"""One Keras training process for the checkpoint-hook tests (tests/test_checkpoint_hooks.py).

    KERAS_BACKEND=jax python tests/keras_state_run.py FORM PHASE DIR

FORM: "backup" (`BackupAndRestore` + `LoaderCheckpoint(backup_dir=...)`) or "file"
(`ModelCheckpoint` + `LoaderCheckpoint(filepath)`, resumed with `fit(initial_epoch=...)`).
PHASE: "whole" (4 epochs, uninterrupted), "crash" (stops with an exception in epoch 2, batch 3,
as a preempted job would) or "resume" (a new process picking up from DIR). Prints
`RESULTS {json}`: the batch indices the model trained on, per Keras epoch, and the final weights.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras

import prefetch
from prefetch.adapters.keras import to_keras
from prefetch.adapters.keras_state import LoaderCheckpoint
from prefetch.order import epoch_order

EPOCHS, N, SEED = 4, 6, 7


class Line(prefetch.PyDataset):
    """Batch i: 8 points of y = 3x - 1, drawn from batch i's own generator."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        r = np.random.default_rng(i)
        x = r.normal(size=(8, 1)).astype("float32")
        return x, 3 * x - 1


class Crash(Exception):
    pass


class Record(keras.callbacks.Callback):
    """Which batch the model just trained on, from the loader's exact position."""

    def __init__(self, loader: prefetch.Loader, crash_at: tuple[int, int] | None):
        super().__init__()
        self.loader = loader
        self.crash_at = crash_at
        self.seen: dict[int, list[int]] = {}

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        state = self.loader.state_dict()
        order = epoch_order(N, epoch=state["epoch"], seed=state["seed"], shuffle=True, shard=None).tolist()
        self.seen.setdefault(self._epoch, []).append(order[state["position"] - 1])
        if self.crash_at == (self._epoch, batch):
            raise Crash("preempted")

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch = epoch


def main(form: str, phase: str, folder: str) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    loader = prefetch.Loader(Line(workers=2), shuffle=True, seed=SEED)
    record = Record(loader, (2, 3) if phase == "crash" else None)
    initial_epoch = 0
    if form == "backup":
        hooks = [keras.callbacks.BackupAndRestore(os.path.join(folder, "backup")),
                 LoaderCheckpoint(loader, backup_dir=os.path.join(folder, "backup"))]
    else:
        weights = os.path.join(folder, "model.weights.h5")
        hooks = [keras.callbacks.ModelCheckpoint(weights, save_weights_only=True),
                 LoaderCheckpoint(loader, os.path.join(folder, "loader.json"))]
        if phase == "resume":
            model.load_weights(weights)
            with open(os.path.join(folder, "loader.json")) as f:
                initial_epoch = json.load(f)["epoch"]  # the epoch the loader (and the model) stopped at
    try:
        model.fit(to_keras(loader), epochs=EPOCHS, initial_epoch=initial_epoch, verbose=0,
                  callbacks=[record, *hooks])
    except Crash:
        pass
    finally:
        loader.close()
    print("RESULTS " + json.dumps({"seen": {str(k): v for k, v in record.seen.items()},
                                   "weights": [w.tolist() for w in model.get_weights()]}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
