"""Process workers: a persistent pool per Loader, zero-copy batches through shared memory.

- Workers start once (forkserver by default; spawn where forkserver is missing; fork only on
  request) and live across epochs. The dataset is pickled once and unpickled once per worker.
- State the main process changes between epochs (in `on_epoch_begin`/`on_epoch_end`, or by
  hand) reaches the workers at the next epoch: the main process fingerprints the dataset's
  attributes (pickle protocol 5, array buffers hashed in place, no copy) and ships only the
  attributes whose fingerprint changed. Cost: one pass over the dataset's state per epoch in
  the main process; nothing is sent when nothing changed.
- Results come back on the engine loop through `add_reader` on each worker's socket — no
  helper threads. Numpy arrays in a batch travel through shared memory (see `..shm`).
- A worker that dies is noticed through its process sentinel at once; the batch it was on
  (read from a shared control block) fails with `WorkerError`, and the slot is refilled.
- Workers boot on a background thread; until the first is ready, jobs run one at a time in
  this process on a copy of the dataset (see `.warmstart`), so the first batch does not wait
  for interpreters to start.
"""

from __future__ import annotations

import importlib
import itertools
import multiprocessing as mp
import os
import pickle
import socket
import sys
import threading
from collections import deque
from typing import Any

from ...errors import WorkerError, annotate, describe_exit
from .. import shm
from ..fingerprint import fingerprint
from .. import worker as W
from .base import Executor, Failure, Job
from .warmstart import WarmStart, worth_it

_DEPTH = 2  # jobs queued per worker, so it never idles for a round trip
_CONTROL_SLOTS = 512


def default_start_method() -> str:
    """forkserver where it exists: safe after JAX/torch started threads, and cheap per worker
    once the server runs (spawn pays a fresh interpreter per worker)."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


class Snapshot:
    """The dataset as the workers will first get it: its pickle, and its fingerprint to diff
    later epochs against (taken together, so they always describe the same state)."""

    def __init__(self, dataset: Any):
        self.payload = pickle_dataset(dataset)
        self.prints = fingerprint(dataset)


def pickle_dataset(dataset: Any) -> bytes:
    """The dataset's pickle; a clear error up front, naming the attribute that does not pickle."""
    if sys.platform == "win32":
        raise ValueError("executor='process' needs a POSIX system (Linux, macOS); use threads on Windows")
    try:
        return pickle.dumps(dataset, protocol=5)
    except Exception as exc:  # noqa: BLE001 - re-raised with a better message
        culprit = ""
        for name, value in (vars(dataset).items() if hasattr(dataset, "__dict__") else ()):
            try:
                pickle.dumps(value, protocol=5)
            except Exception:  # noqa: BLE001
                culprit = f" (attribute {name!r} of type {type(value).__name__})"
                break
        raise TypeError(f"use_multiprocessing / executor='process' sends the dataset to worker processes, but "
                        f"{type(dataset).__name__} cannot be pickled{culprit}: {exc}") from exc


def _rebuild_exception(desc: tuple, where: str) -> tuple[int, int, BaseException]:
    position, index, blob, module, qualname, message, tb_text = desc
    exc = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:  # noqa: BLE001
            exc = None
    if exc is None:
        try:
            cls: Any = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
            exc = cls(message)
        except Exception:  # noqa: BLE001 - the type cannot be rebuilt here: say what it was
            exc = RuntimeError(f"{module}.{qualname}: {message}")
    if index >= 0:
        annotate(exc, index, where, tb_text)
    else:
        from ...errors import add_note

        add_note(exc, f"prefetch: raised in {where} while loading the dataset\n{tb_text.rstrip()}")
    return position, index, exc


class _Proc:
    """One worker process and its socket, as seen from the main process."""

    def __init__(self, slot: int, proc: Any, conn: Any):
        self.slot = slot
        self.proc = proc
        self.conn = conn
        self.sock = socket.socket(fileno=os.dup(conn.fileno()))
        self.fd = conn.fileno()
        self.jobs: deque[int] = deque()  # ids of jobs sent, in order
        self.known: set[int] = set()  # segments it has mapped
        self.alive = True
        self.ready = False  # it unpickled the dataset
        self.retiring = False
        self.loop = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def send(self, msg: tuple, fds: list[int] | None = None) -> bool:
        """Send `msg` (and file descriptors riding along); False if the worker is gone, which
        its sentinel reports, so no caller needs to handle that here."""
        try:
            self.conn.send_bytes(pickle.dumps(msg, protocol=5))
            if fds:
                shm.send_fds(self.sock, fds)
            return True
        except OSError:
            return False

    def close_conn(self) -> None:
        for closer in (self.sock.close, self.conn.close):
            try:
                closer()
            except OSError:
                pass


class ProcessExecutor(Executor):
    """`workers` persistent processes; see the module docstring."""

    in_process = False
    local_processes = True
    job_overhead = 100e-6

    def __init__(self, dataset: Any, workers: int, snapshot: Snapshot, *, window: int,
                 start_method: str | None = None, warm_start: bool = True):
        super().__init__(workers)
        self.dataset = dataset
        self.start_method = start_method or default_start_method()
        self.ctx = mp.get_context(self.start_method)
        self.pool = shm.SegmentPool(keep=window)
        self.control: shm.ControlBlock | None = None
        self._procs: list[_Proc] = []
        self._retired: list[_Proc] = []
        self._pending: deque[Job] = deque()
        self._jobs: dict[int, tuple[Job, list]] = {}  # job id -> (job, its segments)
        self._next_job = 0
        # Taken when the Loader was built (it doubled as the picklability check): not again here.
        self._payload: bytes | None = snapshot.payload
        self._prints: dict[str, bytes] | bytes = snapshot.prints
        self._fatal: BaseException | None = None
        self._boot_failure: tuple | None = None  # (pid, exit code) of a worker that died before it was ready
        self._closed = False
        # Start-up: the first workers are spawned on a thread (`_boot`) and adopted on the loop.
        self._booting = False
        self._boot_thread: threading.Thread | None = None
        self._boot_lock = threading.Lock()
        self._booted: list[_Proc] = []
        self._missed: list[tuple] = []  # dataset syncs since the snapshot the boot thread uses
        self._boot_done = False
        self._warm: WarmStart | None = None
        self._warm_wanted = warm_start

    # -- workers --------------------------------------------------------------------------------
    def start(self) -> None:
        self.control = shm.ControlBlock(_CONTROL_SLOTS)
        if self.start_method == "forkserver":
            # Workers fork from a server that already imported the worker module and numpy.
            self.ctx.set_forkserver_preload(["prefetch.engine.forkserver", "prefetch.engine.worker"])
        if self._warm_wanted and worth_it(self._payload, self.start_method):
            self._warm = WarmStart(self._payload, self._warm_done)  # type: ignore[arg-type]
        self._booting = True
        self._boot_thread = threading.Thread(target=self._boot, args=(self.workers, self._payload),
                                             name="prefetch-boot", daemon=True)
        self._boot_thread.start()

    def _boot(self, count: int, payload: bytes) -> None:
        """Boot thread: spawn the first workers (the first one waits for the forkserver to
        start and import numpy) and hand each to the loop as soon as it exists."""
        error = None
        try:
            for slot in range(count):
                if self._closed:
                    break
                p = self._launch(slot, payload)
                with self._boot_lock:
                    self._booted.append(p)
                self._post_adopt()
        except BaseException as exc:  # noqa: BLE001 - e.g. out of file descriptors: reported on the loop
            error = exc
        with self._boot_lock:
            self._boot_done = True
            if error is not None and self._fatal is None:
                self._fatal = error
        self._post_adopt()

    def _post_adopt(self) -> None:
        loop = self.loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._adopt, loop)
            except RuntimeError:
                pass  # that loop closed: the next bind() adopts them

    def _adopt(self, loop: Any = None) -> None:
        """On the loop: take over workers the boot thread started."""
        if loop is not None and loop is not self.loop:
            self._post_adopt()  # posted before a move to another loop: adopt there
            return
        with self._boot_lock:  # against close() on another thread: each worker is ended once
            if self._closed:
                return  # close() ends those still in self._booted
            booted, self._booted = self._booted, []
            finished = self._boot_done
            self._procs.extend(booted)
        for p in booted:
            for msg in self._missed:  # what the epoch hooks changed while it booted
                p.send(msg)
            if self.loop is not None:
                self._watch(p)
        if finished and self._booting:
            self._booting = False
            self._missed = []
            self._reconcile()  # the pool may have been resized or lost a worker meanwhile
        self._dispatch()

    def _fill_pool(self) -> None:
        """Start workers on the lowest free slots until `workers` of them run (at start, after a
        grow, and to replace workers that died)."""
        if self._fatal is not None or self._booting:
            return
        alive = [p for p in self._procs if p.alive]
        missing = self.workers - sum(not p.retiring for p in alive)
        for p in alive:  # a worker asked to retire that is still running is taken back first
            if missing > 0 and p.retiring:
                p.retiring = False
                missing -= 1
        # A slot is a worker's control-block entry and its random-seed stream: one per process.
        used = {p.slot for p in alive}
        free = (s for s in itertools.count() if s not in used)
        for _ in range(missing):
            self._spawn(next(free))

    def _spawn(self, slot: int) -> _Proc:
        if self._payload is None:
            self._payload = pickle_dataset(self.dataset)
        p = self._launch(slot, self._payload)
        self._procs.append(p)
        if self.loop is not None:
            self._watch(p)
        return p

    def _launch(self, slot: int, payload: bytes) -> _Proc:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=W.main, args=(child, slot, payload), daemon=True,
                                name=f"prefetch-worker-{slot}")
        proc.start()
        child.close()
        p = _Proc(slot, proc, parent)
        if self.control is not None and slot < _CONTROL_SLOTS:
            p.send((W.CTRL, _CONTROL_SLOTS), [self.control.fd])
        return p

    def _watch(self, p: _Proc) -> None:
        p.loop = self.loop
        self.loop.add_reader(p.fd, self._on_readable, p)  # type: ignore[union-attr]
        self.loop.add_reader(p.proc.sentinel, self._on_exit, p)  # type: ignore[union-attr]
        # uvloop makes a watched fd non-blocking; our reads want whole messages, and the
        # loop only needs readiness (level-triggered), so blocking reads are what we keep.
        os.set_blocking(p.fd, True)

    def _unwatch(self, p: _Proc) -> None:
        loop, p.loop = p.loop, None
        if loop is None or loop.is_closed():
            return
        for fd in (p.fd, p.proc.sentinel):
            try:
                loop.remove_reader(fd)
            except (ValueError, OSError, RuntimeError):
                pass

    def bind(self, loop) -> None:
        super().bind(loop)
        if self._warm is not None:
            self._warm.bind(loop)
        for p in self._procs:
            if p.alive:
                self._watch(p)
        self._adopt()

    def unbind(self) -> None:
        for p in self._procs:
            self._unwatch(p)
        self.loop = None

    def resize(self, workers: int) -> None:
        super().resize(workers)
        self._reconcile()

    def _reconcile(self) -> None:
        """Grow or shrink the pool to `workers` (not while the boot thread spawns)."""
        if self._booting:
            return
        workers = self.workers
        live = [p for p in self._procs if p.alive and not p.retiring]
        if workers > len(live):
            self._fill_pool()
        else:
            for p in sorted(live, key=lambda p: -p.slot)[: len(live) - workers]:
                p.retiring = True
                if not p.jobs:
                    self._stop(p)
        self._dispatch()

    def _stop(self, p: _Proc) -> None:
        self._unwatch(p)
        p.alive = False
        p.send((W.STOP,))
        self._procs.remove(p)
        self._retired.append(p)

    # -- jobs ------------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        self._reap()
        self._boot_failure = None  # workers that could not start get another try each epoch
        self._fill_pool()  # replace workers that died
        self._sync_dataset()
        if self._warm is not None and self._payload is None:
            # Changed since the snapshot: the warm-start copy must not serve an older dataset.
            self._payload = pickle_dataset(self.dataset)
            self._warm.reload(self._payload)

    def _sync_dataset(self) -> None:
        new = fingerprint(self.dataset)
        old = self._prints
        if new == old:
            return
        self._prints = new
        if isinstance(new, dict) and isinstance(old, dict):
            state = vars(self.dataset)
            changed = {k: pickle.dumps(state[k], protocol=5) for k, d in new.items() if old.get(k) != d}
            msg: tuple = (W.SYNC, changed, [k for k in old if k not in new])
            self._payload = None  # a replacement worker gets the dataset as it is now, pickled then
        else:
            self._payload = pickle.dumps(self.dataset, protocol=5)  # for replacements too
            msg = (W.REPLACE, self._payload)
        if self._booting:
            self._missed.append(msg)  # workers still booting started from the first snapshot
        for p in self._procs:
            if p.alive:
                p.send(msg)

    def _submit(self, job: Job) -> None:
        self._pending.append(job)
        self._dispatch()

    def _dispatch(self) -> None:
        pending = self._pending
        warm = self._warm
        if warm is not None and pending and not any(p.ready for p in self._procs):
            # No worker is ready yet: this process makes the next batch, in order, meanwhile.
            if not warm.busy:
                job = pending.popleft()
                if job.owner.cancelled:
                    self.report(job, [], None, 0.0)
                    self._dispatch()
                else:
                    warm.run(job)
            return
        while pending:
            best = None
            for p in self._procs:
                if p.alive and not p.retiring and len(p.jobs) < _DEPTH and (best is None or len(p.jobs) < len(best.jobs)):
                    best = p
            if best is None:
                if self._fatal is not None or not (self._booting or any(p.alive for p in self._procs)):
                    self._fail_pending()
                return
            job = pending.popleft()
            if job.owner.cancelled:
                self.report(job, [], None, 0.0)
                continue
            self._send_job(best, job)

    def _fail_pending(self) -> None:
        while self._pending:
            job = self._pending.popleft()
            if self._fatal is not None:
                error = self._fatal
            elif self._boot_failure is not None:
                error = self._not_ready_error(*self._boot_failure, job.items[0][1])
            else:
                error = WorkerError("prefetch: no live worker process to run the batch")
            self.report(job, [], Failure(job.items[0][0], job.items[0][1], error), 0.0)

    def _send_job(self, p: _Proc, job: Job) -> None:
        pool = self.pool
        segs = [pool.acquire() for _ in job.items] if pool.size_hint else [None] * len(job.items)
        if pool.retired:
            self._forget(pool.retired)
            pool.retired = []
        # Accounted to the worker first: if it is dying, its sentinel reports this job.
        job_id = self._next_job
        self._next_job += 1
        self._jobs[job_id] = (job, segs)
        p.jobs.append(job_id)
        new = [s for s in segs if s is not None and s.id not in p.known]
        if new and p.send((W.FDS, [(s.id, s.size) for s in new]), [s.fd for s in new]):
            p.known.update(s.id for s in new)
        p.send((W.RUN, job_id, job.epoch, job.seed, job.items, [s.id if s is not None else None for s in segs]))

    def _forget(self, ids: list[int]) -> None:
        gone = set(ids)
        for p in self._procs:
            mine = p.known & gone
            if mine and p.alive:
                p.known -= mine
                p.send((W.FORGET, sorted(mine)))

    def _warm_done(self, report: tuple) -> None:
        """On the loop: the warm-start thread finished a job (or could not load the dataset)."""
        job, values, failure, elapsed = report
        warm = self._warm
        if warm is not None:
            warm.busy = False
        if values is None:  # its copy of the dataset did not load: leave it to the workers
            self._end_warm_start()
            self._pending.appendleft(job)
        else:
            if any(p.ready for p in self._procs):
                self._end_warm_start()
            if values and not self.pool.size_hint:
                # The workers' first batches can go through shared memory straight away.
                self.pool.observe(shm.shared_bytes(values[0]))
            self.report(job, values, failure, elapsed)
        self._dispatch()

    def _end_warm_start(self, timeout: float = 0.0) -> None:
        """Stop feeding the warm-start thread; it ends after the call it may be inside of."""
        warm, self._warm = self._warm, None
        if warm is not None:
            warm.close(timeout=timeout)

    def cancel(self, owner) -> None:
        kept = deque()
        for job in self._pending:
            if job.owner is owner:
                self.report(job, [], None, 0.0)
            else:
                kept.append(job)
        self._pending = kept

    # -- results ----------------------------------------------------------------------------------
    def _on_readable(self, p: _Proc) -> None:
        try:
            while p.alive:
                self._handle(p, pickle.loads(p.conn.recv_bytes()))
                if not p.conn.poll():
                    break
        except (EOFError, OSError):
            self._on_exit(p)

    def _handle(self, p: _Proc, msg: tuple) -> None:
        kind = msg[0]
        if kind == W.DONE:
            _, job_id, results, failure, elapsed, kept = msg
            job, segs = self._jobs.pop(job_id)
            if kept:
                for seg in segs:
                    if seg is not None and seg.id in kept:
                        seg.kept = True
            if p.jobs and p.jobs[0] == job_id:
                p.jobs.popleft()
            else:
                p.jobs.remove(job_id)
            pool = self.pool
            values = []
            cancelled = job.owner.cancelled
            for i, seg in enumerate(segs):
                if i < len(results):
                    data, placed, needed = results[i]
                    if needed:
                        pool.observe(needed)
                    if cancelled:
                        pass
                    elif placed:
                        values.append(shm.decode(data, seg, placed, pool.release))
                        continue
                    else:
                        values.append(pickle.loads(data))
                if seg is not None:
                    pool.give_back(seg)
            fail = None
            if failure is not None and not cancelled:
                position, index, exc = _rebuild_exception(failure, f"process worker {p.pid}")
                fail = Failure(position, index, exc)
            if p.retiring and not p.jobs and p.alive:
                self._stop(p)
            self.report(job, values, fail, elapsed)
            self._dispatch()
        elif kind == W.READY:
            p.ready = True
            if self._warm is not None and not self._warm.busy:
                self._end_warm_start()
            self._dispatch()
        elif kind == W.FATAL:
            _, _, exc = _rebuild_exception(msg[1], f"process worker {p.pid}")
            self._fatal = exc
            self._end_warm_start()  # the workers cannot run this dataset: say so now

    def _not_ready_error(self, pid: int | None, code: int | None, batch: int) -> WorkerError:
        return WorkerError(
            f"worker process {pid} exited ({describe_exit(code)}) before it could load the dataset. "
            f"With start_method={self.start_method!r} every worker imports your main module again: "
            "put the script's entry point under `if __name__ == '__main__':`, and make sure the "
            "dataset's class is importable (see the worker's traceback above).",
            index=batch, pid=pid, exitcode=code)

    def _on_exit(self, p: _Proc) -> None:
        if not p.alive:
            return
        p.alive = False  # first: the results drained below must not dispatch more work to it
        # Results it sent before dying are still in the socket: take them first.
        try:
            while p.conn.poll():
                self._handle(p, pickle.loads(p.conn.recv_bytes()))
        except (EOFError, OSError):
            pass
        self._unwatch(p)
        p.proc.join(1.0)
        code = p.proc.exitcode
        index = -1
        if self.control is not None and p.slot < _CONTROL_SLOTS:
            index = int(self.control.slots[p.slot])
            self.control.slots[p.slot] = -1
        if not p.ready and self._fatal is None:
            self._boot_failure = (p.pid, code)
            self._end_warm_start()  # say so now, rather than serve the epoch from this process
        first = True
        while p.jobs:
            job, segs = self._jobs.pop(p.jobs.popleft())
            for seg in segs:
                if seg is not None:
                    self.pool.give_back(seg)
            failure = None
            if first:
                first = False
                position, batch = job.items[0]
                if index >= 0:
                    batch = index
                    crashed = next((k for k, (_, i) in enumerate(job.items) if i == index), 0)
                    if crashed:
                        # The batches before it in the same job were fine: run them again
                        # elsewhere, so the consumer gets every batch up to the crash.
                        self.submit(Job(job.owner, job.epoch, job.seed, job.items[:crashed]))
                        job.items = job.items[crashed:]
                        position = job.items[0][0]
                if self._fatal is not None:
                    error = self._fatal
                elif not p.ready:
                    error = self._not_ready_error(p.pid, code, batch)
                else:
                    error = WorkerError(
                        f"worker process {p.pid} died ({describe_exit(code)}) while producing batch {batch}",
                        index=batch, pid=p.pid, exitcode=code)
                failure = Failure(position, batch, error)
            self.report(job, [], failure, 0.0)
        p.close_conn()
        self._procs.remove(p)
        self._retired.append(p)
        # A worker that never got ready would fail again at once: the next epoch retries.
        if not self._closed and not p.retiring and p.ready:
            try:
                self._fill_pool()  # the pool is whole again for the next batch
            except Exception:  # noqa: BLE001 - e.g. interpreter shutting down; next epoch retries
                pass
        self._dispatch()

    def _reap(self) -> None:
        still = []
        for p in self._retired:
            p.proc.join(0)
            if p.proc.exitcode is None:
                still.append(p)
            else:
                p.close_conn()
        self._retired = still

    # -- shutdown ------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        with self._boot_lock:
            self._closed = True
        self._end_warm_start(timeout=1.0)
        boot = self._boot_thread
        if boot is not None and boot is not threading.current_thread():
            boot.join(10)  # it stops after the worker it is starting; that one must end too
        with self._boot_lock:
            booted, self._booted = self._booted, []
        procs = self._procs + self._retired + booted
        for p in procs:
            if p.alive:
                p.send((W.STOP,))
        # A worker inside a long __getitem__ does not read STOP: give it a moment, then end it.
        _join_all([p.proc for p in procs], 0.3)
        for sig in ("terminate", "kill"):
            alive = [p.proc for p in procs if p.proc.exitcode is None]
            if not alive:
                break
            for proc in alive:
                getattr(proc, sig)()
            _join_all(alive, 0.5)
        for p in procs:
            p.close_conn()
            try:
                p.proc.close()
            except ValueError:
                pass
        self._procs, self._retired = [], []
        self.pool.close()
        if self.control is not None:
            self.control.close()
            self.control = None

    def __repr__(self) -> str:
        return f"ProcessExecutor(workers={self.workers}, start_method={self.start_method!r})"


def _join_all(procs: list, timeout: float) -> None:
    from time import monotonic

    deadline = monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - monotonic()))
