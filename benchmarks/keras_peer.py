"""The Keras 3 peer: a `keras.utils.PyDataset` subclass around a benchmark dataset.

Imported only by the Keras cells (importing Keras costs ~250 MiB and seconds). Keras needs
a backend; `numpy` is the lightest and is what the benchmark uses (set before import).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "numpy")

import keras  # noqa: E402
import numpy as np  # noqa: E402


class KerasDataset(keras.utils.PyDataset):
    """Forwards to `inner`; Keras's adapter insists on a tuple/dict/array batch, so a plain
    int batch (the no-op and sleep workloads) is handed over as a 1-tuple."""

    def __init__(self, inner, workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        b = self.inner[i]
        if isinstance(b, (tuple, dict, np.ndarray)):
            return b
        return (b,)
