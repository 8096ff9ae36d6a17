"""The engine's event loop: uvloop where available, run on a daemon thread for sync consumers."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop running in this thread, or None (no loop, or another framework's)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def call_on(loop: asyncio.AbstractEventLoop | None, fn: Callable[..., T], *args: Any, wait: bool = False,
            timeout_s: float | None = None) -> T | None:
    """Run `fn(*args)` on `loop`'s thread, from any thread.

    Inline when this is that thread, or when the loop is not running (closed, or between
    runs: nothing can be inside it). Otherwise posted to it; with `wait` the caller blocks
    (up to `timeout_s` seconds) for the result. Returns the result when it was run inline or awaited.
    """
    if loop is None or loop is running_loop() or loop.is_closed() or not loop.is_running():
        return fn(*args)
    fut: cf.Future = cf.Future()

    def run() -> None:
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - re-raised in a waiting caller
                fut.set_exception(exc)

    try:
        loop.call_soon_threadsafe(run)
    except RuntimeError:  # it closed just now: nothing can be inside it any more
        return fn(*args)
    return fut.result(timeout_s) if wait else None


def tighten_timer_slack() -> None:
    """Ask Linux to wake this thread's timed waits on time (1 ns slack instead of 50 µs).

    A worker that sleeps or waits with a timeout inside `__getitem__` then resumes within
    the kernel's timer precision; per thread, so nothing outside prefetch's threads changes.
    """
    if sys.platform != "linux":
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (cheaper wake-ups and timers), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopThread:
    """An event loop on a daemon thread, owned by one loader's engine.

    Daemon, so a loader the user never closed cannot hold the interpreter open; the
    loader's finalizer (which also runs at exit) stops it properly.
    """

    def __init__(self, name: str = "prefetch-loop"):
        self.loop = new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        tighten_timer_slack()
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    def on_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def alive(self) -> bool:
        return self.thread.is_alive()

    def call(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        """Run `fn(*args)` on the loop thread and return its result (blocking)."""
        return call_on(self.loop, fn, *args, wait=True, timeout_s=timeout_s)  # type: ignore[return-value]

    def run(self, coro: Awaitable[T], timeout_s: float | None = None) -> T:
        """Run a coroutine on the loop thread and return its result (blocking)."""
        fut: Any = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        try:
            return fut.result(timeout_s)
        except BaseException:
            fut.cancel()
            raise

    def stop(self, timeout_s: float = 5.0) -> None:
        if not self.thread.is_alive():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            return
        if not self.on_thread():
            self.thread.join(timeout_s)
