"""A plain PyTorch training loop fed by prefetch: `to_torch(prefetch.Loader(...))`.

The dataset builds each batch in `__getitem__` (with a little per-batch augmentation noise from
`prefetch.rng()`, reproducible for a given seed); the Loader produces batches on worker threads
ahead of the loop, and `to_torch` hands them over as tensors — zero-copy on the CPU, or copied
to the GPU one batch ahead with pinned memory when CUDA is available.

    python examples/torch_train.py

Exits non-zero if the training loss did not go down.
"""

import sys

import numpy as np
import torch

import prefetch
from prefetch.adapters.torch import to_torch


class Spirals(prefetch.PyDataset):
    """Two interleaved spirals, 2-D points labelled 0/1, served in batches."""

    def __init__(self, samples=2048, batch_size=128, **kwargs):
        super().__init__(**kwargs)
        rng = np.random.default_rng(0)
        t = rng.uniform(0.5, 3 * np.pi, samples)
        label = rng.integers(0, 2, samples)
        angle = t + np.pi * label
        self.x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1).astype(np.float32) / 5
        self.y = label.astype(np.int64)
        self.batch_size = batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, i):
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        # Augmentation: determined by (seed, epoch, batch), whatever thread runs it.
        noise = prefetch.rng().normal(0, 0.02, self.x[s].shape).astype(np.float32)
        return self.x[s] + noise, self.y[s]


def main():
    torch.manual_seed(0)
    # A model this small runs fastest on one thread, and that leaves the other cores to the
    # Loader's workers.
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 2)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)

    losses = []
    with prefetch.Loader(Spirals(workers=2), shuffle=True, seed=0) as loader:
        batches = to_torch(loader, device=device, pin_memory=cuda)
        print(f"{len(batches)} batches per epoch on {device}")
        for epoch in range(6):
            total, correct, seen = 0.0, 0, 0
            for x, y in batches:  # one epoch of the Loader, a new order each time
                opt.zero_grad()
                logits = model(x)
                loss = torch.nn.functional.cross_entropy(logits, y)
                loss.backward()
                opt.step()
                total += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
            losses.append(total / seen)
            print(f"epoch {epoch + 1}: loss {losses[-1]:.4f}  accuracy {correct / seen:.3f}")
        print(loader.stats)

    if not losses[-1] < losses[0]:
        print("FAILED: the training loss did not decrease", file=sys.stderr)
        return 1
    print("ok: the loss went down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
