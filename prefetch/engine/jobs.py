"""Jobs, failures, and the one loop that runs a job's batches — shared by every executor.

A job carries a few batch indices of one epoch; running it means, for each index in order:
enter the batch's randomness scope (`prefetch.rng()`), produce the batch, and stop at the
first exception, annotated with the batch index and where it ran. Threads, the process
worker, remote runners (a process pool, dask) and the coroutine executor all do exactly
this; only *how a batch is produced* differs, so that is the one thing they pass in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any, Protocol

from ..errors import annotate
from ..randomness import enter_batch, exit_batch


class JobOwner(Protocol):
    """What a job reports to (the scheduler's epoch run)."""

    cancelled: bool

    def complete(self, job: Job, values: list, failure: Failure | None, elapsed: float) -> None: ...


class Job:
    """Batches `items` = [(position in epoch order, batch index), ...] of one epoch."""

    __slots__ = ("epoch", "items", "owner", "retried", "seed")

    def __init__(self, owner: JobOwner, epoch: int, seed: int, items: list[tuple[int, int]]):
        self.owner = owner
        self.epoch = epoch
        self.seed = seed
        self.items = items
        self.retried = False  # sent again after the worker holding it died before starting it

    def __repr__(self) -> str:
        return f"Job(epoch={self.epoch}, items={self.items!r})"


class Failure:
    """`__getitem__(index)` at `position` raised `error` (already annotated with the index)."""

    __slots__ = ("error", "index", "position")

    def __init__(self, position: int, index: int, error: BaseException):
        self.position = position
        self.index = index
        self.error = error


def _never() -> bool:
    return False


def run_items(produce: Callable[[int, int], Any], items: list[tuple[int, int]], seed: int, epoch: int,
              where: str, cancelled: Callable[[], bool] = _never) -> tuple[list, Failure | None, float]:
    """Produce each batch of `items` in order (`produce(k, index)` for the k-th); stop at the
    first exception or once `cancelled()`. Returns (values, failure, seconds)."""
    values: list = []
    failure = None
    t0 = perf_counter()
    for k, (position, index) in enumerate(items):
        if cancelled():  # an aborted epoch: skip what has not started
            break
        token = enter_batch(seed, epoch, index)
        try:
            values.append(produce(k, index))
        except BaseException as exc:  # noqa: BLE001 - delivered to the consumer, not swallowed
            failure = Failure(position, index, annotate(exc, index, where))
            break
        finally:
            exit_batch(token)
    return values, failure, perf_counter() - t0


async def arun_items(produce: Callable[[int], Awaitable[Any]], items: list[tuple[int, int]], seed: int,
                     epoch: int, where: str, cancelled: Callable[[], bool] = _never
                     ) -> tuple[list, Failure | None, float]:
    """`run_items` for a coroutine `__getitem__` (each awaited in the caller's task, so its
    `prefetch.rng()` scope is its own); a cancellation propagates."""
    import asyncio

    values: list = []
    failure = None
    t0 = perf_counter()
    for position, index in items:
        if cancelled():
            break
        token = enter_batch(seed, epoch, index)
        try:
            values.append(await produce(index))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - delivered to the consumer
            failure = Failure(position, index, annotate(exc, index, where))
            break
        finally:
            exit_batch(token)
    return values, failure, perf_counter() - t0
