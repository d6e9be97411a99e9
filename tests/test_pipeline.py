"""The pseudo-label pipeline: stage-2 data, the three stages, resumption."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config, tiny_data, workdir_locked_by_another_process
from gradmix_tf import pipeline
from gradmix_tf.batches import batch_indices
from gradmix_tf.data.experiment import LabelledSet
from gradmix_tf.errors import ConfigError, DataError
from gradmix_tf.runner import Runner, build_runner


def _config(method, **overrides):
  config = tiny_config(method=method, steps=4, **overrides)
  config.pseudo_label.betas = (5.0, 10.0)
  config.pseudo_label.gammas = (0.6,)
  config.pseudo_label.members = 2
  config.pseudo_label.threshold = 0.0      # tiny random data: label all
  config.pseudo_label.v_per_class = 4
  return config


def test_stage2_data_hard_and_soft():
  data = tiny_data()                      # V: 2 per class of 3; U: 10
  hard_index = np.array([0, 1, 2, 3, 4, 5])
  hard_label = np.array([0, 0, 0, 1, 2, 2])
  soft = np.full((10, 3), 1 / 3, np.float32)
  hard = pipeline.stage2_data(data, hard_index, hard_label, soft, None, 4, 0)
  # V: +2 of class 0 (of 3), +1 of class 1, +2 of class 2 -> 4, 3, 4.
  assert np.bincount(hard.v.labels).tolist() == [4, 3, 4]
  pseudo = hard.sources[-1]
  assert pseudo.name == "pseudo_labels" and pseudo.head == data.target_head
  np.testing.assert_array_equal(pseudo.y, hard_label)
  np.testing.assert_array_equal(pseudo.x, data.u.images[hard_index])
  soft_data = pipeline.stage2_data(data, hard_index, hard_label, soft,
                                   "kl_model_label", 4, 0)
  assert soft_data.sources[-1].y.shape == (10, 3)
  assert soft_data.sources[-1].y.dtype == np.float32
  np.testing.assert_array_equal(soft_data.v.labels, hard.v.labels)
  with pytest.raises(DataError, match="hard pseudo-label"):
    pipeline.stage2_data(data, np.zeros(0, np.int64), np.zeros(0, np.int64),
                         soft, None, 4, 0)


def test_stage2_on_video_clips_adds_one_frame_clips():
  data = tiny_data()
  groups = np.repeat([0, 1, 2], 2)              # V: 3 clips of 2 frames
  data = dataclasses.replace(data, v=LabelledSet(data.v.images,
                                                 data.v.labels, groups))
  hard_index, hard_label = np.array([0, 4]), np.array([1, 2])
  stage2 = pipeline.stage2_data(data, hard_index, hard_label, None, None,
                                4, 0)
  np.testing.assert_array_equal(stage2.v.groups, [0, 0, 1, 1, 2, 2, 3, 4])
  np.testing.assert_array_equal(stage2.v.images[6:],
                                data.u.images[hard_index])


@pytest.mark.parametrize("direction", ["model_label", "label_model"])
def test_soft_labels_train_with_kl(tmp_path, direction):
  data = tiny_data()
  soft = np.random.default_rng(0).dirichlet(np.ones(3), 10).astype(
      np.float32)
  data2 = pipeline.stage2_data(data, np.array([0]), np.array([1]), soft,
                               pipeline.SOFT_LOSS_OF[direction], 2, 0)
  config = tiny_config(method="gradmix", steps=2)
  trainer = build_runner(config, data2, str(tmp_path))
  # The first step's pseudo-label loss is the KL of that direction, by hand.
  indices = [batch_indices(len(s.y), 8, [0, i], 0, 1)[0]
             for i, s in enumerate(data2.sources)]
  rows = indices[-1]
  p = tf.nn.softmax(trainer.model(data2.u.images[rows], head=0)).numpy()
  y = soft[rows]
  kl = (p * np.log(p / y) if direction == "model_label"
        else y * np.log(y / p)).sum(-1).mean()
  stats = trainer.step_functions[0](tuple(tf.constant(i) for i in indices))
  np.testing.assert_allclose(float(stats["loss/pseudo_labels"]), kl,
                             rtol=1e-4)
  metrics = trainer.run()
  assert metrics["num_examples"]["pseudo_labels"] == 10


def test_an_unknown_soft_loss_is_refused(tmp_path):
  config = _config("gradmix_soft_label")
  config.pseudo_label.soft_loss = "cross_entropy"
  with pytest.raises(ConfigError, match="pseudo_label.soft_loss"):
    pipeline.run_pseudo_label_pipeline(config, tiny_data(), str(tmp_path))


@pytest.mark.parametrize("method", pipeline.METHODS)
def test_pipeline_runs_all_stages(tmp_path, method):
  metrics = pipeline.run_pseudo_label_pipeline(_config(method), tiny_data(),
                                               str(tmp_path))
  assert metrics["method"] == method
  assert len(metrics["stage1"]) == 2
  record = metrics["pseudo_labels"]
  assert record["num_hard"] == 10 and len(record["members"]) == 2
  assert 0.0 <= record["hard_accuracy"] <= 1.0
  assert os.path.isfile(tmp_path / "grid.md")
  assert os.path.isdir(tmp_path / "stage1" / "beta5_gamma0.6")
  with open(tmp_path / "metrics.json") as f:
    assert json.load(f)["method"] == method
  # The members are the best two by H accuracy.
  ranked = sorted(metrics["stage1"], key=lambda r: -r["hyperval_accuracy"])
  assert record["members"] == [os.path.relpath(r["dir"], str(tmp_path))
                               for r in ranked[:2]]


class _Interrupted(Exception):
  pass


def test_pipeline_resumes_in_stage2(tmp_path, monkeypatch):
  config = _config("gradmix_hard_label")
  whole = pipeline.run_pseudo_label_pipeline(config, tiny_data(),
                                             str(tmp_path / "whole"))
  original = Runner._check_health

  def check(self, phase, stats, step):
    if self.workdir.endswith("stage2") and step == 4:
      raise _Interrupted()
    original(self, phase, stats, step)

  monkeypatch.setattr(Runner, "_check_health", check)
  with pytest.raises(_Interrupted):
    pipeline.run_pseudo_label_pipeline(config, tiny_data(),
                                       str(tmp_path / "resumed"))
  monkeypatch.undo()
  runs = []
  original_run = Runner.run

  def counting_run(self):
    runs.append(self.workdir)
    return original_run(self)

  monkeypatch.setattr(Runner, "run", counting_run)
  resumed = pipeline.run_pseudo_label_pipeline(config, tiny_data(),
                                               str(tmp_path / "resumed"))
  # Only stage 2 ran again, from its checkpoint at step 3.
  assert [os.path.basename(r) for r in runs] == ["stage2"]
  assert resumed["resumed_from_step"] == 3
  assert resumed["test_accuracy"] == whole["test_accuracy"]
  assert resumed["hyperval_curve"] == whole["hyperval_curve"]


def test_a_signal_stops_the_pipeline_in_a_member_run_and_it_resumes(
    tmp_path, monkeypatch):
  """SIGTERM during the second stage-1 run: that run saves its step and the
  pipeline stops (`RunStopped`); the rerun keeps the finished first run
  and resumes the second at its step."""
  import signal  # pylint: disable=g-import-not-at-top
  from gradmix_tf import preemption  # pylint: disable=g-import-not-at-top
  from gradmix_tf.errors import RunStopped  # pylint: disable=g-import-not-at-top
  config = _config("gradmix_hard_label")
  original = Runner._check_health

  def check(self, phase, stats, step):
    if self.workdir.endswith("beta10_gamma0.6") and step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    original(self, phase, stats, step)

  monkeypatch.setattr(Runner, "_check_health", check)
  with preemption.stop_on_signals(), pytest.raises(RunStopped) as stop:
    pipeline.run_pseudo_label_pipeline(config, tiny_data(), str(tmp_path))
  assert (stop.value.step, stop.value.signal_name) == (2, "SIGTERM")
  stage1 = tmp_path / "stage1"
  assert (stage1 / "beta5_gamma0.6" / "metrics.json").exists()
  assert (stage1 / "beta10_gamma0.6" / "checkpoints" / "ckpt-2.index").exists()
  assert not (tmp_path / "stage2").exists()
  monkeypatch.undo()
  runs = []
  original_run = Runner.run

  def counting_run(self):
    runs.append(os.path.basename(self.workdir))
    return original_run(self)

  monkeypatch.setattr(Runner, "run", counting_run)
  pipeline.run_pseudo_label_pipeline(config, tiny_data(), str(tmp_path))
  assert runs == ["beta10_gamma0.6", "stage2"]
  with open(stage1 / "beta10_gamma0.6" / "metrics.json") as f:
    assert json.load(f)["resumed_from_step"] == 2


def test_pipelines_share_a_stage1_directory(tmp_path, monkeypatch):
  shared = str(tmp_path / "stage1_shared")
  hard = _config("gradmix_hard_label")
  hard.pseudo_label.stage1_dir = shared
  pipeline.run_pseudo_label_pipeline(hard, tiny_data(),
                                     str(tmp_path / "hard"))
  runs = []
  original_run = Runner.run

  def counting_run(self):
    runs.append(self.workdir)
    return original_run(self)

  monkeypatch.setattr(Runner, "run", counting_run)
  # Soft labels from one member (R = 1): only stage 2 trains.
  soft = _config("gradmix_soft_label")
  soft.pseudo_label.stage1_dir = shared
  soft.pseudo_label.members = 1
  metrics = pipeline.run_pseudo_label_pipeline(soft, tiny_data(),
                                               str(tmp_path / "soft"))
  assert runs == [str(tmp_path / "soft" / "stage2")]
  best = max(metrics["stage1"], key=lambda r: r["hyperval_accuracy"])
  assert metrics["pseudo_labels"]["members"] == [
      os.path.relpath(best["dir"], str(tmp_path / "soft"))]
  # Warm-up in stage 2 only reuses the stage-1 runs trained without it ...
  del runs[:]
  warm = _config("gradmix_hard_label", lr_warmup_steps=3)
  warm.pseudo_label.stage1_dir = shared
  warm.pseudo_label.stage1_lr_warmup_steps = 0
  pipeline.run_pseudo_label_pipeline(warm, tiny_data(),
                                     str(tmp_path / "warm"))
  assert runs == [str(tmp_path / "warm" / "stage2")]
  with open(tmp_path / "warm" / "stage2" / "config.json") as f:
    assert json.load(f)["lr_warmup_steps"] == 3
  # ... while by default stage 1 warms up too, which those runs did not.
  warm.pseudo_label.stage1_lr_warmup_steps = -1
  with pytest.raises(ConfigError, match="lr_warmup_steps"):
    pipeline.run_pseudo_label_pipeline(warm, tiny_data(),
                                       str(tmp_path / "warm_all"))
  # A stage-1 run another process is training in is refused, with its pid.
  with workdir_locked_by_another_process(
      os.path.join(shared, "beta5_gamma0.6")) as pid:
    with pytest.raises(ConfigError,
                       match=rf"in use by another run \(pid {pid}\)"):
      pipeline.run_pseudo_label_pipeline(hard, tiny_data(),
                                         str(tmp_path / "hard_again"))
  # A stage-1 directory trained on another seed is refused, not reused.
  other = _config("gradmix_hard_label", seed=1)
  other.pseudo_label.stage1_dir = shared
  with pytest.raises(ConfigError, match="different config"):
    pipeline.run_pseudo_label_pipeline(other, tiny_data(),
                                       str(tmp_path / "other"))
