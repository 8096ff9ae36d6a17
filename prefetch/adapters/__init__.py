"""Thin bridges from a `prefetch.Loader` to training frameworks.

Each submodule imports its framework only when one of its functions is called, so
`import prefetch` and `import prefetch.adapters` never import Keras, PyTorch or JAX.

Example:
    >>> from prefetch.adapters import keras as pk, torch as pt, jax as pj  # imports no framework
    >>> # model.fit(pk.to_keras(dataset), epochs=3)
    >>> # for x, y in pt.to_torch(loader, device="cuda"): ...
    >>> # for x, y in pj.to_jax(loader, device_prefetch=2): ...

Batches are numpy trees (array, tuple, list, dict, nested); the adapters keep the structure and
convert the leaves.
"""

__all__ = ["jax", "keras", "torch"]
