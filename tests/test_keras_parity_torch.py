"""Native Keras vs `to_keras` with Keras on the PyTorch backend (see `tests/keras_parity.py`)."""

from __future__ import annotations

import pytest
from keras_parity import *  # the shared tests, collected here for this backend
from keras_parity import TIMEOUT, run_checks

pytestmark = pytest.mark.timeout(TIMEOUT)


@pytest.fixture(scope="module")
def parity():
    return run_checks("torch")
