"""`loader.stats`: is training waiting for data, and why.

Counters are written from one side each (the consumer's thread or the engine loop), so they
need no lock; a reader may see a figure one batch stale, never a torn one. Recording costs a
few attribute updates per batch, small against even a no-op batch (see benchmarks/).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

from .memory import Memory, measure

_KEEP = 4096  # recent samples kept for percentiles and the timeline


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class Stats:
    """Figures about a loader's input pipeline since it was built.

    Example:
        >>> import prefetch
        >>> loader = prefetch.Loader(list(range(100)), workers=2)
        >>> _ = list(loader)
        >>> s = loader.stats
        >>> s.batches, s.as_dict()["epochs"]
        (100, 1)
    """

    def __init__(self, workers: int = 1):
        self.started = perf_counter()
        self.workers = workers
        # consumer side
        self.batches = 0
        self.epochs = 0
        self.skipped = 0  # failing batches skipped under max_failures
        self.wait_s = 0.0
        self.waits = 0
        self._wait_samples: deque[float] = deque(maxlen=_KEEP)
        self.first_batch_s: float | None = None  # of the latest epoch, from its start
        self._epoch_started: float | None = None
        self._iterating_since: float | None = None
        self._iterated_s = 0.0  # time inside epochs, finished ones
        # engine side
        self.getitems = 0
        self.busy_s = 0.0
        self._latencies: deque[float] = deque(maxlen=_KEEP)
        self._timeline: deque[tuple[float, int, int]] = deque(maxlen=_KEEP)
        self._last_sample = 0.0
        self._worker_changes: list[tuple[float, int]] = [(0.0, workers)]
        # Set by the loader: the worker processes' pids and the dataset bytes in shared memory.
        self.processes: Callable[[], tuple[list[int], int]] = lambda: ([], 0)

    # -- recording ------------------------------------------------------------------------------
    def epoch_started(self) -> None:
        self._epoch_started = self._iterating_since = perf_counter()

    def epoch_ended(self) -> None:
        if self._iterating_since is not None:
            self._iterated_s += perf_counter() - self._iterating_since
            self._iterating_since = None

    def delivered(self) -> None:
        self.batches += 1
        if self._epoch_started is not None:
            self.first_batch_s = perf_counter() - self._epoch_started
            self._epoch_started = None

    def add_wait(self, seconds: float) -> None:
        self.wait_s += seconds
        self.waits += 1
        self._wait_samples.append(seconds)

    def record_latency(self, elapsed: float, n: int) -> None:
        self.getitems += n
        self.busy_s += elapsed
        per = elapsed / n
        if n == 1:
            self._latencies.append(per)
        else:
            self._latencies.extend([per] * min(n, 64))

    def sample(self, inflight: int, ready: int) -> None:
        now = perf_counter()
        if now - self._last_sample >= 0.01:  # at most 100 samples a second
            self._last_sample = now
            self._timeline.append((now - self.started, inflight, ready))

    def workers_changed(self, workers: int) -> None:
        self.workers = workers
        self._worker_changes.append((perf_counter() - self.started, workers))

    # -- reading -----------------------------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        return perf_counter() - self.started

    @property
    def iterating_s(self) -> float:
        """Time spent inside epochs (from each iteration's start to its end)."""
        since = self._iterating_since
        return self._iterated_s + (perf_counter() - since if since is not None else 0.0)

    @property
    def stall_fraction(self) -> float:
        """Share of the iterating time the consumer spent waiting for data (the input stall)."""
        return min(1.0, self.wait_s / max(self.iterating_s, 1e-9))

    @property
    def wait_per_batch_s(self) -> float:
        return self.wait_s / self.batches if self.batches else 0.0

    def latency(self, q: float) -> float | None:
        """`__getitem__` latency at quantile `q` (0.5 = median) over recent batches, seconds."""
        return percentile(list(self._latencies), q)

    @property
    def utilisation(self) -> float:
        """Busy time of the workers over their available time (1.0 = always busy)."""
        return min(1.0, self.busy_s / max(self.iterating_s * max(self.workers, 1), 1e-9))

    def memory(self) -> Memory:
        """PSS of this process and of each worker process now (read from /proc, on demand:
        a few ms). Example: `print(loader.stats.memory())`."""
        pids, shared = self.processes()
        return measure(pids, shared)

    def timeline(self) -> list[tuple[float, int, int]]:
        """(seconds since start, batches in flight, batches ready) samples."""
        return list(self._timeline)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "epochs": self.epochs,
            "skipped": self.skipped,
            "elapsed_s": self.elapsed_s,
            "iterating_s": self.iterating_s,
            "wait_s": self.wait_s,
            "wait_per_batch_s": self.wait_per_batch_s,
            "wait_p95_s": percentile(list(self._wait_samples), 0.95) or 0.0,
            "stall_fraction": self.stall_fraction,
            "first_batch_s": self.first_batch_s,
            "getitem_p50_s": self.latency(0.5),
            "getitem_p95_s": self.latency(0.95),
            "getitems": self.getitems,
            "workers": self.workers,
            "utilisation": self.utilisation,
            "inflight_mean": (sum(t[1] for t in self._timeline) / len(self._timeline)) if self._timeline else 0.0,
            "ready_mean": (sum(t[2] for t in self._timeline) / len(self._timeline)) if self._timeline else 0.0,
            "worker_changes": list(self._worker_changes),
        }

    def __repr__(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1e3:.2f} ms"

        skipped = f"skipped={self.skipped}, " if self.skipped else ""
        return (f"Stats(batches={self.batches}, epochs={self.epochs}, {skipped}"
                f"waited={self.wait_s:.3f} s ({self.stall_fraction:.0%} of {self.iterating_s:.1f} s iterating, "
                f"{ms(self.wait_per_batch_s)}/batch), getitem p50={ms(self.latency(0.5))} "
                f"p95={ms(self.latency(0.95))}, workers={self.workers}, utilisation={self.utilisation:.0%})")
