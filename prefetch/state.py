"""A Loader's saved state: its format, strict validation, and where a loader resumes from it.

`Loader.state_dict()` is plain JSON-able data. `parse` checks every field of a state — types,
ranges, keys — against the loader that loads it, and raises one `StateError` (a `ValueError`)
naming the field and why; nothing in a state is unpickled or evaluated. `resume_point` then
says where this loader continues, exactly on the host that saved it, or re-divided among a
different number of hosts (elastic resume).

Format (version 2), for one host of a synchronous data-parallel job:

- `epoch`: the epoch in progress; `seed`, `shuffle`, `num_batches` (of the whole dataset, or
  None when infinite): what the epoch's global order is made from.
- `shard`: `[index, count, pad]` of the host that saved it, or None for all batches.
- `start`: the global position this epoch's part begins at (0 unless the epoch itself was
  resumed on a different number of hosts). The host reads global positions
  `start + index + count * k` of the epoch's global order (see `prefetch.order`).
- `position`, `delivered_after`: local positions k consumed so far — all below `position`,
  and these beyond it (an unordered epoch delivers past a gap).
- `skipped`: the consumed local positions whose batch failed and was skipped (`max_failures`).

With every host at the same step `position` (synchronous training, ordered delivery), the
global positions `[0, start + count * position)` are consumed on every host together: that
single number is the whole job's progress, whoever saved it. Version 1 states (before `start`
and `skipped`) still load.

A dataset that shards itself at sample level (`__prefetch_shard__`, e.g. `prefetch.batched`)
has no global batch order: `position` counts batches of the host's own view, `start` is 0 and
`num_batches` is the whole dataset's. Such a state resumes mid-epoch only on the same host
count and `pad` (`resume_point_sampled`); elsewhere only from an epoch boundary.

Example:
    >>> import prefetch
    >>> with prefetch.Loader(list(range(10)), shard=prefetch.Shard(0, 2)) as a:
    ...     it = iter(a); _ = next(it), next(it)      # batches 0, 2: global positions 0-3 done
    ...     state = a.state_dict()
    >>> with prefetch.Loader(list(range(10)), shard=prefetch.Shard(2, 3)) as b:
    ...     b.load_state_dict(state)                  # the rest on three hosts: 4..9
    ...     list(b)
    [6, 9]
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .order import part_size
from .shard import Shard

VERSION = 2
_KEYS = {
    1: ("version", "epoch", "position", "delivered_after", "seed", "shuffle", "num_batches", "shard"),
    2: ("version", "epoch", "start", "position", "delivered_after", "skipped", "seed", "shuffle", "num_batches",
        "shard"),
}
# Bounds far beyond any real run, so garbage (10**18 epochs) is caught instead of accepted.
_MAX_EPOCH = 2**48
_MAX_SEED = 2**128
_MAX_COUNT = 2**31
_MAX_INFINITE = 2**63  # positions of an infinite dataset


class StateError(ValueError):
    """A state that this loader cannot load; `field` names the offending key."""

    def __init__(self, field: str, why: str):
        super().__init__(f"prefetch: cannot load this Loader state: field {field!r} {why}")
        self.field = field


@dataclass(frozen=True)
class Progress:
    """A validated state (either version), in one shape."""

    epoch: int
    start: int
    position: int
    delivered_after: tuple[int, ...]
    skipped: tuple[int, ...]
    seed: int
    shuffle: bool
    num_batches: int | None
    shard: Shard | None  # of the host that saved it; None (or a count of 1) reads everything


@dataclass(frozen=True)
class ResumePoint:
    """Where a loader continues: its epoch, the global start of its part, and the local
    positions of that part already consumed (and skipped)."""

    epoch: int
    seed: int
    start: int
    position: int
    delivered_after: frozenset[int]
    skipped: frozenset[int]


def shard_key(shard: Shard | None) -> list | None:
    """How a state names a shard: None for all batches (no shard, or a shard of one)."""
    if shard is None or shard.count == 1:
        return None
    return [shard.index, shard.count, shard.pad]


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(field: str, value: Any, lo: int, hi: int, entry: str = "") -> int:
    """An integer in [lo, hi] (numpy integers too; never a bool, float or string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise StateError(field, f"{entry}must be an int, got {type(value).__name__} {_describe(value)}")
    value = int(value)
    if not lo <= value <= hi:
        raise StateError(field, f"{entry}must be in [{lo}, {hi}], got {value}")
    return value


def _bool(field: str, value: Any) -> bool:
    if type(value).__name__ not in ("bool", "bool_"):  # bool or numpy.bool_, nothing truthy
        raise StateError(field, f"must be a bool, got {type(value).__name__} {_describe(value)}")
    return bool(value)


def _int_list(field: str, value: Any, lo: int, hi: int) -> tuple[int, ...]:
    """Strictly increasing integers in [lo, hi]."""
    if not isinstance(value, (list, tuple)):
        raise StateError(field, f"must be a list of ints, got {type(value).__name__} {_describe(value)}")
    if len(value) > max(0, hi - lo + 1):
        raise StateError(field, f"has {len(value)} entries; at most {max(0, hi - lo + 1)} fit in [{lo}, {hi}]")
    out = tuple(_int(field, v, lo, hi, f"entry {k}: ") for k, v in enumerate(value))
    for k in range(1, len(out)):
        if out[k] <= out[k - 1]:
            what = "a duplicate" if out[k] == out[k - 1] else "out of order"
            raise StateError(field, f"must be sorted without duplicates; entry {k} ({out[k]}) is {what}")
    return out


def _shard(value: Any) -> Shard | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise StateError("shard", f"must be None or [index, count, pad], got {_describe(value)}")
    count = _int("shard", value[1], 1, _MAX_COUNT)
    index = _int("shard", value[0], 0, count - 1)
    return Shard(index, count, _bool("shard", value[2]))


def parse(state: Any, *, num_batches: int | None, shuffle: bool,
          part: Callable[[Shard | None], int] | None = None) -> Progress:
    """Validate `state` for a loader over `num_batches` batches (None: infinite) with
    `shuffle`; raise `StateError` at the first field that is wrong.

    `part`, for a dataset that shards itself at sample level (`__prefetch_shard__`): the number
    of batches the part of a shard holds (its view's length); `start` must then be 0."""
    if not isinstance(state, dict):
        raise StateError("state", f"must be a dict from Loader.state_dict(), got {type(state).__name__}")
    if "version" not in state:
        raise StateError("version", "is missing: this is not a prefetch Loader state")
    version = state["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version not in _KEYS:
        raise StateError("version", f"must be one of {sorted(_KEYS)}, got {_describe(version)}")
    keys = _KEYS[version]
    missing = [k for k in keys if k not in state]
    if missing:
        raise StateError(missing[0], f"is missing (a version {version} state has {', '.join(keys)})")
    extra = sorted(map(str, set(state) - set(keys)))
    if extra:
        raise StateError(extra[0], f"is not a field of a version {version} Loader state")

    saved_n = state["num_batches"]
    if saved_n is not None:
        saved_n = _int("num_batches", saved_n, 0, _MAX_INFINITE)
    if saved_n != num_batches:
        raise StateError("num_batches", f"is {saved_n}: the state is for a dataset of {saved_n} batches; "
                                        f"this loader's has {num_batches}")
    saved_shuffle = _bool("shuffle", state["shuffle"])
    if saved_shuffle != shuffle:
        raise StateError("shuffle", f"is {saved_shuffle}; this loader has shuffle={shuffle}")
    seed = _int("seed", state["seed"], 0, _MAX_SEED)
    epoch = _int("epoch", state["epoch"], 0, _MAX_EPOCH)
    shard = _shard(state["shard"])
    if part is not None:
        start = _int("start", state.get("start", 0), 0, num_batches if num_batches is not None else _MAX_INFINITE)
        if start:
            raise StateError("start", f"is {start}: the state resumed an epoch on another host count at batch level, "
                                      "but this dataset shards itself at sample level (__prefetch_shard__), where "
                                      "every part starts at 0")
        size = part(shard)
    elif num_batches is None:
        start = _int("start", state.get("start", 0), 0, _MAX_INFINITE)
        size = _MAX_INFINITE
    else:
        start = _int("start", state.get("start", 0), 0, num_batches)
        size = part_size(num_batches, shard, start)
    position = _int("position", state["position"], 0, size)
    after = _int_list("delivered_after", state["delivered_after"], position + 1, size - 1)
    skipped = _int_list("skipped", state.get("skipped", ()), 0, size - 1)
    consumed = set(after)
    for p in skipped:
        if p >= position and p not in consumed:
            raise StateError("skipped", f"names position {p}, which the state does not count as consumed")
    return Progress(epoch=epoch, start=start, position=position, delivered_after=after, skipped=skipped, seed=seed,
                    shuffle=saved_shuffle, num_batches=saved_n, shard=shard)


def resume_point(progress: Progress, shard: Shard | None) -> ResumePoint:
    """Where a loader reading `shard` continues from `progress`.

    On the shard that saved it: exactly where that host stopped. On any other shard (another
    index, host count or `pad`): the job's global progress — every host at the same step —
    is `start + count * position`, and the rest of the epoch's global order from there is
    re-divided among the new hosts (`prefetch.order.epoch_order` with that `start`).
    """
    same = shard_key(shard) == shard_key(progress.shard)
    if same:
        return ResumePoint(progress.epoch, progress.seed, progress.start, progress.position,
                           frozenset(progress.delivered_after), frozenset(progress.skipped))
    if progress.delivered_after:
        raise StateError("delivered_after", "is not empty: this host delivered batches out of order (ordered=False), "
                                            "so the state does not say what the other hosts consumed; resume it on "
                                            f"the same shard ({shard_key(progress.shard)}), or save at a step where "
                                            "delivery caught up (ordered=True always does)")
    count = 1 if progress.shard is None else progress.shard.count
    done = progress.start + count * progress.position
    if progress.num_batches is not None:
        done = min(done, progress.num_batches)  # a padded part wraps past the end
    return ResumePoint(progress.epoch, progress.seed, done, 0, frozenset(), frozenset())


def resume_point_sampled(progress: Progress, shard: Shard | None, part: Callable[[Shard | None], int]) -> ResumePoint:
    """Where a loader reading `shard` of a dataset that shards itself at sample level
    (`__prefetch_shard__`, e.g. `prefetch.batched`) continues from `progress`; `part(shard)` is
    the number of batches of a shard's part.

    Such a state counts batches of the host's own part (`start` is always 0). On the same
    count and `pad` every host's part has the same length and, every host at the same step,
    any host's position is everyone's: the loader continues at that position (exactly where
    it stopped on the shard that saved it). On another host count the samples would have to be
    re-divided mid-epoch, which batches already made cannot be: only a state at an epoch
    boundary (nothing, or everything, of the epoch consumed) loads; else `StateError("shard")`.
    """
    same = shard_key(shard) == shard_key(progress.shard)
    if same:
        return ResumePoint(progress.epoch, progress.seed, 0, progress.position,
                           frozenset(progress.delivered_after), frozenset(progress.skipped))
    count = 1 if progress.shard is None else progress.shard.count
    pad = False if progress.shard is None else progress.shard.pad
    new_count = 1 if shard is None else shard.count
    new_pad = False if shard is None else shard.pad
    if not progress.delivered_after:
        if progress.position == 0:
            return ResumePoint(progress.epoch, progress.seed, 0, 0, frozenset(), frozenset())
        if progress.position >= part(progress.shard):  # the whole part read: the epoch is over
            return ResumePoint(progress.epoch, progress.seed, 0, part(shard), frozenset(), frozenset())
    if (count, pad) == (new_count, new_pad):  # another host of the same job, at the same step
        if progress.delivered_after:
            raise StateError("delivered_after", "is not empty: this host delivered batches out of order "
                                                "(ordered=False), so the state does not say what the other hosts "
                                                f"consumed; resume it on the same shard ({shard_key(progress.shard)})")
        return ResumePoint(progress.epoch, progress.seed, 0, progress.position, frozenset(), frozenset())
    raise StateError("shard", f"is {shard_key(progress.shard)}: the state was saved mid-epoch (position "
                              f"{progress.position}) on {count} host(s) with pad={pad}, and this loader's shard is "
                              f"{shard_key(shard)} ({new_count} host(s), pad={new_pad}); the dataset is sharded at "
                              "sample level (__prefetch_shard__), and the rest of an epoch cannot be re-divided among "
                              f"another number of hosts. Resume it with Shard(j, {count}, pad={pad}), or from a state "
                              "saved at an epoch boundary")



def settled(state: dict[str, Any], size: int | None = None) -> dict[str, Any]:
    """`state` (from `Loader.state_dict()`), written as the start of the next epoch when every
    batch of its epoch was consumed but the epoch was not ended yet (a framework that stops
    asking at `len(loader)` batches, as Keras does, never asks for the end).

    `size`: the batches of the host's part of the epoch, when the dataset shards itself at
    sample level (`Loader._part_size()`); by default computed from the state.

    Example:
        >>> s = {"version": 2, "epoch": 0, "start": 0, "position": 3, "delivered_after": [], "skipped": [1],
        ...      "seed": 0, "shuffle": False, "num_batches": 3, "shard": None}
        >>> settled(s)["epoch"], settled(s)["position"], settled(s)["skipped"]
        (1, 0, [])
    """
    n = state.get("num_batches")
    if n is None or state.get("delivered_after"):
        return state
    if size is None:
        raw = state.get("shard")
        size = part_size(n, None if raw is None else Shard(*raw), state.get("start", 0))
    if state["position"] < size:
        return state
    return dict(state, epoch=state["epoch"] + 1, start=0, position=0, delivered_after=[], skipped=[])
