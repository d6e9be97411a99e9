"""Shared helpers for the test suite."""

import contextlib
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from gradmix_tf import config_lib  # pylint: disable=g-import-not-at-top
from gradmix_tf.data.experiment import ExperimentData, SourceData  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `$GRADMIX_DATA_DIR` where the repository is not beside ../shared (Bazel
# runs the tests from its runfiles tree).
SHARED_DATA = os.environ.get("GRADMIX_DATA_DIR") or os.path.normpath(
    os.path.join(REPO, "..", "shared", "data"))


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


def tiny_data(seed=0):
  """Two sources (3 and 2 classes) of random 28x28x3 images, V, H, U, test."""
  rng = np.random.default_rng(seed)

  def images(n):
    return rng.integers(0, 256, (n, 28, 28, 3)).astype(np.uint8)

  def labels(n, classes):
    return rng.integers(0, classes, n).astype(np.int64)

  return ExperimentData(
      sources=(SourceData("s1", images(40), labels(40, 3), 0),
               SourceData("s2", images(30), labels(30, 2), 1)),
      head_classes=((5, 6, 7), (0, 1)),
      target_head=0,
      v=(images(6), np.array([0, 0, 1, 1, 2, 2])),
      h=(images(12), labels(12, 3)),
      u=(images(10), labels(10, 3)),
      test=(images(15), labels(15, 3)))


def tiny_config(**overrides):
  """A digit config with a 2-channel ConvNet and a few steps."""
  config = config_lib.base_config()
  config.name = "tiny"
  config.model.widths = (2, 2, 2, 2)
  config.model.units = 4
  config.steps = 6
  config.finetune_steps = 3
  config.batch_size = 8
  config.log_every = 2
  config.eval_every = 2
  config.checkpoint_every = 3
  for key, value in overrides.items():
    config[key] = value
  return config


def config_file(name, **overrides):
  """`configs/<name>.py`'s `get_config()` with top-level `overrides`."""
  config = config_lib.load_config(name)
  for key, value in overrides.items():
    config[key] = value
  return config


def tiny_holistic_config(**overrides):
  """`tiny_config` with a small `holistic` section (4-step pre-training)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = tiny_config(**overrides)
  config.experiment = "holistic"
  config.holistic = ml_collections.ConfigDict(dict(
      seen_classes=(0, 1, 2), per_class=4, heldout_per_class=4,
      pretrain_steps=4, distill_weight=1.0, temperature=2.0, local_models=2,
      leave_out=1, local_steps=2, local_lr=0.05, pseudo_unseen=1,
      delta_max=2.0, delta_step=0.5))
  return config


def tiny_holistic_data(seed=0):
  """Four classes; the target labels only classes 0-2."""
  rng = np.random.default_rng(seed)

  def images(n):
    return rng.integers(0, 256, (n, 28, 28, 3)).astype(np.uint8)

  return ExperimentData(
      sources=(SourceData("src", images(40), rng.integers(0, 4, 40), 0),),
      head_classes=((0, 1, 2, 3),), target_head=0,
      v=(images(12), np.repeat([0, 1, 2], 4)),
      h=(images(12), np.repeat([0, 1, 2], 4)),
      u=(images(0), np.zeros(0, np.int64)),
      test=(images(16), np.repeat([0, 1, 2, 3], 4)))


@contextlib.contextmanager
def workdir_locked_by_another_process(path):
  """Another live process holds `path`'s run lock inside; yields its pid.

  The process is killed (SIGKILL) on exit.
  """
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import sys, time\n"
       "from gradmix_tf import workdir\n"
       "with workdir.RunDirectory(sys.argv[1]):\n"
       "  print('locked', flush=True)\n"
       "  time.sleep(120)\n", str(path)],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    yield holder.pid
  finally:
    holder.kill()
    holder.wait()


def run_module(module, *args, env=None, timeout=300):
  """`python -m <module> <args>` from the repository, output captured."""
  full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                        capture_output=True, text=True, env=full_env,
                        timeout=timeout)


def assert_one_error_line(result, *fragments):
  """Exit 2, no traceback or absl FATAL, one `error:` line holding every
  fragment; returns that line."""
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "FATAL" not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


def prepared_tfds(data_dir, name, splits, file_format="tfrecord"):
  """A TFDS dataset prepared under `<data_dir>/tfds` from arrays
  (`splits`: `{split: (images [N, h, w, c], labels)}`, 3 classes)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  shape = next(iter(splits.values()))[0].shape[1:]
  builder = tfds.dataset_builders.TfDataBuilder(
      name=name, version="1.0.0", data_dir=os.path.join(data_dir, "tfds"),
      split_datasets={
          split: tf.data.Dataset.from_tensor_slices(
              {"image": x, "label": y}) for split, (x, y) in splits.items()},
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=shape),
          "label": tfds.features.ClassLabel(num_classes=3)}),
      file_format=file_format)
  builder.download_and_prepare()
