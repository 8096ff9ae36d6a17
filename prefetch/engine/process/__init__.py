"""Process workers, one concern per module:

- `executor`: `ProcessExecutor` — dispatch, results, crash accounting (the engine's view);
- `pool`: a worker's state machine, starting one, noticing its end, ending a set of them;
- `zygote`: prefetch's fork server (the default start method);
- `child`: the worker's main function (runs in the worker process);
- `protocol`: the named messages between the two sides;
- `wire`: framed, non-blocking transport with file descriptors riding along;
- `sync`: the dataset as workers have it, and the changes shipped between epochs;
- `share`: the dataset's large buffers, placed once in shared memory for every worker;
- `warmstart`: opt-in first batches in the main process while workers start.

Shared memory itself (segments, encoding a batch, the allocator) is `..shm` / `..arena`.
"""

from typing import Any

__all__ = ["DatasetSync", "ProcessExecutor", "default_start_method"]

# Loaded on first use: the fork server and the workers import this package for `child` and
# `zygote` alone, and must not pay for the executor's event-loop machinery.
_LAZY = {"ProcessExecutor": "executor", "DatasetSync": "sync", "default_start_method": "zygote"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
