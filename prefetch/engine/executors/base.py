"""The one small protocol every executor implements, and the pieces they share.

An executor runs `Job`s (a few batch indices of one epoch) somewhere — threads, coroutines,
processes, a cluster — and reports each one back, on the engine's event loop, by calling
`job.owner.complete(job, values, failure, elapsed)`. It knows nothing about windows, order
or frameworks: that is the scheduler's and the adapters' business.
"""

from __future__ import annotations

import asyncio
import threading
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from ..jobs import Failure, Job, JobOwner

__all__ = ["Executor", "Failure", "Job", "JobOwner", "LoopPoster", "Watchdog", "format_frames"]


class Executor:
    """Base class: runs jobs and reports them back on the loop it was bound to.

    Lifecycle, all on the engine loop's thread unless noted: `bind(loop)` (again whenever
    the loop changes), `submit(job)` many times, `begin_epoch(epoch)` before each epoch's
    first job, `wait_idle()` to let stale work finish, `close()` (any thread, idempotent).
    """

    #: whether several indices per job pay off (amortising a round trip)
    chunks: bool = True
    #: whether running jobs share the consumer's interpreter (hooks must not race them)
    in_process: bool = True
    #: whether each worker is a process on this machine (costs a CPU and memory here)
    local_processes: bool = False
    #: a fixed guess of one job's overhead in seconds, used by the chunk sizer
    job_overhead: float = 30e-6

    def __init__(self, workers: int):
        self.workers = workers
        self.loop: asyncio.AbstractEventLoop | None = None
        self._busy = 0  # jobs submitted and not yet reported
        self._idle_waiters: list[asyncio.Future] = []

    # -- on the loop thread ---------------------------------------------------------------
    def processes(self) -> tuple[list[int], int]:
        """Pids of local worker processes, and dataset bytes placed in shared memory for them."""
        return [], 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def unbind(self) -> None:
        """Stop using the current loop (before a bind to another, or a close)."""

    def submit(self, job: Job) -> None:
        self._busy += 1
        self._submit(job)

    def _submit(self, job: Job) -> None:
        raise NotImplementedError

    def cancel(self, owner: JobOwner) -> None:
        """Drop queued jobs of `owner` (its `cancelled` flag is already set)."""

    def begin_epoch(self, epoch: int) -> None:
        """A new epoch's jobs follow; the dataset may have changed in the consumer's process."""

    def resize(self, workers: int) -> None:
        self.workers = workers

    def report(self, job: Job, values: list, failure: Failure | None, elapsed: float) -> None:
        """Hand a finished job to its owner; call on the loop thread."""
        self._busy -= 1
        try:
            job.owner.complete(job, values, failure, elapsed)
        finally:
            if self._busy == 0 and self._idle_waiters:
                for fut in self._idle_waiters:
                    if not fut.done():
                        fut.set_result(None)
                self._idle_waiters.clear()

    async def wait_idle(self) -> None:
        """Return once no job is running (stale jobs of an aborted epoch included)."""
        if self._busy:
            fut = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(fut)
            await fut

    # -- any thread -------------------------------------------------------------------------
    def start(self) -> None:
        """Start workers; called once, before the first bind."""

    def close(self) -> None:
        """End every worker; idempotent."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workers={self.workers})"


class LoopPoster:
    """Carries reports from worker threads to the loop with one wake-up per burst.

    `call_soon_threadsafe` per batch writes the loop's self-pipe every time; coalescing lets
    a burst of completions cost one wake-up, which is most of the per-batch overhead.
    """

    def __init__(self, deliver: Callable[[Any], None]):
        self._deliver = deliver
        self._queue: deque = deque()
        self._scheduled = False
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    def post(self, item: Any) -> None:
        self._queue.append(item)
        if not self._scheduled:
            with self._lock:  # two workers must not both schedule and both miss the flag reset
                if self._scheduled:
                    return
                self._scheduled = True
            self._schedule(self.loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop | None) -> None:
        try:
            loop.call_soon_threadsafe(self._drain, loop)  # type: ignore[union-attr,arg-type]
        except (RuntimeError, AttributeError):
            # The loop is closed: the loader is shutting down and nobody waits for this.
            self._scheduled = False

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self.loop:
            # Scheduled before the executor moved to another loop: deliver there, not here.
            self._schedule(self.loop)
            return
        self._scheduled = False  # reset first: a post racing with the drain schedules again
        q = self._queue
        while q:
            self._deliver(q.popleft())

    def rebind(self, loop: asyncio.AbstractEventLoop) -> None:
        old, self.loop = self.loop, loop
        if old is not loop and self._queue:
            # Reports parked for a loop that is gone (a closed asyncio.run) move to this one.
            self._scheduled = True
            self._schedule(loop)


class Watchdog:
    """Calls `check()` on the executor's loop every `period_s` (a quarter of the batch
    timeout) for as long as `check()` says work is still running: a loop timer, armed by
    the executor when it starts work, never a busy loop and never a blocking call.
    """

    def __init__(self, timeout_s: float, check: Callable[[], bool]):
        self.timeout_s = timeout_s
        self.period_s = max(0.01, timeout_s / 4)
        self._check = check
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """On the loop's thread: make sure a check is coming."""
        if self._handle is None and loop is not None and not loop.is_closed():
            self._handle = loop.call_later(self.period_s, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        if self._check():
            self.arm(loop)

    def disarm(self) -> None:
        """On the loop's thread (or with that loop stopped)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()


def format_frames(frames: list) -> str:
    """Frames (oldest first) as a traceback's text, most recent call last, with source lines."""
    summary = traceback.StackSummary.extract(((f, f.f_lineno) for f in frames), lookup_lines=True)
    return "Stack (most recent call last):\n" + "".join(summary.format())
