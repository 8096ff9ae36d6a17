"""Memory of process loaders over an in-memory dataset: prefetch against torch's DataLoader.

    python benchmarks/memory.py            # every row, ~3-4 min on 2 cores
    python benchmarks/memory.py --quick    # 4 workers only, fewer rows (~1 min)

Datasets (each batch reads its 1/64 of the data, so two epochs touch all of it):

- `array`: one 512 MiB float64 numpy array held by the dataset (CIFAR/MNIST-style arrays, a
  token table, an embedding matrix).
- `strings`: a list of 1,000,000 Python strings (file paths); `packed`: the same paths in a
  `prefetch.PackedStrings` (two numpy arrays).
- `tiny`: a few bytes of state: the time to first batch a loader pays anyway.

Rows: prefetch with its default (forkserver, `share_dataset=True`), with spawn and fork, and with
`share_dataset=False` (every worker unpickles a private copy: prefetch before shared dataset
memory); torch `DataLoader(ds, batch_size=None, num_workers=W, persistent_workers=True)` with
the forkserver context and with fork (copy-on-write).

Columns. Each cell is a fresh interpreter, which builds the dataset, then times from building
the loader to the first batch (`TTFB`), then runs two epochs. Meanwhile this script sums the
proportional set size (PSS: a shared page split between the processes that map it) of the
cell's whole process tree (the cell, fork servers, workers) every 50 ms: `tree PSS` is the peak.
`x torch fork` = tree PSS / torch fork's in the same dataset and worker count. `x tiny TTFB` =
TTFB / the same loader's TTFB on `tiny`. Targets (issue #14) are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

MIB = 2**20
ARRAY_MIB = 512
N_STRINGS = 1_000_000
BATCHES = 64


# -- inside a cell --------------------------------------------------------------------------------
# Plain classes at the top level: every loader's workers find them by reference (as __main__'s).
class Array:
    def __init__(self) -> None:
        self.x = np.arange(ARRAY_MIB * MIB // 8, dtype=np.float64)

    def __len__(self) -> int:
        return BATCHES

    def __getitem__(self, i: int) -> Any:
        part = len(self.x) // BATCHES
        return np.array([self.x[i * part:(i + 1) * part].sum()])


class Strings:
    def __init__(self, packed: bool) -> None:
        paths = [f"images/train/{i:09d}.jpg" for i in range(N_STRINGS)]
        if packed:
            import prefetch

            self.paths: Any = prefetch.PackedStrings(paths)
        else:
            self.paths = paths

    def __len__(self) -> int:
        return BATCHES

    def __getitem__(self, i: int) -> Any:
        part = len(self.paths) // BATCHES
        return np.array([sum(len(self.paths[k]) for k in range(i * part, (i + 1) * part, 97))])


class Tiny:
    def __len__(self) -> int:
        return BATCHES

    def __getitem__(self, i: int) -> Any:
        return np.array([i])


DATASETS = {"array": Array, "strings": lambda: Strings(False), "packed": lambda: Strings(True), "tiny": Tiny}


def _open(row: str, ds: Any, workers: int) -> tuple[Any, Any]:
    if row.startswith("prefetch"):
        import prefetch

        kw: dict[str, Any] = {"workers": workers, "executor": "process"}
        if row == "prefetch-spawn":
            kw["start_method"] = "spawn"
        elif row == "prefetch-fork":
            kw["start_method"] = "fork"
        elif row == "prefetch-private":
            kw["share_dataset"] = False
        loader = prefetch.Loader(ds, **kw)
        return loader, loader.close
    import torch.multiprocessing as tmp
    from torch.utils.data import DataLoader

    ctx = tmp.get_context("fork" if row == "torch-fork" else "forkserver")
    dl = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=True, multiprocessing_context=ctx)
    return dl, lambda: None


def cell(spec: dict) -> None:
    if spec["row"].startswith("torch"):
        import torch  # noqa: F401
    else:
        import prefetch  # noqa: F401
    ds = DATASETS[spec["dataset"]]()
    print(json.dumps({"phase": "built"}), flush=True)
    t0 = time.perf_counter()
    loader, close = _open(spec["row"], ds, spec["workers"])
    it = iter(loader)
    next(it)
    ttfb = time.perf_counter() - t0
    count = 1 + sum(1 for _ in it)
    count += sum(1 for _ in loader)
    assert count == 2 * BATCHES, count
    close()
    print(json.dumps({"ttfb_ms": ttfb * 1e3}), flush=True)


# -- the runner -----------------------------------------------------------------------------------
def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(root: int) -> list[int]:
    import psutil

    try:
        return [root] + [c.pid for c in psutil.Process(root).children(recursive=True)]
    except psutil.Error:
        return []


def run_cell(spec: dict, timeout_s: float = 300.0) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--cell", json.dumps(spec)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    peak, base = [0], [0]
    built = threading.Event()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            total = sum(_pss_kib(p) for p in _tree(proc.pid))
            if not built.is_set():
                base[0] = max(base[0], total)
            peak[0] = max(peak[0], total)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out: dict = {}
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + timeout_s
        for line in proc.stdout:
            msg = json.loads(line)
            if msg.get("phase") == "built":
                built.set()
            out.update(msg)
            if time.monotonic() > deadline:
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        out["error"] = "timeout"
    finally:
        done.set()
        sampler.join()
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
    if proc.returncode not in (0, -9) and "ttfb_ms" not in out:
        out["error"] = f"exit {proc.returncode}"
    out["tree_pss_mib"] = peak[0] / 1024
    return out


def bare_pss_mib() -> float:
    """PSS of a bare interpreter that imported numpy: what one more worker costs at the least."""
    proc = subprocess.Popen([sys.executable, "-c", "import numpy, sys, time; print(1, flush=True); time.sleep(30)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(0.2)
        return _pss_kib(proc.pid) / 1024
    finally:
        proc.kill()
        proc.wait()


ROWS = ["prefetch", "prefetch-spawn", "prefetch-fork", "prefetch-private", "torch-forkserver", "torch-fork"]


def plan(quick: bool) -> list[dict]:
    cells = []
    for w in ([4] if quick else [1, 4, 8]):
        for row in ROWS:
            if w != 4 and row in ("prefetch-spawn", "prefetch-private", "torch-forkserver"):
                continue
            cells.append({"dataset": "array", "row": row, "workers": w})
    for dataset in ("strings", "packed"):
        for row in (["prefetch", "torch-fork"] if quick else ["prefetch", "prefetch-fork", "torch-forkserver",
                                                               "torch-fork"]):
            if dataset == "packed" and row.startswith("torch"):
                continue
            cells.append({"dataset": dataset, "row": row, "workers": 4})
    for row in ("prefetch", "prefetch-spawn", "prefetch-fork", "torch-fork"):
        cells.append({"dataset": "tiny", "row": row, "workers": 4})
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write every cell's figures here")
    args = ap.parse_args()
    if args.cell:
        cell(json.loads(args.cell))
        return
    results = []
    for spec in plan(args.quick):
        r = {**spec, **run_cell(spec)}
        results.append(r)
        print(f"  {spec['dataset']:8} {spec['row']:17} w={spec['workers']}: tree PSS {r['tree_pss_mib']:7.0f} MiB, "
              f"TTFB {r.get('ttfb_ms', float('nan')):7.0f} ms {r.get('error', '')}", file=sys.stderr, flush=True)

    def get(dataset: str, row: str, w: int, key: str) -> float | None:
        for r in results:
            if (r["dataset"], r["row"], r["workers"]) == (dataset, row, w) and "error" not in r:
                return r.get(key)
        return None

    print(f"\n{'dataset':9}{'loader':18}{'workers':>8}{'tree PSS MiB':>14}{'x torch fork':>14}{'TTFB ms':>10}"
          f"{'x tiny TTFB':>13}")
    for r in results:
        fork = get(r["dataset"], "torch-fork", r["workers"], "tree_pss_mib")
        tiny = get("tiny", r["row"], 4, "ttfb_ms")
        ratio = f"{r['tree_pss_mib'] / fork:.2f}" if fork else "-"
        ttfb = r.get("ttfb_ms")
        tratio = f"{ttfb / tiny:.2f}" if ttfb and tiny and r["dataset"] != "tiny" else "-"
        print(f"{r['dataset']:9}{r['row']:18}{r['workers']:>8}{r['tree_pss_mib']:>14,.0f}{ratio:>14}"
              f"{(f'{ttfb:,.0f}' if ttfb else r.get('error', '-')):>10}{tratio:>13}")

    targets = []
    p4 = get("array", "prefetch", 4, "tree_pss_mib")
    f4 = get("array", "torch-fork", 4, "tree_pss_mib")
    if p4:
        targets.append((f"array, 4 workers: prefetch tree PSS <= 800 MiB ({p4:.0f})", p4 <= 800))
    if p4 and f4:
        targets.append((f"array, 4 workers: <= 1.25x torch fork ({p4 / f4:.2f}x)", p4 <= 1.25 * f4))
    p1, p8 = get("array", "prefetch", 1, "tree_pss_mib"), get("array", "prefetch", 8, "tree_pss_mib")
    if p1 and p8:
        bare = bare_pss_mib()
        targets.append((f"array, 1 -> 8 workers grows {(p8 - p1) / 7:.0f} MiB per worker "
                        f"(<= a bare interpreter with numpy: {bare:.0f} MiB PSS)", (p8 - p1) / 7 <= bare))
    t, tt = get("array", "prefetch", 4, "ttfb_ms"), get("tiny", "prefetch", 4, "ttfb_ms")
    if t and tt:
        targets.append((f"array TTFB within 2x of tiny's ({t:.0f} vs {tt:.0f} ms: {t / tt:.2f}x)", t <= 2 * tt))
    print("\nTargets (issue #14):")
    for text, ok in targets:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
