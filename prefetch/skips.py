"""`max_failures`: how many failing batches an epoch may skip, and how a skip is reported.

The scheduler decides, in delivery order, whether a failure is skipped (it puts a `Skipped`
marker in the batch's place); the loader, on the consumer's side, records the skip in its
state, counts it in `stats.skipped` and logs it here, once.

Example:
    >>> budget(3, 100), budget(0.05, 100), budget(0.05, 10)
    (3, 5, 0)
"""

from __future__ import annotations

import logging
import math
from typing import Any

logger = logging.getLogger("prefetch")


def check_max_failures(value: Any) -> float:
    """`max_failures` as given to the Loader: an int >= 0 (batches per epoch) or a float in
    [0, 1] (a fraction of the epoch's batches)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"max_failures must be an int >= 0 or a float fraction in [0, 1], got {value!r}")
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:  # also rejects nan
            raise ValueError(f"max_failures as a float is a fraction of the epoch, in [0, 1]; got {value!r}")
    elif value < 0:
        raise ValueError(f"max_failures must be >= 0, got {value}")
    return value


def budget(max_failures: float, epoch_batches: int | None) -> int:
    """Failing batches an epoch of `epoch_batches` may skip (a fraction rounds down)."""
    if isinstance(max_failures, float):
        return math.floor(max_failures * (epoch_batches or 0))
    return max_failures


def log_skip(index: int, epoch: int, error: BaseException, used: int, allowed: int) -> None:
    """One warning per skipped batch: which batch, and the exception's type and message."""
    logger.warning("prefetch: skipped batch %d of epoch %d after %s: %s (%d of %d failures allowed per epoch)",
                   index, epoch, type(error).__name__, error, used, allowed)
