"""Keras `fit` on image files through prefetch: the `keras.utils.PyDataset` docs' CIFAR-10 example.

A few hundred small PNG files are written to a temporary directory first (no download); the
dataset reads and resizes them in `__getitem__`, exactly as the Keras docs' example does, and
`to_keras` feeds `fit` (and its validation data) from a prefetch Loader instead of Keras's
own enqueuer. The Keras backend comes from KERAS_BACKEND (default: jax).

    python examples/keras_fit.py
    KERAS_BACKEND=torch python examples/keras_fit.py

Exits non-zero if the training loss did not go down.
"""

import math
import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")  # before Keras is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from prefetch.adapters.keras import to_keras  # noqa: E402

CLASSES = 3
SIZE = 24  # the files are 40x40; the dataset resizes them to SIZE x SIZE


class CIFAR10PyDataset(keras.utils.PyDataset):
    """Here, `x_set` is a list of paths to the images and `y_set` the associated classes."""

    def __init__(self, x_set, y_set, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y = x_set, y_set
        self.batch_size = batch_size

    def __len__(self):
        # Return number of batches.
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, idx):
        # Return x, y for batch idx.
        low = idx * self.batch_size
        # Cap upper bound at array length; the last batch may be smaller
        # if the total number of items is not a multiple of batch size.
        high = min(low + self.batch_size, len(self.x))
        batch_x = self.x[low:high]
        batch_y = self.y[low:high]
        return np.array([imread_resized(file_name, (SIZE, SIZE)) for file_name in batch_x]), np.array(batch_y)


def imread_resized(path, size):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize(size, Image.BILINEAR), dtype="float32") / 255.0


def write_images(folder, count, seed):
    """Noisy 40x40 images of one of three classes: a red disc, a green bar, a blue square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:40, :40]
    paths, labels = [], []
    for i in range(count):
        label = int(rng.integers(CLASSES))
        cx, cy = rng.integers(12, 28, size=2)
        if label == 0:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < 64
        elif label == 1:
            mask = np.abs(xx - cx) < 3
        else:
            mask = (np.abs(xx - cx) < 7) & (np.abs(yy - cy) < 7)
        img = rng.integers(0, 90, size=(40, 40, 3))
        img[mask, label] = 230
        path = os.path.join(folder, f"img_{i:04d}.png")
        Image.fromarray(img.astype(np.uint8)).save(path)
        paths.append(path)
        labels.append(label)
    return paths, labels


def main():
    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory(prefix="prefetch-keras-") as folder:
        paths, labels = write_images(folder, 360, seed=0)
        train = CIFAR10PyDataset(paths[:288], labels[:288], batch_size=32, workers=4)
        val = CIFAR10PyDataset(paths[288:], labels[288:], batch_size=36, workers=2)

        model = keras.Sequential([
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ])
        model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
        # shuffle=True: the Loader draws a new batch order each epoch (Keras's `shuffle` does
        # not apply to an adapter).
        history = model.fit(to_keras(train, shuffle=True, seed=0), validation_data=to_keras(val),
                            epochs=4, verbose=0)

    h = history.history
    print(f"backend: {keras.backend.backend()}, {len(train)} training batches of {train.batch_size} images")
    for epoch, (loss, acc, vloss, vacc) in enumerate(zip(h["loss"], h["accuracy"], h["val_loss"], h["val_accuracy"])):
        print(f"epoch {epoch + 1}: loss {loss:.4f}  accuracy {acc:.3f}  val_loss {vloss:.4f}  val_accuracy {vacc:.3f}")
    if not h["loss"][-1] < h["loss"][0]:
        print("FAILED: the training loss did not decrease", file=sys.stderr)
        return 1
    print("ok: the loss went down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
