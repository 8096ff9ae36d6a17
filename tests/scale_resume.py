"""Child process of the resume tests: a fresh interpreter that rebuilds a Loader from a saved
state and finishes the run, as a training job restarted after a preemption would.

Reads a JSON list of jobs on stdin, each `{"dataset": {...Indexed kwargs}, "loader": {...Loader
kwargs, "shard": [index, count, pad] or null}, "state": <state_dict>, "epochs": total epochs}`;
prints a JSON list with, for each job, the batches of every epoch it ran.

Example:
    $ echo '[{"dataset": {"n": 4}, "loader": {"seed": 1}, "state": ..., "epochs": 2}]' \\
        | python tests/scale_resume.py
    [[[2, 3], [0, 1, 2, 3]]]
"""

from __future__ import annotations

import json
import sys

import prefetch
from scale_datasets import Indexed


def build(job: dict) -> prefetch.Loader:
    """The Loader a job describes (the parent test builds its own the same way)."""
    kwargs = dict(job["loader"])
    shard = kwargs.pop("shard", None)
    return prefetch.Loader(Indexed(**job["dataset"]), shard=None if shard is None else prefetch.Shard(*shard),
                           **kwargs)


def resume(job: dict) -> list[list[int]]:
    with build(job) as loader:
        loader.load_state_dict(job["state"])
        epochs = []
        while loader.epoch < job["epochs"]:
            epochs.append(list(loader))
        return epochs


def main() -> None:
    jobs = json.load(sys.stdin)
    json.dump([resume(job) for job in jobs], sys.stdout)


if __name__ == "__main__":
    main()
