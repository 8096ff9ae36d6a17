"""Native Keras vs `to_keras` with Keras on the JAX backend (see `tests/keras_parity.py`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from keras_parity import *  # the shared tests, collected here for this backend
from keras_parity import HERE, TIMEOUT, run_checks

pytestmark = pytest.mark.timeout(TIMEOUT)


@pytest.fixture(scope="module")
def parity():
    return run_checks("jax")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(240)
def test_an_auto_sharding_keras_distribution_gives_each_process_its_share_of_batches():
    # Two real JAX processes joined by keras.distribution.initialize, DataParallel over both.
    script = HERE / "keras_distribution_checks.py"
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(HERE.parent))
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(i), port], cwd=HERE.parent, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    found = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=200)
            lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
            assert lines, f"a distributed process failed:\n{out[-2000:]}\n{err[-4000:]}"
            found.append(json.loads(lines[-1][len("RESULT "):]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, r in enumerate(found):
        assert "exception" not in r, r["exception"]
        # The control: Keras 3 itself refuses a PyDataset under an auto-sharding
        # multi-process distribution (it shards only tf.data datasets).
        assert r["native"].startswith("ValueError") and "tf.data.Dataset" in r["native"]
        assert r["shard"] == [i, 2]
        assert r["fit_steps"] == 3 and r["fit_loss_finite"], r
        assert r["explicit_shard_wins"] and r["auto_shard_off"] is None
        assert r["unsharded_loader_warns"] == 1  # a Loader built without a shard is left as is
    # Disjoint, equally long shares; the odd 7th batch is left out (prefetch shards are equal).
    assert found[0]["batches"] == [0, 2, 4] and found[1]["batches"] == [1, 3, 5]
