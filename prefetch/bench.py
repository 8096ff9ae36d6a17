"""`python -m prefetch bench`: time a dataset under each executor and worker count.

Every setting, and the serial baseline (`ds[i]` in a loop), runs in a fresh interpreter
(a "cell"), so imports, process start-up and peak memory are those of a real first epoch,
and one setting's threads or processes never touch the next. The parent only starts cells,
samples their memory and prints the results.

Presenting the results (table, recommendation, plot) is `prefetch.cli`'s job.

Example:
    >>> from prefetch.bench import Target, run_bench
    >>> result = run_bench(Target.parse("prefetch._demo:make"), executors=["thread"],
    ...                    workers=[1, 4], batches=50)                     # doctest: +SKIP
    >>> [(r["workers"], round(r["steady_bps"])) for r in result["runs"]]  # doctest: +SKIP
    [(1, 92), (4, 365)]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .stats import percentile

DEFAULT_BATCHES = 500
SAMPLE_S = 0.1  # process-tree memory sampling interval


class TargetError(Exception):
    """MODULE:FACTORY does not name a zero-argument callable that returns a dataset."""


@dataclass(frozen=True)
class Target:
    """What to benchmark: `module.sub:factory` or `path/to/file.py:factory`.

    Example:
        >>> Target.parse("mypkg.data:make").module
        'mypkg.data'
        >>> import prefetch._demo
        >>> t = Target.parse(prefetch._demo.__file__ + ":make")   # a file: its directory is importable
        >>> t.module, t.factory, t.path.endswith("prefetch")
        ('_demo', 'make', True)
    """

    text: str
    module: str
    factory: str
    path: str | None = None  # a directory to make importable (for a file target)

    @classmethod
    def parse(cls, text: str) -> Target:
        module, sep, factory = text.rpartition(":")
        if not sep or not module or not factory:
            raise ValueError(f"expected MODULE:FACTORY (e.g. mypkg.data:make_dataset), got {text!r}")
        if module.endswith(".py") or os.sep in module or "/" in module:
            if not os.path.isfile(module):
                raise ValueError(f"no such file: {module!r}")
            path = os.path.dirname(os.path.abspath(module))
            return cls(text, os.path.splitext(os.path.basename(module))[0], factory, path)
        return cls(text, module, factory)

    def load(self) -> Any:
        """Import the module, call the factory, check the result is a dataset (in a cell)."""
        import importlib
        import traceback

        try:
            mod = importlib.import_module(self.module)
        except ModuleNotFoundError as e:
            if e.name and (self.module == e.name or self.module.startswith(e.name + ".")):
                raise TargetError(f"cannot import {self.module!r}: no module named {e.name!r} (the current "
                                  "directory and PYTHONPATH are searched; pass path/to/file.py:FACTORY for a "
                                  "file elsewhere)") from None
            raise TargetError(f"cannot import {self.module!r}:\n{_tail(traceback.format_exc())}") from None
        except BaseException:  # noqa: BLE001 - any error while importing the user's module
            raise TargetError(f"cannot import {self.module!r}:\n{_tail(traceback.format_exc())}") from None
        obj: Any = mod
        for part in self.factory.split("."):
            if not hasattr(obj, part):
                raise TargetError(f"module {self.module!r} has no attribute {self.factory!r}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise TargetError(f"{self.text} is a {type(obj).__name__}, not a zero-argument callable")
        try:
            ds = obj()
        except BaseException:  # noqa: BLE001
            raise TargetError(f"{self.text}() raised:\n{_tail(traceback.format_exc())}") from None
        from .dataset import inspect_dataset

        try:
            inspect_dataset(ds)
        except (TypeError, ValueError) as e:
            raise TargetError(f"{self.text}() returned a {type(ds).__name__}, not a dataset: {e}") from None
        return ds


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def short_error(e: BaseException) -> str:
    """`Type: first line of the message`, short enough for a table cell."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"[:160]


# ---------------------------------------------------------------------------------------------
# Cell side: one setting, in a fresh interpreter
# ---------------------------------------------------------------------------------------------

_CELL = "import sys; from prefetch.bench import cell_main; cell_main(sys.argv[1:])"


class _Meter:
    """Counts batches as the consumer takes them; says when to stop and reports progress."""

    def __init__(self, n: int, time_limit: float, report: Callable[[int], None], waited: Callable[[], float]):
        self.n, self.time_limit, self.report, self.waited = n, time_limit, report, waited
        self.count = 0
        self.t_first = self.t_last = 0.0
        self.wait_first = 0.0
        self.cut = False
        self._reported = 0.0

    def took(self) -> bool:
        """Record one batch; True when the run has enough."""
        now = time.perf_counter()
        self.count += 1
        if self.count == 1:
            self.t_first = now
            self.wait_first = self.waited()  # the wait for batch 0 is start-up, not steady stall
        self.t_last = now
        if now - self._reported >= 0.2:
            self._reported = now
            self.report(self.count)
        if self.count >= self.n:
            return True
        if now - self.t_first > self.time_limit:
            self.cut = True
            return True
        return False

    def figures(self, t0: float) -> dict[str, Any]:
        steady = self.t_last - self.t_first
        return {
            "batches": self.count,
            "cut": self.cut,
            "ttfb_ms": (self.t_first - t0) * 1e3 if self.count else None,
            "steady_bps": (self.count - 1) / steady if self.count > 1 and steady > 0 else None,
            "stall": (self.waited() - self.wait_first) / steady if self.count > 1 and steady > 0 else None,
        }


def _run_serial(ds: Any, spec: dict, meter_for: Callable[..., _Meter], is_async: bool) -> dict:
    """`ds[i]` in a loop (awaited one by one for a coroutine `__getitem__`), timed by hand."""
    from .dataset import num_batches_of

    length = num_batches_of(ds)
    times: list[float] = []
    step = spec["step_s"]

    def get(i: int) -> Any:
        return ds[i % length if length else i]

    t0 = time.perf_counter()
    meter = meter_for(lambda: sum(times))
    if is_async:
        import asyncio

        async def loop() -> None:
            i = 0
            while True:
                t = time.perf_counter()
                await get(i)
                times.append(time.perf_counter() - t)
                i += 1
                if meter.took():
                    return
                if step:
                    await asyncio.sleep(step)

        asyncio.run(loop())
    else:
        i = 0
        while True:
            t = time.perf_counter()
            get(i)
            times.append(time.perf_counter() - t)
            i += 1
            if meter.took():
                break
            if step:
                time.sleep(step)
    out = meter.figures(t0)
    p50 = percentile(times, 0.5)  # as Stats computes it
    out["getitem_p50_ms"] = None if p50 is None else p50 * 1e3
    return out


def _run_loader(ds: Any, spec: dict, meter_for: Callable[..., _Meter]) -> dict:
    """Build a Loader (timed from here to the first batch) and consume `n` batches, epoch after
    epoch if the dataset is shorter."""
    from .loader import Loader

    step = spec["step_s"]
    t0 = time.perf_counter()
    loader: Loader = Loader(ds, executor=spec["executor"], workers=spec["workers"], max_queue_size=spec["queue"])
    meter = meter_for(lambda: loader.stats.wait_s)

    def sync_run() -> None:
        while True:
            got = 0
            for _ in loader:
                got += 1
                if meter.took():
                    return
                if step:
                    time.sleep(step)
            if not got:
                return

    async def async_run() -> None:
        import asyncio

        while True:
            got = 0
            async for _ in loader:
                got += 1
                if meter.took():
                    return
                if step:
                    await asyncio.sleep(step)
            if not got:
                return

    try:
        if spec["executor"] == "async":
            import asyncio

            asyncio.run(async_run())
        else:
            sync_run()
        out = meter.figures(t0)
        p50 = loader.stats.latency(0.5)
        out["getitem_p50_ms"] = None if p50 is None else p50 * 1e3
        out["stats"] = loader.stats.as_dict()
    finally:
        t = time.perf_counter()
        loader.close()
        close_ms = (time.perf_counter() - t) * 1e3
    out["close_ms"] = close_ms
    return out


def peak_rss_mib() -> float | None:
    """This process's exact peak RSS (VmHWM; not ru_maxrss, which survives exec on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cell_main(argv: list[str]) -> None:
    """Entry point of a cell: `argv` = [spec as JSON, fd of the pipe back to the runner]."""
    spec = json.loads(argv[0])
    chan = os.fdopen(int(argv[1]), "w", buffering=1)
    os.set_inheritable(chan.fileno(), False)  # worker processes must not hold the pipe open

    def send(kind: str, payload: Any) -> None:
        chan.write(f"{kind} {json.dumps(payload)}\n")

    out: dict[str, Any] = {}
    try:
        for p in reversed(spec["paths"]):
            if p not in sys.path:
                sys.path.insert(0, p)
        target = Target(**spec["target"])
        t = time.perf_counter()
        ds = target.load()
        out["build_ms"] = (time.perf_counter() - t) * 1e3
        from .dataset import inspect_dataset

        info = inspect_dataset(ds)
        n = spec["batches"] or (min(info.num_batches, DEFAULT_BATCHES) if info.num_batches else DEFAULT_BATCHES)
        out.update(dataset=type(ds).__name__, num_batches=info.num_batches, is_async=info.is_async,
                   default_queue=info.max_queue_size, n=n)
        if info.num_batches == 0:
            raise TargetError(f"{target.text}() returned a dataset with no batches")

        def meter_for(waited: Callable[[], float]) -> _Meter:
            return _Meter(n, spec["time_limit"], lambda c: send("P", c), waited)

        if spec["executor"] == "serial":
            out.update(_run_serial(ds, spec, meter_for, info.is_async))
        else:
            if spec["queue"] is None:  # enough room for every worker to stay busy
                spec["queue"] = max(info.max_queue_size, 2 * spec["workers"])
            out["queue"] = spec["queue"]
            out.update(_run_loader(ds, spec, meter_for))
    except TargetError as e:
        out.update(error=str(e), error_kind="target")
    except BaseException as e:  # noqa: BLE001 - any failure is this setting's result
        out["error"] = short_error(e)
    out["hwm_mib"] = peak_rss_mib()
    send("R", out)
    chan.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: a dataset's stray threads must not hang the cell


# ---------------------------------------------------------------------------------------------
# Runner side
# ---------------------------------------------------------------------------------------------

def process_tree(root: int) -> list[int]:
    """`root` and its live descendants: psutil when installed, else a scan of /proc."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return [root] + [c.pid for c in psutil.Process(root).children(recursive=True)]
        except psutil.Error:
            return []
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


_PAGE_KIB = (os.sysconf("SC_PAGE_SIZE") // 1024) if hasattr(os, "sysconf") else 4


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_KIB
    except (OSError, IndexError, ValueError):
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss // 1024
    except Exception:  # noqa: BLE001 - gone, or no psutil: counts as nothing
        return 0


class _TreeMemory(threading.Thread):
    """Peak summed RSS of a cell's process tree, sampled every `SAMPLE_S` seconds."""

    def __init__(self, pid: int):
        super().__init__(daemon=True, name="prefetch-bench-rss")
        self.pid = pid
        self.peak_kib = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pids = process_tree(self.pid)
            if not pids:
                return
            self.peak_kib = max(self.peak_kib, sum(_rss_kib(p) for p in pids))
            self._halt.wait(SAMPLE_S)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _cell_env(paths: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    extra = list(paths)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.basename(root) not in ("site-packages", "dist-packages"):
        extra.append(root)  # this very prefetch, also when it is run from a checkout
    if env.get("PYTHONPATH"):
        extra.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(extra)
    return env


def run_cell(spec: dict, *, timeout: float, on_progress: Callable[[int], None] = lambda c: None) -> dict:
    """Run one setting in a fresh interpreter; its result, with the tree's peak RSS."""
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-c", _CELL, json.dumps(spec), str(write_fd)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_fd,),
                                env=_cell_env(spec["paths"]), start_new_session=True)
        os.close(write_fd)
        memory = _TreeMemory(proc.pid)
        memory.start()
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            _killpg(proc.pid)

        watchdog = threading.Timer(timeout, kill)
        watchdog.daemon = True
        watchdog.start()
        result: dict[str, Any] | None = None
        try:
            with os.fdopen(read_fd) as chan:
                for line in chan:
                    kind, _, payload = line.partition(" ")
                    if kind == "P":
                        on_progress(int(payload))
                    elif kind == "R":
                        result = json.loads(payload)
                        break
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        finally:  # also on Ctrl-C: the cell has its own session, so the terminal's SIGINT missed it
            watchdog.cancel()
            memory.stop()
            _killpg(proc.pid)  # the cell's own session: stragglers it left behind
            proc.wait()
        log.seek(0)
        output = log.read()
    if result is None:
        tail = [ln for ln in output.strip().splitlines() if ln.strip()]
        why = f"timed out after {timeout:.0f} s" if timed_out.is_set() else f"exit code {proc.returncode}"
        result = {"error": f"{why}: {tail[-1][:120]}" if tail else why}
    elif result.get("error") and output.strip():
        result["log_tail"] = _tail(output)
    sampled = memory.peak_kib / 1024 or None
    floor = result.get("hwm_mib")  # the main process's exact peak beats a 10 Hz sample
    result["rss_mib"] = max(v for v in (sampled, floor, 0.0) if v is not None) or None
    return {**spec, **result}


class Watcher:
    """What `run_bench` says about its progress (the command line draws a bar); silent here."""

    def planned(self, total: int) -> None:
        """`total` runs in all, serial included (known once the serial run has probed the dataset)."""

    def started(self, spec: dict) -> None:
        """A run begins: `spec["executor"]`, `spec["workers"]`, `spec["batches"]` (None: not known yet)."""

    def progressed(self, batches: int) -> None:
        """The running setting has taken `batches` batches (a few times a second)."""

    def finished(self, result: dict) -> None:
        """A run ended with this result (it has "error" when it failed)."""


def run_bench(target: Target, *, executors: list[str], workers: list[int], batches: int | None = None,
              queue: int | None = None, step_ms: float = 0.0, time_limit: float = 30.0,
              watcher: Watcher | None = None) -> dict[str, Any]:
    """Serial baseline first (it also tells whether `__getitem__` is async and how long the
    dataset is), then every applicable (executor x workers) setting, each in its own cell.

    Returns the raw results; raises `TargetError` when the target gives no dataset."""
    paths = [os.getcwd()] + ([target.path] if target.path else [])
    base = {"target": {"text": target.text, "module": target.module, "factory": target.factory,
                       "path": target.path},
            "paths": paths, "batches": batches, "queue": queue, "step_s": step_ms / 1e3,
            "time_limit": time_limit}
    timeout = 2 * time_limit + 120  # start-up (imports, process boot) and close on top
    watch = watcher or Watcher()

    def cell(executor: str, w: int | None) -> dict:
        spec = {**base, "executor": executor, "workers": w}
        if executor == "serial":
            spec["queue"] = None  # no loader, no queue
        watch.started(spec)
        r = run_cell(spec, timeout=timeout, on_progress=watch.progressed)
        watch.finished(r)
        return r

    serial = cell("serial", None)
    if serial.get("error_kind") == "target":
        raise TargetError(serial["error"])
    base["batches"] = serial.get("n") or batches
    is_async = bool(serial.get("is_async"))
    skipped, plan = [], []
    for ex in executors:
        if (ex == "async") != is_async:
            why = ("its __getitem__ is async def: it runs on the event loop whatever the executor"
                   if is_async else "its __getitem__ is not async def")
            skipped.append({"executor": ex, "reason": why})
            continue
        plan += [(ex, w) for w in workers]
    watch.planned(1 + len(plan))
    runs = [cell(ex, w) for ex, w in plan]
    return {
        "target": target.text,
        "dataset": serial.get("dataset"),
        "num_batches": serial.get("num_batches"),
        "is_async": is_async,
        "batches": base["batches"],
        "step_ms": step_ms,
        "memory": f"peak summed RSS of the process tree, sampled every {SAMPLE_S:g} s "
                  f"({'psutil' if _has_psutil() else '/proc'}), floored by the main process's VmHWM",
        "serial": serial,
        "runs": runs,
        "skipped": skipped,
    }


def _has_psutil() -> bool:
    import importlib.util

    return importlib.util.find_spec("psutil") is not None
