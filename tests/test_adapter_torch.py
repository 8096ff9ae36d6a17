"""`prefetch.adapters.torch.to_torch`: real PyTorch training over a prefetch Loader."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import prefetch  # noqa: E402
from prefetch.adapters.torch import to_torch  # noqa: E402

try:
    from adapter_datasets import Endless, Kept, Nested, Pair, Regression, assert_trained_two_epochs, nested_batch
except ImportError:  # tests/ imported as a package
    from .adapter_datasets import Endless, Kept, Nested, Pair, Regression, assert_trained_two_epochs, nested_batch


def _accelerator() -> bool:
    acc = getattr(torch, "accelerator", None)
    return bool(acc.is_available()) if acc is not None else torch.cuda.is_available()


def _ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_training_loop_loss_decreases_over_two_epochs():
    torch.manual_seed(0)
    ds = Regression(n=8, workers=2)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    epoch_losses, batches_per_epoch = [], []
    with prefetch.Loader(ds) as loader:
        batches = to_torch(loader)
        for _ in range(2):
            losses = []
            for x, y in batches:
                assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            epoch_losses.append(np.mean(losses))
            batches_per_epoch.append(len(losses))
    assert_trained_two_epochs(ds, epoch_losses, batches_per_epoch)


def test_structure_is_kept_with_tensor_leaves():
    with prefetch.Loader(Nested()) as loader:
        got = list(to_torch(loader))
    assert len(got) == 3
    for i, b in enumerate(got):
        want = nested_batch(i)
        assert isinstance(b, dict) and list(b) == list(want)
        assert isinstance(b["pair"], Pair)
        x, y = b["pair"]
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (2, 3)
        assert torch.equal(y, torch.arange(2) + i)
        assert isinstance(b["list"], list) and isinstance(b["list"][1], tuple)
        assert b["list"][0].dtype == torch.float64 and b["list"][1][1].dtype == torch.bool
        # numpy scalars become 0-d tensors ...
        assert isinstance(b["scalar"], torch.Tensor) and b["scalar"].shape == () and b["scalar"].item() == i
        # ... other leaves pass through, as in torch's default_convert
        assert b["index"] == i and type(b["index"]) is int
        assert b["name"] == f"batch-{i}"
        assert isinstance(b["names"], np.ndarray) and b["names"].tolist() == [f"a{i}", f"b{i}"]
        assert b["none"] is None


@pytest.mark.parametrize("batch", [
    pytest.param(lambda a: a, id="array"),
    pytest.param(lambda a: (a, a[:1]), id="tuple"),
    pytest.param(lambda a: [a], id="list"),
    pytest.param(lambda a: {"x": {"deep": (a,)}}, id="nested-dict"),
])
def test_structures_keep_their_type(batch):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    with prefetch.Loader(Kept([batch(a)])) as loader:
        (got,) = list(to_torch(loader))
    assert _skeleton(got, torch.Tensor) == _skeleton(batch(a), np.ndarray)


def _skeleton(b, leaf_type):
    """The structure with containers' types kept and leaves (all of `leaf_type`) as lists."""
    if isinstance(b, dict):
        return type(b), {k: _skeleton(v, leaf_type) for k, v in b.items()}
    if isinstance(b, (tuple, list)):
        return type(b), [_skeleton(v, leaf_type) for v in b]
    assert isinstance(b, leaf_type), type(b)
    return np.asarray(b).tolist()


@pytest.mark.parametrize("device", [None, "cpu", torch.device("cpu")], ids=["none", "str", "torch.device"])
def test_cpu_tensors_share_the_batch_memory(device):
    arrays = [(np.random.default_rng(i).standard_normal((4, 5)).astype(np.float32), np.arange(4) + i) for i in range(4)]
    with prefetch.Loader(Kept(arrays, workers=2)) as loader:
        for i, (x, y) in enumerate(to_torch(loader, device=device)):
            assert x.device.type == "cpu"
            assert x.data_ptr() == _ptr(arrays[i][0])  # zero-copy
            assert y.data_ptr() == _ptr(arrays[i][1])


def test_arrays_torch_cannot_share_are_copied_and_correct():
    base = np.arange(12, dtype=np.float64)
    read_only = base.copy()
    read_only.flags.writeable = False
    batch = (read_only, base[::-1], base.astype(">f8"), np.broadcast_to(base[:3], (2, 3)))
    with prefetch.Loader(Kept([batch])) as loader:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's "not writable" warning would be an error
            ((ro, rev, big, bcast),) = list(to_torch(loader))
    assert ro.data_ptr() != _ptr(read_only)  # a private copy: writing to it cannot corrupt the batch
    ro[0] = 99.0
    assert read_only[0] == 0.0
    assert rev.tolist() == base[::-1].tolist()
    assert big.dtype == torch.float64 and big.tolist() == base.tolist()
    assert bcast.tolist() == [[0.0, 1.0, 2.0]] * 2


def test_len_is_the_loaders_and_infinite_has_none():
    with prefetch.Loader(Regression(n=5)) as loader:
        assert len(to_torch(loader)) == 5
    with prefetch.Loader(Endless()) as loader:
        batches = to_torch(loader)
        with pytest.raises(TypeError):
            len(batches)
        it = iter(batches)
        assert [int(next(it)[0]) for _ in range(3)] == [0, 1, 2]


def test_each_iteration_is_one_epoch_and_break_leaves_nothing_behind():
    ds = Regression(n=6, workers=2)
    with prefetch.Loader(ds) as loader:
        batches = to_torch(loader)
        for k, _ in enumerate(batches):
            if k == 1:
                break
        assert len(list(batches)) == 6  # the next epoch starts clean and whole
        assert len(list(batches)) == 6
    assert ds.hooks == ["begin", "begin", "end", "begin", "end"]


@pytest.mark.skipif(_accelerator(), reason="checks the no-accelerator fallback")
def test_pin_memory_without_accelerator_is_skipped_with_a_warning():
    arrays = [(np.ones((2, 2), np.float32), np.zeros(2, np.float32))]
    with prefetch.Loader(Kept(arrays)) as loader:
        with pytest.warns(UserWarning, match="no accelerator"):
            batches = to_torch(loader, pin_memory=True)
        assert batches.pin_memory is False
        ((x, _),) = list(batches)
    assert x.device.type == "cpu" and x.data_ptr() == _ptr(arrays[0][0])


def test_pin_memory_with_cpu_device_runs_without_pinning():
    arrays = [(np.ones((2, 2), np.float32), np.zeros(2, np.float32)) for _ in range(3)]
    with prefetch.Loader(Kept(arrays)) as loader:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing to warn about: the CPU needs no pinning
            got = list(to_torch(loader, device="cpu", pin_memory=True))
    assert len(got) == 3
    assert all(x.device.type == "cpu" and not x.is_pinned() for x, _ in got)


def test_tensor_leaves_pass_through():
    t = torch.arange(3)
    with prefetch.Loader(Kept([(t, np.arange(3))])) as loader:
        ((a, b),) = list(to_torch(loader))
    assert a is t and torch.equal(b, t)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pin_memory", [False, True])
def test_cuda_device_gets_every_batch_in_order(pin_memory):
    ds = Regression(n=6, workers=2)
    with prefetch.Loader(ds) as loader:
        want = [(x.copy(), y.copy()) for x, y in loader]
        got = [(x, y) for x, y in to_torch(loader, device="cuda", pin_memory=pin_memory)]
    assert len(got) == 6
    for (x, y), (wx, wy) in zip(got, want):
        assert x.device.type == "cuda" and y.device.type == "cuda"
        assert np.array_equal(x.cpu().numpy(), wx) and np.array_equal(y.cpu().numpy(), wy)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_copy_is_issued_one_batch_ahead():
    class Counting:
        """A re-iterable of numpy batches that counts what was taken from it."""

        def __init__(self):
            self.taken = 0

        def __iter__(self):
            for i in range(5):
                self.taken += 1
                yield np.full((2, 2), i, np.float32)

    source = Counting()
    seen = []
    for k, x in enumerate(to_torch(source, device="cuda")):
        seen.append((k, source.taken, float(x[0, 0])))
    assert seen == [(0, 2, 0.0), (1, 3, 1.0), (2, 4, 2.0), (3, 5, 3.0), (4, 5, 4.0)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pin_memory_with_cuda_pins_host_tensors():
    with prefetch.Loader(Kept([np.ones((4, 4), np.float32)])) as loader:
        (x,) = list(to_torch(loader, pin_memory=True))
    assert x.device.type == "cpu" and x.is_pinned()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_large_batches_arrive_intact_with_pinned_memory():
    # Big enough that an asynchronous copy from a reused or freed buffer would show.
    arrays = [np.random.default_rng(i).standard_normal((1024, 4096)).astype(np.float32) for i in range(8)]
    with prefetch.Loader(Kept(arrays, workers=4)) as loader:
        for _ in range(2):
            got = [x for x in to_torch(loader, device="cuda", pin_memory=True)]
            assert len(got) == 8
            assert all(x.is_cuda and np.array_equal(x.cpu().numpy(), a) for x, a in zip(got, arrays))
