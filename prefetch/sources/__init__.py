"""Sample-level sources and mixing: wrap the datasets people already have.

- `batched(samples, batch_size, ...)`: a torch `Dataset`, a Hugging Face `datasets.Dataset`,
  a numpy array (anything with `__len__`/`__getitem__(k)`) as batches, with per-epoch
  sample shuffling from the Loader's seed.
- `mix(datasets, weights, ...)`: several datasets interleaved by weight.
- `stack(samples)`: the default collate.
"""

from .batching import Batched, batched
from .collate import stack
from .mixing import Mix, mix

__all__ = ["Batched", "Mix", "batched", "mix", "stack"]
