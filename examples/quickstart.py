"""prefetch in one screen: a Keras-style dataset whose batches wait on (simulated) storage,
read serially and then through a prefetching Loader.

    python examples/quickstart.py
"""

import time

import numpy as np

import prefetch


class SlowReads(prefetch.PyDataset):
    """Each batch waits 20 ms, as a read from network storage would, then decodes a little."""

    def __init__(self, num_batches=50, **kwargs):
        super().__init__(**kwargs)
        self.num_batches_ = num_batches

    def __len__(self):
        return self.num_batches_

    def __getitem__(self, idx):
        time.sleep(0.02)  # the I/O wait: threads overlap it
        x = prefetch.rng().standard_normal((32, 64), dtype=np.float32)
        y = np.full(32, idx % 10)
        return x, y


def main():
    ds = SlowReads(workers=8, max_queue_size=16)

    t0 = time.perf_counter()
    serial = [y[0] for _, y in ds]  # iterating a dataset by hand is serial, as in Keras
    serial_s = time.perf_counter() - t0

    with prefetch.Loader(ds) as loader:  # workers / max_queue_size come from the dataset
        t0 = time.perf_counter()
        fast = [y[0] for _, y in loader]
        prefetch_s = time.perf_counter() - t0
        stats = loader.stats

    assert fast == serial, "same batches, same order"
    n = len(ds)
    print(f"{n} batches of 20 ms reads")
    print(f"  serial loop      : {serial_s:6.2f} s  ({n / serial_s:7.1f} batches/s)")
    print(f"  prefetch.Loader  : {prefetch_s:6.2f} s  ({n / prefetch_s:7.1f} batches/s, 8 threads)")
    print(f"  speed-up         : {serial_s / prefetch_s:6.1f}x")
    print(f"  {stats}")


if __name__ == "__main__":
    main()
