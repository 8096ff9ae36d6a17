"""A small per-object memo that never travels: pickling it gives an empty one.

Sources keep their per-epoch permutation or schedule here, so a dataset pickled to process
workers (and fingerprinted between epochs) carries no derived state, and each interpreter
computes it once per (seed, epoch) on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any


class Memo:
    """At most `size` recent results by key; thread-safe, computed once per key at a time.

    Example:
        >>> import pickle
        >>> memo = Memo(size=2)
        >>> memo.get(("seed", 1), lambda: [1, 2, 3])
        [1, 2, 3]
        >>> len(pickle.loads(pickle.dumps(memo)))
        0
    """

    def __init__(self, size: int = 2):
        self.size = size
        self._items: dict[Hashable, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        items = self._items
        try:
            return items[key]  # the hot path: a dict read, no lock
        except KeyError:
            pass
        # One computation per key even when every worker thread asks at the start of an epoch.
        with self._lock:
            if key not in items:
                value = compute()
                while len(items) >= self.size:
                    items.pop(next(iter(items)))
                items[key] = value
            return items[key]

    def __len__(self) -> int:
        return len(self._items)

    def __reduce__(self) -> tuple:
        return (Memo, (self.size,))
