"""The accelerator paths on a real GPU: process workers -> shared memory -> to_torch / to_jax.

Checks every batch arrives intact on the device and prints batches/s and GB/s for
`to_torch(device="cuda")` with and without `pin_memory`, and `to_jax` with and without
look-ahead. Needs a CUDA GPU; exits 0 with a note where there is none.

    python benchmarks/device_paths.py [--batches 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import prefetch  # noqa: E402
from prefetch.adapters import jax as pj  # noqa: E402
from prefetch.adapters import torch as pt  # noqa: E402


class Images(prefetch.PyDataset):
    """A 64x3x224x224 float32 batch (~37 MiB) built in shared memory, plus int labels."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        x = prefetch.empty((64, 3, 224, 224), np.float32)
        x.fill(i)
        return x, np.full(64, i, dtype=np.int64)


def run(label: str, batches, n: int, check) -> None:
    t0 = time.perf_counter()
    count = 0
    for i, batch in enumerate(batches):
        check(i, batch)
        count += 1
    dt = time.perf_counter() - t0
    mib = 64 * 3 * 224 * 224 * 4 / 2**20
    print(f"  {label:<44} {count / dt:8.1f} batches/s  {count * mib / 1024 / dt:6.2f} GiB/s", flush=True)
    assert count == n, (count, n)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=200)
    n = parser.parse_args().batches
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    loader = prefetch.Loader(Images(n), workers=4, executor="process", max_queue_size=8)

    def check_torch(i, batch):
        x, y = batch
        assert x.is_cuda and y.is_cuda and x.shape == (64, 3, 224, 224)
        # read back one value per batch: forces the copy to have happened, and checks order
        assert int(y[0].item()) == i and float(x[i % 64, 0, 0, 0].item()) == i

    for pin in (False, True):
        run(f"to_torch(device='cuda', pin_memory={pin})", pt.to_torch(loader, device="cuda", pin_memory=pin), n,
            check_torch)

    import jax

    gpu = [d for d in jax.devices() if d.platform == "gpu"]
    if gpu:
        def check_jax(i, batch):
            x, y = batch
            assert list(x.devices())[0].platform == "gpu"
            assert int(y[0]) == i and float(x[i % 64, 0, 0, 0]) == i

        for ahead in (0, 2):
            run(f"to_jax(device_prefetch={ahead})", pj.to_jax(loader, device_prefetch=ahead), n, check_jax)
    else:
        print("  (JAX sees no GPU here: skipped)")
    loader.close()
    print("ok: every batch arrived intact and in order")
    return 0


if __name__ == "__main__":
    sys.exit(main())
