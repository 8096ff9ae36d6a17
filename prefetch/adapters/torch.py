"""PyTorch adapter: a `prefetch.Loader`'s numpy batches as `torch.Tensor` trees.

`import prefetch.adapters.torch` does not import torch; `to_torch` does.

Leaf conversion (the structure — tuple, namedtuple, list, dict, nested — is kept):

- numpy arrays become tensors with `torch.from_numpy`: zero-copy on the CPU, the tensor
  shares the batch's memory. Arrays torch cannot share are copied first: read-only arrays
  (torch has no read-only tensors, and writing through a shared view would corrupt or crash),
  negative strides and non-native byte order.
- numpy scalars (`np.float32(1.5)`) become 0-d tensors.
- `torch.Tensor` leaves stay tensors (and move to `device`).
- everything else passes through unchanged, as in torch's own `default_convert`: Python
  numbers, strings, `None`, and numpy arrays of strings, objects or datetimes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ._tree import converted_ahead, is_array_leaf, map_structure

if TYPE_CHECKING:
    import torch

__all__ = ["TorchBatches", "to_tensor_tree", "to_torch"]


def _accelerator_available() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None:
        return bool(accelerator.is_available())
    return bool(torch.cuda.is_available())


def _shareable(x: np.ndarray) -> np.ndarray:
    """`x` itself when `torch.from_numpy` can share it, else a private, writable copy."""
    if x.flags.writeable and x.dtype.isnative and all(s >= 0 for s in x.strides):
        return x
    return np.array(x, dtype=x.dtype.newbyteorder("="), order="C", copy=True)


def to_tensor_tree(batch: Any) -> Any:
    """Convert a batch's array leaves to CPU tensors, keeping its structure (see module doc).

    Example:
        >>> import numpy as np
        >>> x, meta = to_tensor_tree((np.zeros((2, 3), np.float32), {"ids": np.arange(2), "tag": "a"}))
        >>> type(x).__name__, x.shape, type(meta["ids"]).__name__, meta["tag"]
        ('Tensor', torch.Size([2, 3]), 'Tensor', 'a')
    """
    import torch

    return map_structure(lambda x: _tensor_leaf(torch, x), batch)


def _tensor_leaf(torch: Any, x: Any) -> Any:
    if isinstance(x, np.ndarray) and is_array_leaf(x):
        return torch.from_numpy(_shareable(x))
    if isinstance(x, np.generic) and is_array_leaf(x):
        return torch.as_tensor(x)
    return x


class TorchBatches:
    """An iterable over a loader's epochs with `torch.Tensor` leaves; see `to_torch`."""

    def __init__(self, loader: Iterable[Any], device: str | torch.device | None = None,
                 pin_memory: bool = False):
        import torch

        self.loader = loader
        self.device = None if device is None else torch.device(device)
        on_cpu = self.device is not None and self.device.type == "cpu"
        # Pinning only helps host-to-accelerator copies; torch raises when asked to pin
        # without an accelerator, so it is skipped there (with a warning, as DataLoader does)
        # and for an explicit CPU device (nothing to copy).
        self.pin_memory = bool(pin_memory) and not on_cpu and _accelerator_available()
        if pin_memory and not on_cpu and not self.pin_memory:
            warnings.warn("to_torch(pin_memory=True): no accelerator is available, so host memory is not pinned",
                          stacklevel=3)
        # A copy to an accelerator runs asynchronously; keeping one batch ahead overlaps
        # it with the training step. On the CPU there is nothing to overlap.
        self._transfer = self.device is not None and not on_cpu
        self._leaf = self._leaf_function(torch)

    def __len__(self) -> int:
        """Batches per epoch: `len(loader)`; `TypeError` when the loader is infinite."""
        return len(self.loader)  # type: ignore[arg-type]

    def _leaf_function(self, torch: Any) -> Any:
        """What happens to one leaf, decided once: convert, then pin and move if asked."""
        pin, transfer, device = self.pin_memory, self._transfer, self.device
        if not (pin or transfer):
            return lambda x: _tensor_leaf(torch, x)

        def leaf(x: Any) -> Any:
            x = _tensor_leaf(torch, x)
            if not isinstance(x, torch.Tensor):
                return x
            if pin and x.device.type == "cpu" and not x.is_pinned():
                x = x.pin_memory()
            if transfer:
                # From pinned memory this returns at once; the copy runs on the stream.
                x = x.to(device, non_blocking=True)
            return x

        return leaf

    def _convert(self, batch: Any) -> Any:
        return map_structure(self._leaf, batch)

    def __iter__(self) -> Iterator[Any]:
        return converted_ahead(self.loader, self._convert, 1 if self._transfer else 0)

    def __repr__(self) -> str:
        return f"TorchBatches({self.loader!r}, device={self.device}, pin_memory={self.pin_memory})"


def to_torch(loader: Iterable[Any], device: str | torch.device | None = None,
             pin_memory: bool = False) -> TorchBatches:
    """Iterate a loader's batches as `torch.Tensor` trees, optionally moved to `device`.

    Each `iter()` of the result is one epoch of `loader` (a `prefetch.Loader`, or any
    iterable of numpy batches); `len()` is `len(loader)`.

    Args:
        loader: usually a `prefetch.Loader`.
        device: `None` keeps tensors on the CPU, sharing the batch's memory (no copy);
            a `str` or `torch.device` moves them there. For an accelerator the copy is
            `non_blocking=True` and issued one batch ahead of the one being used.
        pin_memory: pin host memory so the copy to an accelerator is truly asynchronous.
            Skipped (with a warning) when no accelerator is available, and for `device="cpu"`.

    Example:
        >>> import numpy as np, prefetch
        >>> from prefetch.adapters.torch import to_torch
        >>> class Pairs(prefetch.PyDataset):
        ...     def __len__(self):
        ...         return 3
        ...     def __getitem__(self, i):
        ...         return np.full((4, 2), i, np.float32), {"label": np.arange(4)}
        >>> with prefetch.Loader(Pairs(workers=2)) as loader:
        ...     batches = to_torch(loader)
        ...     [(len(batches), float(x.sum()), tuple(y["label"].shape)) for x, y in batches][-1]
        (3, 16.0, (4,))
    """
    return TorchBatches(loader, device=device, pin_memory=pin_memory)
