"""What a loader costs in memory: the proportional set size (PSS) of this process and its workers.

PSS splits each shared page between the processes that map it, so the figures add up: a
dataset array shared by the main process and four workers counts once in `total_mib`, not
five times (as RSS would count it). Linux only (`/proc/PID/smaps_rollup`); elsewhere the
figures are `None`.

Example:
    >>> import prefetch
    >>> loader = prefetch.Loader(list(range(8)), workers=2)
    >>> m = loader.stats.memory()
    >>> m.workers_mib, m.main_mib is None or m.main_mib > 0
    ({}, True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def pss_mib(pid: int) -> float | None:
    """PSS of one process in MiB, or None when it cannot be read (gone, not Linux)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class Memory:
    """A loader's memory now. `workers_mib`: PSS per worker process (pid -> MiB);
    `shared_dataset_mib`: the dataset buffers placed in shared memory for process workers
    (already counted, split, in the PSS figures)."""

    main_mib: float | None
    workers_mib: dict[int, float] = field(default_factory=dict)
    shared_dataset_mib: float = 0.0

    @property
    def total_mib(self) -> float | None:
        """PSS of the whole tree: this process plus the workers."""
        if self.main_mib is None:
            return None
        return self.main_mib + sum(self.workers_mib.values())

    def __str__(self) -> str:
        if self.main_mib is None:
            return "memory: not measurable here (needs Linux /proc)"
        workers = ", ".join(f"{v:.0f}" for v in self.workers_mib.values()) or "none"
        return (f"memory (PSS): {self.total_mib:.0f} MiB in all = main {self.main_mib:.0f} MiB + "
                f"{len(self.workers_mib)} workers ({workers} MiB); dataset in shared memory: "
                f"{self.shared_dataset_mib:.0f} MiB")


def measure(worker_pids: list[int], shared_bytes: int = 0) -> Memory:
    workers = {}
    for pid in worker_pids:
        v = pss_mib(pid)
        if v is not None:
            workers[pid] = v
    return Memory(pss_mib(os.getpid()), workers, shared_bytes / 2**20)
