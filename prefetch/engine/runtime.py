"""`Engine`: owns one loader's executor and loop thread, and moves them between event loops.

A sync consumer drives the engine on a private loop thread; an `async for` under asyncio
drives it on the caller's loop. Between epochs the executor is re-bound to whichever loop
the next epoch runs on, after the previous epoch's stale work has been cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from .executors.base import Executor
from .loop import LoopThread, call_on, running_loop
from .scheduler import EpochRun


class Engine:
    def __init__(self, make_executor: Callable[[], Executor]):
        self._make_executor = make_executor
        self._blocks = getattr(make_executor, "blocks", False)  # see executor_factory
        self.executor: Executor | None = None
        self.thread: LoopThread | None = None
        self.run: EpochRun | None = None
        self.closed = False
        self._lock = threading.Lock()
        self._starter: threading.Thread | None = None

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("prefetch: this Loader is closed")

    def ensure_executor(self) -> Executor:
        with self._lock:
            self._check_open()
            if self.executor is None:
                executor = self._make_executor()
                try:
                    executor.start()
                except BaseException:
                    executor.close()  # what did start (a few processes, say) ends now
                    raise
                self.executor = executor
            return self.executor

    def processes(self) -> tuple[list[int], int]:
        """The executor's worker pids and the dataset bytes it placed in shared memory (any thread)."""
        ex = self.executor
        if ex is None:
            return [], 0
        return ex.processes()

    def start_early(self) -> None:
        """At the Loader's construction: start executors that gain from it (process workers
        boot while the caller builds its model) — slow ones in the background, where an error
        resurfaces at the first epoch."""
        if self._blocks:
            self._start_soon()
        elif getattr(self._make_executor, "eager", False):
            self.ensure_executor()

    def _start_soon(self) -> None:

        def start() -> None:
            try:
                self.ensure_executor()
            except BaseException:  # noqa: BLE001, S110 - the first epoch retries and raises it
                pass

        self._starter = threading.Thread(target=start, name="prefetch-start", daemon=True)
        self._starter.start()

    def ensure_thread(self) -> LoopThread:
        with self._lock:
            self._check_open()
            if self.thread is None or not self.thread.alive():
                self.thread = LoopThread()
            return self.thread

    # -- moving between loops ------------------------------------------------------------
    def _leave(self, new_loop: asyncio.AbstractEventLoop) -> None:
        """Cancel the current epoch where it runs and re-bind the executor to `new_loop`."""
        ex = self.executor
        assert ex is not None
        old = ex.loop
        if old is new_loop:
            return
        if old is not None:
            def leave() -> None:
                if self.run is not None:
                    self.run.cancel()
                ex.unbind()

            if self.thread is not None and old is self.thread.loop and self.thread.alive():
                self.thread.call(leave)
            elif old.is_closed() or not old.is_running() or old is running_loop():
                leave()  # that loop is gone (or is ours right now): nothing else runs there
            else:
                raise RuntimeError("prefetch: this Loader is iterating on another running event loop")
        if self.thread is not None and new_loop is self.thread.loop:
            self.thread.call(ex.bind, new_loop)
        else:
            ex.bind(new_loop)

    async def _quiesce(self) -> None:
        """On the executor's loop: cancel the current epoch and let in-process stale work end,
        so that the next `on_epoch_begin` never races a stale `__getitem__`."""
        if self.run is not None:
            self.run.cancel()
            self.run = None
        ex = self.executor
        if ex is not None and ex.in_process:
            await ex.wait_idle()

    def prepare_sync(self) -> LoopThread:
        """Ready the engine for an epoch consumed from this (non-loop) thread."""
        lt = self.ensure_thread()
        self.ensure_executor()
        self._leave(lt.loop)
        lt.run(self._quiesce())
        return lt

    async def prepare_async(self) -> asyncio.AbstractEventLoop:
        """Ready the engine for an epoch consumed on the running asyncio loop."""
        self._check_open()
        loop = asyncio.get_running_loop()
        if self.executor is None:
            if self._blocks:
                await asyncio.to_thread(self.ensure_executor)
            else:
                self.ensure_executor()
        self._leave(loop)
        await self._quiesce()
        return loop

    def launch(self, run: EpochRun) -> None:
        """Start `run` (on its loop's thread)."""
        self.run = run
        run.start()

    def abort(self, run: EpochRun) -> None:
        """Cancel `run` from any thread, without waiting (a dropped iterator, a `break`)."""
        if not run.cancelled:
            call_on(run.channel.loop, run.cancel)

    # -- shutting down ------------------------------------------------------------------------
    def close(self) -> None:
        """End the current epoch, every worker and the loop thread; idempotent, any thread."""
        starter = self._starter
        if starter is not None and starter is not threading.current_thread():
            starter.join(30)  # the executor it may be creating must be closed too
        with self._lock:
            if self.closed:
                return
            self.closed = True
        ex, lt = self.executor, self.thread
        if ex is not None:
            try:  # on whichever loop the executor runs on (ours, or an async caller's)
                call_on(ex.loop, self._close_on_loop, wait=True, timeout_s=5)
            except Exception:  # noqa: BLE001, S110 - closing must go on regardless
                pass
            ex.close()
        if lt is not None:
            lt.stop()

    def _close_on_loop(self) -> None:
        run, ex = self.run, self.executor
        if run is not None:
            run.cancel()
        if ex is not None:
            try:
                ex.unbind()
            except Exception:  # noqa: BLE001, S110 - its loop is gone; nothing left to unwatch
                pass
