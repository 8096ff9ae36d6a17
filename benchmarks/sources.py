"""Sample-level sources: `prefetch.batched` against torch's `DataLoader`, side by side.

    python benchmarks/sources.py            # median of 3, ~3 min on 2 cores
    python benchmarks/sources.py --quick    # 1 run, fewer batches (~1 min)
    python benchmarks/sources.py --workers 4 --workloads small,images

Workloads (each batch collates its samples; both loaders shuffle samples every epoch):

- `small`:  256 samples per batch, each ~0.2 ms of numpy ufunc work (calibrated here) -> 64 floats.
- `images`: 64 samples per batch, each a 3x224x224 uint8 image copied (and flipped) from a pool.
- `hf`:     a Hugging Face `datasets.Dataset` (numpy format, 128 floats + a label per row), 256
            rows per batch: read with its `__getitems__` (one call per batch) vs one row at a time
            (`-onebyone` rows, on 1/6 of the batches). A longer epoch: process workers import
            `datasets` (~1-2 s) before they can unpickle it, and the second half must be past that.

Rows, all with the same `workers` (W) and batches in flight (Q = 4W):

- `serial`: every batch made in this process, one after the other, each dropped when the next is
  made - the baseline.
- `serial-kept`: the same, keeping the last Q batches alive, as any prefetcher holds its window:
  the work per batch a pipeline cannot avoid (a loop that drops each batch reuses one cache-hot
  buffer; for 9 MiB image batches that alone saves ~30% of the CPU).
- `bare-thread` / `bare-process`: the same batches (epoch 0's shuffled samples, fetched and
  collated by the same code) split round robin over W bare threads / W bare forked processes: no
  loader, no hand-over, nothing sent back; each keeps its last Q/W batches alive, as a
  prefetcher's window holds Q. What plain threads/processes get here (GIL, memory) - a reference.
- `prefetch-thread` / `prefetch-process`: `prefetch.Loader(prefetch.batched(src, B, shuffle=True),
  workers=W, max_queue_size=Q, executor=...)`; `prefetch-thread-auto` (hf): `workers="auto"`, which
  keeps only the threads that help (a source that holds the GIL: one).
- `torch-dl`: `DataLoader(src, batch_size=B, shuffle=True, num_workers=W, prefetch_factor=4)`
  (processes, default fork context, `default_collate`, which also uses `__getitems__`).

Columns. Each cell runs in a fresh interpreter. `b/s` is measured on the second half of the epoch
(start-up over for every loader); `epoch b/s` includes start-up. `cpu ms/b` is the CPU time of the
whole process tree (workers included) per batch over the same half (a few percent low for
loaders: up to Q batches were made before the window opened).

- `limit b/s`, the physical limit: min(W, CPUs) cores doing nothing but `serial-kept`'s work,
  min(W, CPUs) / its `cpu ms/b`. `x limit` = b/s over it. (For GIL-bound sources, threads
  cannot reach it: compare with `bare-thread`.)
- `x cpu` = `serial-kept`'s `cpu ms/b` / the row's: the share of the CPU that went into the
  batches themselves; on idle cores a loader reaches about `x cpu` of the limit. On a machine shared with
  other jobs the wall-clock columns move a lot (serial gets a core to itself more often than W
  workers get W); `x cpu` barely moves: read it there.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

WORKLOADS = {  # name: (samples per batch, batches per epoch (full run), rows)
    "small": (256, 120, ["serial", "serial-kept", "bare-thread", "bare-process", "prefetch-thread", "prefetch-process",
                         "torch-dl"]),
    "images": (64, 200, ["serial", "serial-kept", "bare-thread", "bare-process", "prefetch-thread", "prefetch-process",
                         "torch-dl"]),
    "hf": (256, 600, ["serial", "serial-kept", "serial-onebyone", "bare-thread", "bare-process", "prefetch-thread",
                     "prefetch-thread-auto", "prefetch-thread-onebyone", "prefetch-process", "torch-dl"]),
}


# -- one cell, in a fresh interpreter ----------------------------------------------------------------

def _source(spec: dict) -> Any:
    from benchmarks import sample_workloads as sw

    batches = spec["batches"]
    if spec["row"].endswith("onebyone"):
        batches = max(20, batches // 6)  # ten times slower, and as steady: fewer batches suffice
    n = batches * spec["batch_size"]
    if spec["workload"] == "small":
        return sw.SmallSamples(n, spec["size"])
    if spec["workload"] == "images":
        return sw.ImageSamples(n)
    table = sw.hf_table(n)
    return sw.OneByOne(table) if spec["row"].endswith("onebyone") else table


def _make(ds: Any, i: int) -> Any:
    """Batch i of epoch 0 of a Loader seeded 0, made without a Loader (the same samples)."""
    return ds.fetch(ds.indices(i, seed=0, epoch=0))


def _bare_threads(ds: Any, workers: int, queue: int) -> float:
    n = len(ds)
    go = threading.Barrier(workers + 1)

    def work(k: int) -> None:
        kept: collections.deque = collections.deque(maxlen=max(1, queue // workers))
        go.wait()
        for i in range(k, n, workers):
            kept.append(_make(ds, i))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - t0)


def _bare_process(ds: Any, k: int, workers: int, queue: int, go: Any, done: Any) -> None:
    kept: collections.deque = collections.deque(maxlen=max(1, queue // workers))
    go.wait()
    for i in range(k, len(ds), workers):
        kept.append(_make(ds, i))
    done.put(time.perf_counter())


def _bare_processes(ds: Any, workers: int, queue: int) -> float:
    import multiprocessing as mp

    fork = mp.get_context("fork")
    go, done = fork.Barrier(workers + 1), fork.Queue()
    procs = [fork.Process(target=_bare_process, args=(ds, k, workers, queue, go, done)) for k in range(workers)]
    for p in procs:
        p.start()
    go.wait()
    t0 = time.perf_counter()  # perf_counter is CLOCK_MONOTONIC: comparable across forked processes
    end = max(done.get() for _ in procs)
    for p in procs:
        p.join()
    return len(ds) / (end - t0)


def cell(spec: dict) -> dict:
    import psutil  # noqa: F401 - imported before anything is timed

    import prefetch

    src = _source(spec)
    row, w, q, bs = spec["row"], spec["workers"], spec["queue"], spec["batch_size"]
    ds = prefetch.batched(src, bs, shuffle=True)
    if row.startswith("bare-"):
        c0 = _tree_cpu()
        bps = (_bare_threads if row == "bare-thread" else _bare_processes)(ds, w, q)
        return {"bps": bps, "epoch_bps": bps, "cpu_ms": (_tree_cpu() - c0) / len(ds) * 1000}
    close = None
    t0 = time.perf_counter()
    if row.startswith("serial"):
        kept: collections.deque = collections.deque(maxlen=q if row == "serial-kept" else 1)
        it: Any = (kept.append(_make(ds, i)) or kept[-1] for i in range(len(ds)))
    elif row.startswith("prefetch"):
        kind = "process" if "process" in row else "thread"
        workers: Any = "auto" if row.endswith("-auto") else w
        loader = prefetch.Loader(ds, workers=workers, max_queue_size=q, executor=kind, seed=0)
        it, close = iter(loader), loader.close
    else:
        import torch.utils.data as tud

        dl = tud.DataLoader(src, batch_size=bs, shuffle=True, num_workers=w, prefetch_factor=max(2, q // w))
        it = iter(dl)
    stamps = []
    total, half = len(ds), len(ds) // 2
    cpu = {}
    for i, batch in enumerate(it):
        first = batch["x"] if isinstance(batch, dict) else batch
        first.reshape(-1)[0].item()  # touch it
        stamps.append(time.perf_counter())
        if i in (half, total - 1):  # inside the loop: every worker is still alive
            cpu[i] = _tree_cpu()
    if close is not None:
        close()
    n = len(stamps)
    return {"bps": (n - 1 - half) / (stamps[-1] - stamps[half]), "epoch_bps": n / (stamps[-1] - t0),
            "ttfb_ms": (stamps[0] - t0) * 1000, "batches": n,
            "cpu_ms": (cpu[total - 1] - cpu[half]) / (n - 1 - half) * 1000}


def _tree_cpu() -> float:
    """CPU seconds of this process and every descendant, alive or reaped (workers included)."""
    import resource

    import psutil

    total = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                for f in ("ru_utime", "ru_stime"))
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def run_cell(spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # parallelism comes from the loader alone
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--cell", json.dumps(spec)], check=False,
                              env=env, capture_output=True, text=True, timeout=spec["timeout"], start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:90]}"}
    return json.loads(lines[-1])


# -- the table ------------------------------------------------------------------------------------------

def report(name: str, spec: dict, results: dict[str, list[dict]]) -> list[str]:
    def median(row: str, key: str) -> float | None:
        values = [r[key] for r in results.get(row, []) if key in r]
        return statistics.median(values) if values else None

    def f(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    serial, torch, serial_cpu = median("serial", "bps"), median("torch-dl", "bps"), median("serial-kept", "cpu_ms")
    cores = min(spec["workers"], os.cpu_count() or 1)
    limit = cores * 1000 / serial_cpu if serial_cpu else None
    detail = f", {spec['size']} floats/sample" if name == "small" else ""
    lines = [(f"\n## {name}: {spec['batch_size']} samples/batch, {spec['batches']} batches, "
             f"workers={spec['workers']}{detail}; physical limit {f(limit, ',.1f')} b/s"),
             (f"{'row':<26}{'b/s':>9}{'x serial':>10}{'x torch':>9}{'x limit':>9}{'cpu ms/b':>10}{'x cpu':>7}"
             f"{'epoch b/s':>11}{'TTFB ms':>9}")]
    for row, rs in results.items():
        bps = median(row, "bps")
        if bps is None or any("error" in r for r in rs):
            lines.append(f"{row:<26}  {next(r['error'] for r in rs if 'error' in r)}")
            continue
        cpu = median(row, "cpu_ms")
        parallel = not row.startswith("serial")
        lines.append(f"{row:<26}{bps:>9,.1f}{f(bps / serial if serial else None, '.2f'):>10}"
                     f"{f(bps / torch if torch and row.startswith('prefetch') else None, '.2f'):>9}"
                     f"{f(bps / limit if limit and parallel else None, '.2f'):>9}{f(cpu, '.2f'):>10}"
                     f"{f(serial_cpu / cpu if serial_cpu and cpu else None, '.2f'):>7}"
                     f"{f(median(row, 'epoch_bps'), ',.1f'):>11}{f(median(row, 'ttfb_ms'), ',.0f'):>9}")
    getitems, onebyone = median("prefetch-thread", "bps"), median("prefetch-thread-onebyone", "bps")
    if name == "hf" and getitems and onebyone and serial and median("serial-onebyone", "bps"):
        lines.append(f"__getitems__ gain: {getitems / onebyone:.2f}x through the Loader (threads), "
                     f"{serial / median('serial-onebyone', 'bps'):.2f}x serial")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 run, a third of the batches")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cell:
        print(json.dumps(cell(json.loads(args.cell))), flush=True)
        return 0
    from benchmarks.sample_workloads import calibrate_small

    repeat = args.repeat or (1 if args.quick else 3)
    size = calibrate_small()
    print(f"prefetch.batched vs torch DataLoader: workers={args.workers}, {os.cpu_count()} CPUs, "
          f"median of {repeat}")
    out: list[str] = []
    for name in args.workloads.split(","):
        bs, batches, rows = WORKLOADS[name]
        spec = {"workload": name, "batch_size": bs, "batches": batches // 3 if args.quick else batches,
                "workers": args.workers, "queue": 4 * args.workers, "size": size, "timeout": 300}
        results: dict[str, list[dict]] = {row: [] for row in rows}
        for _ in range(repeat):  # interleaved, so drifting load hits every row alike
            for row in rows:
                results[row].append(run_cell(dict(spec, row=row)))
        lines = report(name, spec, results)
        print("\n".join(lines), flush=True)
        out.extend(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
