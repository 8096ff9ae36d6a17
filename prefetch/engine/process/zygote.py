"""prefetch's fork server: a small process that imported numpy and the worker code once, and
forks a worker whenever the main process asks. It is what `start_method="forkserver"` uses.

Why not `multiprocessing`'s forkserver: every worker it makes imports the main script again
(`if __name__ == "__main__":` territory: a training script importing torch pays for that
once per worker), its workers outlive a SIGKILLed parent for as long as they are busy, and
a worker's death can only be learnt through it. Here:

- a worker imports the main script only if the dataset's pickle refers to `__main__`;
- the server dies with the main process (its control socket ends), and each worker with the
  server (`PR_SET_PDEATHSIG` on Linux) and with the main process (it watches its socket);
- for each worker the server hands back a status socket: it carries the pid at once and the
  exit status when the worker ends, so the main process's event loop learns of a death by
  a readable socket, like any other I/O.

One server per interpreter, started on first use and ended at exit, like multiprocessing's.
It holds no dataset and no worker state: it only forks.
"""

from __future__ import annotations

import atexit
import gc
import os
import selectors
import signal
import socket
import struct
import sys
import threading
from collections.abc import Sequence
from typing import Any

# The main process starts the server as soon as a Loader is made, before anything else, so
# this module imports nothing of prefetch at its top: the wire and the messages load once
# the server is on its way (the server itself loads them while its workers need them anyway).

_STATUS = struct.Struct("<q")
_BLAS_SPIN_LOG2_CYCLES = 4  # OpenBLAS's smallest idle spin (2**4 cycles): see serve()
_IDLE_IMPORT_DELAY_S = 0.25  # idle time after a fork before the server imports more: see serve()


def default_start_method() -> str:
    """prefetch's fork server where fork exists (safe after JAX/torch started threads: the
    server forks from a clean, single-threaded interpreter); spawn elsewhere."""
    return "forkserver" if hasattr(os, "fork") else "spawn"


class Zygote:
    """The main process's handle on the server."""

    def __init__(self) -> None:
        import subprocess  # here, not at the top: the server itself never needs it

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Only where prefetch itself lives: each worker gets the full sys.path with its Boot.
        home = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["prefetch"].__file__ or "")))
        code = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); import sys; "
                "sys.path.insert(0, sys.argv[2]); "
                "from prefetch.engine.process.zygote import serve; serve(int(sys.argv[1]))")
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno()), home],
                                         pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                         start_new_session=False)
        finally:
            theirs.close()
        self.pid = os.getpid()  # the process that owns this server (not a fork of it)
        from .wire import BlockingEnd

        self._end = BlockingEnd(ours)
        self._lock = threading.Lock()

    def fork(self, worker_sock: socket.socket, preload: Sequence[str] = ()) -> socket.socket:
        """Ask for a worker on `worker_sock` (the worker's end); returns the status socket.
        `preload`: modules the server imports before forking (the dataset's), so that this
        and every later worker starts with them.

        Never waits for the server: the request sits in its socket until the server is up.
        """
        from .protocol import Fork, dumps

        status_ours, status_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                request = Fork([p for p in sys.path if p], list(preload))
                self._end.send(dumps(request), [status_theirs.fileno(), worker_sock.fileno()])
        finally:
            status_theirs.close()
        return status_ours

    def preload(self, modules: Sequence[str]) -> None:
        """Have the server import `modules` now (workers forked later inherit them)."""
        from .protocol import Preload, dumps

        with self._lock:
            self._end.send(dumps(Preload([p for p in sys.path if p], list(modules))))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        import subprocess

        try:
            self._end.sock.close()  # the server exits when its control socket ends
        except OSError:
            pass
        try:
            self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_server: Zygote | None = None
_server_lock = threading.Lock()
_exiting = False
# This process is one of prefetch's own (the fork server, or a worker): a dataset built here
# never starts a server early. (A dataset module that builds one when imported, preloaded by
# the server, would otherwise start a server from the server, which would do the same...)
_helper = False


def mark_helper() -> None:
    """Called first thing in the fork server and in every worker."""
    global _helper
    _helper = True


def server() -> Zygote:
    """This interpreter's fork server, started on first use."""
    global _server
    with _server_lock:
        if _exiting:
            raise RuntimeError("prefetch: no new worker process while the interpreter exits")
        z = _server
        if z is None or z.pid != os.getpid() or not z.alive():
            if z is not None and z.pid == os.getpid():
                z.close()
            z = _server = Zygote()
        return z


def defining_modules(dataset: Any) -> list[str]:
    """The modules that define the dataset's class and its bases (not `__main__`: a worker
    imports the main script itself, only if it must)."""
    out = []
    for cls in type(dataset).__mro__:
        module = getattr(cls, "__module__", None)
        if module and module not in ("builtins", "__main__", "__mp_main__") and module not in out:
            out.append(module)
    return out


def start_early(dataset: Any) -> None:
    """Start this interpreter's fork server now, if it is the default start method, and have
    it import the modules that define `dataset`'s class. A dataset that asks for processes is
    usually built well before its first Loader (the model is built and compiled in between):
    the server's interpreter start and imports then overlap that instead of delaying the
    first batch. Best effort: never raises (the Loader starts the server itself, and says
    why it cannot)."""
    if _helper or default_start_method() != "forkserver":
        return
    try:
        server().preload(defining_modules(dataset))
    except Exception:  # noqa: BLE001, S110 - see the docstring
        pass


@atexit.register
def _shutdown() -> None:
    global _exiting
    with _server_lock:
        _exiting = True
    z = _server
    if z is not None and z.pid == os.getpid():
        z.close()


def parse_status(data: bytes) -> tuple[int | None, int | None]:
    """(pid, exit code) from what a status socket carried so far (None: not yet)."""
    pid = _STATUS.unpack_from(data)[0] if len(data) >= _STATUS.size else None
    code = _STATUS.unpack_from(data, _STATUS.size)[0] if len(data) >= 2 * _STATUS.size else None
    return pid, code


# -- the server process ------------------------------------------------------------------------------
def serve(control_fd: int) -> None:
    """The server's main loop (run in a fresh interpreter by `Zygote`)."""
    mark_helper()
    # Imports make ~100,000 objects that live as long as the process: cycle collections
    # during them only cost time (~5 ms of a cold first batch). After them, everything is
    # frozen out of the collector's sight, so no worker's collection ever walks (and so
    # copies, page by page) the memory it inherited.
    gc.disable()
    # What every worker needs, imported once here and inherited by each fork.
    import random  # noqa: F401

    # OpenBLAS starts its thread pool when numpy loads, and idle pool threads spin for about
    # 0.1 s before they sleep: on the cores the server's own imports and the main process
    # need right then (a cold first batch took 20-30% longer on 2 cores). Threads that sleep
    # at once cost nothing here; workers keep the same number of BLAS threads (the server's
    # die at its first fork and each worker starts its own when a BLAS call needs them),
    # which sleep when idle instead of taking CPU from the other workers. The user's own
    # setting wins, and the environment workers see is the user's.
    ours = "OPENBLAS_THREAD_TIMEOUT" not in os.environ and "GOTO_THREAD_TIMEOUT" not in os.environ
    if ours:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(_BLAS_SPIN_LOG2_CYCLES)
    try:
        import numpy  # noqa: F401
    finally:
        if ours:
            del os.environ["OPENBLAS_THREAD_TIMEOUT"]

    from . import child
    from .protocol import Preload, loads
    from .wire import FrameReader

    gc.freeze()
    gc.enable()
    control = socket.socket(fileno=control_fd)
    control.setblocking(False)
    reader = FrameReader()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    status_of: dict[int, socket.socket] = {}
    sel = selectors.DefaultSelector()
    sel.register(control, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    # What datasets often use but a cold first batch need not wait for: imported once the
    # server has been idle a moment after its first fork, so that later workers (a second
    # Loader, a replacement) inherit it.
    idle_imports = ["numpy.random"]
    forked = False
    while True:
        events = sel.select(_IDLE_IMPORT_DELAY_S if idle_imports and forked else None)
        if not events and idle_imports:
            _import_quietly(idle_imports)
            idle_imports = []
        for key, _ in events:
            if key.fileobj is control:
                try:
                    if not reader.receive(control):
                        return  # the main process is gone: workers follow (PR_SET_PDEATHSIG)
                except BlockingIOError:
                    continue
                while reader.frames:
                    payload, fds = reader.frames.popleft()
                    request = loads(payload)
                    if isinstance(request, Preload):  # imports ahead of any Fork: nothing to fork
                        _preload(request.sys_path, request.modules)
                        continue
                    _preload(request.sys_path, request.preload)
                    status = socket.socket(fileno=fds[0])
                    me = os.getpid()
                    pid = os.fork()
                    if pid == 0:
                        signal.set_wakeup_fd(-1)
                        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                        sel.close()
                        for s in (control, status, *status_of.values()):
                            s.close()
                        reader.close()  # any request read with this one holds another worker's sockets
                        os.close(wake_r)
                        os.close(wake_w)
                        _run_child(child, fds[1], me)
                    os.close(fds[1])
                    forked = True
                    status_of[pid] = status
                    _send_status(status, pid)
            else:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                _reap(status_of)


def _import_quietly(names: Sequence[str]) -> None:
    import importlib

    gc.disable()  # as in serve(): what modules make lives on, out of the collector's sight
    try:
        for name in names:
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001, S110 - the worker imports it itself and reports what fails
                pass
    finally:
        gc.freeze()
        gc.enable()


def _preload(sys_path: Sequence[str], modules: Sequence[str]) -> None:
    """Import the modules a dataset needs here, once: workers forked later inherit them (a
    second Loader over the same dataset starts without importing anything)."""
    missing = [m for m in modules if m not in sys.modules]
    if not missing:
        return
    for path in sys_path:
        if path not in sys.path:
            sys.path.append(path)
    _import_quietly(missing)


def _run_child(child: Any, fd: int, server_pid: int) -> None:
    code = 1
    try:
        _die_with_parent(server_pid)
        code = child.main(socket.socket(fileno=fd), forked_from_server=True) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - printed, then the worker exits
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - a closed stream: nothing left to say
                pass
        os._exit(code)


def _die_with_parent(server_pid: int) -> None:
    """Linux: the kernel kills this process when the server (its parent) ends."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != server_pid:  # the server died before the line above
        os._exit(1)


def _send_status(sock: socket.socket, value: int) -> None:
    try:
        sock.send(_STATUS.pack(value))
    except OSError:
        pass


def _reap(status_of: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock = status_of.pop(pid, None)
        if sock is not None:
            _send_status(sock, os.waitstatus_to_exitcode(status))
            sock.close()
