"""`workers="auto"`: size the executor while it runs, so the consumer stops waiting for data.

A hill climb on the consumer's measured rate, driven by its stall:

- while the consumer waits for data (stall above `STALL`), double the workers (then grow by
  half once above 8), up to a budget (the window, and for processes the CPUs and memory);
- after each change, wait one interval for the new workers to fill the pipeline, then
  measure one: a change that did not raise the rate by `GAIN` is reverted, and the tuner
  settles there. Settled, it moves again only if the rate falls well below the settled one
  for several intervals while the consumer waits (the workload changed) — never back and
  forth on noise.
"""

from __future__ import annotations

import os
from time import perf_counter
from typing import Any

STALL = 0.05  # the consumer waiting more than this share of the time wants more workers
GAIN = 1.08  # a change must raise the rate by 8% to be kept
INTERVAL = 0.1  # seconds per measurement (longer when batches are slow: at least MIN_BATCHES)
MIN_BATCHES = 16
RESTLESS = 4  # settled, this many stalled intervals in a row start a new climb


def _budget(executor: Any, window: int) -> int:
    cap = window
    if executor.local_processes:  # each worker costs a CPU and memory here (not so on a cluster)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        cap = min(cap, max(1, cpus))
        try:
            import psutil

            # Leave half the free memory alone: a process worker costs about what this one does.
            per_worker = psutil.Process().memory_info().rss
            cap = min(cap, max(1, int(psutil.virtual_memory().available * 0.5 // max(per_worker, 1))))
        except Exception:  # noqa: BLE001, S110 - psutil is optional; the CPU budget still holds
            pass
    return max(1, cap)


class AutoTuner:
    """Owned by one Loader; runs on the engine loop while an epoch runs."""

    def __init__(self, executor: Any, stats: Any, *, window: int, interval: float = INTERVAL):
        self.executor = executor
        self.stats = stats
        self.cap = _budget(executor, window)
        self.interval = interval
        self.state = "climb"  # climb -> (probe -> climb)* -> settled
        self.previous: int | None = None  # workers before the change being probed
        self.best_rate = 0.0
        self.restless = 0
        self._run: Any = None
        self._timer: Any = None
        self._loop: Any = None  # the loop the timer runs on
        self._mark: tuple[float, int, float] | None = None
        self._skip = 0

    def attach(self, run: Any) -> None:
        """Follow a new epoch (on its loop's thread)."""
        self._run = run
        self._mark = None
        loop = run.channel.loop
        # A timer left on another loop (the epoch before ran under asyncio.run, say) lapses
        # by itself at its next tick: it is not this loop's.
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._arm()

    def _arm(self) -> None:
        self._timer = self._loop.call_later(self.interval, self._tick, self._loop)

    def _tick(self, loop: Any) -> None:
        if loop is not self._loop:
            return  # stale: the epochs moved to another loop, which has its own timer
        self._timer = None
        run = self._run
        if run is None or not run.active:
            return  # no epoch running: sleep until the next attach
        self._arm()
        now, s = perf_counter(), self.stats
        if self._mark is None:
            self._mark = (now, s.batches, s.wait_s)
            return
        t0, b0, w0 = self._mark
        batches = s.batches - b0
        if batches < MIN_BATCHES and now - t0 < 4 * self.interval:
            return  # too few batches to tell a rate from noise: measure longer
        self._mark = (now, s.batches, s.wait_s)
        if self._skip:  # new workers are still filling the pipeline
            self._skip -= 1
            return
        dt = now - t0
        self._decide(batches / dt, (s.wait_s - w0) / dt)

    def _decide(self, rate: float, stall: float) -> None:
        workers = self.executor.workers
        if self.state == "probe":
            if rate >= self.best_rate * GAIN:
                self.best_rate = rate
                self.state = "climb"
            else:
                self._resize(self.previous)  # no better: go back and stay there
                self._settle()
                return
        elif self.state == "climb":
            self.best_rate = max(self.best_rate, rate)
        else:  # settled
            # More workers did not help here (the stall may be CPU-bound for good); only a
            # lasting change of the rate itself, with the consumer waiting, means the
            # workload changed and a new climb may pay off.
            changed = rate < self.best_rate / 1.5 and stall > STALL
            self.restless = self.restless + 1 if changed else 0
            if self.restless < RESTLESS:
                return
            self.state = "climb"
            self.best_rate = rate
        if stall > STALL and workers < self.cap:
            grow = workers if workers < 8 else max(1, workers // 2)
            self.previous = workers
            self._resize(min(self.cap, workers + grow))
            self.state = "probe"
        else:
            self._settle()

    def _settle(self) -> None:
        self.state = "settled"
        self.restless = 0

    def _resize(self, workers: int | None) -> None:
        if workers is None or workers == self.executor.workers:
            return
        self.executor.resize(workers)
        self.stats.workers_changed(workers)
        self._skip = 1
