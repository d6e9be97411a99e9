"""Shared helpers for the test suite."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))


def cosine_of_mix(grads, v, weights):
  """cos(G w, v) in float64; `grads` is [k, n]."""
  mixed = np.asarray(weights, np.float64) @ np.asarray(grads, np.float64)
  denom = np.linalg.norm(mixed) * np.linalg.norm(v)
  return 0.0 if denom == 0 else float(mixed @ v / denom)


@pytest.fixture
def shared_data():
  if not os.path.isfile(os.path.join(SHARED_DATA, "mnist.npz")):
    pytest.skip("../shared/data/mnist.npz is not present")
  return SHARED_DATA
