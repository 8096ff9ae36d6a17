"""Per-batch randomness: `prefetch.rng()` draws depend on (seed, epoch, batch index) alone.

The engine enters `batch_scope(seed, epoch, index)` around every `__getitem__` call, on
whatever thread, task or process runs it; `rng()` builds its generator lazily so batches
that never ask for randomness pay nothing.
"""

from __future__ import annotations

import contextvars
import random
from typing import Any

import numpy as np

# A ContextVar (not a thread-local) so concurrent coroutines on one loop each see their own batch.
_current: contextvars.ContextVar[list | None] = contextvars.ContextVar("prefetch_batch", default=None)

# Domain separation: the stream for rng() must differ from the order shuffle and worker seeding.
_RNG_DOMAIN = 0x5EED_0001
_WORKER_DOMAIN = 0x5EED_0002


def rng() -> np.random.Generator:
    """The random generator of the batch being produced.

    Inside `__getitem__` run by a `prefetch.Loader`, the generator is determined by the
    loader's `seed`, the epoch and the batch index alone, so a batch gets the same draws
    whatever the executor, the number of workers or the scheduling; repeated calls within
    one batch continue the same stream. Outside a loader (serial iteration) it returns a
    freshly seeded generator.

    Example:
        >>> import numpy as np, prefetch
        >>> class Noisy(prefetch.PyDataset):
        ...     def __len__(self):
        ...         return 2
        ...     def __getitem__(self, i):
        ...         return prefetch.rng().normal(size=3)
        >>> a = list(prefetch.Loader(Noisy(), seed=7))
        >>> b = list(prefetch.Loader(Noisy(), seed=7, workers=2))
        >>> all(np.array_equal(x, y) for x, y in zip(a, b))
        True
    """
    slot = _current.get()
    if slot is None:
        return np.random.default_rng()
    if slot[3] is None:
        seed, epoch, index = slot[0], slot[1], slot[2]
        slot[3] = np.random.Generator(np.random.PCG64(np.random.SeedSequence((_RNG_DOMAIN, seed, epoch, index))))
    return slot[3]


def current_batch() -> tuple[int, int, int] | None:
    """(seed, epoch, index) of the batch being produced by a Loader, `None` outside one.

    What sample-level sources (`prefetch.batched`, `prefetch.mix`) derive their per-epoch
    permutation and schedule from, so they agree on every executor and worker count.
    """
    slot = _current.get()
    if slot is None:
        return None
    return slot[0], slot[1], slot[2]


def enter_batch(seed: int, epoch: int, index: int) -> Any:
    """Make `rng()` answer for this batch; returns the token for `exit_batch`."""
    return _current.set([seed, epoch, index, None])


def exit_batch(token: Any) -> None:
    _current.reset(token)


def seed_worker_globals(seed: int, epoch: int, worker_id: int) -> None:
    """Give each worker process its own stream in numpy's, Python's (and torch's) global RNGs.

    Called in a process worker at start and at each epoch, so no two workers (and no two
    epochs) repeat a stream even when the processes were forked from one parent.
    """
    import sys

    ss = np.random.SeedSequence((_WORKER_DOMAIN, seed, epoch, worker_id))
    state = ss.generate_state(4, dtype=np.uint32)
    np.random.seed(state)
    random.seed(int.from_bytes(state.tobytes(), "little"))
    torch = sys.modules.get("torch")
    # Only if the dataset already uses torch (never import it ourselves), and only a torch
    # whose import finished: a process forked while another thread was importing torch holds
    # a half-initialised module that nothing in this process will ever complete.
    if torch is not None and not _initializing(torch):
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))


def _initializing(module: Any) -> bool:
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False)) or not hasattr(module, "manual_seed")
