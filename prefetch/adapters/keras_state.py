"""Keras callback that keeps a `prefetch.Loader`'s place with the model's checkpoints.

`LoaderCheckpoint(loader, backup_dir=...)` sits next to `keras.callbacks.BackupAndRestore`
(same `backup_dir`): at each epoch's end it writes the loader's state (JSON, atomically) to
`backup_dir/prefetch_loader.json`, and when it is made it loads it back — so a restarted
`fit` resumes at the epoch BackupAndRestore resumes at, with the same batch order (shuffle,
shards, skipped batches). BackupAndRestore restarts an interrupted epoch from its first step
(even with a batch-level `save_freq`), and so does the loader: its file changes at epoch ends
only. `LoaderCheckpoint(loader, "run/loader.json")` is the plain-file form, to go with a
`ModelCheckpoint` and `fit(initial_epoch=...)`.

`import prefetch.adapters.keras_state` does not import Keras; `LoaderCheckpoint(...)` does.

Example:
    >>> # from prefetch.adapters.keras import to_keras
    >>> # from prefetch.adapters.keras_state import LoaderCheckpoint
    >>> # loader = prefetch.Loader(ds, shuffle=True, seed=0)
    >>> # model.fit(to_keras(loader), epochs=10, callbacks=[
    >>> #     keras.callbacks.BackupAndRestore("backup"), LoaderCheckpoint(loader, backup_dir="backup")])
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from typing import Any

from ..loader import Loader
from ..state import settled

# LoaderCheckpoint is made on first use (module __getattr__), so that this import is Keras-free.
__all__ = ["FILENAME", "LoaderCheckpoint", "LoaderFile"]  # noqa: F822

FILENAME = "prefetch_loader.json"


class LoaderFile:
    """Saves and restores a loader's state in one JSON file (framework-free part).

    Example:
        >>> import prefetch, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "loader.json")
        >>> with prefetch.Loader(list(range(4)), shuffle=True, seed=0) as loader:
        ...     _ = list(loader)
        ...     LoaderFile(loader, path).save()
        >>> with prefetch.Loader(list(range(4)), shuffle=True, seed=0) as again:
        ...     LoaderFile(again, path).restore(), again.epoch
        (True, 1)
    """

    def __init__(self, loader: Any, path: str | os.PathLike):
        self.loader = _loader_of(loader)
        self.path = os.fspath(path)

    def save(self) -> None:
        """Write the loader's state; a crash while writing leaves the previous file whole."""
        state = settled(self.loader.state_dict(), self.loader._part_size())
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".prefetch_loader.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def restore(self) -> bool:
        """Load the saved state into the loader, if there is one; True when it did."""
        try:
            with open(self.path) as f:
                state = json.load(f)
        except FileNotFoundError:
            return False
        self.loader.load_state_dict(state)  # checks it strictly: a wrong file raises ValueError
        return True


def _loader_of(obj: Any) -> Loader:
    """The Loader itself, or the one inside a `to_keras` adapter."""
    if isinstance(obj, Loader):
        return obj
    inner = getattr(obj, "loader", None)
    if isinstance(inner, Loader):
        return inner
    raise TypeError(f"expected a prefetch.Loader or what to_keras() returned, got {type(obj).__name__}")


@functools.cache
def _callback_class() -> type:
    import keras  # type: ignore[import-untyped]

    class LoaderCheckpoint(keras.callbacks.Callback):
        """Saves the loader's state at every epoch end and restores it when training begins.

        Args:
            loader: the `prefetch.Loader` that feeds `fit` (or the adapter `to_keras` made).
            filepath: the JSON file to keep the state in (the plain-file form), or
            backup_dir: the `keras.callbacks.BackupAndRestore` directory to keep it in.
            restore: load the file now, if it exists (default True). Now, not when training
                begins: `fit` looks at the first batch before any callback runs.
        """

        def __init__(self, loader: Any, filepath: str | os.PathLike | None = None, *,
                     backup_dir: str | os.PathLike | None = None, restore: bool = True):
            super().__init__()
            if (filepath is None) == (backup_dir is None):
                raise ValueError("give LoaderCheckpoint either a filepath or a backup_dir (the one "
                                 "BackupAndRestore uses), not both")
            path = filepath if filepath is not None else os.path.join(os.fspath(backup_dir), FILENAME)  # type: ignore[arg-type]
            self.file = LoaderFile(loader, path)
            self.restored = restore and self.file.restore()

        @property
        def loader(self) -> Loader:
            return self.file.loader

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.file.save()

    LoaderCheckpoint.__module__ = __name__
    return LoaderCheckpoint


def __getattr__(name: str) -> Any:
    if name == "LoaderCheckpoint":  # importing it imports Keras
        return _callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
