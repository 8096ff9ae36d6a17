"""Moving a PyTorch `DataLoader` to prefetch: three lines change, the Dataset and the loop do not.

    # before
    from torch.utils.data import DataLoader
    loader = DataLoader(dataset, batch_size=64, shuffle=True, num_workers=4)

    # after
    import prefetch
    from torch.utils.data import default_collate
    loader = prefetch.Loader(prefetch.batched(dataset, 64, shuffle=True, collate=default_collate),
                             workers=4, use_multiprocessing=True, seed=0)

`prefetch.batched` turns the sample-level Dataset into batches (reading them with
`__getitems__` when the Dataset has it, as the DataLoader does) and reshuffles the samples
every epoch from the Loader's seed, so a run is reproducible on any worker count and resumes
exactly from `loader.state_dict()`. Each `for batch in loader` is one epoch, as with the
DataLoader. Use `workers=4` without `use_multiprocessing` for threads (I/O-bound datasets).

    python examples/from_torch_dataloader.py

Exits non-zero if the training loss did not go down.
"""

import sys

import torch
from torch.utils.data import Dataset, default_collate

import prefetch


class NoisyShapes(Dataset):
    """A typical map-style Dataset: sample k is (a 1x16x16 image tensor, its class), with
    random noise drawn from torch's global generator, as torchvision transforms do."""

    def __init__(self, samples=2048):
        g = torch.Generator().manual_seed(0)
        self.labels = torch.randint(0, 2, (samples,), generator=g)
        grid = torch.arange(16.0)
        self.templates = torch.stack([grid.expand(16, 16) / 16, grid.expand(16, 16).T / 16])  # 0: ramp across, 1: down

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, k):
        y = int(self.labels[k])
        x = self.templates[y] + 0.3 * torch.randn(16, 16)  # the worker's torch RNG (seeded per worker)
        return x.unsqueeze(0), y


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a tiny model: leave the cores to the workers
    dataset = NoisyShapes()

    # Was: loader = DataLoader(dataset, batch_size=64, shuffle=True, num_workers=4)
    loader = prefetch.Loader(prefetch.batched(dataset, 64, shuffle=True, collate=default_collate),
                             workers=4, use_multiprocessing=True, seed=0)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    with loader:
        for epoch in range(3):
            total, seen = 0.0, 0
            for x, y in loader:  # one epoch; batch i holds different samples every epoch
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                total += loss.item() * len(y)
                seen += len(y)
            losses.append(total / seen)
            print(f"epoch {epoch + 1}: loss {losses[-1]:.4f} over {seen} samples")
        print(loader.stats)

    if not losses[-1] < losses[0]:
        print("FAILED: the training loss did not decrease", file=sys.stderr)
        return 1
    print("ok: the loss went down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
