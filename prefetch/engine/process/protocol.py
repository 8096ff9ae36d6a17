"""The messages between the main process and a process worker: one named type per message.

Every message is a `NamedTuple` of builtin values (ints, strings, bytes, lists), pickled
with protocol 5 into one frame (see `.wire`); file descriptors ride along a frame where a
message says so. Batch values are pickled separately inside `Result.data`, so a message
itself always decodes — a batch the main process cannot unpickle fails as that batch's error
instead of breaking the stream.

Conversation: the main process sends `Boot` first (with the control block's descriptor and,
with a timeout, the stack file's),
then any of `MapSegments`, `Run`, `Forget`, `SyncState`, `ReplaceDataset`, and `Stop` last.
The worker answers `Ready` (or `LoadFailed`, then exits) once, then one `Done` per `Run`,
in the order the runs were sent. A worker that dies owes nothing: its death is the error of
the job it was running (read from the control block) and of every job queued behind it.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, NamedTuple


# -- main process -> fork server ----------------------------------------------------------------
class Fork(NamedTuple):
    """Fork one worker. Two fds ride along: the status socket's end and the worker's socket."""

    sys_path: list[str]  # where the modules below are found
    preload: list[str]  # modules the server imports first, once, so every later worker has them


class Preload(NamedTuple):
    """Import these modules now, ahead of any Fork (a dataset built long before its Loader)."""

    sys_path: list[str]
    modules: list[str]


# -- main process -> worker ----------------------------------------------------------------------
class Piece(NamedTuple):
    """An object pickled with protocol 5 whose large buffers lie in shared segments (see `.share`)."""

    data: bytes
    buffers: list[tuple[int, int, int]]  # per out-of-band buffer, in pickle order: (segment id, offset, nbytes)


class Image(NamedTuple):
    """The dataset as a worker loads it: with `cls`, an instance of that class whose instance
    dict holds `attrs` (so attributes can be replaced one by one later); without, `attrs[""]`
    is the whole dataset."""

    cls: Piece | None
    attrs: dict[str, Piece]


class Boot(NamedTuple):
    """First message: who the worker is and the dataset to load. Its fds are named in `fds`:
    "control" (the control block) and, with a batch timeout, "stack" (a file for
    `faulthandler` to write the worker's stack into on SIGUSR1, read by the main process);
    the fds of `segments` follow them."""

    slot: int  # the worker's index in the pool: its control-block entry and seed stream
    control_slots: int  # entries in the control block
    sys_path: list[str]  # the main process's import path
    main_ref: str | None  # the main script (a path, or "module:NAME"), imported only if a pickle needs `__main__`
    dataset: Image
    segments: list[tuple[int, int]]  # (segment id, size) of the shared dataset buffers
    share: str  # how the worker maps them: "read-only" or "copy-on-write"
    fds: list[str]  # what each named fd riding along is, in order: "control", "stack"


class MapSegments(NamedTuple):
    """Shared-memory segments to map; their fds ride along, in the same order."""

    specs: list[tuple[int, int]]  # (segment id, size in bytes)
    # Whether this worker's next job writes into them: then it populates the pages at once
    # (one call instead of a fault per page); the other workers map them without touching
    # any page (allocating a fresh segment's pages is the costly part, ~1 ms per MiB on
    # some VMs, and every worker doing it for every segment serialised them all).
    populate: bool


class Run(NamedTuple):
    """Produce batches `items` = [(position in the epoch, batch index)] into `segments`."""

    job_id: int
    epoch: int
    seed: int
    items: list[tuple[int, int]]
    segments: list[int | None]  # one segment id per item (None: no segment yet)


class Forget(NamedTuple):
    """Unmap these segments (once no array the dataset kept lives in them)."""

    ids: list[int]


class SyncState(NamedTuple):
    """Attributes of the dataset the main process changed between epochs; the fds of
    `segments` ride along."""

    changed: dict[str, Piece]  # name -> its new value
    removed: list[str]
    segments: list[tuple[int, int]]


class ReplaceDataset(NamedTuple):
    """The whole dataset (when attributes cannot be diffed); the fds of `segments` ride along."""

    dataset: Image
    segments: list[tuple[int, int]]


class Stop(NamedTuple):
    """Leave after the jobs already received."""


# -- worker -> main process ----------------------------------------------------------------------
class FailureInfo(NamedTuple):
    """An exception as data the main process rebuilds with its own type where it can."""

    position: int  # -1: not a batch (loading the dataset)
    batch: int  # the batch index (-1: none)
    blob: bytes | None  # the exception pickled, if it survives a round trip
    module: str
    qualname: str
    message: str
    traceback: str


class Result(NamedTuple):
    """One batch: its pickle and where its large buffers are."""

    data: bytes
    placed: list  # per out-of-band buffer: (offset, nbytes) in the segment, or a bytearray copy
    needed: int  # bytes a segment needs to hold all of this batch's large arrays


class Ready(NamedTuple):
    pid: int


class LoadFailed(NamedTuple):
    """The dataset could not be loaded in the worker; it exits after this."""

    failure: FailureInfo


class Done(NamedTuple):
    """The answer to one `Run`: results for the items before the first failure, if any."""

    job_id: int
    results: list[Result]
    failure: FailureInfo | None
    elapsed_s: float
    kept: list[int]  # segment ids in which the dataset kept arrays: never to be reused
    # Positions in `results` whose buffers lie in a segment the worker made itself (a batch
    # run before the main process knew how large batches are, so with no segment): their
    # fds ride along, in this order, and the main process takes the segments over.
    made: list[int]


# On the wire a message is (its kind's code, its fields as a plain tuple): pickling a
# NamedTuple calls back into Python (`__getnewargs__`, then the class's `__new__` on load),
# several times the cost of a plain tuple — paid for every `Run`, `Done` and `Result`, on
# the loop the whole pool waits on. Every message type has a code here.
_KINDS: tuple[type, ...] = (Fork, Preload, Boot, MapSegments, Run, Forget, SyncState, ReplaceDataset, Stop,
                            Ready, LoadFailed, Done)
_CODES = {kind: code for code, kind in enumerate(_KINDS)}
_new = tuple.__new__  # builds a NamedTuple from its fields without a Python-level call


def dumps(msg: Any) -> bytes:
    kind = type(msg)
    fields = tuple(msg)
    if kind is Done:  # its results too
        fields = (fields[0], [tuple(r) for r in fields[1]], *fields[2:])
    return pickle.dumps((_CODES[kind], fields), protocol=5)


def loads(frame: Any) -> Any:
    code, fields = pickle.loads(frame)
    kind = _KINDS[code]
    if kind is Done:
        fields = (fields[0], [_new(Result, r) for r in fields[1]], *fields[2:])
    return _new(kind, fields)


# -- reading an Image (the worker; warm start in the main process) ----------------------------------
def load_piece(piece: Piece, views: dict[int, Any], unpickler: Any = pickle.Unpickler) -> Any:
    """Unpickle `piece` with its buffers taken from `views` (segment id -> uint8 mapping)."""
    buffers = [memoryview(views[s])[o:o + n] for s, o, n in piece.buffers]
    return unpickler(io.BytesIO(piece.data), buffers=buffers).load()


def load_image(image: Image, views: dict[int, Any], unpickler: Any = pickle.Unpickler) -> Any:
    """The dataset an `Image` describes (see `protocol.Image`)."""
    if image.cls is None:
        return load_piece(image.attrs[""], views, unpickler)
    # What pickle does for an object reduced by `object.__reduce_ex__`: a bare instance, then its state.
    cls = load_piece(image.cls, views, unpickler)
    obj = cls.__new__(cls)
    state = {name: load_piece(piece, views, unpickler) for name, piece in image.attrs.items()}
    setstate = getattr(obj, "__setstate__", None)
    if setstate is not None:
        setstate(state)
    else:
        vars(obj).update(state)
    return obj
