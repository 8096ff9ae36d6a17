"""Any `concurrent.futures.Executor` the user already has (theirs to shut down, not ours)."""

from __future__ import annotations

import concurrent.futures as cf
from time import monotonic
from typing import Any

from ...errors import batch_timeout
from .base import Executor, Failure, Job, LoopPoster, Watchdog
from .threads import run_remote


class FuturesExecutor(Executor):
    """Submits each job to a user-provided `concurrent.futures.Executor`.

    With `timeout_s`, each job is one batch, and its clock starts when the watchdog first
    sees its future running (so up to a quarter of the timeout late): past the timeout the
    batch fails with `BatchTimeout` (no stack: the pool does not show it) and its late
    result is dropped. The pool's worker stays inside the call — it is the user's pool, and
    a `concurrent.futures` worker cannot be stopped — until the call returns.
    """

    def __init__(self, dataset: Any, pool: cf.Executor, workers: int, *, timeout_s: float | None = None):
        super().__init__(workers)
        self.dataset = dataset
        self.pool = pool
        self._poster = LoopPoster(self._deliver)
        self._futures: dict[cf.Future, Job] = {}
        self.timeout_s = timeout_s
        self._watchdog = None if timeout_s is None else Watchdog(timeout_s, self._check_timeouts)
        self._running_since: dict[cf.Future, float] = {}
        if timeout_s is not None:
            self.chunks = False  # one batch per job: the job's clock is that batch's
        if isinstance(pool, cf.ProcessPoolExecutor):
            self.in_process = False
            self.local_processes = True
            self.job_overhead = 300e-6

    def bind(self, loop) -> None:
        super().bind(loop)
        self._poster.rebind(loop)
        if self._watchdog is not None and self._busy:
            self._watchdog.arm(loop)

    def unbind(self) -> None:
        if self._watchdog is not None:
            self._watchdog.disarm()

    def _submit(self, job: Job) -> None:
        fut = self.pool.submit(run_remote, self.dataset, job.epoch, job.seed, job.items, "a concurrent.futures worker")
        self._futures[fut] = job
        fut.add_done_callback(self._poster.post)
        if self._watchdog is not None:
            self._watchdog.arm(self.loop)

    def _check_timeouts(self) -> bool:
        """On the loop: fail batches running past the timeout. True while work runs."""
        assert self.timeout_s is not None
        now, since = monotonic(), self._running_since
        for fut, job in list(self._futures.items()):
            if fut.done() or not fut.running():
                continue
            started = since.setdefault(fut, now)
            if now - started > self.timeout_s:
                del self._futures[fut], since[fut]  # its result, should it come, is dropped
                position, index = job.items[0]
                worker = f"a worker of the {type(self.pool).__name__}"
                self.report(job, [], Failure(position, index, batch_timeout(index, worker, self.timeout_s, None)),
                            now - started)
        return self._busy > 0

    def _deliver(self, fut: cf.Future) -> None:
        self._running_since.pop(fut, None)
        job = self._futures.pop(fut, None)
        if job is None:
            return  # timed out: already reported
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
