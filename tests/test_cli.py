"""`python -m prefetch bench`: a row per setting, a recommendation, a plot, honest errors.

The command runs as a user runs it (a subprocess, from the repository root, so
`tests.cli_datasets` is importable as "the current directory"), on small datasets and few
batches, so the whole file stays well under a minute on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bench(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "prefetch", "bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def table(stdout: str) -> list[dict]:
    """The rows of the results table: setting, workers, batches/s (None for '-')."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("setting "))
    assert set(lines[start + 1].replace(" ", "")) == {"-"}, lines[start + 1]
    rows = []
    for ln in lines[start + 2:]:
        if not ln.strip():
            break
        cells = ln.split()
        rows.append({"setting": cells[0], "workers": cells[1],
                     "bps": None if cells[4] == "-" else float(cells[4].replace(",", ""))})
    return rows


def recommendation(stdout: str) -> str:
    return next(ln for ln in stdout.splitlines() if ln.startswith("recommendation: "))


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


@pytest.mark.timeout(150)
def test_bench_prints_a_row_per_setting_and_a_recommendation(tmp_path):
    out = tmp_path / "raw.json"
    proc = bench("tests.cli_datasets:make_sleepy", "--workers", "1,2", "--executor", "thread,process,async",
                 "--batches", "20", "--json", str(out))
    assert proc.returncode == 0, explain(proc)
    rows = table(proc.stdout)
    assert [(r["setting"], r["workers"]) for r in rows] == [
        ("serial", "-"), ("thread", "1"), ("thread", "2"), ("process", "1"), ("process", "2")]
    assert all(r["bps"] and r["bps"] > 0 for r in rows), proc.stdout
    # a sync __getitem__: async is skipped, and the output says so
    assert "skipped executor='async'" in proc.stdout
    assert recommendation(proc.stdout).startswith("recommendation: use Loader(ds, executor=")
    # progress went to stderr, one line per finished setting when stderr is not a terminal
    assert "[5/5] process x2" in proc.stderr
    raw = json.loads(out.read_text())
    assert raw["serial"]["batches"] == 20 and len(raw["runs"]) == 4
    assert all(r["batches"] == 20 and r["rss_mib"] > 0 for r in raw["runs"])
    assert raw["recommendation"]["executor"] in ("thread", "process")


@pytest.mark.timeout(60)
def test_async_dataset_runs_only_the_async_executor():
    proc = bench("tests.cli_datasets:make_async", "--workers", "4", "--batches", "20")
    assert proc.returncode == 0, explain(proc)
    assert [(r["setting"], r["workers"]) for r in table(proc.stdout)] == [("serial", "-"), ("async", "4")]
    assert "skipped executor='thread'" in proc.stdout and "skipped executor='process'" in proc.stdout


@pytest.mark.timeout(60)
def test_a_file_path_target_works_from_another_directory_with_processes(tmp_path):
    # The file's directory becomes importable, for the bench and for its worker processes.
    proc = bench(f"{ROOT / 'tests' / 'cli_datasets.py'}:make_sleepy", "--workers", "2",
                 "--executor", "process", "--batches", "10", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert [r["setting"] for r in table(proc.stdout)] == ["serial", "process"]


@pytest.mark.timeout(60)
def test_plot_writes_a_png_matplotlib_can_read(tmp_path):
    png = tmp_path / "bench.png"
    proc = bench("tests.cli_datasets:make_sleepy", "--workers", "1,2", "--executor", "thread",
                 "--batches", "10", "--plot", str(png))
    assert proc.returncode == 0, explain(proc)
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    import matplotlib.image

    image = matplotlib.image.imread(str(png))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.mark.timeout(120)
def test_demo_runs_with_no_other_arguments():
    proc = bench("--demo")
    assert proc.returncode == 0, explain(proc)
    rows = table(proc.stdout)
    assert [r["setting"] for r in rows] == ["serial"] + ["thread"] * 4 + ["process"] * 4
    # 10 ms of waiting per batch: 8 workers of either kind beat the serial loop by far
    serial = rows[0]["bps"]
    assert all(r["bps"] > 2 * serial for r in rows if r["workers"] == "8"), proc.stdout
    assert "recommendation: use Loader(ds, executor=" in proc.stdout


@pytest.mark.timeout(60)
def test_a_time_limit_cuts_a_long_run_and_says_so():
    proc = bench("tests.cli_datasets:make_slow", "--workers", "1", "--executor", "thread", "--time-limit", "0.3")
    assert proc.returncode == 0, explain(proc)
    rows = proc.stdout.splitlines()
    assert sum("stopped at the time limit" in ln for ln in rows) == 2, proc.stdout


@pytest.mark.timeout(60)
def test_a_failing_getitem_is_reported_in_the_table_and_exits_1():
    proc = bench("tests.cli_datasets:make_failing", "--workers", "1", "--executor", "thread")
    assert proc.returncode == 1, explain(proc)
    assert proc.stdout.count("error: KeyError") == 2, proc.stdout  # serial and thread rows


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target, message", [
    ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz': no module named 'no_such_module_xyz'"),
    ("tests.cli_datasets:missing", "has no attribute 'missing'"),
    ("tests.cli_datasets:NOT_CALLABLE", "not a zero-argument callable"),
    ("tests.cli_datasets:not_a_dataset", "returned a int, not a dataset"),
    ("tests.cli_datasets:make_raises", "the factory itself is broken"),
])
def test_a_target_that_gives_no_dataset_exits_2_with_a_helpful_message(target, message):
    proc = bench(target)
    assert proc.returncode == 2, explain(proc)
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr.split("prefetch bench: error:")[0]  # no crash of our own


@pytest.mark.parametrize("args, message", [
    (["tests.cli_datasets"], "expected MODULE:FACTORY"),
    (["tests.cli_datasets:make_sleepy", "--workers", "0,2"], "expected integers >= 1"),
    (["tests.cli_datasets:make_sleepy", "--executor", "gpu"], "executors are thread, process, async"),
    ([], "give MODULE:FACTORY"),
    (["x:y", "--demo"], "not both"),
])
def test_bad_arguments_exit_2(args, message):
    proc = bench(*args, timeout=30)
    assert proc.returncode == 2, explain(proc)
    assert message in proc.stderr


def test_the_console_script_entry_point_is_main():
    import prefetch.__main__
    import prefetch.cli

    assert prefetch.__main__.main is prefetch.cli.main
    with pytest.raises(SystemExit) as exit_:
        prefetch.cli.main(["bench", "--help"])
    assert exit_.value.code == 0
    assert prefetch.cli.main([]) == 2  # no command: help on stderr, status 2


# -- the recommendation, on made-up numbers ---------------------------------------------------

def _result(runs: list[tuple[str, int, float]], serial: float = 100.0, **extra) -> dict:
    return {"serial": {"steady_bps": serial, "default_queue": 10},
            "runs": [{"executor": e, "workers": w, "queue": 10, "steady_bps": b, **extra} for e, w, b in runs]}


def test_recommendation_prefers_fewer_workers_and_threads_within_5_percent():
    from prefetch.cli import recommend

    r = recommend(_result([("thread", 4, 400.0), ("thread", 8, 415.0), ("process", 2, 418.0)]))
    assert (r["executor"], r["workers"]) == ("thread", 4)
    assert r["text"] == ("use Loader(ds, executor='thread', workers=4): 4.0x serial; more workers did not help; "
                         "processes were no faster")


def test_recommendation_says_processes_win_when_threads_are_gil_bound():
    from prefetch.cli import recommend

    r = recommend(_result([("thread", 1, 100.0), ("thread", 2, 101.0), ("process", 1, 98.0), ("process", 2, 190.0)]))
    assert (r["executor"], r["workers"]) == ("process", 2)
    assert "processes beat threads 1.9x: __getitem__ holds the GIL" in r["text"]
    assert "still scaling at 2 workers: try more" in r["text"]


def test_recommendation_says_when_nothing_beats_the_serial_loop():
    from prefetch.cli import recommend

    r = recommend(_result([("thread", 1, 99.0), ("thread", 2, 102.0)]))
    assert r["text"].startswith("no setting beat the serial loop by more than 5%")
    assert recommend(_result([])) is None


def test_progress_redraws_in_place_on_a_terminal():
    import io

    from prefetch.cli import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    p = Progress(stream=term)
    p.started({"executor": "serial", "workers": None, "batches": None})
    p.finished({"steady_bps": 90.0})
    p.planned(2)
    p.started({"executor": "thread", "workers": 4, "batches": 10})
    p.progressed(5)
    p.finished({"error": "KeyError: 3"})
    text = term.getvalue()
    assert "\r[##################------] 2/2 thread x4    5/10 batches" in text  # 1.5 of 2 runs done
    assert "\r[2/2] thread x4    error: KeyError: 3" in text
    assert text.count("\n") == 2  # one finished line per setting; progress redrawn with \r
