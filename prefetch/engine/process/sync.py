"""The dataset as the workers have it: the first image, and what changes between epochs.

The main process may change the dataset between epochs (`on_epoch_begin`/`on_epoch_end`, or
by hand). Before each epoch it compares the dataset with what the workers have and ships
only the attributes that changed — once per worker, in the order of everything else on its
socket, so a worker still loading the first image applies the change right after it.

Two ways to ship it (`share`):
  * shared (`"read-only"`, the default, or `"copy-on-write"`): large buffers go once into
    shared memory (`.share`); workers map them. A buffer is "changed" when its bytes differ
    from the shared copy (memcmp, no hashing); its pickle carries only references.
  * private (`None`): every worker unpickles its own copy; changes are found with
    `fingerprint` (buffers hashed in place).
"""

from __future__ import annotations

import functools
import pickle
import sys
from collections.abc import Callable
from typing import Any

from ..fingerprint import fingerprint, plain_state
from . import protocol as P
from .protocol import load_image
from .share import SharedBuffers

SHARE_MODES = ("read-only", "copy-on-write")
MAX_SEGMENTS = 8  # a worker booting later gets the dataset in one segment when it spans more


def _all_pieces(image: P.Image) -> list[P.Piece]:
    return [*image.attrs.values(), *([image.cls] if image.cls else [])]


def _unpicklable(dataset: Any, exc: Exception, name: str | None = None) -> TypeError:
    culprit = ""
    if name is not None:
        culprit = f" (attribute {name!r} of type {type(vars(dataset)[name]).__name__})"
    else:
        for attr, value in (vars(dataset).items() if hasattr(dataset, "__dict__") else ()):
            try:
                pickle.dumps(value, protocol=5)
            except Exception:  # noqa: BLE001
                culprit = f" (attribute {attr!r} of type {type(value).__name__})"
                break
    err = TypeError(f"use_multiprocessing / executor='process' sends the dataset to worker processes, but "
                    f"{type(dataset).__name__} cannot be pickled{culprit}: {exc}")
    err.__cause__ = exc
    return err


def _check_platform() -> None:
    if sys.platform == "win32":
        raise ValueError("executor='process' needs a POSIX system (Linux, macOS); use threads on Windows")


class DatasetSync:
    """Tracks the state the workers have: `boot()` is what a worker starting now loads,
    `changes()` what running workers are sent before an epoch. Created at `Loader()`, so a
    dataset that cannot be pickled fails there, naming the attribute."""

    def __init__(self, dataset: Any, share: str | None = "read-only"):
        _check_platform()
        if share is not None and share not in SHARE_MODES:
            raise ValueError(f"share must be one of {SHARE_MODES} or None, got {share!r}")
        self.dataset = dataset
        self.share = share
        self.store: SharedBuffers | None = SharedBuffers() if share is not None else None
        self._plain = plain_state(dataset)
        # Invariant: `_image` is what every live worker has (or will have, in socket order);
        # None after `close()`.
        self._image: P.Image | None = self._take()
        self._prints: Any = fingerprint(dataset) if self.store is None else None

    # -- pickling ---------------------------------------------------------------------------
    def _pieces(self, values: dict[str, Any], whole: bool = False) -> dict[str, P.Piece]:
        """Each value pickled; in shared mode their new large buffers share one new segment."""
        dumped: dict[str, tuple[bytes, list]] = {}
        for name, value in values.items():
            try:
                if self.store is None:
                    dumped[name] = (pickle.dumps(value, protocol=5), [])
                else:
                    dumped[name] = self.store.dumps(value)
            except Exception as exc:
                raise _unpicklable(self.dataset, exc, None if whole else name) from exc
        if self.store is None:
            return {name: P.Piece(data, []) for name, (data, _) in dumped.items()}
        return dict(zip(dumped, self.store.pieces(list(dumped.values()))))

    def _take(self) -> P.Image:
        ds = self.dataset
        if self._plain:
            cls = self._pieces({"": type(ds)}, whole=True)[""]
            return P.Image(cls, self._pieces(dict(vars(ds))))
        return P.Image(None, self._pieces({"": ds}, whole=True))

    def _specs(self, pieces: Any) -> tuple[list[tuple[int, int]], list[int]]:
        return self.store.specs(pieces) if self.store is not None else ([], [])

    def flush(self) -> None:
        """Write the shared copies of buffers placed but not written yet (see `SharedBuffers.flush`)."""
        if self.store is not None:
            self.store.flush()

    # -- messages -----------------------------------------------------------------------------
    def boot(self) -> tuple[P.Image, list[tuple[int, int]], list[int]]:
        """The dataset for a worker that starts now, the segments it maps and their fds."""
        if self._image is None:  # closed with a pool that failed to start: a new pool takes it anew
            self._image = self._take()
        specs, fds = self._specs(_all_pieces(self._image))
        return self._image, specs, fds

    def settle(self) -> None:
        """Right after the message of `changes()` was sent (the dataset is what the workers were
        just sent; the transport holds its own copies of the fds): when syncs left
        the state spread over many segments, place it anew in one, for workers that start
        later (one descriptor each; those running keep theirs — the contents are the same)."""
        if self.store is None or self._image is None:
            return
        if len({s for p in _all_pieces(self._image) for s, _, _ in p.buffers}) > MAX_SEGMENTS:
            self.store.compact()
            self._image = self._take()
            self.store.release(_all_pieces(self._image))

    def changes(self) -> tuple[P.SyncState | P.ReplaceDataset, list[int]] | None:
        """The message that brings running workers up to date (with the fds riding along),
        or None when nothing changed."""
        old = self._image
        if old is None:
            return None
        ds = self.dataset
        if self.store is None:  # private copies: find what changed by fingerprint first
            new_prints = fingerprint(ds)
            if new_prints == self._prints:
                return None
            before, self._prints = self._prints, new_prints
            if self._plain and isinstance(new_prints, dict) and isinstance(before, dict):
                state = vars(ds)
                changed = self._pieces({k: state[k] for k, d in new_prints.items() if before.get(k) != d})
                return self._apply(old, changed, [k for k in before if k not in new_prints])
            self._image = self._take()
            return P.ReplaceDataset(self._image, []), []
        if self._plain:
            state = dict(vars(ds))
            changed = {k: p for k, p in self._pieces(state).items() if old.attrs.get(k) != p}
            removed = [k for k in old.attrs if k not in state]
            if not changed and not removed:
                return None
            return self._apply(old, changed, removed)
        image = self._take()
        if image == old:
            return None
        self._image = image
        self.store.release(_all_pieces(image))
        specs, fds = self._specs(_all_pieces(image))
        return P.ReplaceDataset(image, specs), fds

    def _apply(self, old: P.Image, changed: dict[str, P.Piece], removed: list[str]
               ) -> tuple[P.SyncState, list[int]]:
        attrs = {k: v for k, v in old.attrs.items() if k not in removed}
        attrs.update(changed)
        self._image = P.Image(old.cls, attrs)
        specs, fds = self._specs(changed.values())
        if self.store is not None:  # segments the image no longer refers to can go now
            self.store.release(_all_pieces(self._image))
        return P.SyncState(changed, removed, specs), fds

    def loader(self) -> Callable[[], Any]:
        """Loads the dataset as the workers have it now, as a worker would (for warm start):
        the state is taken here, the unpickling is left to whoever calls it (off the loop)."""
        image = self._image
        assert image is not None, "the dataset sync is closed"
        views = self.store.views(_all_pieces(image)) if self.store is not None else {}
        return functools.partial(load_image, image, views)

    @property
    def shared_bytes(self) -> int:
        return self.store.shared_bytes if self.store is not None else 0

    def close(self) -> None:
        """Close the segments' descriptors (workers keep what they mapped; this process's
        arrays keep their memory)."""
        self._image = None
        if self.store is not None:
            self.store.close()
