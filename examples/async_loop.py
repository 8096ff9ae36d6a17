"""`async for` over a dataset whose `__getitem__` is a coroutine (asyncio).

Each batch "downloads" its rows (an `await asyncio.sleep`, standing in for an HTTP or object-store
read); the Loader keeps `workers` of those coroutines in flight on the caller's own event loop,
so the training loop — here a numpy logistic regression — rarely waits, and other tasks on the
loop keep running.

    python examples/async_loop.py

Exits non-zero if the training loss did not go down.
"""

import asyncio
import sys
import time

import numpy as np

import prefetch

TRUE_W = np.array([1.5, -2.0, 0.5, 0.0, 1.0])


class RemoteRows(prefetch.PyDataset):
    """Batches of a linearly separable-ish binary problem, fetched with simulated latency."""

    def __init__(self, batches=20, batch_size=64, latency=0.01, **kwargs):
        super().__init__(**kwargs)
        self.batches, self.batch_size, self.latency = batches, batch_size, latency

    def __len__(self):
        return self.batches

    async def __getitem__(self, i):
        await asyncio.sleep(self.latency)  # the network round trip: overlapped with other batches
        g = np.random.default_rng(i)  # the same rows for batch i every epoch
        x = g.standard_normal((self.batch_size, TRUE_W.size))
        y = (x @ TRUE_W + 0.3 * g.standard_normal(self.batch_size) > 0).astype(np.float64)
        return x, y


def sgd_step(w, x, y, lr=0.5):
    p = 1 / (1 + np.exp(-(x @ w)))
    loss = -np.mean(y * np.log(p + 1e-9) + (1 - y) * np.log(1 - p + 1e-9))
    return w - lr * x.T @ (p - y) / len(y), loss


async def heartbeat(ticks):
    while True:  # proof that the loop is not blocked while batches load
        ticks.append(time.perf_counter())
        await asyncio.sleep(0.005)


async def main():
    w = np.zeros(TRUE_W.size)
    losses, ticks = [], []
    beat = asyncio.create_task(heartbeat(ticks))
    t0 = time.perf_counter()
    with prefetch.Loader(RemoteRows(workers=8), shuffle=True, seed=0) as loader:
        for epoch in range(4):
            epoch_loss = []
            async for x, y in loader:  # one epoch, on this event loop
                w, loss = sgd_step(w, x, y)
                epoch_loss.append(loss)
            losses.append(float(np.mean(epoch_loss)))
            print(f"epoch {epoch + 1}: loss {losses[-1]:.4f}")
        stats = loader.stats
    beat.cancel()
    elapsed = time.perf_counter() - t0
    serial = 4 * len(loader) * loader.dataset.latency
    print(f"{4 * len(loader)} batches in {elapsed:.2f} s (serial awaits alone would take {serial:.2f} s); "
          f"the heartbeat task ran {len(ticks)} times meanwhile")
    print(stats)
    if not losses[-1] < losses[0]:
        print("FAILED: the training loss did not decrease", file=sys.stderr)
        return 1
    print("ok: the loss went down")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
