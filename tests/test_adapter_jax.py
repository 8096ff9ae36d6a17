"""`prefetch.adapters.jax.to_jax`: a real `jax.jit` training loop over a prefetch Loader."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import prefetch  # noqa: E402
from prefetch.adapters.jax import to_jax  # noqa: E402

try:
    from adapter_datasets import Endless, Kept, Nested, Pair, Regression, assert_trained_two_epochs, nested_batch
except ImportError:  # tests/ imported as a package
    from .adapter_datasets import Endless, Kept, Nested, Pair, Regression, assert_trained_two_epochs, nested_batch


def _gpus():
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


class Counting:
    """A re-iterable of numpy batches that counts what was taken from it."""

    def __init__(self, n: int = 6):
        self.n = n
        self.taken = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i in range(self.n):
            self.taken += 1
            yield np.full((2, 2), i, np.float32), np.arange(2) + i


def test_jit_training_loop_loss_decreases_over_two_epochs():
    ds = Regression(n=8, workers=2)

    @jax.jit
    def step(params, x, y):
        def loss_fn(p):
            return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads), loss

    params = {"w": jnp.zeros((3, 1)), "b": jnp.zeros(())}
    epoch_losses, batches_per_epoch = [], []
    with prefetch.Loader(ds) as loader:
        batches = to_jax(loader)
        for _ in range(2):
            losses = []
            for x, y in batches:
                assert isinstance(x, jax.Array) and isinstance(y, jax.Array)
                params, loss = step(params, x, y)
                losses.append(float(loss))
            epoch_losses.append(np.mean(losses))
            batches_per_epoch.append(len(losses))
    assert_trained_two_epochs(ds, epoch_losses, batches_per_epoch)


def test_structure_is_kept_with_jax_array_leaves():
    with prefetch.Loader(Nested()) as loader:
        got = list(to_jax(loader))
    assert len(got) == 3
    for i, b in enumerate(got):
        want = nested_batch(i)
        assert isinstance(b, dict) and sorted(b) == sorted(want)
        assert isinstance(b["pair"], Pair)
        x, y = b["pair"]
        assert isinstance(x, jax.Array) and x.shape == (2, 3) and x.dtype == jnp.float32
        assert isinstance(y, jax.Array) and y.tolist() == [i, i + 1]
        assert isinstance(b["list"], list) and isinstance(b["list"][1], tuple)
        assert all(isinstance(leaf, jax.Array) for leaf in [b["list"][0], *b["list"][1]])
        assert isinstance(b["scalar"], jax.Array) and b["scalar"].shape == () and float(b["scalar"]) == i
        # Python numbers, strings and string arrays pass through; None stays None.
        assert b["index"] == i and type(b["index"]) is int
        assert b["name"] == f"batch-{i}"
        assert isinstance(b["names"], np.ndarray) and b["names"].tolist() == [f"a{i}", f"b{i}"]
        assert b["none"] is None


@pytest.mark.parametrize("device_prefetch", [0, 1, 3])
def test_device_prefetch_depth_gives_the_same_batches(device_prefetch):
    ds = Regression(n=5, workers=2)
    with prefetch.Loader(ds) as loader:
        want = [(x.copy(), y.copy()) for x, y in loader]
        got = [(np.asarray(x), np.asarray(y)) for x, y in to_jax(loader, device_prefetch=device_prefetch)]
    assert len(got) == 5
    for (x, y), (wx, wy) in zip(got, want):
        assert np.array_equal(x, wx) and np.array_equal(y, wy)


@pytest.mark.parametrize("device_prefetch", [0, 1, 3])
def test_device_prefetch_puts_that_many_batches_ahead(device_prefetch):
    source = Counting(6)
    seen = [(k, source.taken, int(x[0, 0])) for k, (x, _) in enumerate(to_jax(source, device_prefetch=device_prefetch))]
    # When batch k is handed out, batches up to k + device_prefetch were already put.
    assert seen == [(k, min(k + 1 + device_prefetch, 6), k) for k in range(6)]


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_device_prefetch_must_be_a_non_negative_int(bad):
    with pytest.raises((TypeError, ValueError)):
        to_jax(Counting(), device_prefetch=bad)


def test_single_device_sharding_places_every_leaf():
    device = jax.devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    with prefetch.Loader(Regression(n=3)) as loader:
        got = list(to_jax(loader, sharding=sharding))
    assert len(got) == 3
    for x, y in got:
        assert x.sharding == sharding and y.sharding == sharding
        assert x.devices() == {device}


def test_a_device_works_as_placement():
    device = jax.devices()[-1]
    with prefetch.Loader(Regression(n=2)) as loader:
        for x, _ in to_jax(loader, sharding=device):
            assert x.devices() == {device}


def test_len_is_the_loaders_and_infinite_has_none():
    with prefetch.Loader(Regression(n=4)) as loader:
        assert len(to_jax(loader)) == 4
    with prefetch.Loader(Endless()) as loader:
        batches = to_jax(loader, device_prefetch=2)
        with pytest.raises(TypeError):
            len(batches)
        it = iter(batches)
        assert [int(next(it)[0]) for _ in range(4)] == [0, 1, 2, 3]


def test_each_iteration_is_one_epoch_and_break_leaves_nothing_behind():
    ds = Regression(n=6, workers=2)
    with prefetch.Loader(ds) as loader:
        batches = to_jax(loader, device_prefetch=2)
        for k, _ in enumerate(batches):
            if k == 1:
                break
        assert len(list(batches)) == 6  # the next epoch starts clean and whole
    assert ds.hooks == ["begin", "begin", "end"]


def test_jax_array_leaves_are_moved_too():
    device = jax.devices()[0]
    a = jnp.arange(4)
    with prefetch.Loader(Kept([(a, np.arange(4))])) as loader:
        ((x, y),) = list(to_jax(loader, sharding=jax.sharding.SingleDeviceSharding(device)))
    assert x.tolist() == y.tolist() == [0, 1, 2, 3]


@pytest.mark.gpu
@pytest.mark.skipif(not _gpus(), reason="needs a JAX GPU device")
def test_gpu_batches_land_on_the_gpu():
    gpu = _gpus()[0]
    with prefetch.Loader(Regression(n=4, workers=2)) as loader:
        want = [x.copy() for x, _ in loader]
        got = list(to_jax(loader, sharding=jax.sharding.SingleDeviceSharding(gpu), device_prefetch=2))
    assert len(got) == 4
    for (x, _), wx in zip(got, want):
        assert x.devices() == {gpu} and np.array_equal(np.asarray(x), wx)


@pytest.mark.gpu
@pytest.mark.skipif(not _gpus(), reason="needs a JAX GPU device")
@pytest.mark.parametrize("device_prefetch", [0, 3])
def test_gpu_large_batches_arrive_intact(device_prefetch):
    arrays = [np.random.default_rng(i).standard_normal((1024, 4096)).astype(np.float32) for i in range(8)]
    gpu = _gpus()[0]
    with prefetch.Loader(Kept(arrays, workers=4)) as loader:
        got = list(to_jax(loader, device_prefetch=device_prefetch, sharding=gpu))
    assert len(got) == 8
    assert all(x.devices() == {gpu} and np.array_equal(np.asarray(x), a) for x, a in zip(got, arrays))
