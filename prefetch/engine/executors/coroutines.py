"""Coroutine `__getitem__` awaited on the engine's own loop, `workers` at a time."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections import deque
from time import monotonic, perf_counter
from typing import Any

from ...errors import batch_timeout
from ..jobs import arun_items
from ..loop import call_on
from .base import Executor, Failure, Job, Watchdog, format_frames

_WHERE = "a coroutine on the event loop"


class CoroutineExecutor(Executor):
    """Up to `workers` long-lived worker tasks await batches from one FIFO of jobs.

    Long-lived workers rather than a task per batch: a worker that finishes a batch takes
    the next job (which the scheduler queued while it reported) without a task to create or
    a future to wake, which is most of the per-batch cost at thousands of batches a second.


    With `timeout_s`, each worker notes when the batch it awaits began; a loop timer
    (`Watchdog`) cancels a worker task whose batch is past the timeout, after taking its
    stack, and the worker reports the batch as `BatchTimeout` and goes on with the next job.
    (A coroutine that blocks the loop itself — a plain `time.sleep` — stops the timer too:
    nothing on that loop can interrupt it.)
    """

    chunks = False

    def __init__(self, dataset: Any, workers: int, *, timeout_s: float | None = None):
        super().__init__(workers)
        self.dataset = dataset
        self._jobs: deque[Job] = deque()
        self._tasks: dict[asyncio.Task, Job | None] = {}  # worker -> the job it is running
        self._parked: deque[asyncio.Future] = deque()
        self.timeout_s = timeout_s
        self._watchdog = None if timeout_s is None else Watchdog(timeout_s, self._check_timeouts)
        self._started: dict[asyncio.Task, tuple[int, float]] = {}  # worker -> (k, when) of the batch it awaits
        self._timed_out: dict[asyncio.Task, tuple[int, str, float]] = {}  # worker -> (k, stack, seconds)
        self._names = itertools.count()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        super().bind(loop)
        self._tasks = {}  # workers of a previous loop died with it (or were cancelled by unbind)
        self._parked = deque()
        self._started, self._timed_out = {}, {}
        self._wake_or_spawn()
        if self._watchdog is not None and self._busy:
            self._watchdog.arm(loop)

    def unbind(self) -> None:
        if self._watchdog is not None:
            self._watchdog.disarm()
        loop = self.loop
        if loop is not None and not loop.is_closed():
            for task in list(self._tasks):
                task.cancel()
        self._tasks = {}
        self._parked = deque()

    def _submit(self, job: Job) -> None:
        self._jobs.append(job)
        self._wake_or_spawn()
        if self._watchdog is not None:
            self._watchdog.arm(self.loop)

    def _wake_or_spawn(self) -> None:
        if not self._jobs or self.loop is None:
            return
        parked = self._parked
        while parked:
            fut = parked.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        if len(self._tasks) < self.workers:
            task = self.loop.create_task(self._worker(), name=f"prefetch-coroutine-{next(self._names)}")
            self._tasks[task] = None

    async def _worker(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        jobs, tasks, parked, dataset, loop = self._jobs, self._tasks, self._parked, self.dataset, self.loop
        watched = self._watchdog is not None
        try:
            while True:
                if self._tasks is not tasks:
                    return  # the executor moved to another loop (or closed): not ours any more
                if not jobs:
                    if len(tasks) > self.workers:  # shrunk: retire
                        return
                    fut = loop.create_future()  # type: ignore[union-attr]
                    parked.append(fut)
                    await fut
                    continue
                job = jobs.popleft()
                tasks[me] = job
                t0 = perf_counter()
                try:
                    owner = job.owner
                    # Each worker task has its own context: a batch's rng() is its alone.
                    produce = self._producer(me) if watched else dataset.__getitem__
                    values, failure, _ = await arun_items(produce, job.items, job.seed, job.epoch, _WHERE,
                                                          lambda: owner.cancelled)  # noqa: B023 - awaited here
                    if watched and self._timed_out.pop(me, None) is not None and sys.version_info >= (3, 11):
                        me.uncancel()  # the batch caught our cancel and returned after all: keep it
                except asyncio.CancelledError:
                    timed_out = self._timed_out.pop(me, None)
                    if not job.owner.cancelled and timed_out is None:
                        raise  # not an epoch cancel: the executor is closing
                    # Cancelled again on top of the epoch's cancel or the timeout (unbind, close): leave.
                    if sys.version_info >= (3, 11) and me.uncancel() > 0:
                        raise
                    values, failure = [], None
                    if timed_out is not None and not job.owner.cancelled:
                        failure = self._timeout_failure(me, job, *timed_out)
                if watched:
                    self._started.pop(me, None)
                tasks[me] = None
                self.report(job, values, failure, perf_counter() - t0)
                if len(self._jobs) > 1:
                    self._wake_or_spawn()  # more queued than this worker can take
        finally:
            self._started.pop(me, None)
            self._timed_out.pop(me, None)
            running = tasks.pop(me, None)
            if running is not None:  # cancelled mid-job by close/unbind: still account for it
                self.report(running, [], None, 0.0)

    # -- timeout ----------------------------------------------------------------------------------
    def _producer(self, me: asyncio.Task) -> Any:
        """`__getitem__`, noting when each call starts (for the watchdog)."""
        getitem = self.dataset.__getitem__
        started, count = self._started, itertools.count()

        def produce(index: int) -> Any:
            started[me] = (next(count), monotonic())  # the clock starts with the call
            return getitem(index)

        return produce

    def _check_timeouts(self) -> bool:
        """On the loop: cancel workers whose batch is past the timeout. True while work runs."""
        timeout_s, now = self.timeout_s, monotonic()
        assert timeout_s is not None
        for task, (k, t0) in list(self._started.items()):
            if now - t0 <= timeout_s or task.done() or self._tasks.get(task) is None:
                continue
            del self._started[task]
            self._timed_out[task] = (k, format_frames(_awaiting_frames(task)), now - t0)
            task.cancel()
        return self._busy > 0

    def _timeout_failure(self, me: asyncio.Task, job: Job, k: int, stack: str, elapsed: float) -> Failure:
        position, index = job.items[k]
        if k:  # the batches before it in the job were made, but are dropped with it: run them again
            self.submit(Job(job.owner, job.epoch, job.seed, job.items[:k]))
            job.items = job.items[k:]
        assert self.timeout_s is not None
        return Failure(position, index, batch_timeout(index, f"coroutine {me.get_name()} on the event loop",
                                                      self.timeout_s, stack))

    def resize(self, workers: int) -> None:
        super().resize(workers)
        if self.loop is not None:
            for _ in range(min(len(self._jobs), workers)):
                self._wake_or_spawn()

    def cancel(self, owner) -> None:
        kept: deque[Job] = deque()
        for job in self._jobs:
            if job.owner is owner:
                self.report(job, [], None, 0.0)
            else:
                kept.append(job)
        self._jobs.clear()
        self._jobs.extend(kept)
        # Coroutines of that epoch are cancelled rather than awaited to the end.
        for task, running in list(self._tasks.items()):
            if running is not None and running.owner is owner:
                task.cancel()

    def close(self) -> None:
        if self._watchdog is not None:
            call_on(self.loop, self._watchdog.disarm)
        self._jobs.clear()
        loop = self.loop
        tasks = list(self._tasks)
        self._tasks = {}  # workers that wake up find they are not ours any more
        if loop is None or loop.is_closed():
            return

        def cancel_all() -> None:
            for task in tasks:
                task.cancel()

        call_on(loop, cancel_all)


def _awaiting_frames(task: asyncio.Task) -> list:
    """The frames of `task`'s coroutine and of what each awaits in turn, oldest first
    (`Task.get_stack` gives only the outermost one of a suspended coroutine)."""
    frames = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            break
        frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return frames
