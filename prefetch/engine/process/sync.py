"""The dataset as the workers have it: the first snapshot, and what changes between epochs.

The main process may change the dataset between epochs (`on_epoch_begin`/`on_epoch_end`, or
by hand). Before each epoch it fingerprints the dataset's attributes (pickle protocol 5,
array buffers hashed in place) and ships only the attributes whose fingerprint changed —
once per worker, in the order of everything else on its socket, so a worker still loading
the first snapshot applies the change right after it.
"""

from __future__ import annotations

import pickle
import sys
from typing import Any

from ..fingerprint import fingerprint
from . import protocol as P


def pickle_dataset(dataset: Any) -> bytes:
    """The dataset's pickle; a clear error up front, naming the attribute that does not pickle."""
    if sys.platform == "win32":
        raise ValueError("executor='process' needs a POSIX system (Linux, macOS); use threads on Windows")
    try:
        return pickle.dumps(dataset, protocol=5)
    except Exception as exc:
        culprit = ""
        for name, value in (vars(dataset).items() if hasattr(dataset, "__dict__") else ()):
            try:
                pickle.dumps(value, protocol=5)
            except Exception:  # noqa: BLE001
                culprit = f" (attribute {name!r} of type {type(value).__name__})"
                break
        raise TypeError(f"use_multiprocessing / executor='process' sends the dataset to worker processes, but "
                        f"{type(dataset).__name__} cannot be pickled{culprit}: {exc}") from exc


class Snapshot:
    """The dataset as the workers will first get it: its pickle, and its fingerprint to diff
    later epochs against (taken together, so they always describe the same state)."""

    def __init__(self, dataset: Any):
        self.payload = pickle_dataset(dataset)
        self.prints = fingerprint(dataset)


class DatasetSync:
    """Tracks the state the workers have; `changes()` says what to send them now."""

    def __init__(self, dataset: Any, snapshot: Snapshot):
        self.dataset = dataset
        self._payload: bytes | None = snapshot.payload
        self._prints: Any = snapshot.prints

    def payload(self) -> bytes:
        """The dataset as it is now, pickled (for a worker that starts now)."""
        if self._payload is None:
            self._payload = pickle_dataset(self.dataset)
        return self._payload

    def changes(self) -> P.SyncState | P.ReplaceDataset | None:
        """The message that brings running workers up to date, or None when nothing changed."""
        new = fingerprint(self.dataset)
        old = self._prints
        if new == old:
            return None
        self._prints = new
        if isinstance(new, dict) and isinstance(old, dict):
            state = vars(self.dataset)
            changed = {k: pickle.dumps(state[k], protocol=5) for k, d in new.items() if old.get(k) != d}
            self._payload = None  # a worker started later gets the dataset as it is then
            return P.SyncState(changed, [k for k in old if k not in new])
        self._payload = pickle.dumps(self.dataset, protocol=5)
        return P.ReplaceDataset(self._payload)
