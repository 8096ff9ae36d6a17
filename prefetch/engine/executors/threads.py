"""Thread workers: `__getitem__` runs on daemon threads owned by one executor."""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import traceback
import warnings
from time import monotonic, perf_counter
from typing import Any

from ...errors import batch_timeout, portable
from ..jobs import run_items
from ..loop import tighten_timer_slack
from .base import Executor, Failure, Job, LoopPoster, Watchdog

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


class _Slot:
    """What one worker thread is inside of, for the watchdog (only with a timeout)."""

    __slots__ = ("abandoned", "job", "k", "started", "thread")

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.job: Job | None = None  # the job it runs (None: waiting for one)
        self.k = -1  # which of the job's items (-1: none started yet)
        self.started = 0.0  # when that item's __getitem__ began (time.monotonic)
        self.abandoned = False  # given up on: its job was reported, its result is dropped


class ThreadExecutor(Executor):
    """`workers` daemon threads pulling jobs from one queue.

    Daemon threads (not `concurrent.futures`' joined-at-exit ones) so that a `__getitem__`
    stuck in I/O can never hold the interpreter open; `close()` still joins them.

    With `timeout_s`, each thread publishes the batch it is inside of and when that began; a
    loop timer (`Watchdog`) fails a batch past the timeout with `BatchTimeout` (the thread's
    stack attached) and abandons its thread: Python cannot stop a thread, so it is renamed
    `prefetch-abandoned-...`, left out of the pool, and ends (a daemon) when its call returns,
    its result dropped. A new thread takes its place at once.
    """

    def __init__(self, dataset: Any, workers: int, *, timeout_s: float | None = None):
        super().__init__(workers)
        self.dataset = dataset
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._poster = LoopPoster(self._deliver)
        self._closed = False
        self._retire = 0  # threads asked to exit by a shrink
        self._lock = threading.Lock()
        self._names = itertools.count()
        self.timeout_s = timeout_s
        self._slots: list[_Slot] = []  # with a timeout: one per thread of the pool
        self._watch_lock = threading.Lock()  # a job is reported once: by its thread or by the watchdog
        self._watchdog = None if timeout_s is None else Watchdog(timeout_s, self._check_timeouts)

    def start(self) -> None:
        self._grow(self.workers)

    def bind(self, loop) -> None:
        super().bind(loop)
        self._poster.rebind(loop)
        if self._watchdog is not None and self._busy:
            self._watchdog.arm(loop)

    def unbind(self) -> None:
        if self._watchdog is not None:
            self._watchdog.disarm()

    def _grow(self, n: int) -> None:
        for _ in range(n):
            slot = None if self._watchdog is None else _Slot()
            t = threading.Thread(target=self._work, args=(slot,), name=f"prefetch-thread-{next(self._names)}",
                                 daemon=True)
            if slot is not None:
                slot.thread = t
                self._slots.append(slot)
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
        if self._watchdog is not None:
            self._watchdog.arm(self.loop)

    def _deliver(self, report: tuple) -> None:
        self.report(*report)

    def _work(self, slot: _Slot | None) -> None:
        tighten_timer_slack()
        where = f"thread {threading.current_thread().name}"
        get, post, dataset = self._queue.get, self._poster.post, self.dataset
        while True:
            if self._retire:
                with self._lock:
                    if self._retire:
                        self._retire -= 1
                        self._drop_slot(slot)
                        return
            job = get()
            if job is _STOP:
                return
            if slot is None:
                values, failure, elapsed = run_job(dataset, job, where)
            else:
                report = self._run_watched(slot, job, where)
                if report is None:
                    return  # abandoned: the watchdog reported this job and replaced this thread
                values, failure, elapsed = report
            post((job, values, failure, elapsed))
            del job, values, failure  # do not pin the last batch while idle

    # -- timeout ----------------------------------------------------------------------------------
    def _run_watched(self, slot: _Slot, job: Job, where: str) -> tuple[list, Failure | None, float] | None:
        """`run_job`, publishing each batch's start on `slot`; None once the thread is abandoned."""
        dataset, owner = self.dataset, job.owner

        def produce(k: int, index: int) -> Any:
            slot.started = monotonic()  # before k: the watchdog reads k, then started
            slot.k = k
            return dataset[index]

        slot.k = -1
        slot.job = job
        report = run_items(produce, job.items, job.seed, job.epoch, where,
                           lambda: owner.cancelled or slot.abandoned)
        with self._watch_lock:
            if slot.abandoned:
                return None
            slot.job = None
        return report

    def _drop_slot(self, slot: _Slot | None) -> None:
        if slot is not None and slot in self._slots:
            self._slots.remove(slot)

    def _check_timeouts(self) -> bool:
        """On the loop: give up on batches past the timeout. True while work is running."""
        if self._closed:
            return False
        timeout_s, now = self.timeout_s, monotonic()
        assert timeout_s is not None
        for slot in list(self._slots):
            job, k = slot.job, slot.k
            if job is None or k < 0 or now - slot.started <= timeout_s:
                continue
            with self._watch_lock:  # again, where the thread cannot finish the job meanwhile
                k, elapsed = slot.k, now - slot.started
                if slot.job is not job or slot.abandoned or k < 0 or elapsed <= timeout_s:
                    continue  # it finished just now
                slot.abandoned = True
            self._abandon(slot, job, k, elapsed)
        return self._busy > 0

    def _abandon(self, slot: _Slot, job: Job, k: int, elapsed: float) -> None:
        """Fail `job`'s k-th batch with BatchTimeout, and replace the thread stuck in it."""
        thread = slot.thread
        assert thread is not None
        name = thread.name
        frame = sys._current_frames().get(thread.ident) if thread.ident is not None else None
        stack = None
        if frame is not None:
            stack = "Stack (most recent call last):\n" + "".join(traceback.format_stack(frame))
        del frame
        thread.name = f"prefetch-abandoned-{name.removeprefix('prefetch-')}"
        with self._lock:
            self._drop_slot(slot)
            if thread in self._threads:
                self._threads.remove(thread)
            if not self._closed:
                self._grow(1)
        owner = job.owner
        if owner.cancelled:
            self.report(job, [], None, 0.0)
            return
        position, index = job.items[k]
        if k:  # the batches before it in the job were made, but by a thread given up on: again elsewhere
            self.submit(Job(owner, job.epoch, job.seed, job.items[:k]))
            job.items = job.items[k:]
        assert self.timeout_s is not None
        error = batch_timeout(index, f"thread {name}", self.timeout_s, stack)
        self.report(job, [], Failure(position, index, error), elapsed)

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
