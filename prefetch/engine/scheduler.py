"""One epoch's schedule: feed indices to an executor, keep the window bounded, deliver in order.

The scheduler is a small callback-driven state machine on the engine loop. It does not know
what runs the jobs (threads, coroutines, processes, a cluster) nor who consumes the batches:
it talks to an `Executor` and a `Channel`.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from typing import Any

from .channel import Channel
from .executors.base import Executor, Failure, Job


class ChunkSizer:
    """How many indices to put in one job.

    Cheap batches are grouped so a job carries about `target` seconds of work and the
    executor's fixed cost per round trip stops dominating; a batch that takes longer than
    that goes alone. Starts at 1 (the first batch as early as possible), and never takes
    more than a fair share of the free window, so no worker idles while another hoards.
    """

    def __init__(self, executor: Executor, target: float = 1e-3):
        self.enabled = executor.chunks
        self.executor = executor
        self.target = max(target, 20 * executor.job_overhead)
        self.latency: float | None = None  # moving average of one __getitem__, seconds

    def observe(self, per_item: float) -> None:
        if not self.enabled:
            return  # latency stays None: fill() takes its one-at-a-time fast path
        self.latency = per_item if self.latency is None else 0.8 * self.latency + 0.2 * per_item

    def size(self, free: int, window: int) -> int:
        if not self.enabled or self.latency is None:
            return 1
        want = int(self.target / max(self.latency, 1e-7))
        workers = max(1, self.executor.workers)
        overhead = self.executor.job_overhead
        if window * self.latency < overhead:
            # The whole window is less work than one round trip: jobs run in parallel could
            # save less than that, and each one costs a round trip on the loop. One job
            # carries the window (no-op batches at a small window: one round trip per
            # window instead of one per worker).
            return max(1, min(want, window, free))
        share = max(1, window // (2 * workers))  # two jobs per worker: one runs, one waits
        if share * self.latency < overhead:
            # Batches so cheap that even two queued jobs cannot hide a round trip: fewer,
            # larger jobs (a worker's whole share of the window) cost less than the overlap.
            share = max(1, window // workers)
        return max(1, min(want, share, free))


class Skipped:
    """Stands in the channel for a batch whose failure the epoch's skip budget absorbed.

    It travels in the batch's place (in order, when ordered) and takes a window slot until
    the consumer passes it, so the window accounting is the same as for a batch.
    """

    __slots__ = ("error", "index")

    def __init__(self, index: int, error: BaseException):
        self.index = index
        self.error = error


class EpochRun:
    """Runs one epoch (or the rest of one, after a resume) through `executor` into `channel`.

    `skips`: how many failing batches this run may skip (`Loader(max_failures=...)`, less
    what the epoch already skipped before a resume); past that a failure ends the epoch.
    """

    def __init__(self, *, executor: Executor, items: Iterator[tuple[int, int]], epoch: int, seed: int,
                 window: int, ordered: bool, channel: Channel, sizer: ChunkSizer, stats: Any, skips: int = 0):
        self.executor = executor
        self.epoch = epoch
        self.seed = seed
        self.window = window
        self.ordered = ordered
        self.channel = channel
        self.sizer = sizer
        self.stats = stats
        self.cancelled = False
        self._items = items
        self._exhausted = False
        self._submitted = 0
        self._inflight = 0
        self._order: deque[int] = deque()  # positions in submission order (ordered mode)
        self._done: dict[int, Any] = {}  # position -> value or Failure, waiting for its turn
        self._stopped = False  # a failure ends the schedule
        self._skips = skips
        self._finished = False

    # -- scheduling ---------------------------------------------------------------------------
    def start(self) -> None:
        self.fill()

    def fill(self) -> None:
        if self._stopped or self.cancelled:
            return
        free = self.window - (self._submitted - self.channel.taken)
        # Cheap batches go in chunks: while a chunk's worth is already in flight, wait until a
        # whole chunk of the window is free rather than send a job per freed slot (each job
        # is a round trip, and each early wake-up a cross-thread signal).
        chunk = self.sizer.size(self.window, self.window) if self.sizer.latency is not None else 1
        if chunk > 1 and free < chunk and self._inflight >= chunk and not self._exhausted:
            self.channel.on_taken(self._submitted - self.window + chunk, self.fill)
            self.stats.sample(self._inflight, len(self.channel.items))
            return
        if free > 0 and not self._exhausted:
            source, sizer, submit = self._items, self.sizer, self.executor.submit
            ordered, order = self.ordered, self._order
            while free > 0:
                n = sizer.size(free, self.window) if sizer.latency is not None else 1
                if n == 1:  # the common case for slow batches: no list slicing
                    item = next(source, None)
                    if item is None:
                        self._exhausted = True
                        break
                    items = [item]
                    if ordered:
                        order.append(item[0])
                else:
                    items = list(itertools.islice(source, n))
                    if len(items) < n:
                        self._exhausted = True
                        if not items:
                            break
                    if ordered:
                        order.extend([p for p, _ in items])
                k = len(items)
                self._submitted += k
                self._inflight += k
                free -= k
                submit(Job(self, self.epoch, self.seed, items))
                if self._exhausted:
                    break
        self.stats.sample(self._inflight, len(self.channel.items))
        if self._exhausted:
            self._maybe_finish()
        elif free <= 0:
            # Ask the consumer to wake us once a few slots are free. Each completion refills
            # the window anyway, so with many batches in flight a wake-up per taken batch
            # would be wasted work; with few in flight we must hear of every free slot.
            slack = max(1, min(16, self._inflight // 8), chunk)
            self.channel.on_taken(self._submitted - self.window + slack, self.fill)

    def complete(self, job: Job, values: list, failure: Failure | None, elapsed: float) -> None:
        """An executor finished `job` (on the loop thread)."""
        n = len(job.items)
        self._inflight -= n
        if self.cancelled:
            return
        ran = len(values) + (failure is not None)
        if ran:
            self.sizer.observe(elapsed / ran)
            self.stats.record_latency(elapsed, ran)
        # Batches of the job that never ran (after a failure in it, or lost with a dead
        # worker): they run again if the epoch goes on past the failure.
        unrun = job.items[len(values):] if ran < n else ()
        if failure is not None:
            unrun = [item for item in unrun if item[0] != failure.position]
        if self.ordered:
            done = self._done
            for (position, _), value in zip(job.items, values):
                done[position] = value
            if failure is not None:
                done[failure.position] = failure
                if not self._skips:  # it will be raised when its turn comes: stop scheduling now
                    self._stopped = True
            if unrun and not self._stopped:
                self._rerun(job, unrun)
            self._flush()
        else:
            if values:
                self.channel.put_many([(p, v) for (p, _), v in zip(job.items, values)])
            if failure is not None and not self._skip(failure):
                self._fail(failure)
                return
            if unrun:
                self._rerun(job, unrun)
        if not self._stopped:
            self.fill()

    def _rerun(self, job: Job, items: list) -> None:
        # Already counted as submitted (their window slots are held): in flight again.
        self._inflight += len(items)
        self.executor.submit(Job(self, job.epoch, job.seed, list(items)))

    def _skip(self, failure: Failure) -> bool:
        """Skip `failure`'s batch if the budget allows (an `Exception`, not an interrupt)."""
        if self._skips <= 0 or not isinstance(failure.error, Exception):
            return False
        self._skips -= 1
        self.channel.put_many([(failure.position, Skipped(failure.index, failure.error))])
        return True

    def _flush(self) -> None:
        order, done = self._order, self._done
        out: list[tuple[int, Any]] = []
        while order and order[0] in done:
            position = order.popleft()
            value = done.pop(position)
            if type(value) is Failure:
                if out:
                    self.channel.put_many(out)
                    out = []
                if self._skip(value):
                    continue
                self._fail(value)
                return
            out.append((position, value))
        if out:
            self.channel.put_many(out)

    def _fail(self, failure: Failure) -> None:
        self._stopped = True
        self.channel.fail(failure.error)
        self.cancel()

    def _maybe_finish(self) -> None:
        if self._inflight == 0 and not self._done and not self._finished and not self._stopped:
            self._finished = True
            self.channel.finish()

    def cancel(self) -> None:
        """Stop scheduling; queued jobs are dropped and running ones' results discarded, and a
        consumer still waiting on the channel is woken (what it has not taken stays there)."""
        if not self.cancelled:
            self.cancelled = True
            self._done.clear()
            self.executor.cancel(self)
            self.channel.close()

    @property
    def active(self) -> bool:
        """Still producing: not cancelled, not failed, not finished."""
        return not (self.cancelled or self._stopped or self._finished)
