"""Any `concurrent.futures.Executor` the user already has (theirs to shut down, not ours)."""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any

from .base import Executor, Failure, Job, LoopPoster
from .threads import run_remote


class FuturesExecutor(Executor):
    """Submits each job to a user-provided `concurrent.futures.Executor`."""

    def __init__(self, dataset: Any, pool: cf.Executor, workers: int):
        super().__init__(workers)
        self.dataset = dataset
        self.pool = pool
        self._poster = LoopPoster(self._deliver)
        self._futures: dict[cf.Future, Job] = {}
        if isinstance(pool, cf.ProcessPoolExecutor):
            self.in_process = False
            self.local_processes = True
            self.job_overhead = 300e-6

    def bind(self, loop) -> None:
        super().bind(loop)
        self._poster.rebind(loop)

    def _submit(self, job: Job) -> None:
        fut = self.pool.submit(run_remote, self.dataset, job.epoch, job.seed, job.items, "a concurrent.futures worker")
        self._futures[fut] = job
        fut.add_done_callback(self._poster.post)

    def _deliver(self, fut: cf.Future) -> None:
        job = self._futures.pop(fut)
        if fut.cancelled():
            self.report(job, [], None, 0.0)
            return
        exc = fut.exception()
        if exc is not None:  # the pool itself broke (e.g. BrokenProcessPool)
            position, index = job.items[0]
            self.report(job, [], Failure(position, index, exc), 0.0)
            return
        values, failure, elapsed = fut.result()
        self.report(job, values, failure, elapsed)

    def cancel(self, owner) -> None:
        for fut, job in list(self._futures.items()):
            if job.owner is owner:
                fut.cancel()  # a queued one never runs; its done-callback still reports it

    def close(self) -> None:
        for fut in list(self._futures):
            fut.cancel()
