"""Executors run `__getitem__` somewhere; `executor_factory` picks one from a Loader's settings."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import Any

from .base import Executor, Failure, Job

__all__ = ["NAMED", "START_METHODS", "Executor", "Failure", "Job", "executor_factory", "is_dask_client"]

NAMED = ("thread", "process", "async")  # the executors a Loader (and the bench CLI) takes by name
START_METHODS = ("forkserver", "spawn", "fork")  # for process workers; see process.pool


def is_dask_client(obj: Any) -> bool:
    # Recognised without importing distributed: it is an optional dependency.
    return any(c.__module__.startswith("distributed") and c.__name__ == "Client" for c in type(obj).__mro__)


def executor_factory(kind: Any, dataset: Any, workers: int, *, window: int, is_async: bool,
                     start_method: str | None, warm_start: bool = False,
                     timeout_s: float | None = None, share_dataset: str | None = "read-only"
                     ) -> Callable[[], Executor]:
    """A zero-argument constructor for the executor a Loader asked for.

    `timeout_s`: a batch running longer fails with `prefetch.BatchTimeout` (None: no limit).
    `share_dataset`: process workers map the dataset's large buffers from shared memory,
    `"read-only"` or `"copy-on-write"`; None: each worker unpickles a private copy.
    Attributes on it tell the engine when to call it: `eager` (cheap to start, and starting
    early pays: right away), `blocks` (slow to start: on a background thread, right away).
    """
    if is_async:
        from .coroutines import CoroutineExecutor

        return lambda: CoroutineExecutor(dataset, workers, timeout_s=timeout_s)
    if kind == "thread":
        from .threads import ThreadExecutor

        return lambda: ThreadExecutor(dataset, workers, timeout_s=timeout_s)
    if kind == "process":
        from ..process import zygote

        if (start_method or zygote.default_start_method()) == "forkserver":
            # First of all: the server's interpreter start and numpy import are most of a cold
            # first batch, and they overlap what this process does from here to the first Fork.
            zygote.server()
        from ..process import DatasetSync, ProcessExecutor

        sync = DatasetSync(dataset, share_dataset)  # now: an unpicklable dataset fails at Loader(), naming the culprit

        def make() -> Executor:
            return ProcessExecutor(dataset, workers, sync, window=window, start_method=start_method,
                                   warm_start=warm_start, timeout_s=timeout_s)

        make.eager = True  # type: ignore[attr-defined]  # start() returns at once; workers load on their own
        return make
    if isinstance(kind, cf.Executor):
        from .futures import FuturesExecutor

        return lambda: FuturesExecutor(dataset, kind, workers, timeout_s=timeout_s)
    if is_dask_client(kind):
        from .dask import DaskExecutor

        def make_dask() -> Executor:
            return DaskExecutor(dataset, kind, workers, timeout_s=timeout_s)

        make_dask.blocks = True  # type: ignore[attr-defined]
        return make_dask
    raise AssertionError(kind)  # the Loader validated `kind`
