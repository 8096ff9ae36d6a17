"""Every script in examples/ runs to completion (exit code 0) as a user would run it.

The training examples exit non-zero when their loss did not go down.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
TRAINING = {"keras_fit.py", "torch_train.py", "jax_train.py", "async_loop.py", "from_torch_dataloader.py"}


def test_the_documented_examples_exist():
    assert TRAINING | {"quickstart.py"} <= set(EXAMPLES)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script", EXAMPLES)
def test_example_runs_and_exits_zero(script):
    env = dict(os.environ, PYTHONPATH=str(ROOT), KERAS_BACKEND="jax")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    if script in TRAINING:
        assert "loss went down" in proc.stdout, proc.stdout[-3000:]
