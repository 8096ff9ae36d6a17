"""Process workers, one concern per module:

- `executor`: `ProcessExecutor` — dispatch, results, crash accounting (the engine's view);
- `pool`: a worker's state machine, starting one, noticing its end, ending a set of them;
- `zygote`: prefetch's fork server (the default start method);
- `child`: the worker's main function (runs in the worker process);
- `protocol`: the named messages between the two sides;
- `wire`: framed, non-blocking transport with file descriptors riding along;
- `sync`: the dataset snapshot and the changes shipped between epochs;
- `warmstart`: opt-in first batches in the main process while workers start.

Shared memory itself (segments, encoding a batch, the allocator) is `..shm` / `..arena`.
"""

from .executor import ProcessExecutor
from .pool import START_METHODS, default_start_method
from .sync import Snapshot, pickle_dataset

__all__ = ["START_METHODS", "ProcessExecutor", "Snapshot", "default_start_method", "pickle_dataset"]
