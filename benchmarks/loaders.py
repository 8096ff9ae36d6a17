#!/usr/bin/env python
"""prefetch against its peers, side by side: batches/s, time to first batch, peak memory.

    python benchmarks/loaders.py                       # everything, median of 3 (~10-15 min)
    python benchmarks/loaders.py --quick               # smoke run: small epochs, 1 repeat
    python benchmarks/loaders.py --workloads noop-threads,rss --loaders prefetch,keras
    python benchmarks/loaders.py --list                # workloads and loaders

Every (workload x loader x repeat) cell runs in a fresh interpreter (`--cell`), so import
costs, time to first batch and peak memory are those of a real first epoch, and one cell's
threads, processes or leaks never touch the next. See benchmarks/README.md for what each
workload and loader configuration is, and what every column means.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


# ---------------------------------------------------------------------------------------------
# Workloads and rows (built identically in the runner and in every cell from the same args)
# ---------------------------------------------------------------------------------------------

@dataclass
class Row:
    id: str                       # unique in its workload, e.g. "prefetch-thread"
    loader: str                   # key of LOADERS
    role: str                     # "serial" | "prefetch" | "peer" (compared against) | "ref"
    workers: Any = 1              # int, or "auto" for prefetch
    queue: int = 1                # max batches in flight + waiting
    opts: dict = field(default_factory=dict)
    dataset: tuple | None = None  # (kind, params) overriding the workload's
    n: int | None = None          # batches per epoch overriding the workload's

    @property
    def family(self) -> str:
        return {"torch-dl": "torch", "dask-futures": "dask"}.get(self.id, self.id.split("-")[0])


@dataclass
class Workload:
    name: str
    group: str                    # the name `--workloads` selects it by (several may share one)
    title: str
    dataset: tuple                # (kind in workloads.DATASETS, params)
    n: int                        # batches per epoch for parallel loaders
    serial_n: int                 # ... for the serial loop (it is slow: fewer batches)
    max_seconds: float            # a cell stops consuming this long after its first batch
    rows: list[Row]


def _thread_rows(workers: int, queue: int, *, torch_dl: bool = True) -> list[Row]:
    # Keras with workers=1 and threads builds no enqueuer: it calls __getitem__ inline, i.e. it
    # is the serial loop. Shown, but not a prefetching peer to compare against.
    keras_role = "peer" if workers > 1 else "ref"
    rows = [
        Row("serial", "serial", "serial"),
        Row("prefetch-thread", "prefetch", "prefetch", workers, queue, {"executor": "thread"}),
        Row("keras-thread", "keras", keras_role, workers, queue, {"processes": False}),
        Row("torch-dl", "torch-dl", "peer", workers, queue),
        Row("torchdata-thread", "torchdata", "peer", workers, queue, {"method": "thread"}),
        Row("grain-thread", "grain", "peer", workers, queue, {"processes": False}),
    ]
    return [r for r in rows if torch_dl or r.id != "torch-dl"]


def _process_rows(workers: int, queue: int) -> list[Row]:
    return [
        Row("serial", "serial", "serial"),
        Row("prefetch-process", "prefetch", "prefetch", workers, queue, {"executor": "process"}),
        Row("keras-process", "keras", "peer", workers, queue, {"processes": True}),
        Row("torch-dl", "torch-dl", "peer", workers, queue),
        Row("torchdata-process", "torchdata", "peer", workers, queue, {"method": "process"}),
        Row("grain-process", "grain", "peer", workers, queue, {"processes": True}),
    ]


def _auto_rows(queue: int) -> list[Row]:
    rows = [Row("serial", "serial", "serial")]
    rows += [Row(f"prefetch-w{w}", "prefetch", "peer", w, queue, {"executor": "thread"}) for w in (1, 2, 4, 8, 16, 32)]
    # No time cap for auto: a whole (long) epoch, climb included; its target is judged on the
    # second half (late_bps), once settled, and the whole-epoch ratio is printed beside it.
    rows.append(Row("prefetch-auto", "prefetch", "prefetch", "auto", queue, {"executor": "thread", "no_cap": True}))
    return rows


def _dask_rows(workers: int, queue: int) -> list[Row]:
    return [
        Row("serial", "serial", "serial"),
        Row("prefetch-thread", "prefetch", "prefetch", workers, queue, {"executor": "thread"}),
        Row("prefetch-dask", "prefetch", "prefetch", workers, queue, {"executor": "dask"}),
        Row("dask-futures", "dask-futures", "peer", workers, queue, {"executor": "dask"}),
    ]


GROUPS = ["sleep5ms-16", "sleep5ms-128", "numpy10ms", "noop-threads", "rss", "py4ms-proc2",
          "array18MiB-proc2", "noop-proc2", "dask20ms", "auto"]


def build_workloads(calib: dict, *, torch_dl_128: bool = False) -> list[Workload]:
    sleep = ("sleep", {"seconds": 0.005})
    numpy = ("numpy_sort", {"size": calib["numpy_size"]})
    noop = ("noop", {})
    w128 = _thread_rows(128, 256, torch_dl=torch_dl_128)
    w128.insert(1, Row("prefetch-async", "prefetch", "prefetch", 128, 256, {"executor": "async"},
                       dataset=("async_sleep", {"seconds": 0.005})))
    return [
        Workload("sleep5ms-16", "sleep5ms-16", "time.sleep(5 ms) per batch, 16 workers, queue 32 (limit 3,200 b/s)",
                 sleep, 4000, 200, 2.0, _thread_rows(16, 32)),
        Workload("sleep5ms-128", "sleep5ms-128",
                 "5 ms wait per batch, 128 in flight, queue 256 (limit 25,600 b/s); prefetch-async awaits "
                 "asyncio.sleep, the others time.sleep in 128 threads",
                 sleep, 20000, 200, 2.0, w128),
        Workload("numpy10ms", "numpy10ms",
                 f"np.sort of {calib['numpy_size']:,} float32 (~10 ms serial, releases the GIL), 2 workers, queue 8",
                 numpy, 200, 100, 2.0, _thread_rows(2, 8)),
        Workload("noop-threads-w1", "noop-threads", "no-op batch (returns the index), 1 worker, queue 64",
                 noop, 60_000, 60_000, 2.0, _thread_rows(1, 64)),
        Workload("noop-threads-w2", "noop-threads", "no-op batch (returns the index), 2 workers, queue 64",
                 noop, 60_000, 60_000, 2.0, _thread_rows(2, 64)),
        Workload("rss", "rss", "peak memory: import + 1 epoch of 500 x (1 ms sleep -> 64x64 float32), 4 workers, queue 8",
                 ("small_arrays", {"seconds": 0.001}), 500, 500, 30.0, _thread_rows(4, 8)),
        Workload("py4ms-proc2", "py4ms-proc2",
                 f"pure-Python loop of {calib['py_iters']:,} steps (~4 ms, holds the GIL), 2 processes, queue 8",
                 ("py_loop", {"iters": calib["py_iters"]}), 400, 200, 2.0, _process_rows(2, 8) + [
                     Row("2-processes-bare", "bare", "ref", 2, 8)]),
        Workload("array18MiB-proc2", "array18MiB-proc2",
                 "fresh 18 MiB float32 array per batch (np.full((4608, 1024), i)), 2 processes, queue 8; "
                 "the consumer reads one element",
                 ("fresh_array", {}), 300, 300, 2.0, _process_rows(2, 8) + [
                     # the same batch built with prefetch.empty: written once, in shared memory
                     Row("prefetch-process-empty", "prefetch", "prefetch", 2, 8, {"executor": "process"},
                         dataset=("fresh_array_inplace", {}))]),
        Workload("noop-proc2", "noop-proc2", "no-op batch (returns the index), 2 processes, queue 64",
                 noop, 30_000, 30_000, 2.0, _process_rows(2, 64)),
        Workload("noop-proc2-q10", "noop-proc2", "no-op batch (returns the index), 2 processes, queue 10 "
                 "(Keras's default max_queue_size)", noop, 30_000, 30_000, 2.0, _process_rows(2, 10)),
        Workload("dask20ms", "dask20ms",
                 "time.sleep(20 ms) per batch, 4 in flight, queue 8 (limit 200 b/s); dask = LocalCluster of "
                 "2 processes x 2 threads",
                 ("sleep", {"seconds": 0.02}), 200, 50, 2.0, _dask_rows(4, 8)),
        Workload("dask20ms-noop", "dask20ms", "no-op batch on dask (per-task overhead), 4 in flight, queue 8",
                 noop, 2000, 2000, 2.0, _dask_rows(4, 8)),
        Workload("auto-sleep5ms", "auto", "time.sleep(5 ms) per batch, queue 64: fixed workers vs workers='auto' "
                 "(starts at 1)", sleep, 40000, 200, 2.0, _auto_rows(64)),
        Workload("auto-numpy10ms", "auto", f"np.sort of {calib['numpy_size']:,} float32 (~10 ms), queue 64: fixed "
                 "workers vs workers='auto' (starts at 1)", numpy, 800, 100, 2.0, _auto_rows(64)),
    ]


def scaled(wl: Workload, row: Row, *, scale: float, quick: bool) -> tuple[int, float]:
    """Batches per epoch and the consumption time cap for one cell."""
    n = row.n or (wl.serial_n if row.role == "serial" else wl.n)
    if quick:
        scale *= 0.1
    n = max(10 if row.role == "serial" else 20, int(round(n * scale)))
    max_seconds = min(wl.max_seconds, 1.0) if quick else wl.max_seconds
    if row.opts.get("no_cap"):
        max_seconds = 60.0
    return n, max_seconds


# ---------------------------------------------------------------------------------------------
# Loaders: imports (timed apart), setup (timed apart: a dask cluster), open (timed from the
# loader's construction to the first batch)
# ---------------------------------------------------------------------------------------------

def _nothing(*_: Any) -> None:
    return None


class Serial:
    """`for i in range(len(ds)): ds[i]` - the baseline every ratio refers to."""

    imports = _nothing
    setup = _nothing

    @staticmethod
    def open(ds, row: Row, ctx: dict):
        return (ds[i] for i in range(len(ds))), None


class Prefetch:
    @staticmethod
    def imports(row: Row) -> None:
        # The modules a Loader of this kind loads on first use: import time is reported
        # apart, as for the peers (whose `import torch` / keras imports load theirs).
        import prefetch.loader  # noqa: F401

        if row.opts.get("executor") == "process":
            import prefetch.engine.process  # noqa: F401

    @staticmethod
    def setup(row: Row, ctx: dict) -> None:
        if row.opts.get("executor") == "dask":
            _dask_setup(row, ctx)

    @staticmethod
    def open(ds, row: Row, ctx: dict):
        import prefetch

        executor = row.opts.get("executor", "thread")
        if executor == "dask":
            executor = ctx["client"]
        loader = prefetch.Loader(ds, workers=row.workers, max_queue_size=row.queue, executor=executor)
        return iter(loader), loader.close


class Keras:
    """Keras 3's own PyDataset machinery, as `fit` drives it: PyDatasetAdapter, one epoch of
    `get_numpy_iterator()` between `on_epoch_begin()` and `on_epoch_end()`."""

    @staticmethod
    def imports(row: Row) -> None:
        from benchmarks import keras_peer  # noqa: F401
        from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter  # noqa: F401

    setup = _nothing

    @staticmethod
    def open(ds, row: Row, ctx: dict):
        from benchmarks.keras_peer import KerasDataset
        from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

        kds = KerasDataset(ds, workers=row.workers, use_multiprocessing=row.opts["processes"],
                           max_queue_size=row.queue)
        adapter = PyDatasetAdapter(kds, shuffle=False)
        adapter.on_epoch_begin()
        return adapter.get_numpy_iterator(), adapter.on_epoch_end


class TorchDL:
    """torch.utils.data.DataLoader over the map-style dataset, whole batches (batch_size=None),
    `workers` processes, prefetch_factor = queue // workers (its queue is per worker)."""

    @staticmethod
    def imports(row: Row) -> None:
        import torch.utils.data  # noqa: F401

    setup = _nothing

    @staticmethod
    def open(ds, row: Row, ctx: dict):
        from torch.utils.data import DataLoader

        dl = DataLoader(ds, batch_size=None, shuffle=False, num_workers=row.workers,
                        prefetch_factor=max(1, row.queue // row.workers), persistent_workers=False,
                        pin_memory=False)
        it = iter(dl)
        return it, getattr(it, "_shutdown_workers", None)


class TorchData:
    """torchdata.nodes: IterableWrapper(indices) -> ParallelMapper(ds.__getitem__, in_order)
    -> Prefetcher -> Loader. ParallelMapper keeps at most 2 x workers in flight (its default
    and its ceiling: an explicit max_concurrent above num_workers is rejected); a Prefetcher of
    queue - 2 x workers brings the total to `queue`."""

    @staticmethod
    def imports(row: Row) -> None:
        import torchdata.nodes  # noqa: F401

    setup = _nothing

    @staticmethod
    def open(ds, row: Row, ctx: dict):
        import torchdata.nodes as tn

        node = tn.IterableWrapper(range(len(ds)))
        mapper = tn.ParallelMapper(node, map_fn=ds.__getitem__, num_workers=row.workers, in_order=True,
                                   method=row.opts["method"], max_concurrent=None)
        node = mapper
        extra = row.queue - 2 * row.workers
        if extra > 0:
            node = tn.Prefetcher(mapper, prefetch_factor=extra)
        loader = tn.Loader(node)
        it = iter(loader)

        def close() -> None:
            # No public close: shut the inner iterators down (what their __del__ does).
            for n in (node, mapper):
                inner = getattr(n, "_it", None)
                inner = getattr(inner, "_it", inner)
                shutdown = getattr(inner, "_shutdown", None)
                if shutdown is not None:
                    shutdown()

        return it, close


class Grain:
    """Grain's dataset API: MapDataset.source(ds) -> to_iter_dataset(ReadOptions(num_threads=
    workers, prefetch_buffer_size=queue)) for threads; for processes the per-worker pipeline
    reads without threads (ReadOptions(num_threads=0), Grain's advice for in-memory data)
    and .mp_prefetch(MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=
    queue // workers))."""

    @staticmethod
    def imports(row: Row) -> None:
        import grain  # noqa: F401

    setup = _nothing

    @staticmethod
    def open(ds, row: Row, ctx: dict):
        import grain
        from absl import flags

        # Grain reads absl flags (mp_prefetch does); outside absl.app.run nobody parsed them.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        src = grain.MapDataset.source(ds)
        if row.opts["processes"]:
            pipe = src.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).mp_prefetch(
                grain.MultiprocessingOptions(num_workers=row.workers,
                                             per_worker_buffer_size=max(1, row.queue // row.workers)))
        else:
            pipe = src.to_iter_dataset(grain.ReadOptions(num_threads=row.workers, prefetch_buffer_size=row.queue))
        it = iter(pipe)
        return it, getattr(it, "close", None)


def _bare_worker(ds, indices, conn) -> None:
    for i in indices:
        conn.send(ds[i])
    conn.close()


class BareProcesses:
    """The hardware reference, not a loader: `workers` forked processes, each making its share
    of the batches (round robin) and sending each result back through its own pipe, read in
    index order. No scheduling, no shared memory: what N processes can do on this machine."""

    imports = _nothing
    setup = _nothing

    @staticmethod
    def open(ds, row: Row, ctx: dict):
        import multiprocessing as mp

        fork = mp.get_context("fork")
        n, w = len(ds), row.workers
        pipes, procs = [], []
        for k in range(w):
            recv, send = fork.Pipe(duplex=False)
            proc = fork.Process(target=_bare_worker, args=(ds, range(k, n, w), send), daemon=True)
            proc.start()
            send.close()
            pipes.append(recv)
            procs.append(proc)

        def batches():
            for i in range(n):
                yield pipes[i % w].recv()

        def close():
            for proc in procs:
                proc.kill()
                proc.join()

        return batches(), close


class DaskFutures:
    """Plain dask: `client.submit(ds.__getitem__, i)` keeping `queue` futures ahead, results
    taken in order - what one writes without prefetch."""

    @staticmethod
    def imports(row: Row) -> None:
        import distributed  # noqa: F401

    @staticmethod
    def setup(row: Row, ctx: dict) -> None:
        _dask_setup(row, ctx)

    @staticmethod
    def open(ds, row: Row, ctx: dict):
        from collections import deque

        client = ctx["client"]
        fn, n, q = ds.__getitem__, len(ds), row.queue

        def gen():
            pending: deque = deque()
            i = 0
            while i < n and len(pending) < q:
                pending.append(client.submit(fn, i, pure=False))
                i += 1
            while pending:
                f = pending.popleft()
                value = f.result()
                f.release()
                if i < n:
                    pending.append(client.submit(fn, i, pure=False))
                    i += 1
                yield value

        g = gen()
        return g, g.close


def _dask_setup(row: Row, ctx: dict) -> None:
    import logging

    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=max(1, int(row.workers) // 2), processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(cluster)
    ctx["client"] = client

    def teardown() -> None:
        client.close()
        cluster.close()

    ctx["teardown"] = teardown


LOADERS: dict[str, Any] = {
    "serial": Serial, "prefetch": Prefetch, "keras": Keras, "torch-dl": TorchDL, "torchdata": TorchData,
    "grain": Grain, "dask-futures": DaskFutures, "bare": BareProcesses,
}


# ---------------------------------------------------------------------------------------------
# One cell, in a fresh interpreter
# ---------------------------------------------------------------------------------------------

def _short(e: BaseException) -> str:
    from prefetch.bench import short_error

    return short_error(e)


def _first_value(b: Any) -> Any:
    """Read one element of a batch (the harness's minimal touch of the data)."""
    while isinstance(b, (tuple, list)) and b:
        b = b[0]
    if isinstance(b, dict) and b:
        b = next(iter(b.values()))
    ndim = getattr(b, "ndim", None)
    if ndim:
        b = b[(0,) * ndim]
    item = getattr(b, "item", None)
    return item() if item is not None else b


def _maxrss_children_mib() -> float:
    """The largest peak RSS among this process's reaped descendants (getrusage)."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux


def _hwm_self_mib() -> float | None:
    """This process's exact peak RSS (the bench CLI measures it the same way)."""
    from prefetch.bench import peak_rss_mib

    return peak_rss_mib()


def cell_main(spec: dict) -> None:
    import gc

    wl = next(w for w in build_workloads(spec["calib"], torch_dl_128=spec.get("torch_dl_128", False))
              if w.name == spec["workload"])
    row = next(r for r in wl.rows if r.id == spec["row"])
    n, max_seconds = scaled(wl, row, scale=spec["scale"], quick=spec["quick"])
    out: dict[str, Any] = {"n": n}
    ctx: dict = {}
    close: Callable | None = None
    try:
        from benchmarks import workloads

        kind, params = row.dataset or wl.dataset
        ds = workloads.make_dataset(kind, n, **params)
        checkable = getattr(ds, "checkable", False)
        prepare = getattr(ds, "prepare", None)
        if prepare is not None:
            prepare()
        impl = LOADERS[row.loader]
        t = time.perf_counter()
        impl.imports(row)
        out["import_ms"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        impl.setup(row, ctx)
        out["setup_ms"] = (time.perf_counter() - t) * 1e3
        gc.collect()

        t0 = time.perf_counter()
        it, close = impl.open(ds, row, ctx)
        it = iter(it)
        first = next(it)
        t_first = time.perf_counter()
        out["ttfb_ms"] = (t_first - t0) * 1e3
        v = _first_value(first)
        if checkable and v != 0:
            raise AssertionError(f"batch 0 holds {v!r}")
        del first
        count, t_last, cut, b = 1, t_first, False, None
        deadline = t_first + max_seconds
        half, t_half = max(2, n // 2), None
        tenth, marks = max(1, n // 10), [t_first]  # steadiness: the rate over each tenth of the epoch
        for b in it:
            v = _first_value(b)
            if checkable and v != count:
                raise AssertionError(f"batch {count} holds {v!r} (order or count is wrong)")
            count += 1
            t_last = time.perf_counter()
            if count == half:
                t_half = t_last
            if count % tenth == 0:
                marks.append(t_last)
            if t_last > deadline and count < n:
                cut = True
                break
        t_end = time.perf_counter()
        del b
        if not cut and count != n:
            raise AssertionError(f"the epoch had {count} batches, expected {n}")
        rates = [tenth / (b_ - a_) for a_, b_ in zip(marks, marks[1:]) if b_ > a_]
        if len(rates) >= 3:
            out.update(tenth_min_bps=min(rates), tenth_max_bps=max(rates))
        if wl.group == "noop-proc2":
            # A second loader in the same process: its workers start from a running fork server.
            if close is not None:
                close()
                close = None
            it = b = None
            gc.collect()
            t = time.perf_counter()
            it2, close = impl.open(ds, row, ctx)
            next(iter(it2))
            out["warm_ttfb_ms"] = (time.perf_counter() - t) * 1e3
            del it2
        out.update(count=count, cut=cut, steady_bps=(count - 1) / (t_last - t_first) if count > 1 else None,
                   epoch_bps=None if cut else count / (t_end - t0),
                   # the second half of the epoch: what workers="auto" settled at
                   late_bps=(count - half) / (t_last - t_half) if t_half and t_last > t_half else None)
    except BaseException as e:  # noqa: BLE001 - any failure is this cell's result
        out["error"] = _short(e)
    out["maxrss_self_mib"] = _hwm_self_mib()
    print(json.dumps(out), flush=True)

    # Cleanup is timed and reported apart; a hang here is caught by the runner's timeout.
    late: dict[str, Any] = {}
    try:
        t = time.perf_counter()
        if close is not None:
            close()
        late["close_ms"] = (time.perf_counter() - t) * 1e3
    except BaseException as e:  # noqa: BLE001
        late["close_error"] = _short(e)
    late["maxrss_children_mib"] = _maxrss_children_mib()
    print(json.dumps(late), flush=True)
    teardown = ctx.get("teardown")
    if teardown is not None:
        try:
            teardown()
        except BaseException:  # noqa: BLE001
            pass
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (atexit joins of third-party pools); the runner reaps


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------

def _read_rollup(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of one process in KiB, from the kernel's own sums."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"Pss:"):
                    pss = int(line.split()[1])
                    break
    except OSError:
        pass
    return rss, pss


def _process_tree(root: int) -> list[int]:
    """`root` and all its descendants (prefetch's bench CLI walks the tree the same way)."""
    from prefetch.bench import process_tree

    return process_tree(root)


class TreeSampler(threading.Thread):
    """Samples the summed RSS and PSS of a cell's whole process tree every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self.max_procs = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            pids = _process_tree(self.pid)
            if not pids:
                return
            rss = pss = 0
            for pid in pids:
                r, p = _read_rollup(pid)
                rss += r
                pss += p
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.max_procs = max(self.max_procs, len(pids))
            if self._halt.wait(self.interval):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)


def cell_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["KERAS_BACKEND"] = "numpy"
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # one core per batch everywhere: parallelism comes from the loader only
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def run_cell(spec: dict, timeout: float) -> dict:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--cell", json.dumps(spec)],
                                stdout=out, stderr=err, env=cell_env(), cwd=REPO, start_new_session=True)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        sampler.stop()
        try:  # the cell's own session: its stragglers (orphaned pool workers, a hung close)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        out.seek(0)
        err.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith("{")]
        stderr = err.read()
    res: dict[str, Any] = {}
    for ln in lines:
        try:
            res.update(json.loads(ln))
        except json.JSONDecodeError:
            pass
    if not lines:
        tail = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        why = f"timed out after {timeout:.0f} s" if timed_out else f"exit code {proc.returncode}"
        res["error"] = f"{why}: {tail[-1][:100]}" if tail else why
    elif timed_out and "close_ms" not in res:
        res["note"] = "close hung (killed)"
    res["tree_rss_mib"] = sampler.peak_rss / 1024
    res["tree_pss_mib"] = sampler.peak_pss / 1024
    res["procs"] = sampler.max_procs
    # The main process's exact peak (ru_maxrss) is a floor for the 10 Hz tree samples.
    res["rss_mib"] = max(res["tree_rss_mib"], res.get("maxrss_self_mib") or 0.0)
    res["pss_mib"] = res["tree_pss_mib"] or None
    return res


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        errors = sorted({r["error"] for r in runs})
        return {"error": errors[0] if len(errors) == 1 else "; ".join(errors)[:200], "runs": len(runs)}
    s: dict[str, Any] = {"runs": len(ok), "failed": len(runs) - len(ok)}
    for key in ("steady_bps", "late_bps", "epoch_bps", "ttfb_ms", "rss_mib", "pss_mib", "import_ms", "setup_ms",
                "close_ms", "tenth_min_bps", "tenth_max_bps", "warm_ttfb_ms"):
        s[key] = _median([r.get(key) for r in ok])
    s["bps"] = s["steady_bps"]
    s["cut"] = any(r.get("cut") for r in ok)
    s["count"] = _median([r.get("count") for r in ok])
    s["n"] = ok[0].get("n")
    notes = sorted({r["note"] for r in ok if r.get("note")} | {r["close_error"] for r in ok if r.get("close_error")})
    if s["failed"]:
        notes.append(f"{s['failed']} of {len(runs)} runs failed: {runs[0].get('error', '')}"[:100])
    s["notes"] = notes
    return s


def _fmt(v: float | None, spec: str = ",.0f", dash: str = "-") -> str:
    return dash if v is None else format(v, spec)


def print_table(wl: Workload, rows: list[Row], summ: dict[str, dict], repeat: int, file=sys.stdout) -> None:
    serial = summ.get("serial", {}).get("bps")
    peers = [summ[r.id]["bps"] for r in rows if r.role == "peer" and summ.get(r.id, {}).get("bps")]
    best_peer = max(peers) if peers else None
    n_par = next((summ[r.id].get("n") for r in rows if r.role != "serial" and summ.get(r.id, {}).get("n")), None)
    print(f"\n== {wl.name}: {wl.title}", file=file)
    print(f"   n={n_par or '-'} batches per epoch (serial {summ.get('serial', {}).get('n', '-')}), "
          f"median of {repeat}", file=file)
    header = ["loader", "b/s", "x serial", "x best peer", "2nd half b/s", "epoch b/s", "TTFB ms", "RSS MiB",
              "PSS MiB", "import ms", "notes"]
    table = []
    for r in rows:
        s = summ.get(r.id, {})
        label = r.id + (f" w={r.workers}" if r.role != "serial" and not r.id.startswith("prefetch-w") else "")
        if "error" in s:
            table.append([label, "error: " + s["error"]] + [""] * 9)
            continue
        bps = s.get("bps")
        notes = list(s.get("notes", []))
        if r.role == "ref" and r.loader == "keras":
            notes.append("workers=1: Keras runs inline (no enqueuer), not counted as a peer")
        if r.loader == "bare":
            notes.append("hardware reference: bare forked processes, no loader")
        if s.get("cut"):
            notes.append(f"stopped at {s['count']:.0f} batches (time cap)")
        if (s.get("setup_ms") or 0) > 50:
            notes.append(f"setup {s['setup_ms'] / 1e3:.1f} s")
        table.append([
            label, _fmt(bps),
            _fmt(bps / serial if bps and serial else None, ".2f"),
            _fmt(bps / best_peer if bps and best_peer and r.role == "prefetch" else None, ".2f", ""),
            _fmt(s.get("late_bps")), _fmt(s.get("epoch_bps")), _fmt(s.get("ttfb_ms"), ",.1f"),
            _fmt(s.get("rss_mib"), ",.0f"),
            _fmt(s.get("pss_mib"), ",.0f"), _fmt(s.get("import_ms"), ",.0f"), "; ".join(notes),
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *[t for t in table if not t[1].startswith("error:")])]
    for line in [header] + table:
        if line[1].startswith("error:"):
            print("  " + line[0].ljust(widths[0]) + "  " + line[1], file=file)
            continue
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:-1], widths[1:-1])] + [line[-1]]
        print("  " + "  ".join(cells).rstrip(), file=file)
    file.flush()


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------

class Missing(Exception):
    pass


class NotRun(Missing):
    pass


def _get(res: dict, wl: str, row: str, key: str = "bps") -> float:
    s = res.get(wl, {}).get(row)
    if s is None:
        raise NotRun(f"{wl}/{row} not selected")
    if "error" in s:
        raise Missing(f"{wl}/{row}: {s['error']}")
    v = s.get(key)
    if v is None:
        raise Missing(f"{wl}/{row}: no {key}")
    return v


def _best(res: dict, wl: str, role: str = "peer", rows: dict | None = None) -> tuple[str, float]:
    cand = [(rid, s["bps"]) for rid, s in res.get(wl, {}).items()
            if s.get("role") == role and "error" not in s and s.get("bps")]
    if not cand:
        raise Missing(f"{wl}: no {role} measured")
    return max(cand, key=lambda t: t[1])


def targets(res: dict) -> list[tuple[str, str, str]]:
    """(status, what, measured) for every target, INFO lines for reported-only figures."""
    out: list[tuple[str, str, str]] = []

    def check(what: str, fn: Callable[[], tuple[str, bool | None]]) -> None:
        try:
            measured, ok = fn()
            status = "INFO" if ok is None else ("PASS" if ok else "FAIL")
        except Missing as e:
            status, measured = ("SKIP" if isinstance(e, NotRun) else "ERROR"), str(e)
        out.append((status, what, measured))

    def sleep16():
        b = _get(res, "sleep5ms-16", "prefetch-thread")
        return f"{b:,.0f} b/s = {b / 3200:.3f} of 3,200", b >= 0.95 * 3200

    def sleep128_abs():
        b = _get(res, "sleep5ms-128", "prefetch-async")
        return f"{b:,.0f} b/s = {b / 25600:.3f} of 25,600", b >= 0.8 * 25600

    def sleep128_peer():
        b = _get(res, "sleep5ms-128", "prefetch-async")
        rid, p = _best(res, "sleep5ms-128")
        return f"{b / p:.2f}x {rid} ({p:,.0f} b/s)", b >= 2 * p

    def noop_abs(wl):
        def f():
            b = _get(res, wl, "prefetch-thread")
            return f"{b:,.0f} b/s = {1e6 / b:.1f} us/batch", b >= 50_000
        return f

    def noop_peer(wl):
        def f():
            b = _get(res, wl, "prefetch-thread")
            rid, p = _best(res, wl)
            return f"{b / p:.2f}x {rid} ({p:,.0f} b/s)", b >= 5 * p
        return f

    def rss():
        m = _get(res, "rss", "prefetch-thread", "rss_mib")
        return f"{m:.1f} MiB", m <= 60

    # Process rows are judged on the second half of the epoch: prefetch's first batches come
    # while its workers boot (warm start), so "after the first batch" would count the boot
    # against it and not against the peers. The other rates are printed beside it.
    def py4():
        wl = "py4ms-proc2"
        b, s = _get(res, wl, "prefetch-process", "late_bps"), _get(res, wl, "serial")
        first, whole = _get(res, wl, "prefetch-process"), _get(res, wl, "prefetch-process", "epoch_bps")
        try:
            bare = f"; {b / _get(res, wl, '2-processes-bare', 'late_bps'):.2f} of 2 bare processes"
        except (Missing, NotRun):
            bare = ""
        return (f"{b / s:.2f}x serial ({b:,.0f} vs {s:,.0f} b/s{bare}; after the first batch {first / s:.2f}x, "
                f"whole epoch {whole / s:.2f}x)"), b >= 1.7 * s

    def arr(row, label=""):
        def f():
            wl = "array18MiB-proc2"
            b, s = _get(res, wl, row, "late_bps"), _get(res, wl, "serial")
            first, whole = _get(res, wl, row), _get(res, wl, row, "epoch_bps")
            return (f"{b / s:.2f}x serial{label} ({b:,.0f} vs {s:,.0f} b/s; after the first batch {first / s:.2f}x, "
                    f"whole epoch {whole / s:.2f}x)"), b >= 0.8 * s
        return f

    def arr_torch():
        b, t = _get(res, "array18MiB-proc2", "prefetch-process"), _get(res, "array18MiB-proc2", "torch-dl")
        return f"{b / t:.2f}x torch-dl ({b:,.0f} vs {t:,.0f} b/s)", b >= 4 * t

    def noopp_abs():
        b = _get(res, "noop-proc2", "prefetch-process")
        return f"{b:,.0f} b/s = {1e6 / b:.1f} us/batch", b >= 20_000

    def noopp_ttfb():
        t = _get(res, "noop-proc2", "prefetch-process", "ttfb_ms")
        peers = []
        for rid in ("torch-dl", "grain-process"):
            try:
                peers.append(f"{rid} {_get(res, 'noop-proc2', rid, 'ttfb_ms'):.0f} ms")
            except (Missing, NotRun):
                pass
        return f"{t:.1f} ms, every batch in a worker ({', '.join(peers)})", t <= 150

    def noopp_warm_ttfb():
        t = _get(res, "noop-proc2", "prefetch-process", "warm_ttfb_ms")
        return f"{t:.1f} ms (a second Loader, fork server running)", t <= 40

    def noopp_q10():
        wl = "noop-proc2-q10"
        b = _get(res, wl, "prefetch-process")
        lo, hi = _get(res, wl, "prefetch-process", "tenth_min_bps"), _get(res, wl, "prefetch-process", "tenth_max_bps")
        rid, p = _best(res, wl)
        return (f"{b:,.0f} b/s, tenths of the epoch {lo:,.0f}-{hi:,.0f} b/s; {b / p:.1f}x {rid} ({p:,.0f} b/s)",
                b >= 40_000 and lo >= 0.5 * b)

    def auto(wl):
        def f():
            a = _get(res, wl, "prefetch-auto", "late_bps")
            whole = _get(res, wl, "prefetch-auto", "epoch_bps")
            rid, p = _best(res, wl)
            return (f"{a / p:.3f} of best fixed {rid} once settled ({a:,.0f} vs {p:,.0f} b/s; whole epoch "
                    f"with the climb from 1 worker: {whole / p:.2f})"), a >= 0.9 * p
        return f

    def dask_ratio():
        d, t = _get(res, "dask20ms", "prefetch-dask"), _get(res, "dask20ms", "prefetch-thread")
        return f"{d / t:.2f}x prefetch-thread ({d:,.0f} vs {t:,.0f} b/s; limit 200)", None

    def dask_overhead():
        d = _get(res, "dask20ms-noop", "prefetch-dask")
        try:
            f = f"; dask-futures {1e6 / _get(res, 'dask20ms-noop', 'dask-futures'):,.0f} us"
        except Missing:
            f = ""
        return f"{d:,.0f} b/s = {1e6 / d:,.0f} us/task{f}", None

    wanted = {
        "sleep5ms-16": [("sleep5ms-16: prefetch-thread >= 0.95 of 3,200 b/s", sleep16)],
        "sleep5ms-128": [("sleep5ms-128: prefetch-async >= 0.8 of 25,600 b/s", sleep128_abs),
                         ("sleep5ms-128: prefetch-async >= 2x best peer", sleep128_peer)],
        "noop-threads-w1": [("noop-threads w=1: prefetch-thread >= 50,000 b/s (<= 20 us/batch)", noop_abs("noop-threads-w1")),
                            ("noop-threads w=1: prefetch-thread >= 5x best peer", noop_peer("noop-threads-w1"))],
        "noop-threads-w2": [("noop-threads w=2: prefetch-thread >= 50,000 b/s (<= 20 us/batch)", noop_abs("noop-threads-w2")),
                            ("noop-threads w=2: prefetch-thread >= 5x best peer", noop_peer("noop-threads-w2"))],
        "rss": [("rss: prefetch-thread peak RSS <= 60 MiB", rss)],
        "py4ms-proc2": [("py4ms-proc2: prefetch-process >= 1.7x serial (2nd half)", py4)],
        "array18MiB-proc2": [("array18MiB-proc2: prefetch-process >= 0.8x serial (2nd half)", arr("prefetch-process")),
                             ("array18MiB-proc2: prefetch-process-empty >= 0.8x serial (2nd half)",
                              arr("prefetch-process-empty", " with prefetch.empty")),
                             ("array18MiB-proc2: prefetch-process >= 4x torch DataLoader", arr_torch)],
        "noop-proc2": [("noop-proc2: prefetch-process >= 20,000 b/s", noopp_abs),
                       ("noop-proc2: prefetch-process cold TTFB <= 150 ms (crash isolation on)", noopp_ttfb),
                       ("noop-proc2: prefetch-process warm TTFB <= 40 ms", noopp_warm_ttfb)],
        "noop-proc2-q10": [("noop-proc2-q10: prefetch-process >= 40,000 b/s and steady (slowest tenth >= half)",
                            noopp_q10)],
        "dask20ms": [("dask20ms: prefetch-dask vs prefetch-thread (reported)", dask_ratio)],
        "dask20ms-noop": [("dask20ms: dask per-task overhead, no-op batches (reported)", dask_overhead)],
        "auto-sleep5ms": [("auto sleep5ms: workers='auto' >= 0.9 of best fixed", auto("auto-sleep5ms"))],
        "auto-numpy10ms": [("auto numpy10ms: workers='auto' >= 0.9 of best fixed", auto("auto-numpy10ms"))],
    }
    for wl, checks in wanted.items():
        if wl in res:
            for what, fn in checks:
                check(what, fn)
    return out


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------

def _min_time(fn: Callable[[], Any], budget: float = 0.4, reps: int = 5) -> float:
    """Best time of `fn` over at least `reps` calls and `budget` seconds: on a busy machine
    the minimum is the closest to the uncontended cost."""
    fn()
    best = float("inf")
    t_end = time.perf_counter() + budget
    k = 0
    while k < reps or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        k += 1
    return best


def calibrate(need_numpy: bool, need_py: bool, numpy_size: int | None, py_iters: int | None) -> dict:
    """Sizes for ~10 ms of np.sort and ~4 ms of Python loop on this machine (best time over
    0.4 s of calls: the uncontended cost, since the machine may be busy)."""
    sys.path.insert(0, REPO)
    from benchmarks.workloads import NumpySort, py_work

    calib = {"numpy_size": numpy_size or 1_000_000, "py_iters": py_iters or 75_000}
    if need_numpy and not numpy_size:
        size = 1_000_000
        for _ in range(2):
            ds = NumpySort(1, size)
            t = _min_time(lambda: ds[0])
            size = max(10_000, int(size * 0.010 / t))
        calib["numpy_size"] = size
    if need_py and not py_iters:
        iters = 75_000
        for _ in range(2):
            t = _min_time(lambda: py_work(iters))
            iters = max(1000, int(iters * 0.004 / t))
        calib["py_iters"] = iters
    return calib


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def _select(items: list[str] | None, universe: list[str], what: str) -> None:
    if items:
        bad = [i for i in items if i not in universe]
        if bad:
            raise SystemExit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(universe)})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", help="comma-separated groups or workload names (default: all): "
                   + ", ".join(GROUPS))
    p.add_argument("--loaders", help="comma-separated loader families or row ids (default: all; serial always "
                   "runs): serial, prefetch, keras, torch, torchdata, grain, dask, or e.g. prefetch-thread")
    p.add_argument("--repeat", type=int, default=None, help="fresh runs per cell; the median is reported "
                   "(default 3, 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1/10 of the batches, 1 s caps, 1 repeat")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every epoch's number of batches")
    p.add_argument("--cell-timeout", type=float, default=120.0, help="seconds before a cell is killed")
    p.add_argument("--torch-dl-128", action="store_true",
                   help="also run torch DataLoader with 128 worker processes in sleep5ms-128")
    p.add_argument("--numpy-size", type=int, help="np.sort size for numpy10ms (default: calibrated to ~10 ms)")
    p.add_argument("--py-iters", type=int, help="loop steps for py4ms-proc2 (default: calibrated to ~4 ms)")
    p.add_argument("--json", metavar="PATH", help="also write every cell's raw result here")
    p.add_argument("--list", action="store_true", help="list workloads and their loaders, then exit")
    p.add_argument("--cell", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.cell:
        if sys.path and os.path.abspath(sys.path[0]) == HERE:
            sys.path.pop(0)  # `benchmarks/` itself must not shadow top-level modules
        sys.path.insert(0, REPO)
        cell_main(json.loads(args.cell))
        return 0

    calib_stub = {"numpy_size": args.numpy_size or 1_000_000, "py_iters": args.py_iters or 75_000}
    all_wls = build_workloads(calib_stub, torch_dl_128=args.torch_dl_128)
    names = sorted({w.group for w in all_wls} | {w.name for w in all_wls}, key=lambda x: (x not in GROUPS, x))
    wanted = [s.strip() for s in args.workloads.split(",") if s.strip()] if args.workloads else None
    _select(wanted, names, "workload")
    loader_toks = [s.strip() for s in args.loaders.split(",") if s.strip()] if args.loaders else None

    def row_selected(r: Row) -> bool:
        if r.role == "serial" or not loader_toks:
            return True
        return any(t in (r.id, r.family, r.loader) or r.id.startswith(t + "-") for t in loader_toks)

    if args.list:
        for w in all_wls:
            print(f"{w.name} (group {w.group}): {w.title}")
            for r in w.rows:
                print(f"    {r.id:<18} workers={r.workers} queue={r.queue} {r.opts or ''}")
        return 0

    selected = [w for w in all_wls if not wanted or w.name in wanted or w.group in wanted]
    need_numpy = any(w.dataset[0] == "numpy_sort" for w in selected)
    need_py = any(w.dataset[0] == "py_loop" for w in selected)
    calib = calibrate(need_numpy, need_py, args.numpy_size, args.py_iters)
    workloads = [w for w in build_workloads(calib, torch_dl_128=args.torch_dl_128)
                 if w.name in {s.name for s in selected}]
    repeat = args.repeat or (1 if args.quick else 3)
    rows_of = {w.name: [r for r in w.rows if row_selected(r)] for w in workloads}
    total = sum(len(rs) for rs in rows_of.values()) * repeat
    sizes = ([f"np.sort size {calib['numpy_size']:,}"] if need_numpy else []) + \
        ([f"python loop {calib['py_iters']:,} steps"] if need_py else [])
    sized = f"; sizes for this machine: {', '.join(sizes)}" if sizes else ""
    print(f"prefetch benchmarks: {len(workloads)} workloads, {total} cells, repeat {repeat}"
          f"{', quick' if args.quick else ''}{f', scale {args.scale}' if args.scale != 1 else ''}; "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs{sized}", flush=True)
    print("   b/s: after the first batch; 2nd half b/s: the second half of the epoch (start-up over: "
          "process targets use it); epoch b/s: whole epoch from constructing the loader; RSS: peak over "
          "the process tree; PSS: peak proportional set size (shared pages split)", flush=True)

    t_start = time.perf_counter()
    raw: dict[str, dict[str, list[dict]]] = {}
    results: dict[str, dict[str, dict]] = {}
    done = 0
    for wl in workloads:
        rows = rows_of[wl.name]
        raw[wl.name] = {r.id: [] for r in rows}
        for rep in range(repeat):
            for r in rows:
                spec = {"workload": wl.name, "row": r.id, "calib": calib, "scale": args.scale,
                        "quick": args.quick, "torch_dl_128": args.torch_dl_128}
                t_cell = time.perf_counter()
                res = run_cell(spec, args.cell_timeout)
                res["wall_s"] = time.perf_counter() - t_cell
                raw[wl.name][r.id].append(res)
                done += 1
                status = f"error: {res['error']}" if "error" in res else f"{_fmt(res.get('steady_bps'))} b/s"
                print(f"   [{done}/{total} {time.perf_counter() - t_start:5.0f}s] {wl.name} {r.id} "
                      f"#{rep + 1}: {status}", file=sys.stderr, flush=True)
        summ = {}
        for r in rows:
            s = summarize(raw[wl.name][r.id])
            s["role"] = r.role
            summ[r.id] = s
        results[wl.name] = summ
        print_table(wl, rows, summ, repeat)

    print("\n== targets (medians; the machine may be shared: judge ratios, rerun when close)")
    checks = targets(results)
    if not checks:
        print("  (no target among the selected workloads)")
    width = max((len(w) for _, w, _ in checks), default=0)
    for status, what, measured in checks:
        print(f"  {status:<5}  {what.ljust(width)}  {measured}")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"calibration": calib, "repeat": repeat, "quick": args.quick, "scale": args.scale,
                       "summary": results, "runs": raw,
                       "targets": [{"status": s, "target": w, "measured": m} for s, w, m in checks]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
