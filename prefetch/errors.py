"""Errors raised to the consumer, and how a worker's exception is annotated on its way there."""

from __future__ import annotations

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
