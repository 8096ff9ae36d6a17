"""Errors raised to the consumer, and how a worker's exception is annotated on its way there."""

from __future__ import annotations

import re
import traceback


class WorkerError(RuntimeError):
    """A worker died (killed, crashed, `os._exit`) while producing a batch.

    Attributes name what was lost: `index` (the batch), `pid`, `exitcode` (negative: the signal).
    """

    def __init__(self, message: str, *, index: int | None = None, pid: int | None = None,
                 exitcode: int | None = None):
        super().__init__(message)
        self.index = index
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self):
        return (_rebuild_worker_error, (str(self), self.index, self.pid, self.exitcode))


def _rebuild_worker_error(message, index, pid, exitcode):
    return WorkerError(message, index=index, pid=pid, exitcode=exitcode)


class BatchTimeout(TimeoutError):
    """A batch ran longer than the Loader's `timeout`: its worker was replaced (a process
    killed, a thread abandoned, a coroutine cancelled) and the loader goes on.

    Attributes: `index` (the batch), `worker` (which worker ran it, in words), `stack` (the
    worker's Python stack when it was given up on, most recent call last; `None` where the
    executor cannot see it: a `concurrent.futures` pool or a dask cluster), `timeout_s`.
    """

    def __init__(self, message: str, *, index: int | None = None, worker: str | None = None,
                 stack: str | None = None, timeout_s: float | None = None):
        super().__init__(message)
        self.index = index
        self.worker = worker
        self.stack = stack
        self.timeout_s = timeout_s

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):
        return (_rebuild_batch_timeout, (str(self), self.index, self.worker, self.stack, self.timeout_s))


def _rebuild_batch_timeout(message, index, worker, stack, timeout_s):
    return BatchTimeout(message, index=index, worker=worker, stack=stack, timeout_s=timeout_s)


def batch_timeout(index: int, worker: str, timeout_s: float, stack: str | None) -> BatchTimeout:
    """The error of batch `index`, given up on after `timeout_s` in `worker` (its stack, when known)."""
    where = ""
    if stack:
        last = _innermost(stack)
        if last:
            where = f", stuck at {last}"
    error = BatchTimeout(f"batch {index} ran longer than timeout={timeout_s:g} s in {worker}{where}",
                         index=index, worker=worker, stack=stack, timeout_s=timeout_s)
    if stack:
        add_note(error, f"prefetch: __getitem__({index}) was still running in {worker} after {timeout_s:g} s; "
                        f"its stack then:\n{stack.rstrip()}")
    return error


def _innermost(stack: str) -> str:
    """'file:line in fn: source' of the innermost frame of a traceback-style stack text that
    is not in the standard library or prefetch (the innermost of all if every one is)."""
    import os
    import sysconfig

    skip = tuple({os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")}
                 | {os.path.dirname(os.path.realpath(__file__)) + os.sep})
    lines = stack.rstrip().splitlines()
    fallback = ""
    for k in range(len(lines) - 1, -1, -1):
        m = re.match(r'\s*File "(.*)", line (\d+), in (.*)', lines[k])
        if m is None:
            continue
        text = f"{m.group(1)}:{m.group(2)} in {m.group(3)}"
        source = lines[k + 1].strip() if k + 1 < len(lines) else ""
        if source and not re.match(r'(File "|Thread |Current thread |Stack )', source):
            text += f": {source}"
        if not os.path.realpath(m.group(1)).startswith(skip):
            return text
        fallback = fallback or text
    return fallback


def describe_exit(exitcode: int | None) -> str:
    """'exit code 3' / 'signal SIGKILL' for a process's exit status."""
    import signal

    if exitcode is None:
        return "an unknown exit status"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling (to leave a worker process), else a RuntimeError that
    carries its type, text and notes."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure
        stand_in = RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} "
                                "(the exception could not be pickled to leave the worker)")
        for note in getattr(exc, "__notes__", ()):
            add_note(stand_in, note)
        return stand_in


def add_note(exc: BaseException, note: str) -> None:
    """`exc.add_note` where it exists (3.11+); the same `__notes__` list before that."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - Python 3.10
        notes = getattr(exc, "__notes__", None)
        if not isinstance(notes, list):
            notes = []
            try:
                exc.__notes__ = notes  # type: ignore[attr-defined]
            except AttributeError:
                return
        notes.append(note)


def batch_failure_note(index: int, where: str, tb_text: str) -> str:
    return f"prefetch: raised by __getitem__({index}) in {where}\n--- worker traceback ---\n{tb_text.rstrip()}"


def annotate(exc: BaseException, index: int, where: str, tb_text: str | None = None) -> BaseException:
    """Name the batch index and carry the worker's traceback text on `exc`."""
    if tb_text is None:
        tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    add_note(exc, batch_failure_note(index, where, tb_text))
    return exc
