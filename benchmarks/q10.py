"""Quick iteration on no-op process batches at a small window (issue #10).

    python benchmarks/q10.py [--queue 10] [--workers 2] [--executor process] [--busy-us 0]
        [--seconds 3] [--runs 3] [--array]

Counts batches per second from the first batch on, for a few seconds, over a dataset whose
`__getitem__` returns the index (or, with --array, a tiny numpy array). Prints each run's
rate, the slowest tenth's rate and the median.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import prefetch


class Ints:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class Busy(Ints):
    """Holds the CPU for `us` microseconds per batch."""

    def __init__(self, n: int, us: float):
        super().__init__(n)
        self.s = us * 1e-6

    def __getitem__(self, i: int) -> int:
        end = time.perf_counter() + self.s
        while time.perf_counter() < end:
            pass
        return i


class Tiny(Ints):
    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return np.full(4, i, dtype=np.int64)


def one_run(loader: prefetch.Loader, seconds: float) -> tuple[float, float]:
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    marks = [t0]
    n = 0
    step = 2000
    for _ in it:
        n += 1
        if n % step == 0:
            now = time.perf_counter()
            marks.append(now)
            if now - t0 >= seconds:
                break
    rate = n / (time.perf_counter() - t0)
    # The slowest of ten consecutive stretches of the run (as loaders.py's "tenths").
    per = max(1, (len(marks) - 1) // 10)
    tenths = [per * step / (marks[i + per] - marks[i]) for i in range(0, len(marks) - per, per)]
    return rate, min(tenths, default=rate)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--queue", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--array", action="store_true")
    p.add_argument("--executor", default="process")
    p.add_argument("--busy-us", type=float, default=0.0, help="CPU time per batch, microseconds")
    a = p.parse_args()
    ds = Busy(10_000_000, a.busy_us) if a.busy_us else (Tiny if a.array else Ints)(10_000_000)
    rates = []
    with prefetch.Loader(ds, workers=a.workers, executor=a.executor, max_queue_size=a.queue) as loader:
        for _ in range(a.runs):
            rate, worst = one_run(loader, a.seconds)
            rates.append(rate)
            print(f"  {rate:10,.0f} b/s  slowest tenth {worst:10,.0f} b/s", flush=True)
    print(f"median {statistics.median(rates):,.0f} b/s ({a.executor}, {a.workers} workers, queue {a.queue})")


if __name__ == "__main__":
    main()
