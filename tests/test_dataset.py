"""`prefetch.PyDataset`: Keras-compatible settings, serial iteration, the missing-super warning."""

from __future__ import annotations

import pytest
from helpers import Indices, Infinite

import prefetch


def test_settings_default_like_keras_and_are_settable():
    ds = Indices(3)
    assert (ds.workers, ds.use_multiprocessing, ds.max_queue_size) == (1, False, 10)
    ds.workers, ds.use_multiprocessing, ds.max_queue_size = 4, True, 2
    assert (ds.workers, ds.use_multiprocessing, ds.max_queue_size) == (4, True, 2)
    assert ds.num_batches == 3


def test_forgetting_super_init_warns_and_uses_defaults():
    class NoSuper(prefetch.PyDataset):
        def __init__(self):
            self.n = 2

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return i

    ds = NoSuper()
    with pytest.warns(UserWarning, match="super"):
        loader = prefetch.Loader(ds)
    assert (loader.workers, loader.max_queue_size) == (1, 10)
    assert list(loader) == [0, 1]
    loader.close()


def test_serial_iteration_over_finite_and_infinite_datasets():
    assert list(Indices(4)) == [0, 1, 2, 3]
    it = iter(Infinite())
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    assert Infinite().num_batches is None


def test_keras_pydataset_subclass_is_accepted_by_the_loader():
    import os

    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")

    class K(keras.utils.PyDataset):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)

        def __len__(self):
            return 6

        def __getitem__(self, i):
            return i

    with prefetch.Loader(K(workers=3, max_queue_size=4)) as loader:
        assert (loader.workers, loader.max_queue_size) == (3, 4)
        assert list(loader) == list(range(6))
