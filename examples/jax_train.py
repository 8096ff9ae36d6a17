"""A plain `jax.jit` SGD loop (no optax, no flax) fed by prefetch: `to_jax(prefetch.Loader(...))`.

`to_jax` puts each batch on the device ahead of use — `device_prefetch` batches in flight — so
the host-to-device copy overlaps the previous training step.

    python examples/jax_train.py

Exits non-zero if the training loss did not go down.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

import prefetch
from prefetch.adapters.jax import to_jax


class Waves(prefetch.PyDataset):
    """Regression: y = sin(3x) + x/2 on [-2, 2], in batches, with fresh input noise every epoch."""

    def __init__(self, batches=24, batch_size=64, **kwargs):
        super().__init__(**kwargs)
        self.batches, self.batch_size = batches, batch_size

    def __len__(self):
        return self.batches

    def __getitem__(self, i):
        # prefetch.rng() is determined by (seed, epoch, batch index): reproducible, any worker.
        x = prefetch.rng().uniform(-2, 2, (self.batch_size, 1)).astype(np.float32)
        return x, np.sin(3 * x) + x / 2


def init(key, sizes=(1, 64, 64, 1)):
    params = []
    for k, (m, n) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        params.append((jax.random.normal(k, (m, n)) * jnp.sqrt(1.0 / m), jnp.zeros(n)))
    return params


def predict(params, x):
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return x @ w + b


@jax.jit
def sgd_step(params, x, y, lr=0.02):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((predict(p, x) - y) ** 2))(params)
    return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), loss


def main():
    params = init(jax.random.PRNGKey(0))
    losses = []
    with prefetch.Loader(Waves(workers=2), shuffle=True, seed=0) as loader:
        batches = to_jax(loader, device_prefetch=2)
        print(f"{len(batches)} batches per epoch on {jax.devices()[0]}")
        for epoch in range(5):
            epoch_loss = []
            for x, y in batches:  # jax.Array leaves, already on the device
                params, loss = sgd_step(params, x, y)
                epoch_loss.append(loss)
            losses.append(float(jnp.mean(jnp.stack(epoch_loss))))
            print(f"epoch {epoch + 1}: loss {losses[-1]:.4f}")
        print(loader.stats)

    if not losses[-1] < losses[0]:
        print("FAILED: the training loss did not decrease", file=sys.stderr)
        return 1
    print("ok: the loss went down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
