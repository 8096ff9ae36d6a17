"""Thread workers: `__getitem__` runs on daemon threads owned by one executor."""

from __future__ import annotations

import queue
import threading
import warnings
from time import perf_counter
from typing import Any

from ...errors import portable
from ..jobs import run_items
from ..loop import tighten_timer_slack
from .base import Executor, Failure, Job, LoopPoster

_STOP = None


def run_job(dataset: Any, job: Job, where: str) -> tuple[list, Failure | None, float]:
    """A job's `__getitem__` calls in this interpreter (threads, the warm start)."""
    owner = job.owner
    return run_items(lambda _k, index: dataset[index], job.items, job.seed, job.epoch, where,
                     lambda: owner.cancelled)


class _Detached:
    """Stands in for a job's owner where the job runs in another process (the real owner stays
    on the engine loop); such a job is never cancelled from there."""

    cancelled = False

    def complete(self, job: Job, values: list, failure: Failure | None, elapsed: float) -> None:
        """Never called: the job is reported by whoever sent it."""


def run_remote(dataset: Any, epoch: int, seed: int, items: list, where: str) -> tuple[list, Failure | None, float]:
    """`run_items` for a job sent elsewhere (a process pool, a dask worker): everything here
    must pickle, the failure's exception included."""
    values, failure, elapsed = run_job(dataset, Job(_Detached(), epoch, seed, items), where)
    if failure is not None:
        failure.error = portable(failure.error)
    return values, failure, elapsed


class ThreadExecutor(Executor):
    """`workers` daemon threads pulling jobs from one queue.

    Daemon threads (not `concurrent.futures`' joined-at-exit ones) so that a `__getitem__`
    stuck in I/O can never hold the interpreter open; `close()` still joins them.
    """

    def __init__(self, dataset: Any, workers: int):
        super().__init__(workers)
        self.dataset = dataset
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._poster = LoopPoster(self._deliver)
        self._closed = False
        self._retire = 0  # threads asked to exit by a shrink
        self._lock = threading.Lock()

    def start(self) -> None:
        self._grow(self.workers)

    def bind(self, loop) -> None:
        super().bind(loop)
        self._poster.rebind(loop)

    def _grow(self, n: int) -> None:
        for _ in range(n):
            t = threading.Thread(target=self._work, name=f"prefetch-thread-{len(self._threads)}", daemon=True)
            t.start()
            self._threads.append(t)

    def resize(self, workers: int) -> None:
        with self._lock:
            alive = [t for t in self._threads if t.is_alive()]
            self._threads = alive
            current = len(alive) - self._retire
            if workers > current:
                take_back = min(self._retire, workers - current)
                self._retire -= take_back
                self._grow(workers - current - take_back)
            elif workers < current:
                self._retire += current - workers
            self.workers = workers

    def _submit(self, job: Job) -> None:
        self._queue.put(job)

    def _deliver(self, report: tuple) -> None:
        self.report(*report)

    def _work(self) -> None:
        tighten_timer_slack()
        where = f"thread {threading.current_thread().name}"
        get, post, dataset = self._queue.get, self._poster.post, self.dataset
        while True:
            if self._retire:
                with self._lock:
                    if self._retire:
                        self._retire -= 1
                        return
            job = get()
            if job is _STOP:
                return
            values, failure, elapsed = run_job(dataset, job, where)
            post((job, values, failure, elapsed))
            del job, values, failure  # do not pin the last batch while idle

    def close(self, timeout_s: float = 1.0) -> None:
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = perf_counter() + timeout_s
        stuck = []
        for t in self._threads:
            if t is threading.current_thread():
                continue
            t.join(max(0.0, deadline - perf_counter()))
            if t.is_alive():
                stuck.append(t.name)
        if stuck:
            warnings.warn(f"prefetch: {len(stuck)} worker thread(s) still inside __getitem__ after close(): "
                          f"{', '.join(stuck)} (daemon threads; they end with their call)", RuntimeWarning,
                          stacklevel=2)
