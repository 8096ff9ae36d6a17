"""The dataset side of prefetch: the Keras-compatible `PyDataset` base class and the
inspection that lets any object with `__len__`/`__getitem__` stand in for one."""

from __future__ import annotations

import inspect
import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_DEFAULTS = {"_workers": 1, "_use_multiprocessing": False, "_max_queue_size": 10}


class PyDataset:
    """A dataset written as plain Python: `__len__` is the number of batches and
    `__getitem__(i)` returns one whole batch (it may be `async def`).

    `workers`, `use_multiprocessing` and `max_queue_size` only configure how a
    `prefetch.Loader` (or Keras `fit`) parallelises it; `workers=0` (or `max_queue_size=0`)
    means serial, each batch made in the consumer's thread, as in Keras. Iterating a dataset
    by hand (`for batch in ds`, `ds[i]`) is serial too, as in Keras. With
    `use_multiprocessing=True`, building the dataset starts prefetch's fork server in the
    background and has it import the dataset's module, so the first Loader's workers start
    from a server that is already up.

    Example:
        >>> import numpy as np, prefetch
        >>> class Squares(prefetch.PyDataset):
        ...     def __init__(self, n, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.n = n
        ...     def __len__(self):
        ...         return self.n
        ...     def __getitem__(self, i):
        ...         return np.full(4, i * i)
        >>> ds = Squares(3, workers=4)
        >>> [int(b[0]) for b in prefetch.Loader(ds)]
        [0, 1, 4]
    """

    def __init__(self, workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10):
        self._workers = workers
        self._use_multiprocessing = use_multiprocessing
        self._max_queue_size = max_queue_size
        if use_multiprocessing and workers and max_queue_size:
            # Process workers will be wanted: prefetch's fork server starts now, in the
            # background, and imports this dataset's modules, so the first Loader's workers
            # fork from a server already up.
            from .engine.process.zygote import start_early

            start_early(self)

    def _warn_if_super_not_called(self) -> None:
        missing = [name for name in _DEFAULTS if name not in self.__dict__]
        if missing:
            for name in missing:
                setattr(self, name, _DEFAULTS[name])
            warnings.warn(
                f"{type(self).__name__} should call `super().__init__(**kwargs)` in its constructor; "
                "using the defaults " + ", ".join(f"{k[1:]}={v}" for k, v in _DEFAULTS.items()) + ".",
                stacklevel=3,
            )

    @property
    def workers(self) -> int:
        self._warn_if_super_not_called()
        return self._workers

    @workers.setter
    def workers(self, value: int) -> None:
        self._workers = value

    @property
    def use_multiprocessing(self) -> bool:
        self._warn_if_super_not_called()
        return self._use_multiprocessing

    @use_multiprocessing.setter
    def use_multiprocessing(self, value: bool) -> None:
        self._use_multiprocessing = value

    @property
    def max_queue_size(self) -> int:
        self._warn_if_super_not_called()
        return self._max_queue_size

    @max_queue_size.setter
    def max_queue_size(self, value: int) -> None:
        self._max_queue_size = value

    @property
    def num_batches(self) -> int | None:
        """Batches per epoch, or `None` for an infinite dataset (override to return `None`)."""
        if hasattr(self, "__len__"):
            return len(self)  # type: ignore[arg-type]
        return None

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__(index)")

    def __iter__(self) -> Iterator[Any]:
        # Serial by design: parallelism belongs to the Loader, as in Keras.
        n = self.num_batches
        for index in range(n) if n is not None else itertools.count():
            yield self[index]

    def on_epoch_begin(self) -> None:
        """Called at the beginning of every epoch."""

    def on_epoch_end(self) -> None:
        """Called at the end of every epoch."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the engine needs to know about a dataset, read once when a Loader is built."""

    num_batches: int | None
    is_async: bool
    workers: int
    use_multiprocessing: bool
    max_queue_size: int


def _own_attr(dataset: Any, name: str, default: Any) -> Any:
    # Read a Keras-style setting without tripping the missing-super() warning twice:
    # PyDataset's properties warn once and then fill in the defaults.
    try:
        value = getattr(dataset, name)
    except AttributeError:
        return default
    return default if value is None else value


def num_batches_of(dataset: Any) -> int | None:
    """The number of batches, `None` when infinite; rejects negative or non-integer lengths."""
    if isinstance(dataset, PyDataset) or hasattr(type(dataset), "num_batches"):
        try:
            n = dataset.num_batches
        except NotImplementedError:
            n = None
    else:
        n = len(dataset)
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int):
        try:
            n = int(n.__index__())
        except (AttributeError, TypeError):
            raise TypeError(f"len() of the dataset must be an int, got {type(n).__name__}") from None
    if n < 0:
        raise ValueError(f"len() of the dataset must be >= 0, got {n}")
    return n


def inspect_dataset(dataset: Any) -> DatasetInfo:
    """Validate a dataset up front and read its Keras-style defaults."""
    cls = type(dataset)
    if not callable(getattr(cls, "__getitem__", None)):
        raise TypeError(f"a dataset needs __getitem__(index); {cls.__name__} has none")
    has_len = callable(getattr(cls, "__len__", None))
    if not has_len and not hasattr(cls, "num_batches"):
        raise TypeError(f"a dataset needs __len__() (or num_batches); {cls.__name__} has neither")
    if isinstance(cls.__getitem__, type(PyDataset.__getitem__)) and cls.__getitem__ is PyDataset.__getitem__:
        raise TypeError(f"{cls.__name__} does not implement __getitem__(index)")
    num_batches = num_batches_of(dataset)
    return DatasetInfo(
        num_batches=num_batches,
        is_async=inspect.iscoroutinefunction(cls.__getitem__),
        workers=_own_attr(dataset, "workers", _DEFAULTS["_workers"]),
        use_multiprocessing=bool(_own_attr(dataset, "use_multiprocessing", _DEFAULTS["_use_multiprocessing"])),
        max_queue_size=_own_attr(dataset, "max_queue_size", _DEFAULTS["_max_queue_size"]),
    )
