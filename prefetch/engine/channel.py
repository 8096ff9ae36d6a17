"""Ready batches on their way from the engine loop to one consumer.

The consumer may sit on another thread (sync iteration) or on the engine's own loop
(`async for` under asyncio). Either way the channel counts what the consumer took, so the
scheduler can refill its window, and it wakes each side only when that side is waiting:
with a producer ahead of the consumer, a batch crosses with no lock and no syscall.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any


class _End:
    __slots__ = ()


class _Raise:
    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


END = _End()


_ENDED = "prefetch: the epoch was ended (loader closed, or a newer iteration began) while a batch was awaited"


class EpochEnded(Exception):
    """The channel's epoch is complete (internal signal, never reaches users)."""


class Channel:
    """Producer side runs on the engine loop; `get` / `aget` run on the consumer's side."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stats: Any, *, same_thread: bool = False):
        self.loop = loop
        self.stats = stats
        self.items: deque = deque()
        self.taken = 0  # written by the consumer only
        self._refill: Callable[[], None] | None = None
        self._refill_at = 0
        self.closed = False
        # sync consumer on another thread
        self._consumer_waiting = False
        self._wake = threading.Lock()
        self._wake.acquire()
        # async consumer on the loop
        self._waiter: asyncio.Future | None = None
        self._same_thread = same_thread  # the consumer runs on the loop itself

    # -- producer (engine loop) -------------------------------------------------------------
    def put_many(self, values: list) -> None:
        self.items.extend(values)
        self._notify()

    def fail(self, error: BaseException) -> None:
        self.items.append(_Raise(error))
        self._notify()

    def finish(self) -> None:
        self.items.append(END)
        self._notify()

    def on_taken(self, at: int, refill: Callable[[], None]) -> None:
        """Call `refill` on the loop once the consumer has taken `at` batches in all."""
        self._refill_at = at
        self._refill = refill
        if self.taken >= at and self._refill is not None:  # raced with the consumer: run now
            self._refill = None
            refill()

    def _notify(self) -> None:
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            if not waiter.done():
                waiter.set_result(None)
        if self._consumer_waiting:
            self._consumer_waiting = False
            try:
                self._wake.release()
            except RuntimeError:  # already released: the consumer is on its way
                pass

    # -- consumer ---------------------------------------------------------------------------------
    def _took(self) -> None:
        self.taken += 1
        refill = self._refill
        if refill is not None and self.taken >= self._refill_at:
            self._refill = None
            if self._same_thread:
                refill()
            else:
                try:
                    self.loop.call_soon_threadsafe(refill)
                except RuntimeError:  # loop closed under us: the loader is closing
                    pass

    def _unwrap(self, item: Any) -> Any:
        if item is END:
            self.items.appendleft(item)  # stays ended for any further get
            raise EpochEnded
        if type(item) is _Raise:
            self.items.appendleft(item)
            raise item.error
        self._took()
        return item

    def get(self, alive: Callable[[], bool] = lambda: True) -> Any:
        """Next batch for a consumer on another thread (blocking)."""
        try:
            item = self.items.popleft()
        except IndexError:
            item = self._wait(alive)
        return self._unwrap(item)

    def _wait(self, alive: Callable[[], bool]) -> Any:
        t0 = perf_counter()
        try:
            self.wait_ready(alive)
            return self.items.popleft()
        finally:
            self.stats.add_wait(perf_counter() - t0)

    def wait_ready(self, alive: Callable[[], bool] = lambda: True, timeout_s: float | None = None) -> None:
        """Block until something is ready, without taking it (a bridged async consumer takes
        it afterwards, so an abandoned wait loses nothing). With `timeout_s` (seconds), may return with
        nothing ready. Raises if the loader closed or the engine loop died meanwhile."""
        items = self.items
        deadline = None if timeout_s is None else perf_counter() + timeout_s
        try:
            while True:
                self._consumer_waiting = True
                if items:  # re-check after raising the flag: the producer may have just put
                    return
                # The 0.5 s bound is only a safety net (the engine thread dying); wake-ups are explicit.
                wait = 0.5 if deadline is None else min(0.5, deadline - perf_counter())
                if wait <= 0:
                    return
                if not self._wake.acquire(timeout=wait) and not alive():
                    raise RuntimeError("prefetch: the engine loop stopped while a batch was awaited")
                if self.closed and not items:
                    raise RuntimeError(_ENDED)
        finally:
            self._consumer_waiting = False

    async def aget(self) -> Any:
        """Next batch for a consumer on the engine loop itself."""
        items = self.items
        if not items:
            t0 = perf_counter()
            try:
                while not items:
                    if self.closed:
                        raise RuntimeError(_ENDED)
                    self._waiter = self.loop.create_future()
                    await self._waiter
            finally:
                self._waiter = None
                self.stats.add_wait(perf_counter() - t0)
        return self._unwrap(items.popleft())

    def close(self) -> None:
        """Wake any waiting consumer for good (loader closing)."""
        self.closed = True
        self._notify()
