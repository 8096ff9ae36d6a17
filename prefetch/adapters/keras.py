"""Keras 3 adapter: feed `Model.fit`, `evaluate` and `predict` from a `prefetch.Loader`.

`to_keras` returns a Keras `DataAdapter` (Keras uses a `DataAdapter` passed as `x` as is), so
batches come from prefetch's engine rather than Keras's own enqueuer, on every backend
(JAX, PyTorch, TensorFlow, NumPy).

`import prefetch.adapters.keras` does not import Keras (so `KERAS_BACKEND` may still be set
after it); `to_keras` does.

Hooks: Keras calls the dataset's `on_epoch_begin` / `on_epoch_end`, exactly when and as often
as it does for a `keras.utils.PyDataset` it runs itself (once per Keras epoch, infinite
datasets and `steps_per_epoch` included, plus once around the look Keras takes to build the
model); the Loader then leaves them alone. With workers that hold a copy of the dataset
(processes, dask), when the hooks changed it and a Keras epoch begins part-way through a pass,
the batches not yet delivered are made again by workers that got the change (Keras restarts
its pool each epoch for the same reason). Threads share the dataset: as with Keras's threads,
batches made ahead keep what they were made with.

Batches: every iteration Keras starts continues the Loader pass in progress, or starts a new
one. When `steps_per_epoch` is smaller than the dataset, Keras keeps drawing from the same
iteration across its epochs, so no batch is skipped or repeated. Keras's first look at one
batch to build the model (two with JAX's look-ahead on an accelerator) is not a pass: those
batches are handed out again at the start of the next iteration. (For a dataset of that many
batches or fewer, the look does use up one pass.) An iteration Keras drops part-way —
`evaluate(steps=k)`, `validation_steps`, a callback that stops training — cuts the Loader's
pass, and the next iteration starts a new one, whole.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import threading
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

from ..dataset import inspect_dataset
from ..engine.fingerprint import fingerprint
from ..loader import Loader
from ..shard import Shard

__all__ = ["PrefetchAdapter", "distribution_shard", "to_keras"]  # noqa: F822 - PrefetchAdapter: module __getattr__

# Keras builds an unbuilt model from the first batch of an iteration it then drops (the JAX
# trainer on an accelerator takes one more, for its look-ahead). An iteration dropped after
# at most this many batches is such a look: its batches are handed out again.
_PEEK = 2


class _LiveEpoch:
    """One Loader epoch in progress, which several Keras iterations may draw from in turn."""

    __slots__ = ("batches", "delivered", "owner", "replay", "served")

    def __init__(self, batches: Iterator[Any]):
        self.batches = batches  # iter(loader): the Loader's epoch
        self.delivered = 0  # batches taken from `batches`
        self.replay: list[Any] = []  # batches to hand out again before taking new ones
        self.owner: object | None = None  # the Keras iteration drawing from it now
        self.served: list[Any] | None = []  # what the owner handed out; None past _PEEK


class _EpochFeed:
    """The framework-free part of the adapter: epochs, look-ahead replay, standardising."""

    def __init__(self, loader: Loader, *, owns_loader: bool, class_weight: dict[int, float] | None):
        self.loader = loader
        self.class_weight = class_weight
        self._lock = threading.RLock()
        self._live: _LiveEpoch | None = None
        self._output_signature: Any = None
        self._state_before_hooks: Any = None  # the dataset's fingerprint before Keras's hooks
        # Close a Loader we built when the adapter goes away (Keras gives no other signal).
        self._finalizer = weakref.finalize(self, loader.close) if owns_loader else None

    # -- Keras's DataAdapter interface ----------------------------------------------------------
    @property
    def num_batches(self) -> int | None:
        return self.loader.num_batches

    @property
    def batch_size(self) -> int | None:
        return None  # batches come whole from the dataset

    def on_epoch_begin(self) -> None:
        """Keras begins an epoch: the dataset's hook runs, as Keras's own adapter runs it."""
        hook = getattr(self.loader.dataset, "on_epoch_begin", None)
        if hook is not None:
            hook()
        before, self._state_before_hooks = self._state_before_hooks, None
        if before is not None and fingerprint(self.loader.dataset) != before:
            self._resync()

    def on_epoch_end(self) -> None:
        """Keras ends an epoch (or its look at a batch): the dataset's hook runs."""
        if self._live is not None and not _shares_dataset(self.loader):
            # Workers hold a copy: note the state, to see whether the hooks change it.
            self._state_before_hooks = fingerprint(self.loader.dataset)
        hook = getattr(self.loader.dataset, "on_epoch_end", None)
        if hook is not None:
            hook()

    def _resync(self) -> None:
        """Hand the hooks' changes to workers that hold a copy of the dataset.

        A pass in progress (`steps_per_epoch` shorter than it, an infinite dataset, the
        batch Keras looked at) is cut and resumed at its next undelivered batch: the Loader
        sends a changed dataset to its workers when a pass begins, and batches made ahead
        from the old copy are made again.
        """
        loader = self.loader
        with self._lock:
            live = self._live
            if live is None:
                return  # the next iteration begins a pass, which sends the change
            state = loader.state_dict()
            close = getattr(live.batches, "close", None)
            if close is not None:
                close()
            loader.load_state_dict(state)
            live.batches = iter(loader)

    def get_numpy_iterator(self) -> Iterator[Any]:
        from keras.src.trainers.data_adapters import data_adapter_utils

        return data_adapter_utils.get_numpy_iterator(self._one_epoch())

    def get_jax_iterator(self) -> Iterator[Any]:
        from keras.src.trainers.data_adapters import data_adapter_utils

        return data_adapter_utils.get_jax_iterator(self._one_epoch())

    def get_torch_dataloader(self) -> Any:
        from keras.src.trainers.data_adapters import data_adapter_utils

        return data_adapter_utils.get_torch_dataloader(self._one_epoch())

    def get_tf_dataset(self) -> Any:
        from keras.src.trainers.data_adapters import data_adapter_utils
        from keras.src.utils.module_utils import tensorflow as tf

        if self._output_signature is None:
            n = self.num_batches
            # Peek without consuming: a dropped iteration's first batches are replayed. Two
            # batches show which dimensions vary, unless that would use up a whole epoch.
            look = self._one_epoch()
            try:
                batches = list(itertools.islice(look, 2 if n is None or n > 2 else 1))
            finally:
                look.close()  # type: ignore[attr-defined]
            if not batches:
                raise ValueError("the dataset has no batches")
            self._output_signature = data_adapter_utils.get_tensor_spec(batches)
        ds = tf.data.Dataset.from_generator(self._one_epoch, output_signature=self._output_signature)
        # The Loader already works ahead in parallel; tf.data's own threads would only compete.
        options = tf.data.Options()
        options.autotune.enabled = False
        options.threading.private_threadpool_size = 1
        return ds.with_options(options)

    # -- epochs -----------------------------------------------------------------------------------
    def _standardize(self, batch: Any) -> Any:
        # As Keras's PyDatasetAdapter: (x,), (x, y), (x, y, sample_weight) or a dict.
        if isinstance(batch, dict):
            return batch
        if isinstance(batch, list):
            batch = tuple(batch)
        if not isinstance(batch, tuple):
            batch = (batch,)
        if not 1 <= len(batch) <= 3:
            raise ValueError("a batch for Keras must be a dict, an array, or a tuple (x,), (x, y) or "
                             f"(x, y, sample_weight); got a tuple of {len(batch)}: {str(batch)[:100]}")
        if self.class_weight is not None:
            if len(batch) == 3:
                raise ValueError("class_weight and a sample_weight in the batch cannot be used together")
            if len(batch) == 2:
                from keras.src.trainers.data_adapters import data_adapter_utils

                batch = batch + (data_adapter_utils.class_weight_to_sample_weights(batch[1], self.class_weight),)
        return batch

    def _one_epoch(self) -> Iterator[Any]:
        """One Keras iteration: the rest of the Loader epoch in progress, or a new one.

        A generator, so nothing starts until Keras asks for the first batch.
        """
        token = object()
        live = self._acquire(token)
        try:
            while True:
                with self._lock:
                    if live.owner is not token:
                        return  # a newer iteration took the epoch over
                    replayed = bool(live.replay)
                    batch = live.replay.pop(0) if replayed else None
                if not replayed:
                    try:
                        raw = next(live.batches)
                    except StopIteration:
                        # The Loader finished its epoch (and ran on_epoch_end).
                        self._drop(live)
                        return
                    except BaseException:
                        # The Loader already ended this epoch; the next iteration starts clean.
                        self._drop(live)
                        raise
                    live.delivered += 1
                    try:
                        batch = self._standardize(raw)
                    except BaseException:
                        self._drop(live, cut=True)
                        raise
                if live.served is not None:
                    live.served.append(batch)
                    if len(live.served) > _PEEK:
                        live.served = None
                yield batch
        finally:
            self._release(token, live)

    def _drop(self, live: _LiveEpoch, cut: bool = False) -> None:
        with self._lock:
            if self._live is live:
                self._live = None
        if cut:
            close = getattr(live.batches, "close", None)
            if close is not None:
                close()

    def _acquire(self, token: object) -> _LiveEpoch:
        with self._lock:
            live = self._live
            if live is not None and live.owner is not None:
                # An earlier iteration was dropped but not yet collected: settle it now.
                self._release(live.owner, live)
                live = self._live
            if live is None:
                live = self._live = _LiveEpoch(iter(self.loader))
            live.owner = token
            live.served = []
            return live

    def _release(self, token: object, live: _LiveEpoch) -> None:
        """A Keras iteration was dropped (or finished): decide what its epoch becomes."""
        with self._lock:
            if live.owner is not token:
                return
            live.owner = None
            if self._live is not live:
                return
            n = self.num_batches
            if n is not None and live.delivered >= n and not live.replay:
                # Every batch was taken; Keras stops at num_batches and never asks for the
                # end, so end the Loader's epoch here: on_epoch_end runs once per full pass.
                self._live = None
                for _ in live.batches:
                    pass
            elif live.served is not None:
                # A look at the first batch or two (to build the model): hand them out again.
                live.replay[:0] = live.served
            else:
                # Dropped mid-epoch (a callback stopped training, evaluate(steps=...)): the
                # Loader cuts its epoch and the next iteration starts a new one, whole.
                self._drop(live, cut=True)

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """End the epoch in progress, and close the Loader if `to_keras` built it."""
        live = self._live
        if live is not None:
            self._drop(live, cut=True)
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> _EpochFeed:  # noqa: PYI034 - a mixin: subclasses are built at run time
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrefetchAdapter({self.loader!r})"


@functools.cache
def _adapter_class() -> type:
    # Built on first use so that importing this module does not import Keras.
    from keras.src.trainers.data_adapters.data_adapter import DataAdapter

    return type("PrefetchAdapter", (_EpochFeed, DataAdapter), {
        "__module__": __name__,
        "__doc__": "A Keras `DataAdapter` fed by a `prefetch.Loader`; build one with `to_keras`.",
    })


def __getattr__(name: str) -> Any:
    if name == "PrefetchAdapter":  # for isinstance checks; importing it imports Keras
        return _adapter_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_keras(data: Any, *, class_weight: dict[int, float] | None = None, **loader_kwargs: Any) -> Any:
    """Wrap a dataset or a `prefetch.Loader` for Keras 3's `fit`, `evaluate` and `predict`.

    Args:
        data: a `prefetch.Loader` (used as is, and left open), or a dataset — a
            `prefetch.PyDataset`, a `keras.utils.PyDataset` or any object with `__len__` and
            `__getitem__` — for which a `prefetch.Loader(data, **loader_kwargs)` is built and
            closed when the adapter is garbage collected (or on `adapter.close()`).
        class_weight: as `fit(class_weight=...)`, which Keras ignores for an adapter; a
            per-sample weight is added to `(x, y)` batches from it.
        **loader_kwargs: `workers`, `shuffle`, `seed`, `executor`, `shard`, ... for the
            Loader. As in Keras, `workers=0` is serial (batches made in the training thread)
            and `shuffle=True` is ignored, with a warning, for an infinite dataset. Without
            `shard=`, an auto-sharding multi-process `keras.distribution` picks this process's
            shard (`distribution_shard`).

    Keras calls the dataset's `on_epoch_begin` / `on_epoch_end` through the adapter, as for
    its own `PyDataset`, so the Loader's own hook calls are switched off (`epoch_hooks`), also
    on a Loader passed in. Each batch is `(x,)`, `(x, y)`, `(x, y, sample_weight)` or a dict,
    as Keras's `PyDataset` allows (a list counts as a tuple, a lone array as `(x,)`). Shuffle
    with the Loader (`shuffle=True`): Keras's `fit(shuffle=...)` does not apply to an adapter.
    Pass a separate adapter to each of `fit`'s `x` and `validation_data`.

    Example:
        >>> import numpy as np, keras, prefetch
        >>> from prefetch.adapters.keras import to_keras
        >>> class Lines(keras.utils.PyDataset):
        ...     def __len__(self):
        ...         return 8
        ...     def __getitem__(self, i):
        ...         x = np.linspace(-1, 1, 16, dtype="float32").reshape(16, 1)
        ...         return x, 3 * x
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> history = model.fit(to_keras(Lines(workers=2)), epochs=2, verbose=0)
        >>> len(history.history["loss"])
        2
    """
    if isinstance(data, _EpochFeed):
        if loader_kwargs or class_weight is not None:
            raise TypeError("to_keras() got an adapter: build it with these arguments instead")
        return data
    if class_weight is not None and not isinstance(class_weight, dict):  # before a Loader starts workers
        raise TypeError(f"class_weight must be a dict {{class index: weight}}, got {type(class_weight).__name__}")
    if isinstance(data, Loader):
        if loader_kwargs:
            raise TypeError(f"to_keras() got a Loader, so it takes no Loader arguments: {sorted(loader_kwargs)}")
        loader, owns = data, False
        if loader.shard is None and distribution_shard() is not None:
            warnings.warn("to_keras() got a Loader without a shard under a multi-process keras.distribution that "
                          "auto-shards: every process reads every batch. Build the Loader with "
                          "shard=prefetch.adapters.keras.distribution_shard(), or pass the dataset, or set "
                          "auto_shard_dataset=False", stacklevel=2)
    else:
        if loader_kwargs.get("shuffle") and inspect_dataset(data).num_batches is None:
            # As Keras's fit(shuffle=True) with an infinite PyDataset: ignored, with a warning.
            warnings.warn("to_keras(shuffle=True) is ignored for an infinite dataset (num_batches is None): "
                          "it is expected to shuffle itself", stacklevel=2)
            loader_kwargs["shuffle"] = False
        if loader_kwargs.get("shard") is None:
            loader_kwargs["shard"] = distribution_shard()
        loader, owns = Loader(data, **loader_kwargs), True
    loader.epoch_hooks = False  # Keras calls them (DataAdapter.on_epoch_begin / _end)
    return _adapter_class()(loader, owns_loader=owns, class_weight=class_weight)


def distribution_shard() -> Shard | None:
    """This process's `Shard` under the active `keras.distribution`, or `None`.

    Read as Keras reads it to shard a `tf.data.Dataset` (`Distribution.distribute_dataset`):
    only a multi-process distribution with `auto_shard_dataset` shards; each data-parallel
    model replica gets its part (processes that together hold one replica read the same
    part), and with a single replica every process reads everything.

    Example:
        >>> from prefetch.adapters.keras import distribution_shard
        >>> distribution_shard() is None   # no multi-process distribution active
        True
    """
    from keras import distribution as keras_distribution  # type: ignore[import-untyped]

    dist = keras_distribution.distribution()
    if dist is None or not getattr(dist, "auto_shard_dataset", False):
        return None
    processes = int(getattr(dist, "num_processes", 1))
    if processes <= 1:
        return None
    replicas = int(dist.num_model_replicas)
    if replicas <= 1:
        return None  # one model replica: every process takes the same, whole batches
    # Keras: a process per replica or more replicas than processes -> shard by process;
    # fewer replicas than processes -> shard by replica (data_shard_id is then the replica).
    count = min(processes, replicas)
    return Shard(int(dist.data_shard_id), count)


def _shares_dataset(loader: Loader) -> bool:
    """Whether `__getitem__` runs on the consumer's dataset object itself (not a copy)."""
    kind = loader.executor
    return kind in ("thread", "async", "serial") or isinstance(kind, cf.ThreadPoolExecutor)
