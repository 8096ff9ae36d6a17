"""A process worker's main function: load the dataset once, then run jobs until told to stop
or until the main process is gone.

Kept light (numpy, pickle and prefetch's small modules) so the fork server imports it once
for every worker it makes.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

import numpy as np

from ... import batchmem
from ...randomness import WorkerSeeds
from .. import arena, shm
from ..jobs import run_items
from . import protocol as P
from .wire import BlockingEnd


def describe_failure(position: int, index: int, exc: BaseException) -> P.FailureInfo:
    """An exception as data the main process can rebuild with its own type."""
    tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        dumped = pickle.dumps(exc, protocol=5)
        pickle.loads(dumped)  # some exceptions pickle but cannot be rebuilt: find out here
        blob: bytes | None = dumped
    except Exception:  # noqa: BLE001
        blob = None
    cls = type(exc)
    return P.FailureInfo(position, index, blob, cls.__module__, cls.__qualname__, str(exc), tb_text)


# -- loading what the main process sent ------------------------------------------------------------
class _Unpickler(pickle.Unpickler):
    """Imports the main script only when the pickle names something defined in it."""

    main_ref: str | None = None

    def find_class(self, module: str, name: str) -> Any:
        if module == "__main__" and self.main_ref:
            _import_main(self.main_ref)
        return super().find_class(module, name)


class _Dataset:
    """Loads what the main process sends of the dataset: pickles whose large buffers lie in
    shared segments (see `..process.share`), mapped here read-only or copy-on-write."""

    def __init__(self, main_ref: str | None, share: str):
        self.main_ref = main_ref
        self.share = share

    def _unpickler(self, file: Any, buffers: Any) -> _Unpickler:
        u = _Unpickler(file, buffers=buffers)
        u.main_ref = self.main_ref
        return u

    def _map(self, specs: list[tuple[int, int]], fds: list[int]) -> dict[int, np.ndarray]:
        views = {}
        for (seg_id, size), fd in zip(specs, fds):
            try:
                # No MAP_POPULATE: pages are mapped as the dataset reads them.
                views[seg_id] = shm.map_fd(fd, size, writable=self.share == "copy-on-write",
                                           private=self.share == "copy-on-write")
            finally:
                os.close(fd)  # the mapping needs no descriptor
        return views  # unmapped when the last array over a segment is gone

    def image(self, image: P.Image, specs: list[tuple[int, int]], fds: list[int]) -> Any:
        return P.load_image(image, self._map(specs, fds), self._unpickler)

    def pieces(self, pieces: dict[str, P.Piece], specs: list[tuple[int, int]], fds: list[int]) -> dict[str, Any]:
        views = self._map(specs, fds)
        return {name: P.load_piece(piece, views, self._unpickler) for name, piece in pieces.items()}


def _import_main(ref: str) -> None:
    """Import the main process's `__main__` as `__mp_main__` (as multiprocessing's spawn does):
    its top level runs, what sits under `if __name__ == "__main__":` does not."""
    current = sys.modules.get("__main__")
    if getattr(current, "__file__", None) == ref or getattr(current, "_prefetch_main", None) == ref:
        return
    import runpy
    import types

    module = types.ModuleType("__mp_main__")
    if ref.startswith("module:"):
        content = runpy.run_module(ref[len("module:"):], run_name="__mp_main__", alter_sys=True)
    else:
        content = runpy.run_path(ref, run_name="__mp_main__")
    module.__dict__.update(content)
    module._prefetch_main = ref  # type: ignore[attr-defined]
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


def main_ref() -> str | None:
    """How a worker finds the main process's `__main__` (see `_import_main`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in ("__main__", "__mp_main__"):
        return "module:" + spec.name
    path = getattr(main, "__file__", None)
    return os.path.abspath(path) if isinstance(path, str) and path.endswith(".py") else None


# -- staying alive only as long as the main process ------------------------------------------------
def _watch_main(fd: int) -> None:
    """Exit as soon as the main process's end of our socket closes (it died), even while the
    main thread is deep inside a `__getitem__` that would never return."""
    poller = select.poll()
    poller.register(fd, getattr(select, "POLLRDHUP", 0))  # POLLHUP is always reported
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        for _, mask in events:
            if mask & (select.POLLHUP | getattr(select, "POLLRDHUP", 0) | select.POLLERR):
                os._exit(0)
            if mask & select.POLLNVAL:
                return  # our own socket was closed: we are exiting anyway


# -- the worker ------------------------------------------------------------------------------------
class _Segments:
    """Shared-memory segments this worker mapped, by id."""

    def __init__(self) -> None:
        self.views: dict[int, np.ndarray] = {}
        # Forgotten by the main process while arrays the dataset kept still live in them:
        # dropped once those arrays are gone.
        self.lingering: list[np.ndarray] = []

    def map(self, specs: list[tuple[int, int]], fds: list[int], populate: bool) -> None:
        for (seg_id, size), fd in zip(specs, fds):
            try:
                view = shm.map_fd(fd, size, populate=populate)
            finally:
                os.close(fd)  # the mapping needs no descriptor
            self.views[seg_id] = view
            arena.register(view)

    def forget(self, ids: list[int]) -> None:
        for seg_id in ids:
            view = self.views.pop(seg_id, None)
            if view is not None:
                self.lingering.append(view)
        self.lingering = [v for v in self.lingering if arena.unregister(v)]


class _Producer:
    """Makes one batch into its segment: numpy allocates large arrays there (or
    `prefetch.empty` does, without the compiled allocator), then the batch is encoded, and
    any array the dataset kept in the segment is copied out of what the consumer gets."""

    def __init__(self, dataset: Any, slot: int, segments: _Segments, ctrl: shm.ControlBlock | None):
        self.dataset = dataset
        self.slot = slot
        self.segments = segments
        self.ctrl = ctrl
        self.seg_ids: list[int | None] = []
        self.kept: list[int] = []
        self.made: list[tuple[int, int]] = []  # (position in the job, fd) of segments made here

    def __call__(self, k: int, index: int) -> P.Result:
        ctrl = self.ctrl
        if ctrl is not None and ctrl.slots is not None and ctrl.started is not None:
            ctrl.started[self.slot] = time.monotonic_ns()  # before the index: see shm.ControlBlock
            ctrl.slots[self.slot] = index
        seg_id = self.seg_ids[k]
        segment = self.segments.views.get(seg_id) if seg_id is not None else None
        if segment is None:  # no batch came back yet, or none had large arrays
            return self._unplaced(k, self.dataset[index])
        placement = arena.Placement(segment)
        if not placement.active and arena.available:
            segment = None  # arrays the dataset kept still live in it: leave it alone
        made: list = []
        token = batchmem.enter(None if placement.active else segment, made)
        try:
            value = self.dataset[index]
            if placement.active:
                in_use, _, wanted = placement.finish()
            else:
                in_use, wanted = batchmem.usage()
            data, placed, needed = shm.encode(value, segment, in_use, wanted)
            del value  # before looking for arrays the dataset kept
        finally:
            placement.finish()
            batchmem.leave(token)
        if segment is not None and placed:
            kept = arena.live_ranges(segment) if arena.available else _alive_ranges(made, segment)
            if kept:
                assert seg_id is not None
                self.kept.append(seg_id)
                placed = [_private_copy(segment, p, kept) for p in placed]
        return P.Result(data, placed, needed)

    def _unplaced(self, k: int, value: Any) -> P.Result:
        """A batch made with no segment given: its large arrays go into a segment made here
        for it (the main process takes it over), not through the socket."""
        need = shm.shared_bytes(value)
        if not need:
            return P.Result(*shm.encode(value, None))
        size = shm.segment_size(need)
        fd = shm.anonymous_fd("prefetch-made", size)
        try:
            data, placed, needed = shm.encode(value, shm.map_fd(fd, size, populate=True))
        except BaseException:
            os.close(fd)
            raise
        # Our mapping goes with the view: the consumer's copy is the main process's mapping.
        self.made.append((k, fd))
        return P.Result(data, placed, needed)

    def take_made(self, results: int) -> tuple[list[int], list[int]]:
        """(positions, fds) of the segments made for the first `results` batches of the job
        just run; fds of batches not reported are closed."""
        made, self.made = self.made, []
        for k, fd in made:
            if k >= results:
                os.close(fd)
        made = [(k, fd) for k, fd in made if k < results]
        return [k for k, _ in made], [fd for _, fd in made]


def _explain_read_only(exc: BaseException) -> None:
    """numpy says "assignment destination is read-only"; say why the array is read-only."""
    if isinstance(exc, ValueError) and "read-only" in str(exc):
        from ...errors import add_note

        add_note(exc, "prefetch: the dataset's large arrays are shared read-only by all process workers "
                      "(Loader(share_dataset='read-only'), the default): copy an array before changing it, "
                      "or pass share_dataset='copy-on-write' to let each worker write to its own copy")


def _alive_ranges(made: list, segment: np.ndarray) -> list[tuple[int, int]]:
    base = segment.ctypes.data
    out = []
    for ref in made:
        arr = ref()
        if arr is not None:
            out.append((arr.ctypes.data - base, arr.nbytes))
    return out


def _private_copy(segment: np.ndarray, span: tuple[int, int], kept: list[tuple[int, int]]) -> Any:
    """`span` as the consumer may have it: in place, unless it overlaps memory the dataset
    kept — then a copy made now, before the dataset can change that memory again."""
    o, n = span
    if any(o < ko + kn and ko < o + n for ko, kn in kept):
        return bytearray(segment[o:o + n])
    return span


def main(sock: socket.socket, *, forked_from_server: bool = False, close_fds: tuple = ()) -> int:
    """Worker entry point: `sock` is this worker's end of its socket to the main process."""
    from . import zygote

    zygote.mark_helper()
    # Ctrl-C reaches the whole process group; the parent decides what happens, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in close_fds:  # fork: the main process's ends of sockets, so their peers see it die
        try:
            os.close(fd)
        except OSError:
            pass
    threading.Thread(target=_watch_main, args=(sock.fileno(),), name="prefetch-watch-main", daemon=True).start()
    end = BlockingEnd(sock)
    try:
        payload, fds = end.recv()
    except (EOFError, ConnectionResetError):
        return 0  # closed before we started
    boot = P.loads(payload)
    assert isinstance(boot, P.Boot)
    slot = boot.slot
    named = dict(zip(boot.fds, fds))
    segment_fds = fds[len(boot.fds):]
    ctrl = shm.ControlBlock(boot.control_slots, fd=named["control"]) if "control" in named else None
    if "stack" in named:
        # With a batch timeout: SIGUSR1 writes every thread's Python stack there, in the
        # signal handler (so even a worker stuck in native code or holding the GIL answers
        # as long as it runs at all); the main process reads it, then kills this worker.
        # The file stays open for the worker's life.
        faulthandler.register(signal.SIGUSR1, file=named["stack"], all_threads=True, chain=False)
    if forked_from_server:
        sys.path[:] = boot.sys_path
    loader = _Dataset(boot.main_ref, boot.share)
    try:
        try:
            dataset = loader.image(boot.dataset, boot.segments, segment_fds)
        except BaseException as exc:  # noqa: BLE001 - reported, then this worker ends
            end.send(P.dumps(P.LoadFailed(describe_failure(-1, -1, exc))))
            return 0
        del boot, payload
        arena.enable()
        end.send(P.dumps(P.Ready(os.getpid())))
        return _serve(end, dataset, loader, slot, ctrl)
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the main process closed our socket (it is closing or gone): nothing to say


def _serve(end: BlockingEnd, dataset: Any, loader: _Dataset, slot: int, ctrl: shm.ControlBlock | None) -> int:
    segments = _Segments()
    produce = _Producer(dataset, slot, segments, ctrl)
    where = f"process worker {os.getpid()}"
    seeds = WorkerSeeds(slot)
    seeded_epoch = None
    while True:
        try:
            payload, fds = end.recv()
        except EOFError:
            return 0  # the main process is gone
        msg = P.loads(payload)
        kind = type(msg)
        if kind is P.Run:
            if msg.epoch != seeded_epoch:
                seeds.epoch(msg.seed, msg.epoch)
                seeded_epoch = msg.epoch
            else:
                seeds.catch_up()
            produce.seg_ids = msg.segments
            produce.kept = []
            results, failure, elapsed = run_items(produce, msg.items, msg.seed, msg.epoch, where)
            if ctrl is not None and ctrl.slots is not None:
                ctrl.slots[slot] = -1
            info = None
            if failure is not None:
                if loader.share == "read-only":
                    _explain_read_only(failure.error)
                info = describe_failure(failure.position, failure.index, failure.error)
            # Segments where the dataset kept arrays (even in a failed batch): never reused.
            kept = sorted({*produce.kept, *(i for i in msg.segments
                                            if i is not None and i in segments.views
                                            and arena.live(segments.views[i]))})
            positions, made_fds = produce.take_made(len(results))
            try:
                end.send(P.dumps(P.Done(msg.job_id, results, info, elapsed, kept, positions)), made_fds)
            finally:
                for fd in made_fds:
                    os.close(fd)
            del results, failure, info
        elif kind is P.MapSegments:
            segments.map(msg.specs, fds, msg.populate)
        elif kind is P.Forget:
            segments.forget(msg.ids)
        elif kind is P.SyncState:
            state = vars(produce.dataset)  # the instance dict itself, as the main process diffed it
            state.update(loader.pieces(msg.changed, msg.segments, fds))
            for name in msg.removed:
                state.pop(name, None)
        elif kind is P.ReplaceDataset:
            produce.dataset = loader.image(msg.dataset, msg.segments, fds)
        elif kind is P.Stop:
            return 0
