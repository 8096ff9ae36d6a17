"""Worker processes as the main process sees them: how one starts, its state, how its end is
noticed, and how a set of them is ended.

A worker's state (`State`) moves one way only, but for a timed-out batch that ends after all:

    BOOTING ──Ready──▶ READY ──shrink──▶ RETIRING ──jobs done──▶ STOPPING ──exit──▶ DEAD
       │                 │  ▲                │  ▲                                  ▲
       │                 ▼  │ (batch ended)  ▼  │                                  │
       │               TIMED_OUT ◀───────────┘──┘ ──────── killed ───────────────────┤
       └─────────────────┴───────────────────┴────────── exit (crash, kill) ──────┘

- BOOTING: started, loading the dataset. It may already hold jobs (they wait on its socket).
- READY: loaded the dataset; takes jobs.
- RETIRING: the pool shrank; takes no new job, is stopped once its jobs are done.
- TIMED_OUT: its batch ran past the timeout; takes no job; its stack is being read, then it
  is killed and its exit is that batch's `BatchTimeout` (`Worker.timed_out` holds the details).
  If the batch ends while the stack is read, it goes back to the state it had.
- STOPPING: told to stop (or being ended by `close`); its exit is expected, not an error.
- DEAD: exited; every job it held was reported (as done or as failed).
"""

from __future__ import annotations

import enum
import multiprocessing as mp
import os
import select
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Any

from . import zygote
from .wire import LoopEnd

_EXIT_GRACE_S = 0.5  # how long close() waits for workers to leave on their own before SIGKILL
_KILL_WAIT_S = 1.0  # and then for the killed ones to be gone

class State(enum.Enum):
    BOOTING = "booting"
    READY = "ready"
    RETIRING = "retiring"
    TIMED_OUT = "timed out"
    STOPPING = "stopping"
    DEAD = "dead"


TAKES_JOBS = (State.BOOTING, State.READY)
LIVE = (State.BOOTING, State.READY, State.RETIRING, State.TIMED_OUT)  # running: told of syncs and segments


class ExitWatch:
    """Tells when a worker process has ended, through a descriptor the loop can watch."""

    fd: int
    pid: int | None = None

    def poll(self) -> tuple[bool, int | None]:
        """(ended, exit code — negative for a signal, None when unknown)."""
        raise NotImplementedError

    def kill(self, wait_for_pid_s: float = 0.0) -> None:
        """SIGKILL the worker (`wait_for_pid_s`: how long its pid may take to be known)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ServerExit(ExitWatch):
    """A worker forked by prefetch's fork server: its status socket carries the pid, then
    the exit status (see `.zygote`)."""

    def __init__(self, status: socket.socket):
        status.setblocking(False)
        self.sock = status
        self.fd = status.fileno()
        self._data = b""
        self._code: int | None = None
        self._ended = False

    def poll(self) -> tuple[bool, int | None]:
        while not self._ended:
            try:
                chunk = self.sock.recv(16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._ended = True  # the server died: the worker died with it (code unknown)
                break
            self._data += chunk
            self.pid, code = zygote.parse_status(self._data)
            if code is not None:
                self._ended, self._code = True, code
        return self._ended, self._code

    def kill(self, wait_for_pid_s: float = 0.0) -> None:
        if self.pid is None:  # the server had not said yet: it does at once after forking
            r, _, _ = select.select([self.sock], [], [], wait_for_pid_s)
            if r:
                self.poll()
        if self.pid is not None and not self._ended:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self.sock.close()


class _MpExit(ExitWatch):
    """A worker started by multiprocessing (spawn, fork): its process sentinel."""

    def __init__(self, proc: Any):
        self.proc = proc
        self.fd = proc.sentinel
        self.pid = proc.pid

    def poll(self) -> tuple[bool, int | None]:
        self.proc.join(0)
        code = self.proc.exitcode
        return code is not None, code

    def kill(self, wait_for_pid_s: float = 0.0) -> None:
        if self.proc.exitcode is None:
            self.proc.kill()

    def close(self) -> None:
        try:
            self.proc.close()
        except ValueError:
            pass  # still running (close() killed it; the kernel reaps it with us)


def _mp_main(sock: socket.socket, close_fds: tuple) -> None:
    from . import child

    sys.exit(child.main(sock, close_fds=close_fds))


class TimedOut:
    """A worker given up on: the batch past the timeout, for how long, and its stack once read."""

    __slots__ = ("elapsed_s", "index", "previous", "stack")

    def __init__(self, index: int, elapsed_s: float, previous: State):
        self.index = index
        self.elapsed_s = elapsed_s
        self.previous = previous  # the state to go back to if the batch ends after all
        self.stack: str | None = None


class Worker:
    """One worker process: its slot, state, socket end and exit watch.

    Invariants: `jobs` (ids of jobs sent, oldest first) is empty once DEAD; a job id is in
    exactly one worker's `jobs` from the moment it is sent until it is reported.
    """

    def __init__(self, slot: int, end: LoopEnd, exit: ExitWatch):
        self.slot = slot
        self.state = State.BOOTING
        self.end = end
        self.exit = exit
        self.jobs: deque[int] = deque()
        self.loop: Any = None
        self.stack_fd = -1  # with a batch timeout: the file its faulthandler writes its stack to
        # In state TIMED_OUT (and after, until DEAD): which batch, and its stack once read.
        self.timed_out: TimedOut | None = None

    def close_stack_file(self) -> None:
        fd, self.stack_fd = self.stack_fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def pid(self) -> int | None:
        return self.exit.pid

    def watch(self, loop: Any, on_exit: Callable[[Worker], None]) -> None:
        """Follow the worker on `loop`: its messages and its end."""
        self.unwatch()
        self.loop = loop
        self.end.attach(loop)
        loop.add_reader(self.exit.fd, on_exit, self)

    def unwatch(self) -> None:
        loop, self.loop = self.loop, None
        self.end.detach()
        if loop is not None and not loop.is_closed():
            try:
                loop.remove_reader(self.exit.fd)
            except (ValueError, OSError, RuntimeError):
                pass


def start(method: str, slot: int, on_frame: Callable[[Worker, Any, list[int]], None],
          on_closed: Callable[[Worker], None], siblings: list[Worker], preload: list[str]) -> Worker:
    """Start one worker process (never waits for it) and return its record. `preload`: modules
    the fork server may import once for every worker (see `zygote`)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if method == "forkserver":
            exit: ExitWatch = _ServerExit(zygote.server().fork(theirs, preload))
        else:
            ctx: Any = mp.get_context(method)
            # fork: the child must not keep the main process's ends of any worker socket, or
            # that worker would not see the main process die.
            close_fds = tuple([ours.fileno(), *(w.end.fd for w in siblings if not w.end.closed)]
                              if method == "fork" else ())
            proc = ctx.Process(target=_mp_main, args=(theirs, close_fds), daemon=True,
                               name=f"prefetch-worker-{slot}")
            proc.start()
            exit = _MpExit(proc)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    holder: list[Worker] = []
    end = LoopEnd(ours, lambda payload, fds: on_frame(holder[0], payload, fds), lambda: on_closed(holder[0]))
    worker = Worker(slot, end, exit)
    holder.append(worker)
    return worker


def end_all(workers: list[Worker]) -> None:
    """Any thread: end these workers now and wait for them (bounded).

    Closing our end of a worker's socket makes it exit at once (it watches the socket, even
    inside `__getitem__`); what is still there after a grace period is killed.
    """
    for w in workers:
        w.state = State.STOPPING
        w.end.close()
    deadline = monotonic() + _EXIT_GRACE_S
    pending = [w for w in workers if not w.exit.poll()[0]]
    for phase in ("grace", "kill"):
        while pending and monotonic() < deadline:
            select.select([w.exit.fd for w in pending], [], [], max(0.0, deadline - monotonic()))
            pending = [w for w in pending if not w.exit.poll()[0]]
        if not pending or phase == "kill":
            break
        for w in pending:
            w.exit.kill(wait_for_pid_s=_KILL_WAIT_S)
        deadline = monotonic() + _KILL_WAIT_S
    for w in workers:
        w.state = State.DEAD
        w.exit.close()
        w.close_stack_file()
