"""Keras checks for `prefetch.adapters.keras`, run as a script under one Keras backend.

Keras picks its backend at import time, so `tests/test_adapter_keras.py` runs this file once
per backend (`KERAS_BACKEND=jax` / `torch`) and asserts on the JSON it prints last:
one import of Keras serves every check. Each check returns plain data, or the error it hit.

    KERAS_BACKEND=jax python tests/adapter_keras_checks.py
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback
import warnings

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402

import prefetch  # noqa: E402
from adapter_datasets import Records  # noqa: E402 - tests/ is this script's directory
from prefetch.adapters.keras import to_keras  # noqa: E402

keras.utils.set_random_seed(0)


class Recorded(Records, prefetch.PyDataset):
    """Batch i is rows of a line y = 3x - 1 (plus a code column); records calls and hooks.

    `kind` picks the batch structure: "xy", "list", "xyw" (with sample weights), "dictx"
    (a dict of two inputs, and y), "x" (a lone array).
    """

    def __init__(self, n: int, kind: str = "xy", rows: int = 8, weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.n, self.kind, self.rows, self.weight = n, kind, rows, weight

    def __len__(self) -> int:
        return self.n

    def x_of(self, i: int) -> np.ndarray:
        return np.linspace(-1, 1, self.rows, dtype="float32").reshape(-1, 1) + 0.01 * i

    def __getitem__(self, i: int):
        self.record(i)
        x = self.x_of(i)
        y = 3 * x - 1
        if self.kind == "xy":
            return x, y
        if self.kind == "list":
            return [x, y]
        if self.kind == "xyw":
            return x, y, np.full(self.rows, self.weight, "float32")
        if self.kind == "dictx":
            return {"a": x, "b": 2 * x}, y
        if self.kind == "x":
            return x
        raise AssertionError(self.kind)


class Coded(Recorded):
    """y of batch i is 10**i (one row): a metric summing y_true says which batches were trained."""

    def __getitem__(self, i: int):
        self.record(i)
        return np.full((1, 1), float(i), "float32"), np.full((1, 1), 10.0 ** i, "float32")


class BatchCode(keras.metrics.Metric):
    """Sums y_true[0, 0] over the batches of a Keras epoch."""

    def __init__(self, name: str = "code", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.total.assign_add(keras.ops.cast(y_true[0, 0], "float32"))

    def result(self):
        return keras.ops.convert_to_tensor(self.total)

    def reset_state(self):
        self.total.assign(0.0)


class BatchCounter(keras.callbacks.Callback):
    """Train batches per Keras epoch."""

    def __init__(self):
        super().__init__()
        self.per_epoch: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1


class KerasLines(Records, keras.utils.PyDataset):
    """An existing Keras PyDataset, untouched by prefetch (recording is test instrumentation)."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.record(i)
        x = np.linspace(-1, 1, 8, dtype="float32").reshape(-1, 1)
        return x, 3 * x - 1


def line_model(lr: float = 0.1, metrics=None) -> keras.Model:
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(learning_rate=lr), "mse", metrics=metrics)
    return model


def per_epoch(calls: list[int], n: int) -> list[list[int]]:
    return [sorted(calls[k:k + n]) for k in range(0, len(calls), n)]


# -- checks ----------------------------------------------------------------------------------------
def check_fit_two_epochs_with_validation():
    train, val = Recorded(8, workers=2), Recorded(3, workers=2)
    model = line_model()
    counter = BatchCounter()
    history = model.fit(to_keras(train), validation_data=to_keras(val), epochs=2, verbose=0, callbacks=[counter])
    return {
        "loss": history.history["loss"],
        "val_loss": history.history["val_loss"],
        "batches_per_epoch": counter.per_epoch,
        "calls": per_epoch(train.calls, 8),
        "hooks": train.hooks,
        "val_calls": per_epoch(val.calls, 3),
        "val_hooks": val.hooks,
    }


def check_steps_per_epoch_smaller_than_dataset():
    # 6 batches, 4 steps per Keras epoch, 3 Keras epochs: Loader epoch 0 gives Keras epochs
    # 0 (4 batches) and 1 (the last 2), Loader epoch 1 gives Keras epoch 2. lr=0 keeps it tame.
    out = {}
    for shuffle in (False, True):
        ds = Coded(6, workers=2)
        model = line_model(lr=0.0, metrics=[BatchCode()])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras: "Your input ran out of data" at epoch 1
            history = model.fit(to_keras(ds, shuffle=shuffle, seed=3), epochs=3, steps_per_epoch=4, verbose=0)
        out["shuffle" if shuffle else "ordered"] = {
            "codes": [int(round(c)) for c in history.history["code"]],
            "hooks": ds.hooks,
        }
    return out


def check_sample_weight_batches():
    # Zero sample weights: nothing to learn, loss exactly 0, weights unchanged.
    zero = Recorded(4, kind="xyw", weight=0.0)
    model = line_model()
    before = [w.tolist() for w in model.get_weights()]
    h0 = model.fit(to_keras(zero), epochs=1, verbose=0)
    same = [w.tolist() for w in model.get_weights()] == before
    ones = Recorded(4, kind="xyw", weight=1.0)
    h1 = line_model().fit(to_keras(ones), epochs=2, verbose=0)
    return {"zero_weight_loss": h0.history["loss"], "weights_unchanged": same, "unit_weight_loss": h1.history["loss"]}


def check_class_weight():
    ds = Recorded(4)
    # y is continuous here; the rounded classes all get weight 0, so nothing is learned.
    classes = {c: 0.0 for c in range(-5, 5)}
    h = line_model().fit(to_keras(ds, class_weight=classes), epochs=1, verbose=0)
    return {"loss": h.history["loss"]}


def check_list_and_lone_array_batches():
    model = line_model()
    h = model.fit(to_keras(Recorded(4, kind="list")), epochs=2, verbose=0)
    lone = Recorded(3, kind="x")
    pred = model.predict(to_keras(lone), verbose=0)
    return {"list_loss": h.history["loss"], "lone_predict_shape": list(pred.shape), "lone_calls": lone.calls}


def check_dict_batches():
    a, b = keras.Input((1,), name="a"), keras.Input((1,), name="b")
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))
    model.compile(keras.optimizers.SGD(learning_rate=0.1), "mse")
    ds = Recorded(4, kind="dictx")
    h = model.fit(to_keras(ds), epochs=2, verbose=0)

    class Inputs(prefetch.PyDataset):  # a bare dict batch: inputs only, for predict
        def __len__(self):
            return 3

        def __getitem__(self, i):
            x = ds.x_of(i)
            return {"a": x, "b": 2 * x}

    pred = model.predict(to_keras(Inputs()), verbose=0)
    return {"loss": h.history["loss"], "hooks": ds.hooks, "predict_shape": list(pred.shape)}


def check_evaluate_and_predict():
    train = Recorded(6, workers=2)
    model = line_model()
    model.fit(to_keras(train), epochs=2, verbose=0)
    ev = Recorded(5, workers=3)
    loss = model.evaluate(to_keras(ev), verbose=0)
    pr = Recorded(5, kind="x", workers=3)
    pred = model.predict(to_keras(pr), verbose=0)
    expected = model.predict(np.concatenate([pr.x_of(i) for i in range(5)]), verbose=0, batch_size=8)
    # A fresh, unbuilt model: Keras looks at one batch first to build it.
    fresh = keras.Sequential([keras.layers.Dense(1)])
    fresh.compile("sgd", "mse")
    ev2 = Recorded(5, workers=2)
    fresh_loss = fresh.evaluate(to_keras(ev2), verbose=0)
    return {
        "loss": float(loss),
        "eval_calls": sorted(ev.calls),
        "eval_hooks": ev.hooks,
        "predict_shape": list(pred.shape),
        "predict_in_order": bool(np.allclose(pred, expected, atol=1e-5)),
        "predict_hooks": pr.hooks,
        "fresh_loss_finite": bool(np.isfinite(fresh_loss)),
        "fresh_calls": sorted(ev2.calls),
        "fresh_hooks": ev2.hooks,
    }


def check_keras_pydataset():
    ds = KerasLines(5, workers=3, max_queue_size=4)
    with prefetch.Loader(ds) as loader:
        settings = [loader.workers, loader.max_queue_size]
        epochs = [[float(x.sum()) for x, _ in loader] for _ in range(2)]
    via_loader = {"settings": settings, "batches": [len(e) for e in epochs], "hooks": list(ds.hooks)}
    ds2 = KerasLines(5, workers=2)
    adapter = to_keras(ds2)
    counter = BatchCounter()
    h = line_model().fit(adapter, epochs=2, verbose=0, callbacks=[counter])
    return {
        "via_loader": via_loader,
        "loss": h.history["loss"],
        "batches_per_epoch": counter.per_epoch,
        "calls": per_epoch(ds2.calls, 5),
        "hooks": ds2.hooks,
        "loader_workers": adapter.loader.workers,
    }


def check_loader_ownership():
    ds = Recorded(3)
    adapter = to_keras(ds, workers=2)
    owned = adapter.loader
    del adapter
    gc.collect()
    user = prefetch.Loader(Recorded(3))
    adapter = to_keras(user)
    del adapter
    gc.collect()
    user_open = not user.closed
    user.close()
    try:
        to_keras(user, workers=2)
        rejected = False
    except TypeError:
        rejected = True
    return {"owned_closed": owned.closed, "user_loader_left_open": user_open, "kwargs_with_loader_rejected": rejected}


def check_bad_batch_structure():
    class Four(prefetch.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            x = np.zeros((2, 1), "float32")
            return x, x, x, x

    try:
        line_model().fit(to_keras(Four()), epochs=1, verbose=0)
    except ValueError as e:
        return {"error": "ValueError", "message": str(e)[:200]}
    return {"error": None}


def check_iteration_protocol():
    """The DataAdapter methods directly: each iteration one Loader epoch, looks replayed."""
    ds = Recorded(6)
    adapter = to_keras(ds, workers=2)
    # x_of(i)[0, 0] == -1 + i / 100
    idx = lambda b: int(round((float(np.asarray(b[0])[0, 0]) + 1) * 100))  # noqa: E731
    out = {"num_batches": adapter.num_batches, "batch_size": adapter.batch_size}
    out["full"] = [idx(b) for b in adapter.get_numpy_iterator()]
    look = adapter.get_numpy_iterator()
    out["looked_at"] = idx(next(look))
    del look  # dropped after one batch, as Keras does when it builds a model
    out["after_look"] = [idx(b) for b in adapter.get_numpy_iterator()]
    # An iteration dropped part-way but still referenced: the next one takes over.
    stale = adapter.get_numpy_iterator()
    out["stale_took"] = [idx(next(stale)) for _ in range(3)]
    out["after_stale"] = [idx(b) for b in adapter.get_numpy_iterator()]
    out["stale_resumed"] = [idx(b) for b in stale]
    del stale
    stale_look = adapter.get_numpy_iterator()
    next(stale_look)
    out["after_stale_look"] = [idx(b) for b in adapter.get_numpy_iterator()]
    del stale_look
    if keras.backend.backend() == "jax":
        out["backend_iterator"] = [idx(b) for b in adapter.get_jax_iterator()]
    elif keras.backend.backend() == "torch":
        out["backend_iterator"] = [idx(b) for b in adapter.get_torch_dataloader()]
    out["hooks"] = list(ds.hooks)
    out["loader_passes"] = adapter.loader.stats.epochs
    adapter.close()
    out["closed"] = adapter.loader.closed
    return out


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def main(argv: list[str]) -> int:
    names = argv or list(CHECKS)
    results = {"backend": keras.backend.backend()}
    for name in names:
        try:
            results[name] = CHECKS[name]()
        except Exception:  # reported per check, so one failure does not hide the others
            results[name] = {"exception": traceback.format_exc()}
    print("RESULTS " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
