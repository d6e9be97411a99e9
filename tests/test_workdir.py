"""The run directory: checks, the lock, tidying a refused run, stopped.json."""

import json
import os

import pytest

from conftest import workdir_locked_by_another_process
from gradmix_tf import workdir
from gradmix_tf.errors import ConfigError, TrainingError


def test_a_refused_run_keeps_a_started_one(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  checkpoints = tmp_path / "stage1" / "beta5_gamma0.3" / "checkpoints"
  checkpoints.mkdir(parents=True)
  (checkpoints / "checkpoint").write_text("")
  with workdir.RunDirectory(str(tmp_path)) as run:
    run.discard_unstarted(fresh_config=True)
  assert (tmp_path / "config.json").exists()     # a run to resume
  (checkpoints / "checkpoint").unlink()
  with workdir.RunDirectory(str(tmp_path)) as run:
    run.discard_unstarted(fresh_config=True)
  # The directory was there before: only what the run wrote goes (the
  # lock file is the first run's).
  assert not (tmp_path / "config.json").exists()
  assert (tmp_path / "stage1").is_dir()


def test_a_refused_run_in_an_empty_directory_leaves_it_empty(tmp_path):
  with workdir.RunDirectory(str(tmp_path)) as run:
    (tmp_path / "config.json").write_text("{}")
    run.discard_unstarted(fresh_config=True)
  assert tmp_path.is_dir() and not os.listdir(tmp_path)


def test_a_refused_run_removes_the_directory_it_created(tmp_path):
  path = tmp_path / "new" / "run"
  with workdir.RunDirectory(str(path)) as run:
    (path / "config.json").write_text("{}")
    run.discard_unstarted(fresh_config=True)
  assert not (tmp_path / "new").exists()     # the parent it made too
  assert os.listdir(tmp_path) == []


def test_a_refused_resumed_run_keeps_its_config(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with workdir.RunDirectory(str(tmp_path)) as run:
    run.discard_unstarted(fresh_config=False)
  assert (tmp_path / "config.json").exists()


def test_check_directory_refuses_a_file_and_a_path_under_a_file(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(ConfigError, match="is a file, not a directory"):
    workdir.check_directory(str(tmp_path / "file"), "--workdir")
  with pytest.raises(ConfigError, match=r"is under a file .*file\)"):
    workdir.check_directory(str(tmp_path / "file" / "run"), "--workdir")
  workdir.check_directory(str(tmp_path / "a" / "b"), "--workdir")
  assert not (tmp_path / "a").exists()            # nothing made
  assert os.listdir(tmp_path) == ["file"]          # the probe is gone


def test_the_lock_names_the_holder_and_dies_with_it(tmp_path):
  with workdir_locked_by_another_process(tmp_path) as pid:
    with pytest.raises(ConfigError,
                       match=rf"in use by another run \(pid {pid}\)"):
      with workdir.RunDirectory(str(tmp_path)):
        pass
  # The holder was killed (SIGKILL): the kernel released the lock.
  with workdir.RunDirectory(str(tmp_path)):
    with open(tmp_path / workdir.LOCK_FILE) as f:
      assert f.read().strip() == str(os.getpid())


def test_stopped_json_records_the_step_reason_and_source(tmp_path):
  error = TrainingError("3 consecutive steps up to step 12 had non-finite "
                        "gradients", step=12, reason="non_finite",
                        source="loss/s1")
  workdir.record_stop(str(tmp_path), error)
  with open(tmp_path / workdir.STOPPED_FILE) as f:
    record = json.load(f)
  assert record == {
      "error": "error: 3 consecutive steps up to step 12 had non-finite "
               "gradients",
      "step": 12, "reason": "non_finite", "source": "loss/s1"}
  workdir.clear_stop(str(tmp_path))
  assert not (tmp_path / workdir.STOPPED_FILE).exists()


def test_tensorflow_info_lines_are_quiet_unless_asked_for():
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  from gradmix_tf import cli  # pylint: disable=g-import-not-at-top

  def record(path, level):
    return logging.LogRecord("absl", level, path, 1, "x", (), None)

  handler = absl_logging.get_absl_handler()
  saver = "/site-packages/tensorflow/python/checkpoint/functional_saver.py"
  ours = "/work/gradmix_tf/trainer.py"
  try:
    cli.quiet_tensorflow(0)
    assert not handler.filter(record(saver, logging.INFO))
    assert handler.filter(record(saver, logging.WARNING))
    assert handler.filter(record(ours, logging.INFO))
    cli.quiet_tensorflow(1)
    assert handler.filter(record(saver, logging.INFO))
  finally:
    cli.quiet_tensorflow(1)
