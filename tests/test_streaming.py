"""Streamed inputs (`config.input_pipeline = "stream"`): the same batches,
the same run, exact resumption, bad files named."""

import dataclasses
import os
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config as _config
from conftest import prepared_tfds
from conftest import tiny_data as _data
from gradmix_tf.batches import batch_indices
from gradmix_tf.data import image_files
from gradmix_tf.data.experiment import LabelledSet
from gradmix_tf.errors import DataError
from gradmix_tf.runner import build_runner


def _write_pngs(images, folder):
  """`images` as PNG files `<folder>/<i>.png`; their `ImageFiles`."""
  os.makedirs(folder, exist_ok=True)
  paths = []
  for i, image in enumerate(images):
    path = os.path.join(folder, f"{i:04d}.png")
    with open(path, "wb") as f:
      f.write(tf.io.encode_png(image).numpy())
    paths.append(path)
  size = tuple(images.shape[1:3])
  return image_files.ImageFiles(np.asarray(paths, object),
                                image_files.folder_image(size),
                                size + (3,))


def streamed(data, root):
  """`data` with its sources, U and test set as PNG files (V and H stay
  in memory, as `build_experiment` keeps them)."""
  sources = tuple(
      dataclasses.replace(s, x=_write_pngs(s.x, os.path.join(root, s.name)))
      for s in data.sources)
  return dataclasses.replace(
      data, sources=sources,
      u=LabelledSet(_write_pngs(data.u.images, os.path.join(root, "u")),
                    data.u.labels),
      test=LabelledSet(_write_pngs(data.test.images,
                                   os.path.join(root, "test")),
                       data.test.labels))


def _weights(runner):
  return [w.numpy() for w in runner.model.weights]


@pytest.mark.parametrize("method", ["gradmix", "fine_tune", "gradmix_vat",
                                    "mme", "dctn"])
def test_streamed_run_equals_the_in_memory_run(tmp_path, method):
  data = _data()
  memory = build_runner(_config(method=method), data, str(tmp_path / "m"))
  memory_metrics = memory.run()
  files = streamed(data, str(tmp_path / "files"))
  stream = build_runner(_config(method=method, input_pipeline="stream"),
                        files, str(tmp_path / "s"))
  # The steps gather nothing: every source (and U) batch is decoded by the
  # runner's pipeline.
  assert stream.task.source_images == [None, None]
  assert all(stream.phases[0].file_sets)
  stream_metrics = stream.run()
  for a, b in zip(_weights(memory), _weights(stream)):
    np.testing.assert_array_equal(a, b)
  for key in ("test_accuracy", "test_loss", "hyperval_curve",
              "test_accuracy_at_best_hyperval"):
    assert stream_metrics[key] == memory_metrics[key], key


def test_a_streamed_batch_is_the_in_memory_batch(tmp_path):
  data = _data()
  files = streamed(data, str(tmp_path))
  runner = build_runner(_config(input_pipeline="stream"), files,
                        str(tmp_path / "run"))
  streams = [np.arange(16, dtype=np.int32).reshape(2, 8)[::-1] % len(s.y)
             for s in data.sources]
  inputs = list(runner.step_inputs(runner.phases[0], streams))
  assert len(inputs) == 2
  for row, element in enumerate(inputs):
    for source, stream, entry in zip(data.sources, streams, element):
      np.testing.assert_array_equal(entry["images"].numpy(),
                                    source.x[stream[row]])
      np.testing.assert_array_equal(entry["labels"].numpy(),
                                    source.y[stream[row]])


def test_a_killed_streamed_run_resumes_to_the_uninterrupted_one(tmp_path):
  files = streamed(_data(), str(tmp_path / "files"))
  whole = build_runner(_config(input_pipeline="stream"), files,
                       str(tmp_path / "whole"))
  whole.run()
  build_runner(_config(input_pipeline="stream", steps=4), files,
               str(tmp_path / "resumed")).run()
  resumed = build_runner(_config(input_pipeline="stream"), files,
                         str(tmp_path / "resumed"))
  assert resumed.run()["resumed_from_step"] == 4
  for a, b in zip(_weights(whole), _weights(resumed)):
    np.testing.assert_array_equal(a, b)


def test_an_unreadable_file_mid_run_is_named_and_the_rerun_resumes(tmp_path):
  data = _data()
  files = streamed(data, str(tmp_path / "files"))
  # A file source s1 first reads at step 3 (0-based 2).
  rows = batch_indices(len(data.sources[0].y), 8, [0, 0], 0, 3)
  bad = files.sources[0].x.paths[sorted(set(rows[2]) - set(rows[:2].ravel()))[0]]
  good = open(bad, "rb").read()
  with open(bad, "wb") as f:
    f.write(good[:40])                    # a truncated PNG
  runner = build_runner(_config(input_pipeline="stream"), files,
                        str(tmp_path / "run"))
  with pytest.raises(DataError, match=f"cannot read image {bad} at step"):
    runner.run()
  with open(bad, "wb") as f:
    f.write(good)
  rerun = build_runner(_config(input_pipeline="stream"), files,
                       str(tmp_path / "run"))
  # The failed step was checkpointed: the rerun starts there ...
  assert rerun.run()["resumed_from_step"] == 2
  # ... and ends where an uninterrupted run does.
  whole = build_runner(_config(), data, str(tmp_path / "whole"))
  whole.run()
  for a, b in zip(_weights(whole), _weights(rerun)):
    np.testing.assert_array_equal(a, b)


def _mixed_folder(root, classes, per_class, seed):
  """PNG images in `<root>/<class>/`: mostly 12x12 RGB, some 14x10 and
  some grey (the in-memory path resizes and repeats those)."""
  rng = np.random.default_rng(seed)
  for name in classes:
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      shape = (14, 10, 3) if i % 5 == 3 else (12, 12, 1 if i % 4 == 1 else 3)
      image = rng.integers(0, 256, shape).astype(np.uint8)
      with open(os.path.join(root, name, f"{i:03d}.png"), "wb") as f:
        f.write(tf.io.encode_png(image).numpy())


def _folder_config(root, size, channels, **overrides):
  from gradmix_tf import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  spec = f"folder:{root}"
  config.sources.s1 = config_lib.source(spec, ("5", "6", "7"), half=0)
  config.target.dataset = spec
  config.target.classes = ("5", "6", "7")
  config.target.half = 1
  config.target.hyperval_size = 6
  config.input_shape = (size, size, channels)
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.parametrize("size,channels", [(16, 3), (12, 1), (8, 3)])
def test_a_streamed_folder_decodes_to_the_in_memory_folder(tmp_path, size,
                                                           channels):
  # 16: padded; 12: the reference size, RGB to grey; 8: area-resized.
  from gradmix_tf.data.experiment import build_experiment  # pylint: disable=g-import-not-at-top
  root = tmp_path / "digits"
  _mixed_folder(str(root / "train"), ["5", "6", "7"], 12, seed=0)
  _mixed_folder(str(root / "test"), ["5", "6", "7"], 3, seed=1)
  memory = build_experiment(_folder_config(root, size, channels), 0, 2)
  stream = build_experiment(
      _folder_config(root, size, channels, input_pipeline="stream"), 0, 2)
  assert image_files.is_streamed(stream.sources[0].x)
  assert image_files.is_streamed(stream.u.images)
  np.testing.assert_array_equal(stream.sources[0].x.numpy(),
                                memory.sources[0].x)
  np.testing.assert_array_equal(stream.sources[0].y, memory.sources[0].y)
  for split in ("u", "test", "v", "h"):
    np.testing.assert_array_equal(
        image_files.as_array(getattr(stream, split).images),
        getattr(memory, split).images, err_msg=split)
    np.testing.assert_array_equal(getattr(stream, split).labels,
                                  getattr(memory, split).labels)


def test_a_streamed_folder_trains_from_the_launcher_and_names_its_classes(
    tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  root = tmp_path / "animals"
  _mixed_folder(str(root / "train"), ["cat", "dog", "owl"], 12, seed=0)
  _mixed_folder(str(root / "test"), ["cat", "dog", "owl"], 2, seed=1)
  spec = f"folder:{root}"
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "gradmix_tf.launch", "--config=digits_mnistm",
       "--config.input_pipeline=stream", "--config.steps=4",
       "--config.batch_size=4", "--config.log_every=2",
       "--config.eval_every=2", "--config.model.widths=(2,2,2,2)",
       "--config.model.units=4", "--config.input_shape=(12,12,3)",
       f"--config.sources.s2.dataset={spec}",
       "--config.sources.s2.classes=(0,1,2)",
       "--config.sources.s2.half=0",
       f"--config.sources.s1.dataset={spec}",
       "--config.sources.s1.classes=(0,1)",
       f"--config.target.dataset={spec}", "--config.target.classes=(0,1,2)",
       "--config.target.half=1", "--config.target.hyperval_size=6",
       f"--workdir={workdir}"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-2000:]
  with open(workdir / "metrics.json") as f:
    metrics = json.load(f)
  assert metrics["num_examples"]["test"] == 6
  with open(workdir / "model.json") as f:
    model = json.load(f)
  assert model["folder_labels"] == {spec: {"cat": 0, "dog": 1, "owl": 2}}


def test_a_streamed_tfds_dataset_reads_the_in_memory_images(tmp_path):
  from gradmix_tf.data import specs  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  splits = {"train": (rng.integers(0, 256, (9, 10, 10, 1)).astype(np.uint8),
                      np.arange(9) % 3),
            "test": (rng.integers(0, 256, (4, 10, 10, 1)).astype(np.uint8),
                     np.array([2, 1, 0, 1]))}
  prepared_tfds(str(tmp_path), "records", splits, "array_record")
  memory = specs.load_dataset("tfds:records", str(tmp_path), "")
  stream = specs.load_dataset("tfds:records", str(tmp_path), "", stream=True)
  assert image_files.is_streamed(stream.x_train)
  for split in ("train", "test"):
    (x_memory, y_memory), (x_stream, y_stream) = (memory.split(split),
                                                  stream.split(split))
    np.testing.assert_array_equal(x_stream.numpy(), x_memory)
    np.testing.assert_array_equal(y_stream, y_memory)
  # Conformed in the pipeline as an array is (padded, grey to RGB).
  from gradmix_tf.data import digits  # pylint: disable=g-import-not-at-top
  from gradmix_tf.data.experiment import conform  # pylint: disable=g-import-not-at-top
  np.testing.assert_array_equal(
      conform(stream.x_train, 14, 3, "s").numpy(),
      digits.conform_images(memory.x_train, 14, 3))
  # TFRecord (TFDS's default) has no random access: read into memory.
  prepared_tfds(str(tmp_path), "sequential", splits, "tfrecord")
  fallback = specs.load_dataset("tfds:sequential", str(tmp_path), "",
                                stream=True)
  assert isinstance(fallback.x_train, np.ndarray)


def _slowed(files, seconds):
  """`files` whose decoder sleeps `seconds` per image (a slow disk)."""
  def sleep_then(image):
    time.sleep(seconds)
    return image

  def decode(contents):
    image = files.decode(contents)
    return tf.ensure_shape(tf.py_function(sleep_then, [image], image.dtype),
                           files.shape)
  return dataclasses.replace(files, decode=decode)


def test_a_stalled_pipeline_shows_as_input_wait(tmp_path):
  # The step time includes waiting for inputs; the wait is reported apart.
  files = streamed(_data(), str(tmp_path / "files"))
  settings = dict(input_pipeline="stream", steps=10, prefetch_batches=1,
                  eval_every=10, log_every=10, checkpoint_every=10)
  fast = build_runner(_config(**settings), files,
                      str(tmp_path / "fast")).run()
  slow_files = dataclasses.replace(files, sources=tuple(
      dataclasses.replace(s, x=_slowed(s.x, 0.05)) for s in files.sources))
  slow = build_runner(_config(**settings), slow_files,
                      str(tmp_path / "slow")).run()
  for metrics in (fast, slow):
    assert 0.0 <= metrics["median_input_wait_seconds"] <= (
        metrics["median_step_seconds"])
  # 2 sources x 8 images x 50 ms, decoded at most 2 x 2 in parallel on
  # this machine's cores (AUTOTUNE), with training far faster than that.
  assert slow["median_input_wait_seconds"] >= 0.1
  assert fast["median_input_wait_seconds"] < 0.05
