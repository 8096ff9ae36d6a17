"""The main function of a process worker: unpickle the dataset once, then run jobs until told
to stop (or until the parent is gone).

Kept free of the rest of the engine so the forkserver can preload it cheaply.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import socket
import threading
import time
import traceback
from time import perf_counter
from typing import Any

import numpy as np

from .. import batchmem
from ..randomness import enter_batch, exit_batch, seed_worker_globals
from . import arena
from .shm import ControlBlock, encode, recv_fds

# message kinds (small ints: they cross the pipe with every job)
RUN, FDS, CTRL, FORGET, SYNC, REPLACE, STOP = range(7)
DONE, READY, FATAL = range(3)


def describe_failure(position: int, index: int, exc: BaseException) -> tuple:
    """An exception as data the main process can rebuild with its own type."""
    tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = pickle.dumps(exc, protocol=5)
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt: find out here
    except Exception:  # noqa: BLE001
        blob = None
    cls = type(exc)
    return (position, index, blob, cls.__module__, cls.__qualname__, str(exc), tb_text)


def _watch_parent(parent: int) -> None:
    # A worker busy in a long __getitem__ would not notice its parent's death until the
    # next message; this makes an orphan exit within half a second instead.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def main(conn: Any, slot: int, payload: bytes) -> None:
    """Worker process entry point (run by multiprocessing)."""
    # Ctrl-C reaches the whole process group; the parent decides what happens, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    sock = socket.socket(fileno=os.dup(conn.fileno()))  # for the fds riding along messages
    send = conn.send_bytes
    try:
        dataset = pickle.loads(payload)
    except BaseException as exc:  # noqa: BLE001 - reported, then this worker ends
        send(pickle.dumps((FATAL, describe_failure(-1, -1, exc)), protocol=5))
        return
    del payload
    arena.enable()
    send(pickle.dumps((READY, os.getpid()), protocol=5))

    segments: dict[int, tuple[mmap.mmap, np.ndarray]] = {}
    # Segments the main process forgot while arrays the dataset kept still live in them:
    # unmapped once those arrays are gone.
    kept_alive: list[tuple[mmap.mmap, np.ndarray]] = []
    ctrl = None
    seeded_epoch = None
    recv = conn.recv_bytes
    loads, dumps = pickle.loads, pickle.dumps
    while True:
        try:
            msg = loads(recv())
        except (EOFError, OSError):
            return  # the parent is gone
        kind = msg[0]
        if kind == RUN:
            _, job_id, epoch, seed, items, segs = msg
            if epoch != seeded_epoch:
                seed_worker_globals(seed, epoch, slot)
                seeded_epoch = epoch
            results = []
            failure = None
            used: list[tuple[int, np.ndarray]] = []
            t0 = perf_counter()
            for (position, index), seg_id in zip(items, segs):
                if ctrl is not None:
                    ctrl.slots[slot] = index
                token = enter_batch(seed, epoch, index)
                segment = segments[seg_id][1] if seg_id is not None else None
                # numpy itself allocates the batch's large arrays in the segment when it can;
                # prefetch.empty's own arena is the fallback without the compiled allocator.
                placement = arena.Placement(segment)
                if placement.active:
                    used.append((seg_id, segment))
                elif arena.available and segment is not None:
                    segment = None  # arrays still live in it (cannot happen): leave it alone
                token_mem = batchmem.enter(None if placement.active else segment)
                try:
                    value = dataset[index]
                    if placement.active:
                        in_use, _, wanted = placement.finish()
                    else:
                        in_use, wanted = batchmem.usage()
                    results.append(encode(value, segment, in_use, wanted))
                except BaseException as exc:  # noqa: BLE001 - delivered to the consumer
                    failure = describe_failure(position, index, exc)
                    break
                finally:
                    placement.finish()
                    batchmem.leave(token_mem)
                    exit_batch(token)
                    value = None
            # A segment still holding an array the dataset kept must not be reused for a later
            # batch: the main process retires it once the consumer is done with it.
            kept = [seg_id for seg_id, segment in used if arena.live(segment)]
            elapsed = perf_counter() - t0
            if ctrl is not None:
                ctrl.slots[slot] = -1
            send(dumps((DONE, job_id, results, failure, elapsed, kept), protocol=5))
            del results
        elif kind == FDS:
            specs = msg[1]
            fds = recv_fds(sock, len(specs))
            for (seg_id, size), fd in zip(specs, fds):
                # Fault the pages in now, in one go (much cheaper than one fault per page the
                # first time a batch is written here).
                mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
                view = np.frombuffer(mm, dtype=np.uint8)
                segments[seg_id] = (mm, view)
                arena.register(view)
                os.close(fd)  # the mapping keeps the memory
        elif kind == CTRL:
            (fd,) = recv_fds(sock, 1)
            ctrl = ControlBlock(msg[1], fd=fd)
        elif kind == FORGET:
            for seg_id in msg[1]:
                entry = segments.pop(seg_id, None)
                if entry is not None:
                    kept_alive.append(entry)
                    del entry
            pending, kept_alive = kept_alive, []
            while pending:
                mm, view = pending.pop()
                if arena.unregister(view):  # arrays still live in it: not yet
                    kept_alive.append((mm, view))
                    continue
                del view
                try:
                    mm.close()
                except BufferError:  # a prefetch.empty array the dataset kept: its to keep
                    pass
            del pending
        elif kind == SYNC:
            changed, removed = msg[1], msg[2]
            state = vars(dataset)  # the instance dict itself, as the main process diffed it
            for name, blob in changed.items():
                state[name] = loads(blob)
            for name in removed:
                state.pop(name, None)
        elif kind == REPLACE:
            dataset = loads(msg[1])
        elif kind == STOP:
            return
