"""Coroutine `__getitem__` awaited on the engine's own loop, `workers` at a time."""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from time import perf_counter
from typing import Any

from ..jobs import arun_items
from ..loop import call_on
from .base import Executor, Job

_WHERE = "a coroutine on the event loop"


class CoroutineExecutor(Executor):
    """Up to `workers` long-lived worker tasks await batches from one FIFO of jobs.

    Long-lived workers rather than a task per batch: a worker that finishes a batch takes
    the next job (which the scheduler queued while it reported) without a task to create or
    a future to wake, which is most of the per-batch cost at thousands of batches a second.
    """

    chunks = False

    def __init__(self, dataset: Any, workers: int):
        super().__init__(workers)
        self.dataset = dataset
        self._jobs: deque[Job] = deque()
        self._tasks: dict[asyncio.Task, Job | None] = {}  # worker -> the job it is running
        self._parked: deque[asyncio.Future] = deque()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        super().bind(loop)
        self._tasks = {}  # workers of a previous loop died with it (or were cancelled by unbind)
        self._parked = deque()
        self._wake_or_spawn()

    def unbind(self) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            for task in list(self._tasks):
                task.cancel()
        self._tasks = {}
        self._parked = deque()

    def _submit(self, job: Job) -> None:
        self._jobs.append(job)
        self._wake_or_spawn()

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
            task = self.loop.create_task(self._worker())
            self._tasks[task] = None

    async def _worker(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        jobs, tasks, parked, dataset, loop = self._jobs, self._tasks, self._parked, self.dataset, self.loop
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
                    values, failure, _ = await arun_items(dataset.__getitem__, job.items, job.seed, job.epoch,
                                                          _WHERE, lambda: owner.cancelled)
                except asyncio.CancelledError:
                    if not job.owner.cancelled:
                        raise  # not an epoch cancel: the executor is closing
                    # Cancelled again on top of the epoch's cancel (unbind, close): leave.
                    if sys.version_info >= (3, 11) and me.uncancel() > 0:
                        raise
                    values, failure = [], None
                tasks[me] = None
                self.report(job, values, failure, perf_counter() - t0)
                if len(self._jobs) > 1:
                    self._wake_or_spawn()  # more queued than this worker can take
        finally:
            running = tasks.pop(me, None)
            if running is not None:  # cancelled mid-job by close/unbind: still account for it
                self.report(running, [], None, 0.0)

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
