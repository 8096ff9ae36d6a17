"""`executor="process"`: a persistent pool of worker processes per Loader, zero-copy batches
through shared memory, crash isolation.

- Workers start when the Loader is built (prefetch's fork server by default, see `.zygote`;
  spawn or fork on request) and live across epochs; each loads the dataset once.
- Everything runs on the engine's event loop and nothing there blocks on a worker: each
  worker's socket is a non-blocking `LoopEnd` (see `.wire`), its death a readable descriptor
  (`pool.ExitWatch`). Every `Run` ends in a `Done` (values, or the batch's error) or in the
  worker's death, which is the error of the batch it was on (read from the control block)
  and of every job queued behind it.
- A batch's large arrays live in shared memory (see `..shm`); the consumer owns what it was
  handed (see `shm`'s ownership rule).
- State the dataset's epoch hooks change reaches the workers before the next epoch
  (see `.sync`).
- With a batch timeout, a loop timer (`Watchdog`) reads each worker's batch and its start
  time from the control block; a worker past the timeout is asked for its Python stack
  (SIGUSR1: its `faulthandler` writes every thread's stack to a file shared with this
  process), given up to `_STACK_WAIT_S` to write it, then killed; its death is that batch's
  `BatchTimeout`, and a new worker has been starting meanwhile.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import linecache
import os
import pickle
import re
import signal
import sys
from collections import deque
from time import monotonic, monotonic_ns
from typing import Any

from ...errors import WorkerError, add_note, annotate, batch_timeout, describe_exit
from .. import shm
from ..executors.base import Executor, Watchdog
from ..jobs import Failure, Job
from . import pool as W
from . import protocol as P
from .child import main_ref
from .sync import DatasetSync
from .zygote import default_start_method, defining_modules

_DEPTH = 2  # jobs queued per worker, so it never idles for a round trip
# Until a first batch came back, the size of its shared arrays is unknown and a job can get no
# segment: each array would be pickled through the socket. One job per worker until then.
_DEPTH_UNSIZED = 1
_CONTROL_SLOTS = 512
_STACK_WAIT_S = 0.2  # how long a worker past the timeout may take to write its stack before it is killed
_STACK_STEP_S = 0.02  # how often the stack file is looked at meanwhile


def rebuild_exception(info: P.FailureInfo, where: str) -> BaseException:
    """The worker's exception with its own type where it can be rebuilt here, annotated."""
    exc = None
    if info.blob is not None:
        try:
            exc = pickle.loads(info.blob)
        except Exception:  # noqa: BLE001
            exc = None
    if exc is None:
        try:
            cls: Any = importlib.import_module(info.module)
            for part in info.qualname.split("."):
                cls = getattr(cls, part)
            exc = cls(info.message)
        except Exception:  # noqa: BLE001 - the type cannot be rebuilt here: say what it was
            exc = RuntimeError(f"{info.module}.{info.qualname}: {info.message}")
    if info.batch >= 0:
        annotate(exc, info.batch, where, info.traceback)
    else:
        add_note(exc, f"prefetch: raised in {where} while loading the dataset\n{info.traceback.rstrip()}")
    return exc


class ProcessExecutor(Executor):
    """`workers` persistent processes; see the module docstring."""

    in_process = False
    local_processes = True
    job_overhead = 100e-6

    def __init__(self, dataset: Any, workers: int, sync: DatasetSync, *, window: int,
                 start_method: str | None = None, warm_start: bool = False, timeout_s: float | None = None):
        super().__init__(workers)
        self.timeout_s = timeout_s
        self._watchdog = None if timeout_s is None else Watchdog(timeout_s, self._check_timeouts)
        self.dataset = dataset
        self.start_method = start_method or default_start_method()
        self.pool = shm.SegmentPool(keep=window)
        self.control: shm.ControlBlock | None = None
        self.sync = sync
        self._workers: list[W.Worker] = []  # not DEAD
        self._pending: deque[Job] = deque()
        self._sized = False  # a batch came back: pool.size_hint says what batches need (0: no segments)
        self._jobs: dict[int, tuple[Job, list]] = {}  # job id -> (job, its segments)
        self._next_job = itertools.count()
        self._fatal: BaseException | None = None  # the dataset cannot load in a worker
        self._closed = False
        self._warm: Any = None
        self._warm_wanted = warm_start
        self._preload = defining_modules(dataset)

    # -- workers --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every worker now (it returns at once: workers load the dataset on their own)."""
        self.control = shm.ControlBlock(_CONTROL_SLOTS)
        if self._warm_wanted and self.start_method != "fork":
            from .warmstart import WarmStart

            self._warm = WarmStart(self.sync.loader(), self._warm_done)
        self._fill_pool()

    def _launch(self, slot: int) -> W.Worker:
        """Start a worker process; `_boot` sends it what it needs (it may be started first, so
        that every process is on its way before the dataset's shared copy is written)."""
        w = W.start(self.start_method, slot, self._on_frame, self._on_stream_closed, self._workers,
                    self._preload)
        self._workers.append(w)
        return w

    def _boot(self, w: W.Worker) -> None:
        control = self.control
        named = {"control": control.fd} if control is not None and w.slot < _CONTROL_SLOTS else {}
        if self._watchdog is not None and named:  # a worker without a control block cannot be timed
            w.stack_fd = shm.anonymous_fd("prefetch-stack", 0)
            named["stack"] = w.stack_fd
        image, segments, segment_fds = self.sync.boot()
        w.end.send(P.dumps(P.Boot(w.slot, _CONTROL_SLOTS, list(sys.path), main_ref(), image, segments,
                                  self.sync.share or "private", list(named))),
                   [*named.values(), *segment_fds])
        if self.loop is not None:
            w.watch(self.loop, self._on_exit)

    def _fill_pool(self) -> None:
        """Start workers on the lowest free slots until `workers` of them take jobs (at start,
        after a grow, and to replace workers that died)."""
        if self._fatal is not None or self._closed:
            return
        live = [w for w in self._workers if w.state in W.LIVE]
        missing = self.workers - sum(w.state in W.TAKES_JOBS for w in live)
        for w in live:  # a worker asked to retire that is still running is taken back first
            if missing > 0 and w.state is W.State.RETIRING:
                w.state = W.State.READY
                missing -= 1
        # A slot is a worker's control-block entry and its random-seed stream: one per process.
        used = {w.slot for w in self._workers}
        free = (s for s in itertools.count() if s not in used)
        if missing > 0 and self.start_method == "fork":
            # A forked worker inherits this process's memory: let it inherit the dataset's
            # arrays already on the shared pages, not the private ones they are moved from.
            self.sync.flush()
        started = [self._launch(next(free)) for _ in range(missing)]
        for w in started:
            self._boot(w)

    def processes(self) -> tuple[list[int], int]:
        pids = [w.pid for w in list(self._workers) if w.state in W.LIVE and w.pid is not None]
        return pids, self.sync.shared_bytes

    def bind(self, loop: Any) -> None:
        super().bind(loop)
        if self._warm is not None:
            self._warm.bind(loop)
        for w in self._workers:
            w.watch(loop, self._on_exit)
            if w.state is W.State.TIMED_OUT:
                w.exit.kill()  # its stack was being read on the loop we left: kill it now
        self._dispatch()
        if self._watchdog is not None and self._busy:
            self._watchdog.arm(loop)

    def unbind(self) -> None:
        if self._watchdog is not None:
            self._watchdog.disarm()
        for w in self._workers:
            w.unwatch()
        self.loop = None

    def resize(self, workers: int) -> None:
        super().resize(workers)
        taking = [w for w in self._workers if w.state in W.TAKES_JOBS]
        if workers > len(taking):
            self._fill_pool()
        else:
            for w in sorted(taking, key=lambda w: -w.slot)[: len(taking) - workers]:
                w.state = W.State.RETIRING
                if not w.jobs:
                    self._stop(w)
        self._dispatch()

    def _stop(self, w: W.Worker) -> None:
        w.state = W.State.STOPPING
        w.end.send(P.dumps(P.Stop()))

    # -- jobs ------------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        self._fill_pool()  # replace workers that died, or retry ones that could not start
        change = self.sync.changes()
        if change is not None:
            msg, fds = change
            frame = P.dumps(msg)
            for w in self._workers:
                if w.state in W.LIVE:
                    w.end.send(frame, fds)  # the shared buffers go once: each worker gets their fds
            self.sync.settle()
            if self._warm is not None:
                self._warm.reload(self.sync.loader())

    def _submit(self, job: Job) -> None:
        self._pending.append(job)
        self._dispatch()
        if self._watchdog is not None:
            self._watchdog.arm(self.loop)

    def _dispatch(self) -> None:
        pending = self._pending
        if self._warm is not None and pending and self._warm_serves():
            return
        depth = _DEPTH if self._sized else _DEPTH_UNSIZED
        while pending:
            best = None
            for w in self._workers:
                if w.state in W.TAKES_JOBS and len(w.jobs) < depth and (best is None or len(w.jobs) < len(best.jobs)):
                    best = w
            if best is None:
                if self._fatal is not None or not any(w.state in W.TAKES_JOBS for w in self._workers):
                    self._fail_pending()
                return
            job = pending.popleft()
            if job.owner.cancelled:
                self.report(job, [], None, 0.0)
                continue
            try:
                self._send_job(best, job)
            except OSError as exc:  # out of memory or descriptors here: say so, as this batch's error
                position, index = job.items[0]
                error = OSError(exc.errno, f"prefetch: could not set up shared memory for batch {index}: "
                                           f"{exc.strerror or exc}")
                error.__cause__ = exc
                self.report(job, [], Failure(position, index, error), 0.0)

    def _fail_pending(self) -> None:
        while self._pending:
            job = self._pending.popleft()
            error = self._fatal or WorkerError("prefetch: no live worker process to run the batch",
                                               index=job.items[0][1])
            self.report(job, [], Failure(job.items[0][0], job.items[0][1], error), 0.0)

    def _send_job(self, w: W.Worker, job: Job) -> None:
        segs = self._segments_for(w, len(job.items))
        # Accounted to the worker first: if it is dying, its exit reports this job.
        job_id = next(self._next_job)
        self._jobs[job_id] = (job, segs)
        w.jobs.append(job_id)
        w.end.send(P.dumps(P.Run(job_id, job.epoch, job.seed, job.items,
                                 [s.id if s is not None else None for s in segs])))

    def _segments_for(self, w: W.Worker, n: int) -> list[shm.Segment | None]:
        """A segment (or None) for each of `n` batches `w` will make."""
        pool = self.pool
        if not pool.size_hint:  # no batch had large arrays so far: none to give (nor to ask for one by one)
            return [None] * n
        segs: list[shm.Segment | None] = []
        try:
            for _ in range(n):
                seg, new = pool.acquire(w.slot)
                if new:
                    self._share(seg, w)  # type: ignore[arg-type]
                segs.append(seg)
        except BaseException:
            for seg in segs:
                if seg is not None:
                    pool.give_back(seg)
            raise
        if pool.retired:
            self._forget(pool.retired)
            pool.retired = []
        return segs

    def _share(self, seg: shm.Segment, writer: W.Worker | None) -> None:
        """A new segment for `writer`'s next job: every live worker maps it now (only the
        writer touches its pages; `None`: a segment a worker made, already written); then no
        descriptor is kept for it."""
        for w in self._workers:
            if w.state in W.LIVE:
                w.end.send(P.dumps(P.MapSegments([(seg.id, seg.size)], w is writer)), [seg.fd])
                seg.known.add(w.slot)
        seg.drop_fd()

    def _forget(self, segs: list[shm.Segment]) -> None:
        for w in self._workers:
            mine = [s.id for s in segs if w.slot in s.known]
            if mine and w.state in W.LIVE:
                w.end.send(P.dumps(P.Forget(mine)))

    def cancel(self, owner: Any) -> None:
        kept: deque[Job] = deque()
        for job in self._pending:
            if job.owner is owner:
                self.report(job, [], None, 0.0)
            else:
                kept.append(job)
        self._pending = kept

    # -- what workers send -------------------------------------------------------------------------
    def _on_frame(self, w: W.Worker, payload: Any, fds: list[int]) -> None:
        try:
            msg = P.loads(payload)
        except Exception:  # noqa: BLE001 - a corrupt stream: the worker is ended, its jobs fail
            _close_all(fds)
            w.exit.kill()
            return
        kind = type(msg)
        if kind is P.Done:
            made = dict(zip(msg.made, fds))  # only a Done carries fds: segments the worker made
            _close_all(fds[len(msg.made):])
            try:
                self._on_done(w, msg, made)
            finally:
                _close_all(list(made.values()))  # any not taken over
            return
        _close_all(fds)  # no other message carries any: never leak one that arrives anyway
        if kind is P.Ready:
            if w.state is W.State.BOOTING:
                w.state = W.State.READY
            if self._warm is not None and not self._warm.busy:
                self._end_warm_start()
            self._dispatch()
        elif kind is P.LoadFailed:
            self._fatal = rebuild_exception(msg.failure, f"process worker {w.pid}")
            self._end_warm_start()
            self._dispatch()

    def _on_done(self, w: W.Worker, msg: P.Done, made: dict[int, int]) -> None:
        """`made`: position in the job -> fd of a segment the worker made for that batch
        (taken out of `made` when taken over)."""
        job, segs = self._jobs.pop(msg.job_id)
        if w.jobs and w.jobs[0] == msg.job_id:
            w.jobs.popleft()
        else:
            w.jobs.remove(msg.job_id)
        for seg in segs:
            if seg is not None and seg.id in msg.kept:
                seg.kept = True
        pool = self.pool
        self._sized = True
        values: list = []
        failure = None
        cancelled = job.owner.cancelled
        results = msg.results
        for k, seg in enumerate(segs):
            used = False
            if k < len(results):
                data, placed, needed = results[k]
                if needed:
                    pool.observe(needed)
                if k in made and not pool.closed:
                    if seg is not None:  # given one it had not mapped: it made its own instead
                        pool.give_back(seg)
                    seg = pool.adopt(made.pop(k))
                    self._share(seg, None)
                if not cancelled and failure is None:
                    try:
                        value, used = shm.decode(data, seg, placed, pool.release)
                        values.append(value)
                    except Exception as exc:  # noqa: BLE001 - this batch's error, not the stream's
                        position, index = job.items[k]
                        failure = Failure(position, index, _undecodable(exc, index, f"process worker {w.pid}"))
            if seg is not None and not used:
                pool.give_back(seg)
        if failure is None and msg.failure is not None and not cancelled:
            info = msg.failure
            where = f"process worker {w.pid}"
            failure = Failure(info.position, info.batch, rebuild_exception(info, where))
        if w.state is W.State.RETIRING and not w.jobs:
            self._stop(w)
        self.report(job, values, failure, msg.elapsed_s)
        self._dispatch()

    def _on_stream_closed(self, w: W.Worker) -> None:
        """Its socket ended or broke: the worker is exiting (or must): its exit reports."""
        if w.state is not W.State.STOPPING:
            w.exit.kill()

    def _on_exit(self, w: W.Worker) -> None:
        ended, code = w.exit.poll()
        if not ended or w.state is W.State.DEAD:
            return
        expected = w.state is W.State.STOPPING
        was_ready = w.state is not W.State.BOOTING
        if not w.end.closed:
            w.end.drain()  # results it sent before dying are still in the socket: take them
        w.state = W.State.DEAD
        w.unwatch()
        self._workers.remove(w)
        for seg in self.pool.segments.values():
            seg.known.discard(w.slot)  # the slot will be another process's
        index = -1
        control = self.control
        if control is not None and control.slots is not None and w.slot < _CONTROL_SLOTS:
            index = int(control.slots[w.slot])
            control.slots[w.slot] = -1
        blamed = False
        running = True  # the worker runs its jobs in order: only the oldest can hold the crash
        while w.jobs:
            job, segs = self._jobs.pop(w.jobs.popleft())
            oldest, running = running, False
            self._busy -= 1  # reported below, or submitted again (which counts it anew)
            for seg in segs:
                if seg is not None:
                    self.pool.give_back(seg)
            if job.owner.cancelled:
                self._busy += 1
                self.report(job, [], None, 0.0)
                continue
            # (matched in the oldest job only: a later job, of the next epoch say, may hold the
            # same batch index without ever having started it)
            crashed = (next((k for k, (_, i) in enumerate(job.items) if i == index), None)
                       if index >= 0 and oldest else None)
            if crashed is None and was_ready and not job.retried:
                # It never started this job (queued behind, or the worker died between
                # batches): nothing of it is lost, another worker runs it.
                job.retried = True
                self.submit(job)
                continue
            if crashed:
                # The batches before it in the same job were fine: run them again elsewhere,
                # so the consumer gets every batch up to the crash.
                self.submit(Job(job.owner, job.epoch, job.seed, job.items[:crashed]))
                job.items = job.items[crashed:]
            position, batch = job.items[0]
            self._busy += 1
            failure = None
            if not blamed:  # one error per death; the rest of the epoch ends with it anyway
                blamed = True
                failure = Failure(position, batch, self._death_error(w, code, batch, was_ready))
            self.report(job, [], failure, 0.0)
        w.end.close()
        w.exit.close()
        w.close_stack_file()
        if not expected and not self._closed and was_ready:
            try:
                self._fill_pool()  # the pool is whole again for the next batch
            except Exception:  # noqa: BLE001, S110 - e.g. the interpreter is exiting; the next epoch retries
                pass
        # A worker that died loading the dataset would die again at once: the next epoch retries.
        self._dispatch()

    def _death_error(self, w: W.Worker, code: int | None, batch: int, was_ready: bool) -> BaseException:
        if self._fatal is not None:
            return self._fatal
        timed = w.timed_out
        if timed is not None and timed.index == batch and self.timeout_s is not None:
            return batch_timeout(batch, f"process worker {w.pid}", self.timeout_s, timed.stack)
        if was_ready:
            return WorkerError(f"worker process {w.pid} died ({describe_exit(code)}) while producing batch {batch}",
                               index=batch, pid=w.pid, exitcode=code)
        text = (f"worker process {w.pid} died ({describe_exit(code)}) while loading the dataset, before it "
                f"could produce batch {batch}")
        if code is not None and code > 0:
            text += (f". With start_method={self.start_method!r} a worker imports your main module again if "
                     "the dataset's class is defined there: keep the script's entry point under "
                     "`if __name__ == '__main__':`, and check the worker's output above for its traceback")
        return WorkerError(text, index=batch, pid=w.pid, exitcode=code)

    # -- timeout ----------------------------------------------------------------------------------
    def _check_timeouts(self) -> bool:
        """On the loop: give up on workers whose batch is past the timeout. True while work runs."""
        control = self.control
        if self._closed or control is None or control.slots is None or control.started is None:
            return False
        assert self.timeout_s is not None
        limit_ns, now_ns = int(self.timeout_s * 1e9), monotonic_ns()
        for w in list(self._workers):
            if w.state is W.State.TIMED_OUT or w.state not in W.LIVE or not w.jobs or w.slot >= _CONTROL_SLOTS:
                continue
            index = int(control.slots[w.slot])  # the index first: see shm.ControlBlock
            started = int(control.started[w.slot])
            if index >= 0 and now_ns - started > limit_ns:
                self._time_out(w, index, started)
        return self._busy > 0

    def _time_out(self, w: W.Worker, index: int, started_ns: int) -> None:
        """Ask `w` for its stack, start its replacement, and kill it once the stack is in."""
        w.timed_out = W.TimedOut(index, (monotonic_ns() - started_ns) / 1e9, w.state)
        w.state = W.State.TIMED_OUT
        self._fill_pool()  # its replacement boots while we wait for the stack
        try:
            if w.stack_fd < 0 or w.pid is None:
                raise ProcessLookupError
            os.kill(w.pid, signal.SIGUSR1)
        except ProcessLookupError:
            w.exit.kill()
            return
        loop = self.loop
        assert loop is not None
        loop.call_later(_STACK_STEP_S, self._read_stack, loop, w, started_ns, monotonic() + _STACK_WAIT_S, -1)

    def _read_stack(self, loop: asyncio.AbstractEventLoop, w: W.Worker, started_ns: int, deadline: float, last_size: int) -> None:
        timed, control = w.timed_out, self.control
        if timed is None or w.state is not W.State.TIMED_OUT or w.stack_fd < 0 or loop is not self.loop:
            return  # (moved to another loop meanwhile: `bind` killed it)
        size = os.fstat(w.stack_fd).st_size
        done = (size > 0 and size == last_size) or monotonic() >= deadline
        if not done:
            loop.call_later(_STACK_STEP_S, self._read_stack, loop, w, started_ns, deadline, size)
            return
        if (control is not None and control.slots is not None and control.started is not None
                and (int(control.slots[w.slot]), int(control.started[w.slot])) != (timed.index, started_ns)):
            # The batch ended while we waited after all: keep the worker (and its result).
            w.state, w.timed_out = timed.previous, None
            os.ftruncate(w.stack_fd, 0)
            if w.state is W.State.RETIRING and not w.jobs:
                self._stop(w)
            self._dispatch()
            return
        # (NULs: a file truncated after an earlier dump is written on at the old offset)
        text = os.pread(w.stack_fd, size, 0).decode("utf-8", "replace").replace("\x00", "") if size else ""
        timed.stack = _python_stack(text) if text else (
            f"(worker process {w.pid} wrote no stack within {_STACK_WAIT_S:g} s of SIGUSR1)")
        w.exit.kill()  # its exit reports the batch (see _on_exit / _death_error)

    # -- warm start (opt-in) ------------------------------------------------------------------------
    def _warm_serves(self) -> bool:
        """No worker is ready yet: this process makes the next batch, in order, meanwhile."""
        if any(w.state is W.State.READY for w in self._workers):
            return False
        warm = self._warm
        if not warm.busy:
            job = self._pending.popleft()
            if job.owner.cancelled:
                self.report(job, [], None, 0.0)
                return self._warm_serves() if self._pending else True
            warm.run(job)
        return True

    def _warm_done(self, report: tuple) -> None:
        job, values, failure, elapsed = report
        warm = self._warm
        if warm is not None:
            warm.busy = False
        if values is None:  # its copy of the dataset did not load: leave it to the workers
            self._end_warm_start()
            self._pending.appendleft(job)
        else:
            if any(w.state is W.State.READY for w in self._workers):
                self._end_warm_start()
            if values and not self.pool.size_hint:
                self.pool.observe(shm.shared_bytes(values[0]))  # workers' first segments fit
            self.report(job, values, failure, elapsed)
        self._dispatch()

    def _end_warm_start(self, timeout_s: float = 0.0) -> None:
        warm, self._warm = self._warm, None
        if warm is not None:
            warm.close(timeout_s=timeout_s)

    # -- shutdown ------------------------------------------------------------------------------
    def close(self) -> None:
        """Any thread: end every worker (at once, even inside `__getitem__`) and free memory."""
        if self._closed:
            return
        self._closed = True
        self._end_warm_start(timeout_s=1.0)
        workers, self._workers = self._workers, []
        W.end_all(workers)
        self.pool.close()
        self.sync.close()
        if self.control is not None:
            self.control.close()
            self.control = None

    def __repr__(self) -> str:
        return f"ProcessExecutor(workers={self.workers}, start_method={self.start_method!r})"


_FRAME = re.compile(r'\s*File "(.*)", line (\d+) in (.*)')


def _python_stack(dump: str) -> str:
    """`faulthandler`'s dump (per thread, most recent call first, no source) as traceback
    text: most recent call last, with source lines; the thread that runs `__getitem__`
    (the worker's main thread) last."""
    blocks: list[tuple[str, list[str]]] = []
    for line in dump.splitlines():
        m = _FRAME.match(line)
        if m is None:
            if line.strip():
                head = line.strip().replace("most recent call first", "most recent call last")
                blocks.append((head, []))
            continue
        if not blocks:
            blocks.append(("Stack (most recent call last):", []))
        path, lineno, name = m.group(1), int(m.group(2)), m.group(3)
        source = linecache.getline(path, lineno).strip()
        frame = f'  File "{path}", line {lineno}, in {name}\n' + (f"    {source}\n" if source else "")
        blocks[-1][1].insert(0, frame)
    blocks.sort(key=lambda b: any("in _serve\n" in f for f in b[1]))
    return "\n".join(head + "\n" + "".join(frames) for head, frames in blocks)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _undecodable(exc: BaseException, index: int, where: str) -> BaseException:
    error = RuntimeError(f"batch {index} was made in {where}, but this process cannot unpickle it: "
                         f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    add_note(error, f"prefetch: the value __getitem__({index}) returned does not survive pickling; "
                    "return plain data (arrays, numbers, strings, dicts/lists/tuples of them)")
    return error
