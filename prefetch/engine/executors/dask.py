"""dask.distributed workers: every batch is one task on the user's cluster.

The dataset travels to the cluster once (`client.scatter(..., broadcast=True)`), and each
`__getitem__(i)` becomes one task that depends on it, so a task carries only
`(epoch, seed, position, index)`. Finished tasks are fetched off every event loop by a
gatherer thread this executor owns, and reported on the engine loop.

What the cluster does for us, and what we add:

- A worker that dies mid-task: the scheduler re-runs its tasks elsewhere (the nanny
  restarts the worker); a batch whose workers keep dying ends in dask's `KilledWorker`,
  which reaches the consumer as a `prefetch.WorkerError` naming the batch index.
- A cluster that loses every copy of the scattered dataset (its only worker died): dask
  cannot recompute scattered data and cancels the tasks that need it, so the executor
  sends the dataset again — as a task, which the scheduler can re-run by itself from
  then on — and resubmits them; a batch lost that way `_MAX_LOSSES` times fails with a
  `WorkerError`.
- A dataset changed in the consumer's process between epochs (Keras datasets often
  reshuffle their samples in `on_epoch_end`; see `..fingerprint`) is sent again, the
  same way, before that epoch's tasks run. Sent as a task, the pickled
  dataset stays in the scheduler's memory while it is in use.

A coroutine `__getitem__` cannot run here: the `Loader` rejects it with a `TypeError`
(it runs on the event loop). The user's `Client` stays theirs: `close()` cancels this
executor's tasks and releases the dataset, never the client. Parallelism is the
cluster's (its worker threads); the loader's window bounds how many batches are in
flight, and `workers` is only reported.

Example:
    >>> import prefetch
    >>> from distributed import Client, LocalCluster
    >>> with LocalCluster(n_workers=1, processes=False) as cluster, Client(cluster) as client:  # doctest: +SKIP
    ...     with prefetch.Loader(list(range(8)), executor=client, max_queue_size=4) as loader:
    ...         list(loader)
    [0, 1, 2, 3, 4, 5, 6, 7]
"""

from __future__ import annotations

import pickle
import queue
import threading
import warnings
from time import monotonic
from typing import Any

from ...errors import WorkerError, annotate, batch_timeout
from ..fingerprint import fingerprint
from .base import Executor, Failure, Job, LoopPoster, Watchdog
from .threads import run_remote

#: how often one batch may lose its dataset copy (a dying single-worker cluster) before it fails
_MAX_LOSSES = 3
_STOP = None


def prefetch_batch(dataset: Any, epoch: int, seed: int, items: list) -> tuple[list, Failure | None, float]:
    """The task: run `dataset[index]` for a job's items on a dask worker.

    Named for the dask dashboard, where tasks show up as `prefetch_batch`.
    """
    try:
        from distributed import get_worker

        where = f"dask worker {get_worker().address}"
    except Exception:  # noqa: BLE001 - only used to label errors
        where = "a dask worker"
    return run_remote(dataset, epoch, seed, items, where)


class _Payload:
    """Carries the dataset into a task's arguments opaquely (dask would walk a list or dict)."""

    __slots__ = ("dataset",)

    def __init__(self, dataset: Any):
        self.dataset = dataset


def _materialize(payload: _Payload) -> Any:
    """The task whose result is the dataset, on a worker."""
    return payload.dataset


def _fingerprint(dataset: Any) -> Any:
    # dask's pickle (cloudpickle where plain pickle fails): what is actually sent
    from distributed.protocol import pickle as dask_pickle

    return fingerprint(dataset, dask_pickle.dumps)


class DaskExecutor(Executor):
    """Runs each batch as one task on a `distributed.Client`'s cluster.

    Threads: job futures are created on the engine loop (`client.submit` does not block);
    dask calls back on its callback thread, which only queues the finished future; the
    gatherer thread (`prefetch-dask`, owned here, ended by `close()`) makes the blocking
    client calls (gather, cancel), so neither the engine loop nor the client's loop ever
    waits on the other; results reach the engine loop through a `LoopPoster`. Only
    `start()` blocks its caller, once, to scatter the dataset.

    Example:
        >>> from distributed import Client  # doctest: +SKIP
        >>> ex = DaskExecutor(list(range(4)), Client(processes=False), workers=2)  # doctest: +SKIP
        >>> ex.start(); ex  # doctest: +SKIP
        'DaskExecutor(scheduler=inproc://..., workers=2)'
        >>> ex.close()  # doctest: +SKIP
    """

    chunks = False  # one task per batch: dask's own overhead dwarfs what grouping would save
    in_process = False  # stale tasks of an aborted epoch are discarded, never waited for
    job_overhead = 2e-3

    def __init__(self, dataset: Any, client: Any, workers: int, *, timeout_s: float | None = None):
        super().__init__(workers)
        self.dataset = dataset
        self.client = client
        # Batch timeout: dask does not say when a task starts, so a task's clock runs from
        # its submission or from the last task that finished, whichever is later — a queue
        # of tasks behind busy workers does not time out while the cluster makes progress.
        # A task past it fails with BatchTimeout (no stack) and is cancelled; a dask worker
        # thread inside it cannot be stopped and stays busy until the call returns.
        self.timeout_s = timeout_s
        self._watchdog = None if timeout_s is None else Watchdog(timeout_s, self._check_timeouts)
        self._submitted: dict[Any, float] = {}  # job future -> when it was submitted
        self._progress = monotonic()  # when a task last finished
        self._abandoned: set[Any] = set()  # futures that timed out: what they report later is dropped

        self._prints: Any = None  # fingerprint of the dataset last sent
        self._remote: Any = None  # the dataset's Future on the cluster (scattered, or a task once re-sent)
        # -- engine loop thread only --
        self._futures: dict[Any, Job] = {}  # job future -> its job
        self._losses: dict[Job, int] = {}
        # -- shared with close() --
        self._lock = threading.Lock()
        self._live: set[Any] = set()  # every future close() must cancel
        self._closed = False
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # to the gatherer thread
        self._poster = LoopPoster(self._on_loop)
        self._thread: threading.Thread | None = None

    # -- any thread ------------------------------------------------------------------------
    def start(self) -> None:
        """Send the dataset and start the gatherer thread (blocks: a round trip to the cluster)."""
        if self.client.asynchronous:
            raise RuntimeError("prefetch: a Loader iterated synchronously on the dask client's own event "
                               "loop would block it; use `async for` (or a synchronous Client)")
        try:
            self._prints = _fingerprint(self.dataset)
            self._remote = self._scatter()
        except (TypeError, pickle.PicklingError, AttributeError) as exc:
            # dask's own message names only the type; say what it means for the user.
            raise TypeError(f"prefetch: the dataset ({type(self.dataset).__name__}) cannot be pickled, so it "
                            f"cannot be sent to the dask cluster: {exc}") from exc
        except Exception as exc:
            raise RuntimeError(f"prefetch: could not send the dataset to the dask cluster: {exc!r} (can every "
                               f"worker import {type(self.dataset).__module__!r}?)") from exc
        with self._lock:
            self._live.add(self._remote)
        self._thread = threading.Thread(target=self._gather_loop, name="prefetch-dask", daemon=True)
        self._thread.start()

    def _scatter(self) -> Any:
        # A one-element list, so a dataset that is itself a list or dict is sent whole
        # (scatter splits a collection); hash=False so two loaders never share (and then
        # release) one another's copy.
        [remote] = self.client.scatter([self.dataset], broadcast=True, hash=False)
        return remote

    def close(self, timeout_s: float = 5.0) -> None:
        """Cancel every task and release the dataset; the client itself stays open."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._inbox.put(_STOP)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                warnings.warn("prefetch: the dask gatherer thread did not stop within "
                              f"{timeout_s:g}s (a gather is waiting on the cluster)", RuntimeWarning, stacklevel=2)

    def __repr__(self) -> str:
        address = getattr(getattr(self.client, "scheduler", None), "address", "?")
        return f"DaskExecutor(scheduler={address}, workers={self.workers})"

    # -- engine loop thread ------------------------------------------------------------------
    def bind(self, loop) -> None:
        super().bind(loop)
        self._poster.rebind(loop)
        if self._watchdog is not None and self._busy:
            self._watchdog.arm(loop)

    def unbind(self) -> None:
        if self._watchdog is not None:
            self._watchdog.disarm()

    def begin_epoch(self, epoch: int) -> None:
        if self._closed:
            return
        prints = _fingerprint(self.dataset)
        if prints != self._prints:
            # An epoch hook (or the user) changed the dataset: this epoch's tasks must see it.
            self._prints = prints
            self._replace_remote()

    def _replace_remote(self) -> None:
        """Send the dataset again, as a task: unlike scattered data, the scheduler re-runs a
        task whose result every worker lost, so further worker deaths are dask's business
        (reruns, then `KilledWorker`). Does not block: tasks submitted next depend on it."""
        old = self._remote
        self._remote = self.client.submit(_materialize, _Payload(self.dataset), pure=False, fifo_timeout="0ms")
        with self._lock:
            self._live.add(self._remote)
            self._live.discard(old)
        if old is not None:
            old.release()  # tasks already submitted keep it on the cluster as long as they need it

    def _submit(self, job: Job) -> None:
        self._launch(job)

    def _launch(self, job: Job) -> None:
        if self._closed:
            self.report(job, [], None, 0.0)
            return
        remote = self._remote
        # fifo_timeout=0: every submission is its own generation, so the cluster starts
        # batches in the order they were asked for (the next one to deliver first).
        fut = self.client.submit(prefetch_batch, remote, job.epoch, job.seed, job.items, pure=False,
                                 fifo_timeout="0ms")
        with self._lock:
            if self._closed:  # close() raced us: nobody will cancel this one, so drop it now
                fut.release()
                self.report(job, [], None, 0.0)
                return
            self._live.add(fut)
        self._futures[fut] = job
        if self._watchdog is not None:
            self._submitted[fut] = monotonic()
            self._watchdog.arm(self.loop)
        # Runs on dask's callback thread: only hand the future over, never block there.
        fut.add_done_callback(lambda f, job=job, remote=remote: self._inbox.put(("done", job, remote, f)))

    def cancel(self, owner) -> None:
        doomed = [fut for fut, job in self._futures.items() if job.owner is owner]
        if doomed:
            self._inbox.put(("cancel", doomed))  # each still reports once, as cancelled

    def _check_timeouts(self) -> bool:
        """On the loop: fail tasks past the timeout (see `__init__`). True while work runs."""
        assert self.timeout_s is not None
        now = monotonic()
        if now - self._progress > self.timeout_s:
            for fut, job in list(self._futures.items()):
                submitted = self._submitted.get(fut, now)
                if now - submitted <= self.timeout_s:
                    continue
                del self._futures[fut], self._submitted[fut]
                self._abandoned.add(fut)
                self._inbox.put(("cancel", [fut]))
                position, index = job.items[0]
                error = batch_timeout(index, "a dask worker", self.timeout_s, None)
                self.report(job, [], Failure(position, index, error), now - submitted)
        return self._busy > 0

    def _on_loop(self, message: tuple) -> None:
        kind = message[0]
        fut = message[2] if kind == "result" else message[3]
        if self._abandoned and fut in self._abandoned:  # timed out: reported already
            self._abandoned.discard(fut)
            with self._lock:
                self._live.discard(fut)
            return
        if self._watchdog is not None:
            self._submitted.pop(fut, None)
            self._progress = monotonic()
        if kind == "result":
            _, job, fut, values, failure, elapsed = message
            self._forget(fut)
            self._losses.pop(job, None)
            self.report(job, values, failure, elapsed)
        elif kind == "lost":
            self._lost(*message[1:])

    def _forget(self, fut: Any) -> None:
        self._futures.pop(fut, None)
        with self._lock:
            self._live.discard(fut)

    def _lost(self, job: Job, remote: Any, fut: Any) -> None:
        """The cluster lost `remote`, the dataset copy `fut` needed: send it again and resubmit."""
        self._forget(fut)
        if job.owner.cancelled or self._closed:
            self.report(job, [], None, 0.0)
            return
        losses = self._losses[job] = self._losses.get(job, 0) + 1
        if losses >= _MAX_LOSSES:
            self._losses.pop(job, None)
            position, index = job.items[0]
            error = WorkerError(f"prefetch: batch {index} was lost {losses} times: the dask cluster lost every "
                                "copy of the dataset each time (its workers died)", index=index)
            self.report(job, [], Failure(position, index, error), 0.0)
            return
        if remote is self._remote:
            self._replace_remote()
        self._launch(job)

    # -- gatherer thread ------------------------------------------------------------------
    def _gather_loop(self) -> None:
        inbox, done = self._inbox, []
        while True:
            message = inbox.get()
            # Take everything already waiting: a burst of finished tasks costs one gather.
            batch = [message]
            while True:
                try:
                    batch.append(inbox.get_nowait())
                except queue.Empty:
                    break
            for message in batch:
                if message is not _STOP and message[0] == "done":
                    done.append(message[1:])
                    continue
                if done:  # keep the order of events: results before a later cancel
                    self._collect_all(done)
                    done = []
                if message is _STOP:
                    self._shut_down()
                    return
                if message[0] == "cancel":
                    self._cancel(message[1])
            if done:
                self._collect_all(done)
                done = []

    def _collect_all(self, done: list[tuple[Job, Any, Any]]) -> None:
        """`_collect`, and should it break, fail the jobs it did not report: a job that is
        never reported would leave the consumer waiting for ever."""
        reported: set[int] = set()

        def post(message: tuple) -> None:
            reported.add(id(message[1]))
            self._poster.post(message)

        try:
            self._collect(done, post)
        except Exception as exc:  # noqa: BLE001 - delivered to the consumer
            for job, _, fut in done:
                if id(job) not in reported:
                    position, index = job.items[0]
                    error = WorkerError(f"prefetch: could not fetch batch {index} from the dask cluster: "
                                        f"{type(exc).__name__}: {exc}", index=index)
                    error.__cause__ = exc
                    post(("result", job, fut, [], Failure(position, index, error), 0.0))

    def _collect(self, done: list[tuple[Job, Any, Any]], post) -> None:
        """Fetch finished tasks' results and `post` them to the engine loop."""
        if self._closed:
            return  # nobody waits for them any more
        ready = []
        for job, remote, fut in done:
            status = fut.status
            if status == "error":
                post(("result", job, fut, [], self._task_failure(job, fut), 0.0))
            elif status == "cancelled":
                # dask cannot recompute scattered data: when the dataset copy is gone, the
                # tasks that needed it are cancelled rather than re-run.
                if not job.owner.cancelled and remote.status != "finished":
                    post(("lost", job, remote, fut))
                else:
                    position, index = job.items[0]
                    error = WorkerError(f"prefetch: the dask task of batch {index} was cancelled outside the "
                                        "loader (was the client closed or restarted?)", index=index)
                    post(("result", job, fut, [], Failure(position, index, error), 0.0))
            else:  # finished (or lost, and gather waits for the recomputation)
                ready.append((job, remote, fut))
        if not ready:
            return
        try:
            results = self.client.gather([fut for _, _, fut in ready])
        except Exception:  # noqa: BLE001 - one bad future must not fail the others: retry one by one
            results = None
        for i, (job, remote, fut) in enumerate(ready):
            if results is not None:
                values, failure, elapsed = results[i]
                post(("result", job, fut, values, failure, elapsed))
                continue
            try:
                values, failure, elapsed = fut.result()
            except Exception as exc:  # noqa: BLE001 - delivered to the consumer
                if fut.status == "cancelled":
                    self._collect([(job, remote, fut)], post)  # classified like any cancelled task
                    continue
                position, index = job.items[0]
                failure, values, elapsed = Failure(position, index, annotate(exc, index, "the dask cluster")), [], 0.0
            post(("result", job, fut, values, failure, elapsed))

    def _task_failure(self, job: Job, fut: Any) -> Failure:
        """A task that erred outside `__getitem__`: its workers kept dying, or it never ran."""
        from distributed.scheduler import KilledWorker

        position, index = job.items[0]
        exc = fut.exception()
        if isinstance(exc, KilledWorker):
            error: BaseException = WorkerError(
                f"prefetch: batch {index} was lost: every dask worker that ran it died ({exc})", index=index)
            error.__cause__ = exc
        else:  # e.g. the dataset could not be unpickled on the worker
            error = annotate(exc, index, "the dask cluster (outside __getitem__)")
        return Failure(position, index, error)

    def _cancel(self, futures: list) -> None:
        try:
            self.client.cancel(futures)
        except Exception:  # noqa: BLE001, S110 - a closed client already dropped them
            pass

    def _shut_down(self) -> None:
        with self._lock:
            live, self._live = list(self._live), set()
        if live:
            self._cancel(live)  # job futures and dataset copies alike
