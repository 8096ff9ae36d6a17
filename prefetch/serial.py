"""`workers=0` (or `max_queue_size=0`): Keras's serial mode, where the consumer's own thread
calls `__getitem__` when it asks for the next batch — no threads, no processes, no loop.

Everything else is the Loader's as usual: hooks, order, shuffle, shards, `prefetch.rng()`,
resume and stats, so switching a loader to serial (to debug a dataset, say) changes only
where and when each batch is made.

Example:
    >>> import prefetch
    >>> loader = prefetch.Loader(list(range(4)), workers=0, shuffle=True, seed=1)
    >>> sorted(loader), loader.executor
    ([0, 1, 2, 3], 'serial')
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter
from typing import Any

from .errors import add_note
from .loader import Loader, _Epoch
from .randomness import enter_batch, exit_batch

_WHERE = "the calling thread (serial: workers=0)"


class _SerialBase(_Epoch):
    def __init__(self, loader: Loader):
        if loader.closed:
            raise RuntimeError("prefetch: this Loader is closed")
        super().__init__(loader)
        self._begin()  # hooks first, as for every epoch: they may change what _plan sees
        self._epoch_no, self._items = loader._plan()

    def _next_item(self) -> tuple[int, int] | None:
        return next(self._items, None)

    @contextmanager
    def _batch(self, index: int) -> Iterator[None]:
        """The batch's rng scope; an exception in it names the batch and ends the epoch."""
        token = enter_batch(self.loader.seed, self._epoch_no, index)
        try:
            yield
        except BaseException as exc:
            self._failed(exc, index)
            raise
        finally:
            exit_batch(token)

    def _call(self, index: int) -> Any:
        """`dataset[index]` inside the batch's scope; a coroutine is returned unawaited."""
        with self._batch(index):
            return self.loader.dataset[index]

    def _failed(self, exc: BaseException, index: int) -> None:
        # The traceback is already the consumer's own; only name the batch, as workers do.
        add_note(exc, f"prefetch: raised by __getitem__({index}) in {_WHERE}")
        self.abort()

    def _count(self, t0: float) -> None:
        elapsed = perf_counter() - t0
        stats = self.loader.stats
        stats.record_latency(elapsed, 1)
        stats.add_wait(elapsed)  # serial: the consumer waits for every batch in full


class SerialEpoch(_SerialBase, Iterator[Any]):
    """One epoch consumed with `for`: each `next()` makes the next batch in this thread."""

    def __init__(self, loader: Loader):
        self._loop: asyncio.AbstractEventLoop | None = None  # for a coroutine __getitem__
        super().__init__(loader)

    def __iter__(self) -> SerialEpoch:
        return self

    def __next__(self) -> Any:
        if self.dead:
            raise StopIteration
        item = self._next_item()
        if item is None:
            self._close_loop()
            self._finish()
            raise StopIteration
        position, index = item
        t0 = perf_counter()
        value = self._call(index)
        if inspect.isawaitable(value):
            value = self._await(value, index)
        self._count(t0)
        return self._took(position, value)

    def _await(self, awaitable: Any, index: int) -> Any:
        # A private loop in this thread: serial means no other thread, and the caller's
        # code here is synchronous, so no loop of theirs is running.
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        with self._batch(index):
            return self._loop.run_until_complete(awaitable)

    def _close_loop(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def abort(self) -> None:
        super().abort()
        self._close_loop()

    def close(self) -> None:
        self.abort()


class AsyncSerialEpoch(_SerialBase):
    """One epoch consumed with `async for`: a coroutine `__getitem__` is awaited on the caller's loop."""

    def __aiter__(self) -> AsyncSerialEpoch:
        return self

    async def __anext__(self) -> Any:
        if self.dead:
            raise StopAsyncIteration
        item = self._next_item()
        if item is None:
            self._finish()
            raise StopAsyncIteration
        position, index = item
        t0 = perf_counter()
        value = self._call(index)
        if inspect.isawaitable(value):
            with self._batch(index):
                value = await value
        self._count(t0)
        return self._took(position, value)

    async def aclose(self) -> None:
        self.abort()
