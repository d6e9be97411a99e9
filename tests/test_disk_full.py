"""A full disk: every write of the runner, the exporter and the data cache
that does not fit ends in one `error:` line naming the directory and the
space it needed, removes its own partial files, leaves the newest intact
checkpoint as it was, and the same command resumes once space is freed
(docs/RELIABILITY.md).

Each test works on a small tmpfs of its own (skipped where mount is
refused: not root, or a container without the capability).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, run_module, tiny_config, tiny_data
from gradmix_tf import checkpoints
from gradmix_tf import files
from gradmix_tf.errors import NoSpaceError

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


class SmallDisk:
  """A tmpfs mounted at `path`, `size` bytes; `fill(leave)` takes all but
  `leave` bytes of it with a file, `resize(size)` grows it."""

  def __init__(self, path):
    self.path = path
    self._filler = path / ".filler"

  def fill(self, leave=0):
    free = files.free_bytes(self.path)
    if self._filler.exists():
      free += self._filler.stat().st_size
    with open(self._filler, "wb") as f:
      # tmpfs counts whole pages.
      f.write(b"\0" * max(0, free - leave - 4096))
    while files.free_bytes(self.path) > leave:
      with open(self._filler, "ab") as f:
        f.write(b"\0" * 4096)

  def free_up(self):
    if self._filler.exists():
      self._filler.unlink()

  def resize(self, size):
    subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)],
                   check=True)


@pytest.fixture
def small_disk(tmp_path):
  path = tmp_path / "disk"
  path.mkdir()
  mounted = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(path)],
      capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f"cannot mount a small tmpfs ({mounted.stderr.strip()})")
  try:
    yield SmallDisk(path)
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


def _listing(root):
  return sorted(os.path.relpath(os.path.join(d, name), root)
                for d, dirs, names in os.walk(root) for name in dirs + names)


def test_a_checkpoint_that_does_not_fit_leaves_the_newest_intact(small_disk):
  values = tf.Variable(np.arange(64 * 1024, dtype=np.float32))   # 256 KiB
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(values=values), str(small_disk.path / "ckpt"),
      max_to_keep=2)
  needed = checkpoints.variable_bytes([values])
  assert needed == 64 * 1024 * 4
  checkpoints.save(manager, 1, needed)
  before = _listing(small_disk.path / "ckpt")
  small_disk.fill(leave=100 * 1024)
  values.assign(values + 1.0)
  with pytest.raises(NoSpaceError) as refused:
    checkpoints.save(manager, 2, needed, step=2)
  message = str(refused.value)
  assert message.startswith(f"no space left in {small_disk.path / 'ckpt'} "
                            "to write checkpoint ckpt-2 (it needs about "
                            "256.0 KiB;"), message
  assert refused.value.step == 2
  assert "\n" not in message
  # No temporary directory, no half of ckpt-2: the directory is as it was.
  assert _listing(small_disk.path / "ckpt") == before
  restored = tf.Variable(np.zeros(64 * 1024, np.float32))
  assert checkpoints.restore_newest_intact(
      tf.train.Checkpoint(values=restored),
      str(small_disk.path / "ckpt")).endswith("ckpt-1")
  np.testing.assert_array_equal(restored.numpy(), np.arange(64 * 1024))
  # Space freed: the same save goes through.
  small_disk.free_up()
  checkpoints.save(manager, 2, needed)
  assert tf.train.latest_checkpoint(str(small_disk.path / "ckpt")).endswith(
      "ckpt-2")


def test_json_that_does_not_fit_leaves_the_old_file_and_no_partial(
    small_disk):
  path = small_disk.path / "metrics.json"
  files.write_json_atomically(str(path), {"old": True})
  small_disk.fill(leave=0)
  with pytest.raises(NoSpaceError, match=r"no space left in .* to write "
                     r"metrics.json \(it needs about 195.3 KiB; 0 bytes "
                     r"free\)"):
    # {\n  "big": "x...x"\n}: 200,014 bytes = 195.3 KiB.
    files.write_json_atomically(str(path), {"big": "x" * 200_000})
  assert json.loads(path.read_text()) == {"old": True}
  assert sorted(os.listdir(small_disk.path)) == [".filler", "metrics.json"]


def test_a_run_whose_metrics_do_not_fit_stops_with_its_step(small_disk,
                                                            monkeypatch):
  """The runner's last write (metrics.json) on a disk that filled up during
  training: `NoSpaceError` with the step, and nothing half-written."""
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  runner = build_runner(tiny_config(), tiny_data(), str(small_disk.path /
                                                        "run"))
  evaluate = runner.evaluate

  def fill_before_the_final_evaluation(split):
    if split is runner.data.test:      # after the last step and H
      small_disk.fill(leave=0)
    return evaluate(split)

  monkeypatch.setattr(runner, "evaluate", fill_before_the_final_evaluation)
  with pytest.raises(NoSpaceError, match="to write metrics.json") as refused:
    runner.run()
  assert refused.value.step == 6
  listing = _listing(small_disk.path / "run")
  assert "metrics.json" not in listing
  assert not [name for name in listing if ".tmp" in name or "_temp" in name]


def test_the_mnistm_cache_that_does_not_fit_is_one_line(shared_data,
                                                        small_disk):
  from gradmix_tf.data import mnistm  # pylint: disable=g-import-not-at-top
  cache = small_disk.path / "cache"
  with pytest.raises(NoSpaceError) as refused:
    mnistm.load_mnistm(shared_data, str(cache))
  # 70,000 RGB images of 28 x 28 and their labels.
  needed = 70_000 * 28 * 28 * 3 + 70_000 * 8
  assert str(refused.value).startswith(
      f"no space left in {cache} to write the MNIST-M cache (it needs about "
      f"{files.human_bytes(needed)};")
  assert os.listdir(cache) == []


def test_an_export_that_does_not_fit_leaves_no_partial_version(small_disk,
                                                               tmp_path):
  from gradmix_tf import export  # pylint: disable=g-import-not-at-top
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  runner = build_runner(tiny_config(), tiny_data(), str(tmp_path / "run"))
  runner.run()
  small_disk.fill(leave=8 * 1024)
  with pytest.raises(NoSpaceError, match=r"no space left in .*/exports/tiny "
                     r"to write export version 1 \(it needs about"):
    export.export_runner(runner, str(small_disk.path / "exports"), "tiny")
  assert _listing(small_disk.path / "exports") == ["tiny"]
  small_disk.free_up()
  path = export.export_runner(runner, str(small_disk.path / "exports"),
                              "tiny")
  assert os.path.isfile(os.path.join(path, "saved_model.pb"))


@pytest.mark.multiprocess
def test_a_launcher_run_on_a_full_disk_stops_in_one_line_and_then_resumes(
    shared_data, small_disk):
  """The quick run's checkpoint at step 20 does not fit in 3 MB: exit 3,
  one line, `stopped.json`, no temporary checkpoint; on a larger disk the
  same command trains to the end."""
  args = ["--config=digits_mnistm", "--config.quick=True",
          f"--config.data_dir={shared_data}",
          f"--workdir={small_disk.path / 'run'}"]
  result = run_module("gradmix_tf.launch", *args)
  assert result.returncode == 3, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1 and lines[0].startswith(
      f"error: no space left in {small_disk.path / 'run' / 'checkpoints'} to "
      "write checkpoint ckpt-20 (it needs about "), result.stderr[-3000:]
  listing = _listing(small_disk.path / "run")
  assert not [name for name in listing if "_temp" in name or ".tmp" in name]
  record = json.loads((small_disk.path / "run" / "stopped.json").read_text())
  assert (record["reason"], record["step"]) == ("no_space", 20)
  small_disk.resize("64m")
  result = run_module("gradmix_tf.launch", *args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (small_disk.path / "run" / "metrics.json").exists()
  assert not (small_disk.path / "run" / "stopped.json").exists()


def test_out_of_space_is_told_from_other_failures():
  import errno  # pylint: disable=g-import-not-at-top
  assert files.is_out_of_space(OSError(errno.ENOSPC, "No space left"))
  assert files.is_out_of_space(OSError(errno.EDQUOT, "quota"))
  assert files.is_out_of_space(tf.errors.ResourceExhaustedError(
      None, None, "/x/ckpt_temp/part; No space left on device"))
  assert not files.is_out_of_space(tf.errors.ResourceExhaustedError(
      None, None, "OOM when allocating tensor"))
  assert not files.is_out_of_space(OSError(errno.EACCES, "denied"))
  assert files.human_bytes(1536) == "1.5 KiB"
  assert files.human_bytes(100) == "100 bytes"
