"""Ranks of a real `torch.distributed` (gloo) job for tests/test_checkpoint_hooks.py.

    python tests/dcp_elastic_run.py save|load WORLD_SIZE CHECKPOINT_DIR OUT_PREFIX

Each rank builds `Loader(Indexed(20), shuffle=True, seed=3, shard=Shard.auto())`. `save`: take 3
batches, then `dcp.save({"loader": loader})`. `load`: `dcp.load` into a fresh loader, read the
rest of the epoch. Each rank writes the batches it read to OUT_PREFIX.<rank> as JSON.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import warnings

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

import prefetch
from scale_datasets import Indexed

N, SEED, STEPS = 20, 3, 3


def rank_main(rank: int, world: int, phase: str, folder: str, port: int, out: str) -> None:
    warnings.simplefilter("ignore", UserWarning)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with prefetch.Loader(Indexed(N), workers=1, shuffle=True, seed=SEED, shard=prefetch.Shard.auto()) as loader:
            if phase == "save":
                it = iter(loader)
                got = [next(it) for _ in range(STEPS)]
                it.close()
                dcp.save({"loader": loader}, checkpoint_id=folder)
            else:
                dcp.load({"loader": loader}, checkpoint_id=folder)
                got = list(loader)
        with open(f"{out}.{rank}", "w") as f:
            json.dump(got, f)
    finally:
        dist.destroy_process_group()


def main() -> None:
    phase, world, folder, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_main, args=(world, phase, folder, port, out), nprocs=world)


if __name__ == "__main__":
    main()
