"""Time to a first batch from process workers, each cell in a fresh interpreter (cold).

    python benchmarks/first_batch.py                  # median of 5, ~1 min on 2 cores
    python benchmarks/first_batch.py --repeat 9 --gap-s 0.5

Rows (2 workers, a no-op batch, imports done before the clock starts):

- `prefetch plain`: a plain dataset class, `Loader(ds, executor="process")` made `--gap-s`
  after the dataset (the fork server starts with the Loader).
- `prefetch PyDataset`: a `prefetch.PyDataset` built with `use_multiprocessing=True`, the
  Loader made `--gap-s` later — as a training script builds the dataset, then the model,
  then iterates: the fork server started, and imported the dataset's module, when the
  dataset was built.
- `torch fork`: `DataLoader(ds, batch_size=None, num_workers=2)` with its default fork: the
  workers are copies of this process, so nothing is imported anew.

TTFB: from constructing the loader to receiving batch 0. Quote the ratios; the VM is noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import prefetch  # noqa: E402 - after the path above


class NoopBatches(prefetch.PyDataset):
    """`n` batches; batch i is i."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


ROWS = ("prefetch plain", "prefetch PyDataset", "torch fork")


def cell(row: str, gap_s: float) -> float:
    """One cold first batch in this (fresh) interpreter; milliseconds."""
    if row == "torch fork":
        import torch.utils.data as tud

        from benchmarks.workloads import Noop

        ds = Noop(1000)
        time.sleep(gap_s)
        t0 = time.perf_counter()
        it = iter(tud.DataLoader(ds, batch_size=None, num_workers=2))
        next(it)
        ms = (time.perf_counter() - t0) * 1e3
        del it
        return ms
    loader_cls = prefetch.Loader  # imports before the clock, as for torch
    if row == "prefetch plain":
        from benchmarks.workloads import Noop

        ds = Noop(1000)
        kwargs = {"executor": "process", "workers": 2}
    else:
        # The class as `benchmarks.first_batch` defines it (this file runs as `__main__`):
        # what workers and the fork server import by name, as for a dataset in a package.
        from benchmarks.first_batch import NoopBatches as named

        ds = named(1000, workers=2, use_multiprocessing=True)
        kwargs = {}
    time.sleep(gap_s)  # the model is built
    t0 = time.perf_counter()
    with loader_cls(ds, **kwargs) as loader:
        next(iter(loader))
        ms = (time.perf_counter() - t0) * 1e3
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--gap-s", type=float, default=0.3, help="seconds between building the dataset and the loader")
    ap.add_argument("--cell", choices=ROWS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        print(json.dumps({"ttfb_ms": cell(args.cell, args.gap_s)}), flush=True)
        return
    times: dict[str, list[float]] = {row: [] for row in ROWS}
    for r in range(args.repeat):
        for row in ROWS:  # interleaved: drifting load hits every row alike
            out = subprocess.run([sys.executable, "-m", "benchmarks.first_batch", "--cell", row,
                                  "--gap-s", str(args.gap_s)], cwd=REPO, capture_output=True, text=True,
                                 timeout=120, check=False)
            line = [x for x in out.stdout.splitlines() if x.startswith("{")]
            if out.returncode or not line:
                sys.exit(f"{row}: failed\n{out.stderr[-2000:]}")
            times[row].append(json.loads(line[-1])["ttfb_ms"])
            print(f"  [{r + 1}/{args.repeat}] {row}: {times[row][-1]:.1f} ms", file=sys.stderr, flush=True)
    torch_ms = statistics.median(times["torch fork"])
    print(f"\ncold first batch, 2 process workers, loader made {args.gap_s:g} s after the dataset; "
          f"median of {args.repeat}")
    print(f"  {'row':<22}{'TTFB ms':>9}{'x torch':>9}   runs")
    for row in ROWS:
        med = statistics.median(times[row])
        runs = ", ".join(f"{t:.0f}" for t in times[row])
        print(f"  {row:<22}{med:>9.1f}{med / torch_ms:>9.2f}   {runs}")


if __name__ == "__main__":
    main()
