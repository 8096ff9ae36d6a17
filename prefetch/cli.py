"""The `prefetch` command line: arguments, progress bar, results table, recommendation, plot.

The measuring itself is `prefetch.bench`'s job; this module only presents it.

Example:
    $ python -m prefetch bench --demo
    $ python -m prefetch bench mypkg.data:make_dataset --workers 1,2,4,8 --plot bench.png
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from typing import IO, Any

from .bench import Watcher
from .engine.executors import NAMED as EXECUTORS

_RANK = {"thread": 0, "async": 1, "process": 2}  # cheaper first: what we recommend on a tie
NEAR = 0.05  # settings within 5% of the fastest count as equally fast

DEMO = "prefetch._demo:make"
DEMO_WORKERS = [1, 2, 4, 8]
DEMO_BATCHES = 200
DEMO_STEP_MS = 2.0  # a training step, so the stall column shows the loader catching up

BENCH_HELP = """\
Runs a dataset under each (executor x workers) setting, plus a serial baseline (ds[i] in a
loop), each in a fresh Python process, and prints a table and a recommendation.

Per setting:
  batches/s    steady throughput: batches after the first / time from the first to the last
  1st batch    time from constructing the Loader to the first batch (worker start-up included)
  stall        share of the steady time the consumer waited for data (loader.stats; for the
               serial row, the time spent in ds[i])
  getitem p50  median __getitem__ latency (loader.stats; hand-timed for the serial row)
  peak RSS     peak summed resident memory of the run's whole process tree (workers included),
               sampled every 0.1 s from /proc/PID/statm (the tree found with psutil when it is
               installed, else by scanning /proc), and never below the main process's own
               exact peak (VmHWM); shared pages count once per process

The dataset's module is imported in every run, with the current directory importable.
Exit status: 0 on success, 2 for bad arguments or a MODULE:FACTORY that gives no dataset,
1 when the runs themselves fail.
"""


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 1,2,4; got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, e.g. 1,2,4; got {text!r}")
    return sorted(set(values))


def _executors(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in EXECUTORS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"executors are {', '.join(EXECUTORS)}; got {text!r}")
    return list(dict.fromkeys(values))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefetch", description="prefetch: async prefetch for training loops.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser("bench", help="time a dataset under each executor and worker count",
                           description=BENCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("target", nargs="?", metavar="MODULE:FACTORY",
                       help="a zero-argument callable returning a dataset: mypkg.data:make or path/to/file.py:make")
    bench.add_argument("--demo", action="store_true",
                       help=f"bench a built-in dataset (10 ms of waiting + a little numpy per batch; "
                            f"workers {','.join(map(str, DEMO_WORKERS))}, {DEMO_BATCHES} batches, "
                            f"a {DEMO_STEP_MS:g} ms step)")
    bench.add_argument("--workers", type=_positive_ints, default=None, metavar="1,2,4,8",
                       help="worker counts to try (default: 1,2,4,8)")
    bench.add_argument("--executor", type=_executors, default=list(EXECUTORS),
                       metavar="thread,process,async",
                       help="executors to try (default: all; async only for an async def __getitem__, "
                            "thread/process only for a plain one)")
    bench.add_argument("--batches", type=_positive_int, default=None, metavar="N",
                       help="batches per setting, over several epochs if needed (default: min(len, 500); "
                            "500 for an infinite dataset)")
    bench.add_argument("--max-queue-size", type=_positive_int, default=None, metavar="Q",
                       help="Loader max_queue_size (default: the larger of the dataset's and 2 x workers)")
    bench.add_argument("--step-ms", type=_non_negative, default=None, metavar="MS",
                       help="simulated training step per batch, in ms: time.sleep, or asyncio.sleep for an async "
                            "dataset (default: 0, a consumer that only takes batches)")
    bench.add_argument("--time-limit", type=_positive_float, default=30.0, metavar="S",
                       help="stop a setting this many seconds after its first batch (default: 30)")
    bench.add_argument("--plot", metavar="FILE.png", help="plot batches/s against workers, a line per executor (needs matplotlib: "
                            "pip install 'prefetch[plot]')")
    bench.add_argument("--json", metavar="FILE", help="write the raw results as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "bench":
        parser.print_help(sys.stderr)
        return 2
    return _bench(parser, args)


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .bench import Target, TargetError, run_bench

    def fail(message: str) -> int:
        parser.exit(2, f"prefetch bench: error: {message}\n")
        return 2  # (unreachable: exit raises SystemExit)

    if args.demo and args.target:
        return fail("give MODULE:FACTORY or --demo, not both")
    if not args.demo and not args.target:
        return fail("give MODULE:FACTORY (e.g. mypkg.data:make_dataset), or --demo")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        return fail("--plot needs matplotlib: pip install 'prefetch[plot]'")
    try:
        target = Target.parse(DEMO if args.demo else args.target)
    except ValueError as e:
        return fail(str(e))
    workers = args.workers or DEMO_WORKERS
    batches = args.batches or (DEMO_BATCHES if args.demo else None)
    step_ms = args.step_ms if args.step_ms is not None else (DEMO_STEP_MS if args.demo else 0.0)
    try:
        result = run_bench(target, executors=args.executor, workers=workers, batches=batches,
                           queue=args.max_queue_size, step_ms=step_ms, time_limit=args.time_limit,
                           watcher=Progress())
    except TargetError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
    result["recommendation"] = recommend(result)
    print(format_table(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    if args.plot:
        plot(result, args.plot)
        print(f"plot: {args.plot}")
    # The serial loop failing, or every setting failing, is a failed bench (exit 1).
    failed = bool(result["serial"].get("error")) or (result["recommendation"] is None and bool(result["runs"]))
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# Presenting the results
# ---------------------------------------------------------------------------------------------

class Progress(Watcher):
    """A plain-text progress bar on stderr: redrawn in place on a terminal, else one line per
    finished setting (so logs stay readable)."""

    def __init__(self, total: int | None = None, stream: IO[str] | None = None, width: int = 24):
        self.total, self.width = total, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.index, self.label, self.n = 0, "", 0
        self._drawn = 0  # length of the line last drawn in place

    def planned(self, total: int) -> None:
        self.total = total

    def started(self, spec: dict) -> None:
        self.index += 1
        self.label, self.n = _label(spec), spec["batches"] or 0
        self.progressed(0)

    def progressed(self, count: int) -> None:
        if not self.tty:
            return
        done = (self.index - 1 + min(count / max(self.n, 1), 1.0)) / (self.total or self.index)
        filled = int(done * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        of = f"/{self.n}" if self.n else ""
        line = f"[{bar}] {self.index}/{self.total or '?'} {self.label:<12} {count}{of} batches"
        self.stream.write("\r" + line.ljust(self._drawn))
        self._drawn = len(line)
        self.stream.flush()

    def finished(self, result: dict) -> None:
        line = f"[{self.index}/{self.total or '?'}] {self.label:<12} {_summary(result)}"
        self.stream.write(("\r" + line.ljust(self._drawn) if self.tty else line) + "\n")
        self._drawn = 0
        self.stream.flush()


def _label(r: dict) -> str:
    return "serial" if r["executor"] == "serial" else f"{r['executor']} x{r['workers']}"


def _summary(r: dict) -> str:
    if r.get("error"):
        return "error: " + r["error"].splitlines()[0]
    bps = r.get("steady_bps")
    return f"{bps:,.1f} batches/s" if bps else f"{r.get('batches', 0)} batches"


def recommend(result: dict) -> dict[str, Any] | None:
    """The fastest setting, preferring threads over processes and fewer workers when within 5%,
    with a sentence on what it means.

    Example:
        >>> runs = [{"executor": "thread", "workers": w, "queue": 10, "steady_bps": b}
        ...         for w, b in [(1, 100.0), (2, 190.0), (4, 380.0), (8, 390.0)]]
        >>> r = recommend({"serial": {"steady_bps": 100.0, "default_queue": 10}, "runs": runs})
        >>> r["text"]
        "use Loader(ds, executor='thread', workers=4): 3.8x serial; more workers did not help"
    """
    ok = [r for r in result["runs"] if r.get("steady_bps") and not r.get("error")]
    if not ok:
        return None
    best = max(ok, key=lambda r: r["steady_bps"])
    near = [r for r in ok if r["steady_bps"] >= (1 - NEAR) * best["steady_bps"]]
    pick = min(near, key=lambda r: (_RANK[r["executor"]], r["workers"]))
    serial = result["serial"]
    speedup = pick["steady_bps"] / serial["steady_bps"] if serial.get("steady_bps") else None
    args = f"executor={pick['executor']!r}, workers={pick['workers']}"
    if pick.get("queue") not in (None, serial.get("default_queue")):
        args += f", max_queue_size={pick['queue']}"
    call = f"Loader(ds, {args})"
    if speedup is not None and speedup < 1 + NEAR:
        p50 = serial.get("getitem_p50_ms")
        if p50 is not None and p50 < 0.2:  # handing a batch over costs tens of microseconds
            why = (f"__getitem__ takes only {p50 * 1e3:.1f} us, less than handing a batch between threads costs; "
                   "put more work in each batch (bigger batches) or keep the serial loop")
        else:
            why = ("__getitem__ is bound by something workers share (the GIL for threads, CPU cores, a disk "
                   "or a lock); profile it before adding workers")
        text = f"no setting beat the serial loop by more than {NEAR:.0%} (best: {call}, {speedup:.2f}x): {why}"
        return {"executor": pick["executor"], "workers": pick["workers"], "queue": pick.get("queue"),
                "speedup": speedup, "text": text}
    text = f"use {call}" + (f": {speedup:.1f}x serial" if speedup is not None else "")
    same = [r for r in ok if r["executor"] == pick["executor"]]
    stall = pick.get("stall")
    # With a simulated step, a setting that (nearly) never stalls is as fast as training allows.
    keeps_up = bool(result.get("step_ms")) and stall is not None and stall < NEAR
    notes = []
    if any(r["workers"] > pick["workers"] for r in same):
        notes.append("more workers did not help")
    elif len(same) > 1 and pick["workers"] == max(r["workers"] for r in same):
        notes.append("the training step, not the data, sets the pace now" if keeps_up
                     else f"still scaling at {pick['workers']} workers: try more")
    others = [r for r in ok if r["executor"] != pick["executor"]]
    threads = [r for r in others if r["executor"] == "thread"]
    if pick["executor"] == "process" and threads:
        rival = max(threads, key=lambda r: r["steady_bps"])
        notes.append(f"processes beat threads {pick['steady_bps'] / rival['steady_bps']:.1f}x: "
                     "__getitem__ holds the GIL")
    elif pick["executor"] == "thread" and any(r["executor"] == "process" for r in others):
        notes.append("processes were no faster")
    if result.get("step_ms") and stall is not None:
        notes.append(f"training waits for data {stall:.0%} of the time")
    if notes:
        text += "; " + "; ".join(notes)
    return {"executor": pick["executor"], "workers": pick["workers"], "queue": pick.get("queue"),
            "speedup": speedup, "text": text}


COLUMNS = ("setting", "workers", "queue", "batches", "batches/s", "vs serial", "1st batch", "stall",
           "getitem p50", "peak RSS", "notes")


def _cells(r: dict, serial_bps: float | None) -> list[str]:
    def num(v: Any, fmt: str, unit: str = "") -> str:
        return "-" if v is None else f"{v:{fmt}}{unit}"

    bps = r.get("steady_bps")
    notes = []
    if r.get("error"):
        notes.append("error: " + r["error"].splitlines()[0])
    if r.get("cut"):
        notes.append("stopped at the time limit")
    return [
        r["executor"],
        "-" if r["executor"] == "serial" else str(r["workers"]),
        num(r.get("queue"), "d"),
        num(r.get("batches"), "d"),
        num(bps, ",.1f"),
        num(bps / serial_bps if bps and serial_bps else None, ".2f", "x"),
        num(r.get("ttfb_ms"), ",.0f", " ms"),
        num(r.get("stall"), ".0%"),
        num(r.get("getitem_p50_ms"), ",.2f", " ms"),
        num(r.get("rss_mib"), ",.0f", " MiB"),
        "; ".join(notes),
    ]


def format_table(result: dict) -> str:
    """One row per setting run (serial first), aligned columns, then skips and the verdict."""
    serial = result["serial"]
    rows = [_cells(r, serial.get("steady_bps")) for r in [serial, *result["runs"]]]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]

    def line(cells: list[str]) -> str:
        parts = [c.ljust(w) if i in (0, len(cells) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    head = (f"{result['target']}: {result.get('dataset')}, "
            f"{'infinite' if result.get('num_batches') is None else result['num_batches']} batches/epoch, "
            f"{'async' if result.get('is_async') else 'sync'} __getitem__; {result['batches']} batches per setting"
            + (f", {result['step_ms']:g} ms simulated step" if result.get("step_ms") else ""))
    out = [head, "", line(list(COLUMNS)), line(["-" * w for w in widths]), *(line(r) for r in rows), ""]
    for s in result["skipped"]:
        out.append(f"skipped executor={s['executor']!r}: {s['reason']}")
    rec = result.get("recommendation")
    out.append("recommendation: " + (rec["text"] if rec else "none: no setting finished (see the notes column)"))
    return "\n".join(out)


def plot(result: dict, path: str) -> None:
    """batches/s against workers, a line per executor, the serial loop as a horizontal line."""
    from matplotlib.figure import Figure  # lazily: an optional dependency; no pyplot, no GUI

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for ex in EXECUTORS:
        pts = sorted((r["workers"], r["steady_bps"]) for r in result["runs"]
                     if r["executor"] == ex and r.get("steady_bps"))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=ex)
    serial = result["serial"].get("steady_bps")
    if serial:
        ax.axhline(serial, color="grey", linestyle="--", label="serial")
    workers = sorted({r["workers"] for r in result["runs"]})
    if workers:
        ax.set_xscale("log", base=2)
        ax.set_xticks(workers, [str(w) for w in workers])
    ax.set_xlabel("workers")
    ax.set_ylabel("batches/s (steady)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"prefetch bench: {result['target']}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=100)
