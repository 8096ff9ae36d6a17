"""Native Keras vs `to_keras`, side by side, run as a script under one Keras backend.

The same `keras.utils.PyDataset` subclass is given to Keras natively (the control) and through
`prefetch.adapters.keras.to_keras`, in the same scenarios, and what each did is recorded:
which batches every train / test / predict step consumed, in order (a `Tap` layer reads the
batch index from the data the model actually ran on), the dataset's hook calls, the warnings
and the exceptions. `tests/test_keras_parity_<backend>.py` runs this once per backend and
compares; the control runs every time, so a Keras upgrade that changes behaviour shows up as
a difference.

    KERAS_BACKEND=torch python tests/keras_parity_checks.py [check ...]
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
import warnings

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
from keras.src.backend.common.symbolic_scope import in_symbolic_scope

from prefetch.adapters.keras import to_keras

BACKEND = keras.backend.backend()
MODES = {  # the dataset's own settings, as a Keras user writes them
    "serial": {"workers": 0},
    "threads": {"workers": 2},
    "processes": {"workers": 2, "use_multiprocessing": True},
}


class Tap(keras.layers.Layer):
    """Identity layer that logs x[0, 0] (see `Coded`) of every batch a step runs on."""

    def __init__(self, log: list, **kwargs):
        super().__init__(**kwargs)
        self.put = log.append  # a bound method: Keras would wrap (copy) a list attribute

    def call(self, x):
        if in_symbolic_scope():  # shape inference (torch runs it on dummy data)
            return x
        if BACKEND == "jax":
            import jax

            jax.debug.callback(lambda v: self.put(int(round(float(v)))), x[0, 0], ordered=True)
        else:
            self.put(int(round(float(x[0, 0]))))
        return x


class Coded(keras.utils.PyDataset):
    """Batch i: x = y = i + 1000 * stage (stage: how many epochs Keras began); infinite when n is None."""

    def __init__(self, n: int | None, fail_at: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.n, self.fail_at = n, fail_at
        self.hooks: list[str] = []
        self.stage = 0
        self.threads: set[str] = set()

    @property
    def num_batches(self):
        return self.n

    def __len__(self):
        if self.n is None:
            raise TypeError("infinite")
        return self.n

    def __getitem__(self, i):
        if i == self.fail_at:
            raise LookupError(f"batch {i} is broken")
        self.threads.add(threading.current_thread().name)
        x = np.full((2, 1), float(i + 1000 * self.stage), "float32")
        return x, x

    def on_epoch_begin(self):
        self.hooks.append("b")
        self.stage += 1

    def on_epoch_end(self):
        self.hooks.append("e")


def sync():
    if BACKEND == "jax":
        import jax

        jax.effects_barrier()


def tapped_model(log: list) -> keras.Model:
    model = keras.Sequential([keras.Input((1,)), Tap(log), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(learning_rate=0.0), "mse")
    return model


def feed(ds, via: str, **kwargs):
    return ds if via == "native" else to_keras(ds, **kwargs)


def indices(log: list) -> list[int]:
    return [v % 1000 for v in log]


def run_calls(via: str, mode: str, n: int | None, steps: int | None, epochs: int = 3) -> dict:
    """fit, then evaluate, then predict on one dataset object, with steps / steps_per_epoch."""
    log: list[int] = []
    model = tapped_model(log)
    ds = Coded(n, **MODES[mode])
    out: dict = {}
    calls = [
        ("fit", lambda x: model.fit(x, epochs=epochs, steps_per_epoch=steps, shuffle=False, verbose=0)),
        ("evaluate", lambda x: model.evaluate(x, steps=steps, verbose=0)),
        ("predict", lambda x: model.predict(x, steps=steps, verbose=0)),
    ]
    for name, call in calls:
        ds.hooks.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = call(feed(ds, via))
        sync()
        out[name] = {"batches": indices(log), "hooks": "".join(ds.hooks),
                     "ran_out": sum("ran out of data" in str(w.message) for w in caught)}
        if name == "predict":
            out[name]["rows"] = int(np.asarray(result).shape[0])
        log.clear()
    out["getitem_threads"] = sorted(ds.threads)
    return out


# -- checks ---------------------------------------------------------------------------------------
SCENARIOS = [(6, None), (6, 4), (6, 6), (6, 8), (None, 4)]


def check_calls():
    """fit(epochs=3) / evaluate / predict with steps smaller than, equal to, larger than the data."""
    out = {}
    for mode in MODES:
        for n, steps in SCENARIOS:
            key = f"{mode} n={n} steps={steps}"
            out[key] = {via: run_calls(via, mode, n, steps) for via in ("native", "to_keras")}
    return out


def check_validation_hooks():
    out = {}
    for via in ("native", "to_keras"):
        log: list[int] = []
        model = tapped_model(log)
        train, val = Coded(4, workers=2), Coded(3, workers=2)
        model.fit(feed(train, via), validation_data=feed(val, via), epochs=3, shuffle=False, verbose=0)
        sync()
        out[via] = {"train_hooks": "".join(train.hooks), "val_hooks": "".join(val.hooks), "batches": indices(log)}
    return out


def check_exceptions():
    """A batch that raises: the same exception type out of fit, and the same hooks before it."""
    out = {}
    for mode in MODES:
        for via in ("native", "to_keras"):
            ds = Coded(6, fail_at=3, **MODES[mode])
            log: list[int] = []
            try:
                tapped_model(log).fit(feed(ds, via), epochs=2, shuffle=False, verbose=0)
                error = None
            except Exception as exc:  # noqa: BLE001 - the type is what is compared
                error = type(exc).__name__
            sync()
            out[f"{mode} {via}"] = {"error": error, "hooks": "".join(ds.hooks), "batches": indices(log)}
    return out


def check_shuffle_order():
    """Two runs with one seed give one order; each epoch is a permutation."""
    out = {}
    for via in ("native", "to_keras"):
        runs = []
        for _ in range(2):
            keras.utils.set_random_seed(7)  # what makes native Keras's shuffle repeatable
            log: list[int] = []
            ds = Coded(6, workers=0)
            x = ds if via == "native" else to_keras(ds, shuffle=True, seed=7)
            tapped_model(log).fit(x, epochs=3, shuffle=True, verbose=0)
            sync()
            runs.append(indices(log))
        out[via] = runs
    return out


def check_shuffle_infinite():
    """shuffle=True with an infinite dataset: ignored with one warning, natively and via to_keras."""
    out = {}
    for via in ("native", "to_keras"):
        log: list[int] = []
        ds = Coded(None, workers=2)
        model = tapped_model(log)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x = ds if via == "native" else to_keras(ds, shuffle=True, seed=1)
            model.fit(x, epochs=2, steps_per_epoch=3, shuffle=True, verbose=0)
        sync()
        shuffle_warnings = [str(w.message) for w in caught if "shuffle" in str(w.message)]
        out[via] = {"batches": indices(log), "warnings": len(shuffle_warnings), "hooks": "".join(ds.hooks)}
    return out


def check_hook_state_reaches_workers():
    """An infinite dataset whose on_epoch_begin changes what batches hold, fit with steps_per_epoch."""
    out = {}
    for mode in ("threads", "processes"):
        for via in ("native", "to_keras"):
            log: list[int] = []
            ds = Coded(None, **MODES[mode])
            tapped_model(log).fit(feed(ds, via), epochs=3, steps_per_epoch=5, shuffle=False, verbose=0)
            sync()
            out[f"{mode} {via}"] = {"stages": [v // 1000 for v in log], "batches": indices(log),
                                    "hooks": "".join(ds.hooks)}
    return out


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def main(argv: list[str]) -> int:
    keras.utils.set_random_seed(0)
    results: dict = {"backend": BACKEND}
    for name in argv or list(CHECKS):
        try:
            results[name] = CHECKS[name]()
        except Exception:  # noqa: BLE001 - reported per check, so one failure does not hide the others
            results[name] = {"exception": traceback.format_exc()}
    print("RESULTS " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
