"""Kill a training process with SIGKILL mid-epoch, start it again, and end on exactly the
batches — and the weights — of a run that was never interrupted.

    python examples/kill_and_resume.py                 # the demo: run, kill -9, resume, compare
    python examples/kill_and_resume.py train RUN_DIR   # one training process (what the demo starts)

The training process fits a line with SGD over a shuffled dataset (with one corrupt batch,
skipped by `max_failures=1`), on process workers. Every few steps it writes a checkpoint —
the weights, the loader's `state_dict()` and the list of batches trained on so far — to one
JSON file, atomically (write, fsync, rename), so a kill at any instant leaves the last one
whole. Started again, it loads the checkpoint and carries on: the batches trained on after the
checkpoint but before the kill are trained on again, from the same weights, so the end is the
same as if nothing had happened. Exits 0 when the interrupted run matches the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

import prefetch

BATCHES, EPOCHS, EVERY = 24, 3, 5  # batches per epoch, epochs, steps between checkpoints
CORRUPT = 7  # this batch's "file" is unreadable: it is skipped (and logged), every epoch
KILL_AT = 30  # the demo kills the first run once it has trained this many steps


class Line(prefetch.PyDataset):
    """Batch i: (i, 16 noisy points of y = 3x - 1), from batch i's own generator."""

    def __len__(self) -> int:
        return BATCHES

    def __getitem__(self, i: int):
        if i == CORRUPT:
            raise OSError(f"cannot read shard-{i:03d}.npz: truncated file")
        r = np.random.default_rng(i)
        x = r.normal(size=16)
        return i, x, 3 * x - 1 + 0.1 * r.normal(size=16)


def _save(path: str, checkpoint: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: the old checkpoint or the new one, never half of one


def train(run_dir: str) -> None:
    """One training process; resumes from run_dir/checkpoint.json when there is one."""
    path = os.path.join(run_dir, "checkpoint.json")
    w, trained, step = np.zeros(2), [], 0
    with prefetch.Loader(Line(workers=2, use_multiprocessing=True), shuffle=True, seed=42,
                         max_failures=1) as loader:
        if os.path.exists(path):
            with open(path) as f:
                checkpoint = json.load(f)
            loader.load_state_dict(checkpoint["loader"])
            w, trained, step = np.array(checkpoint["w"]), checkpoint["trained"], checkpoint["step"]
            print(f"resumed at step {step} (epoch {loader.epoch})", flush=True)
        while loader.epoch < EPOCHS:
            for i, x, y in loader:
                grad = np.array([np.mean((w[0] * x + w[1] - y) * x), np.mean(w[0] * x + w[1] - y)])
                w = w - 0.1 * grad
                trained.append(int(i))
                step += 1
                if step % EVERY == 0:
                    _save(path, {"loader": loader.state_dict(), "w": w.tolist(), "trained": trained, "step": step})
                print(f"step {step}", flush=True)
                time.sleep(0.01)  # the model's compute
    with open(os.path.join(run_dir, "final.json"), "w") as f:
        json.dump({"w": w.tolist(), "trained": trained, "skipped": loader.stats.skipped}, f)


def _start(run_dir: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "train", run_dir], stdout=subprocess.PIPE,
                            text=True)


def _finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"training exited with {proc.returncode}:\n{out[-2000:]}")


def demo() -> int:
    with tempfile.TemporaryDirectory() as whole_dir, tempfile.TemporaryDirectory() as killed_dir:
        _finish(_start(whole_dir))  # the reference: never interrupted

        proc = _start(killed_dir)
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.strip() == f"step {KILL_AT}":
                os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no flush: a preemption
                break
        proc.wait(timeout=60)
        proc.stdout.close()  # type: ignore[union-attr]
        print(f"killed the training process at step {KILL_AT} (exit status {proc.returncode})")
        assert proc.returncode == -signal.SIGKILL, proc.returncode
        assert not os.path.exists(os.path.join(killed_dir, "final.json"))

        again = _start(killed_dir)
        _finish(again)

        results = []
        for run_dir in (whole_dir, killed_dir):
            with open(os.path.join(run_dir, "final.json")) as f:
                results.append(json.load(f))
    whole, resumed = results
    print(f"uninterrupted: {len(whole['trained'])} steps, w = {whole['w']}")
    print(f"killed and resumed: {len(resumed['trained'])} steps, w = {resumed['w']}")
    same = whole["trained"] == resumed["trained"] and whole["w"] == resumed["w"]
    print("same final batches and weights" if same else "MISMATCH")
    return 0 if same else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "train":
        train(sys.argv[2])
    else:
        sys.exit(demo())
