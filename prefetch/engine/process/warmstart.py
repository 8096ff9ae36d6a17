"""The first batches of a process loader, made in this process while the workers boot.

A fresh worker process (forkserver or spawn) needs a few hundred milliseconds to start an
interpreter, import numpy and unpickle the dataset. Rather than make the training loop wait
for that, the process executor hands its first jobs, one at a time, to a single thread here
that runs them on its *own copy* of the dataset, loaded from the same image the workers
get (its large arrays: read-only views of the shared copy): the user's dataset object is never touched from this thread, so state it sets in
`__getitem__` (an opened file, a cache) stays out of the object the workers are synced from.
As soon as one worker is ready the executor stops feeding this thread and it ends.

Opt-in (`Loader(warm_start=True)`): a batch made here runs in the main process, so a crash
in `__getitem__` (a segfaulting decoder) would take the training process down with it — the
reason process workers exist. Values take the same pickle round trip as a worker's, so a
value that cannot cross processes fails here too, and the consumer owns what it gets.
Batches get the same `prefetch.rng()` draws as in a worker.
"""

from __future__ import annotations

import pickle
import queue
import threading
from collections.abc import Callable
from typing import Any

from ..executors.base import Job, LoopPoster
from ..executors.threads import run_job

_STOP = None


class _Reload:
    """A newer state of the dataset, for the thread: taken on the loop, unpickled on the thread."""

    def __init__(self, load: Callable[[], Any]):
        self.load = load


class WarmStart:
    """One daemon thread over a copy of the dataset; reports on the executor's loop."""

    def __init__(self, load: Callable[[], Any], deliver: Callable[[tuple], None]):
        self._load: Callable[[], Any] | None = load  # makes this thread's copy of the dataset
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._poster = LoopPoster(deliver)
        self._thread: threading.Thread | None = None
        self.busy = False

    def bind(self, loop) -> None:
        self._poster.rebind(loop)

    def reload(self, load: Callable[[], Any]) -> None:
        """On the loop: the dataset changed (an epoch hook): use this state from the next job."""
        if self._thread is None:
            self._load = load
        else:
            self._queue.put(_Reload(load))

    def run(self, job: Job) -> None:
        """On the loop: run `job` here (the previous one has been reported)."""
        self.busy = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="prefetch-warm-start", daemon=True)
            self._thread.start()
        self._queue.put(job)

    def _work(self) -> None:
        load, self._load = self._load, None
        dataset: Any = None
        unloadable: BaseException | None = None  # this thread's copy of the dataset did not load
        try:
            dataset = load()  # type: ignore[misc]
        except BaseException as exc:  # noqa: BLE001 - the workers will report it properly
            unloadable = exc
        del load
        where = "the main process while process workers start"
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            if isinstance(job, _Reload):  # reload(): a newer state of the dataset, loaded here
                try:
                    dataset, unloadable = job.load(), None
                except BaseException as exc:  # noqa: BLE001 - as above
                    dataset, unloadable = None, exc
                continue
            if unloadable is not None:
                # The job goes back to the executor (values None), which leaves it, and every
                # later one, to the workers. Never drop it: its epoch would wait for it forever.
                self._poster.post((job, None, unloadable, 0.0))
                return
            values, failure, elapsed = run_job(dataset, job, where)
            try:  # what a worker would hand over: an independent copy, or the pickling error
                values = [pickle.loads(pickle.dumps(v, protocol=5)) for v in values]
            except Exception as exc:  # noqa: BLE001 - that batch's error, as from a worker
                from ...errors import annotate
                from ..jobs import Failure

                position, index = job.items[0]
                values, failure = [], Failure(position, index, annotate(exc, index, where))
            self._poster.post((job, values, failure, elapsed))
            del job, values, failure

    def close(self, timeout_s: float = 1.0) -> None:
        """Any thread: end the thread (a call already running finishes on its own)."""
        thread, self._thread = self._thread, None
        self._load = None
        if thread is not None:
            self._queue.put(_STOP)
            if thread is not threading.current_thread():
                thread.join(timeout_s)
