"""`Loader`: the public face of the engine — epochs, order, resume, and iteration both ways."""

from __future__ import annotations

import concurrent.futures as cf
import secrets
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

from .dataset import inspect_dataset, num_batches_of
from .engine.channel import Channel, EpochEnded
from .engine.executors import NAMED as _KINDS
from .engine.executors import START_METHODS as _START_METHODS
from .engine.executors import executor_factory, is_dask_client
from .engine.loop import running_loop
from .engine.runtime import Engine
from .engine.scheduler import ChunkSizer, EpochRun, Skipped
from .order import epoch_order, infinite_order, part_size, remaining
from .shard import Shard
from .skips import budget, check_max_failures, log_skip
from .state import VERSION as _STATE_VERSION
from .state import parse as _parse_state
from .state import resume_point, resume_point_sampled, shard_key
from .stats import Stats

B = TypeVar("B")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _check_timeout(value: Any) -> float | None:
    """`timeout`: None, or a positive, finite number of seconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"timeout must be a number of seconds > 0 or None, got {value!r}")
    if not 0 < value < float("inf"):
        raise ValueError(f"timeout must be a number of seconds > 0 (and finite), got {value!r}")
    return float(value)


def _is_zero(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value == 0


def _nothing() -> None:
    pass


class Loader(Generic[B]):
    """Runs a dataset's `__getitem__` in parallel, ahead of the training loop.

    Each `for batch in loader` is exactly one epoch: every batch once, in order (or in
    completion order with `ordered=False`), with `on_epoch_begin` / `on_epoch_end` around
    it. At most `max_queue_size` batches are in flight or waiting at any time.

    Args:
        dataset: a `prefetch.PyDataset`, a `keras.utils.PyDataset`, or any object with
            `__len__` and `__getitem__` (which may be `async def`). Its `workers`,
            `use_multiprocessing` and `max_queue_size` attributes are the defaults.
        workers: how many batches are produced at once (threads, processes or coroutines),
            or `"auto"` to let the loader size it while it runs. `0` (as in Keras): serial,
            each batch made in the consumer's thread when it asks for it (also `max_queue_size=0`).
        use_multiprocessing: with `executor=None`, use processes instead of threads.
        max_queue_size: bound on batches in flight plus batches ready and not yet taken.
        executor: `"thread"`, `"process"`, `"async"`, a `concurrent.futures.Executor` or a
            `distributed.Client`; `None` picks from `use_multiprocessing`. A coroutine
            `__getitem__` always runs on the event loop.
        shuffle: a new batch order every epoch, the same sequence of orders for one `seed`.
        seed: drives `shuffle` and `prefetch.rng()`; random when `None`.
        ordered: deliver in order (True) or as batches complete (False).
        shard: this host's `prefetch.Shard` of every epoch. A dataset with a
            `__prefetch_shard__(shard)` method (`prefetch.batched`) shards itself at sample
            level: the Loader runs the view it returns (`loader.dataset`), whole.
        start_method: for process workers, `"forkserver"` (default where fork exists:
            prefetch's own fork server, a clean single-threaded process that forks workers),
            `"spawn"` or `"fork"` (only when asked: forking a process that runs JAX or torch
            threads can deadlock).
        warm_start: for process workers, opt-in: until the first
            worker has loaded the dataset, make batches in order on one thread of this process
            (from a private copy of the dataset). The first batch comes sooner, but a crash in
            those `__getitem__` calls (a segfaulting decoder) takes this process down: off by
            default, so every batch runs isolated in a worker.
        timeout: seconds one `__getitem__` call may run (counted from when it starts, not
            while it waits in the queue); past it the batch fails with `prefetch.BatchTimeout`
            (a `TimeoutError`) naming the batch, the worker and its stack where it is stuck, and
            the loader goes on: a process worker is killed and replaced, a thread is abandoned
            (Python cannot stop it: it lives on, as a daemon thread, until its call returns;
            its result is dropped) and replaced, a coroutine is cancelled. A `concurrent.futures`
            pool or a dask cluster only fails the batch and drops its late result (no stack,
            nothing stopped; dask, which does not say when a task starts, counts from its
            submission or from the last task that finished, whichever is later). Not with
            `workers=0` (serial), and not for the opt-in `warm_start` batches. A timed-out batch
            counts as a failure for `max_failures`. `None` (default): no limit.
        max_failures: failing batches (an exception in `__getitem__`, a timeout, a dead worker) each
            epoch may skip instead of raising: an int, or a float fraction of the epoch's
            batches. Each skip is logged (logger "prefetch"), counted in `stats.skipped` and
            recorded in `state_dict()`; the next failure past the budget is raised.
        share_dataset: for process workers: the dataset's large buffers (numpy arrays of 1 MiB
            or more, anywhere in it) are placed once in shared memory that every worker maps,
            instead of a copy per worker. `True` (default): read-only in the workers — writing
            to such an array in `__getitem__` raises numpy's "assignment destination is
            read-only"; `"copy-on-write"`: workers may write, each to its own copy of the pages
            it changes; `False`: each worker unpickles a private copy (as Keras and PyTorch's
            spawn do). This process's own arrays are moved onto the shared pages too (their
            identity and contents unchanged; a page it writes becomes its own again, and the
            change reaches the workers at the next epoch). See "Memory" in the README.

    Example:
        >>> import prefetch
        >>> with prefetch.Loader(list(range(6)), workers=3, shuffle=True, seed=0) as loader:
        ...     sorted(loader) == list(range(6)), len(loader)
        (True, 6)
    """

    def __init__(self, dataset: Any, *, workers: int | str | None = None, use_multiprocessing: bool | None = None,
                 max_queue_size: int | None = None, executor: Any = None, shuffle: bool = False,
                 seed: int | None = None, ordered: bool = True, shard: Shard | None = None,
                 start_method: str | None = None, warm_start: bool = False, timeout: float | None = None,
                 max_failures: float = 0, share_dataset: bool | str = True):
        info = inspect_dataset(dataset)
        if workers is None:
            workers = info.workers
        if max_queue_size is None:
            max_queue_size = info.max_queue_size
        # Keras: workers=0 (or max_queue_size=0) makes each batch in the consumer's thread.
        self.serial = _is_zero(workers) or _is_zero(max_queue_size)
        if self.serial and executor is not None:
            raise ValueError(f"workers=0 / max_queue_size=0 make batches serially in the calling thread; "
                             f"they take no executor (got executor={executor!r})")
        self.auto_workers = workers == "auto" and not self.serial
        if self.serial:  # the other setting must still be valid
            for name, value in (("workers", workers), ("max_queue_size", max_queue_size)):
                if not _is_zero(value) and value != "auto":
                    _positive_int(name, value)
            workers = 1
        elif self.auto_workers:
            workers = 1
        workers = _positive_int("workers", workers)
        window = _positive_int("max_queue_size", 1 if self.serial else max_queue_size)
        if use_multiprocessing is None:
            use_multiprocessing = info.use_multiprocessing
        kind = executor
        if kind is None:
            kind = "process" if use_multiprocessing else "thread"
        if isinstance(kind, str):
            if kind not in _KINDS:
                raise ValueError(f"executor must be one of {_KINDS}, an Executor or a distributed.Client; got {kind!r}")
        elif not (isinstance(kind, cf.Executor) or is_dask_client(kind)):
            raise TypeError(f"executor must be one of {_KINDS}, a concurrent.futures.Executor or a "
                            f"distributed.Client; got {type(kind).__name__}")
        if kind == "async" and not info.is_async:
            raise TypeError(f"executor='async' needs an `async def __getitem__`; {type(dataset).__name__}'s is "
                            "a plain function (use executor='thread' or 'process')")
        if info.is_async and is_dask_client(kind):
            raise TypeError("a coroutine __getitem__ runs on the event loop and cannot be sent to dask; "
                            "make __getitem__ a plain function to use a distributed.Client")
        if shuffle and info.num_batches is None:
            raise ValueError("shuffle=True needs a finite dataset; an infinite one must shuffle itself")
        if shard is not None and not isinstance(shard, Shard):
            raise TypeError(f"shard must be a prefetch.Shard, got {type(shard).__name__}")
        if seed is None:
            seed = secrets.randbits(63)
        elif isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        timeout_s = _check_timeout(timeout)
        if timeout_s is not None and self.serial:
            raise ValueError("timeout needs workers >= 1: with workers=0 / max_queue_size=0 each batch is made in "
                             "the calling thread, which nothing can interrupt")
        max_failures = check_max_failures(max_failures)
        if isinstance(max_failures, float) and info.num_batches is None:
            raise ValueError("max_failures as a fraction needs a finite dataset; give an infinite one an int")
        if share_dataset not in (True, False, "read-only", "copy-on-write"):
            raise ValueError(f"share_dataset must be True, False, 'read-only' or 'copy-on-write', got {share_dataset!r}")
        share = None if share_dataset is False else "read-only" if share_dataset is True else str(share_dataset)
        if start_method not in (None, *_START_METHODS):
            raise ValueError(f"start_method must be 'forkserver', 'spawn' or 'fork', got {start_method!r}")
        # A dataset that shards itself (at sample level: prefetch.batched) gives this host's
        # view, which the loader reads whole; the shard is still recorded (len, state_dict).
        self._whole = dataset
        self._sampled = callable(getattr(type(dataset), "__prefetch_shard__", None))
        if self._sampled and shard is not None and shard.count > 1:
            dataset = self._view(shard)
        self.dataset = dataset
        self.workers = 0 if self.serial else workers
        self.max_queue_size = 0 if self.serial else window
        self.executor = "serial" if self.serial else "async" if info.is_async else kind
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.ordered = bool(ordered)
        self.shard = shard
        self.max_failures = max_failures
        self.timeout = timeout_s
        self.stats = Stats(workers)
        # Whether each pass calls the dataset's on_epoch_begin / on_epoch_end; to_keras turns
        # it off because Keras calls them itself, once per Keras epoch.
        self.epoch_hooks = True
        self._epoch = 0
        # Local positions of this host's part of the epoch (see prefetch.order), which
        # begins at global position `start` (0 unless resumed on another host count).
        self._start = 0
        self._prefix = 0  # positions [0, prefix) of the current epoch were consumed ...
        self._seen: set[int] = set()  # ... and these beyond it (completion order)
        self._skipped: set[int] = set()  # consumed positions whose batch failed and was skipped
        self._cut = False  # the current epoch was cut short: the next iteration starts the next one
        # Weak, so a `break` that drops the iterator ends the epoch right away.
        self._active_ref: Callable[[], _Epoch | None] = lambda: None
        self._sizer: ChunkSizer | None = None
        self._autotune: Any = None
        if self.serial:  # nothing to start, nothing to close
            self._engine: Engine = None  # type: ignore[assignment]
            self._finalizer = weakref.finalize(self, _nothing)
            return
        make = executor_factory(self.executor, dataset, workers, window=window, is_async=info.is_async,
                                start_method=start_method, warm_start=bool(warm_start), timeout_s=timeout_s,
                                share_dataset=share)
        self._engine = Engine(make)
        self.stats.processes = self._engine.processes
        self._engine.start_early()  # process workers boot while the caller builds its model
        # The engine never refers back to the loader, so a dropped loader is collected and
        # this closes its workers (also at interpreter exit).
        self._finalizer = weakref.finalize(self, self._engine.close)

    # -- sizes -------------------------------------------------------------------------------
    @property
    def num_batches(self) -> int | None:
        """Batches per epoch for this shard, `None` when the dataset is infinite."""
        n = num_batches_of(self.dataset)
        if n is None or self._order_shard is None:
            return n
        return self._order_shard.size(n)

    @property
    def _order_shard(self) -> Shard | None:
        """The shard of the batch order: none when the dataset sharded itself."""
        return None if self._sampled else self.shard

    def _view(self, shard: Shard | None) -> Any:
        """The dataset a shard reads of a dataset that shards itself (`__prefetch_shard__`)."""
        if shard is None or shard.count == 1:
            return self._whole
        return type(self._whole).__prefetch_shard__(self._whole, shard)

    def _part_size(self) -> int | None:
        """Batches of this host's part of the current epoch (`None` when infinite)."""
        n = num_batches_of(self.dataset)
        if n is None:
            return None
        return part_size(n, self._order_shard, self._start)

    def __len__(self) -> int:
        n = self.num_batches
        if n is None:
            raise TypeError("an infinite dataset has no len()")
        return n

    @property
    def epoch(self) -> int:
        """The epoch the next (or the running) iteration covers, counted from 0."""
        return self._epoch + 1 if self._cut and self._active is None else self._epoch

    @property
    def _active(self) -> _Epoch | None:
        return self._active_ref()

    @_active.setter
    def _active(self, epoch: _Epoch | None) -> None:
        self._active_ref = (lambda: None) if epoch is None else weakref.ref(epoch)

    # -- iteration --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[B]:
        if self.serial:
            from .serial import SerialEpoch

            return SerialEpoch(self)
        return _SyncEpoch(self)

    def __aiter__(self) -> AsyncIterator[B]:
        if self.serial:
            from .serial import AsyncSerialEpoch

            return AsyncSerialEpoch(self)  # type: ignore[return-value]
        return _AsyncEpoch(self)

    def _plan(self) -> tuple[int, Iterator[tuple[int, int]]]:
        if self._cut:
            self._cut = False
            self._next_epoch()
        n = num_batches_of(self.dataset)
        if n is None:
            order: Any = infinite_order(self._order_shard, self._start)
        else:
            order = epoch_order(n, epoch=self._epoch, seed=self.seed, shuffle=self.shuffle,
                                shard=self._order_shard, start=self._start).tolist()
        return self._epoch, remaining(order, self._prefix, frozenset(self._seen))

    def _next_epoch(self) -> None:
        self._epoch += 1
        self._start = self._prefix = 0
        self._seen = set()
        self._skipped = set()

    def _skip_budget(self) -> int:
        """Failures one epoch may skip in all (a resumed epoch has used `len(_skipped)`)."""
        return budget(self.max_failures, self.num_batches)

    def _supersede(self) -> None:
        if self._active is not None:
            self._active.abort()

    def _new_run(self, channel: Channel, epoch: int, items: Iterator[tuple[int, int]]) -> EpochRun:
        """On the engine loop: tell the executor an epoch begins and start scheduling it."""
        engine = self._engine
        executor = engine.executor
        assert executor is not None
        if self._sizer is None:  # an engine keeps one executor for its life
            self._sizer = ChunkSizer(executor)
        executor.begin_epoch(epoch)
        run = EpochRun(executor=executor, items=items, epoch=epoch, seed=self.seed, window=self.max_queue_size,
                       ordered=self.ordered, channel=channel, sizer=self._sizer, stats=self.stats,
                       skips=max(0, self._skip_budget() - len(self._skipped)))
        if self.auto_workers:
            from .engine.autotune import AutoTuner

            if self._autotune is None:
                self._autotune = AutoTuner(executor, self.stats, window=self.max_queue_size)
            self._autotune.attach(run)
        engine.launch(run)
        return run

    def _delivered(self, position: int) -> None:
        if position == self._prefix:
            self._prefix = position = position + 1
            seen = self._seen
            if seen:
                while position in seen:
                    seen.discard(position)
                    position += 1
                self._prefix = position
        else:
            self._seen.add(position)

    def _skip(self, position: int, skipped: Skipped) -> None:
        """The consumer passed a skipped batch: it counts as consumed, and is recorded."""
        self._delivered(position)
        self._skipped.add(position)
        self.stats.skipped += 1
        log_skip(skipped.index, self._epoch, skipped.error, len(self._skipped), self._skip_budget())

    def _epoch_done(self, complete: bool) -> None:
        self.stats.epoch_ended()
        if complete:
            self._next_epoch()
            self.stats.epochs += 1
        else:
            # Progress is kept so state_dict() still says "right after the last delivered
            # batch"; the next iteration itself starts the next epoch, whole.
            self._cut = True

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where iteration stands: the epoch, what of it was consumed, and the seed.

        Feed it to `load_state_dict` of a new Loader over the same dataset (in a new process,
        after a preemption): its next iteration yields exactly the batches not yet delivered
        in that epoch, in the same order, then carries on with the following epochs. Plain
        JSON-able data (the format: `prefetch.state`).
        """
        return {
            "version": _STATE_VERSION,
            "epoch": self._epoch,
            "start": self._start,
            "position": self._prefix,
            "delivered_after": sorted(self._seen),
            "skipped": sorted(self._skipped),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_batches": num_batches_of(self._whole),  # of the whole dataset, on every host
            "shard": shard_key(self.shard),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`; the next iteration continues that epoch.

        The state may come from another shard or host count (elastic resume): with every
        host at the same step, the rest of the epoch is re-divided among the new hosts. A
        malformed state, or one for another dataset length or `shuffle`, raises a
        `ValueError` (`prefetch.state.StateError`) naming the field, and changes nothing.
        A dataset that shards itself at sample level (`prefetch.batched`) resumes mid-epoch
        only on the same number of hosts; on another, only from an epoch boundary.
        """
        if self._sampled:
            def part(shard: Shard | None) -> int:
                return num_batches_of(self._view(shard)) or 0

            progress = _parse_state(state, num_batches=num_batches_of(self._whole), shuffle=self.shuffle, part=part)
            point = resume_point_sampled(progress, self.shard, part)
        else:
            progress = _parse_state(state, num_batches=num_batches_of(self.dataset), shuffle=self.shuffle)
            point = resume_point(progress, self.shard)
        self._supersede()
        self._cut = False
        self.seed = point.seed
        self._epoch = point.epoch
        self._start = point.start
        self._prefix = point.position
        self._seen = set(point.delivered_after)
        self._skipped = set(point.skipped)

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """End every worker, thread and shared-memory segment; the loader cannot iterate after."""
        self._supersede()
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> Loader[B]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Loader({type(self.dataset).__name__}, executor={self.executor!r}, workers={self.workers}, "
                f"max_queue_size={self.max_queue_size}, shuffle={self.shuffle}, ordered={self.ordered}, "
                f"epoch={self._epoch})")


class _Epoch:
    """One pass over a loader, sync or async; shared bookkeeping."""

    def __init__(self, loader: Loader):
        self.loader = loader
        self.run: EpochRun | None = None
        self.channel: Channel | None = None
        self.dead = False

    def _begin(self) -> None:
        loader = self.loader
        loader._supersede()
        loader._active = self
        loader.stats.epoch_started()
        hook = getattr(loader.dataset, "on_epoch_begin", None) if loader.epoch_hooks else None
        if hook is not None:
            hook()

    def _finish(self) -> None:
        """The epoch's last batch was taken: run `on_epoch_end` and move to the next epoch."""
        loader = self.loader
        self.dead = True
        if loader._active is self:
            loader._active = None
            loader._epoch_done(complete=True)
        hook = getattr(loader.dataset, "on_epoch_end", None) if loader.epoch_hooks else None
        if hook is not None:
            hook()

    def _open(self, loop: Any, on_loop: Callable[..., Any], same_thread: bool = False) -> None:
        """Begin the epoch (hooks, in the consumer's thread) and start scheduling it on `loop`;
        `on_loop(fn, *args)` runs `fn` on that loop's thread."""
        self._begin()
        loader = self.loader
        epoch, items = loader._plan()
        self.channel = Channel(loop, loader.stats, same_thread=same_thread)
        self.run = on_loop(loader._new_run, self.channel, epoch, items)

    def _took(self, position: int, value: Any) -> Any:
        loader = self.loader
        loader._delivered(position)
        loader.stats.delivered()
        return value

    def abort(self) -> None:
        """Cut the epoch short (break, exception, a newer iteration): nothing is left behind."""
        if self.dead:
            return
        self.dead = True
        loader = self.loader
        if loader._active is self:
            loader._active = None
            loader._epoch_done(complete=False)
        if self.run is not None:
            loader._engine.abort(self.run)

    def __del__(self) -> None:
        try:
            self.abort()
        except Exception:  # noqa: BLE001, S110 - never raise from a finalizer
            pass


class _SyncEpoch(_Epoch, Iterator[Any]):
    def __init__(self, loader: Loader):
        super().__init__(loader)
        lt = loader._engine.prepare_sync()
        self._alive = lt.alive
        self._open(lt.loop, lt.call)

    def __iter__(self) -> _SyncEpoch:
        return self

    def __next__(self) -> Any:
        if self.dead:
            raise StopIteration
        while True:
            try:
                position, value = self.channel.get(self._alive)  # type: ignore[union-attr]
            except EpochEnded:
                self._finish()
                raise StopIteration from None
            except BaseException:
                self.abort()
                raise
            if type(value) is not Skipped:
                return self._took(position, value)
            self.loader._skip(position, value)

    def close(self) -> None:
        self.abort()


class _AsyncEpoch(_Epoch):
    """`async for`: on the caller's loop under asyncio; bridged from the engine's loop thread
    under other anyio backends (trio)."""

    def __init__(self, loader: Loader):
        super().__init__(loader)
        self._bridged = False
        self._started = False
        self._alive: Callable[[], bool] = lambda: True

    def __aiter__(self) -> _AsyncEpoch:
        return self

    async def _start(self) -> None:
        engine = self.loader._engine
        if running_loop() is not None:  # asyncio (else another anyio backend: trio)
            loop = await engine.prepare_async()
            self._open(loop, lambda fn, *args: fn(*args), same_thread=True)
        else:
            import anyio.to_thread

            self._bridged = True
            lt = await anyio.to_thread.run_sync(engine.prepare_sync)
            self._alive = lt.alive
            self._open(lt.loop, lt.call)

    async def __anext__(self) -> Any:
        if self.dead:
            raise StopAsyncIteration
        while True:
            try:
                if not self._started:
                    self._started = True  # a start that fails aborts: this iterator is then done
                    await self._start()
                channel = self.channel
                assert channel is not None
                if self._bridged:
                    if not channel.items:
                        await self._bridge_wait(channel)
                    position, value = channel.get()
                else:
                    position, value = await channel.aget()
            except EpochEnded:
                self._finish()
                raise StopAsyncIteration from None
            except BaseException:
                self.abort()
                raise
            if type(value) is not Skipped:
                return self._took(position, value)
            self.loader._skip(position, value)

    async def _bridge_wait(self, channel: Channel) -> None:
        from time import perf_counter

        import anyio.to_thread

        t0 = perf_counter()
        while not channel.items:
            # Waits without taking, so an abandoned (cancelled) wait can never lose a batch.
            await anyio.to_thread.run_sync(channel.wait_ready, self._alive, 0.25, abandon_on_cancel=True)
        self.loader.stats.add_wait(perf_counter() - t0)

    async def aclose(self) -> None:
        self.abort()
