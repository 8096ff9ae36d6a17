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


class WorkerSeeds:
    """Each worker process's own streams in Python's, numpy's and torch's global generators.

    `epoch()` at a worker's first batch of each epoch, `catch_up()` before every later job:
    no two workers (and no two epochs) repeat a stream, even when the processes were forked
    from one parent that had already drawn from them.

    Seeding never imports anything: numpy's and torch's generators are seeded only once
    their module is loaded (importing `numpy.random` costs ~10 ms a cold worker need not
    pay; importing torch, far more). A module first loaded inside a worker starts from
    fresh entropy (numpy) or torch's fixed default, and `catch_up()` seeds it before the
    next job. Invariant: `_pending` holds the modules not yet seeded for `_state`'s epoch.

    Example:
        >>> seeds = WorkerSeeds(worker_id=0)
        >>> seeds.epoch(seed=1, epoch=0)
        >>> a = random.random()
        >>> seeds.epoch(seed=1, epoch=0)
        >>> a == random.random()
        True
    """

    _MODULES = ("numpy.random", "torch")

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id
        self._state: list[int] = []
        self._pending: list[str] = []

    def epoch(self, seed: int, epoch: int) -> None:
        # Derived with Python's own (SHA-512 based) string seeding, so that computing the
        # state needs no numpy.random.
        derive = random.Random(f"{_WORKER_DOMAIN}:{seed}:{epoch}:{self.worker_id}")
        self._state = [derive.getrandbits(32) for _ in range(4)]
        random.seed(int.from_bytes(b"".join(x.to_bytes(4, "little") for x in self._state), "little"))
        self._pending = list(self._MODULES)
        self.catch_up()

    def catch_up(self) -> None:
        if not self._pending:
            return
        import sys

        for name in list(self._pending):
            module = sys.modules.get(name)
            # Only a module whose import finished: a process forked while another thread was
            # importing torch holds a half-initialised module nothing here will complete.
            if module is None or _initializing(module, "seed" if name == "numpy.random" else "manual_seed"):
                continue
            if name == "numpy.random":
                module.seed(self._state)
            else:
                module.manual_seed(self._state[0] << 32 | self._state[1])
            self._pending.remove(name)


def _initializing(module: Any, seed_function: str) -> bool:
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False)) or not hasattr(module, seed_function)
