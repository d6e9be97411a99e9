"""Holistic transfer: each mechanism by hand, the methods end to end, resume."""

import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_holistic_config, tiny_holistic_data
from gradmix_tf.tasks import holistic
from gradmix_tf import methods
from gradmix_tf.errors import ConfigError
from gradmix_tf.runner import Runner, build_runner


_config = tiny_holistic_config
_data = tiny_holistic_data


def test_distillation_loss_by_hand():
  # Teacher logits (0, ln 3) at T=1: p_t = (1/4, 3/4); student (0, 0):
  # p_s = (1/2, 1/2). KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.1308120.
  kl = 0.25 * np.log(0.5) + 0.75 * np.log(1.5)
  loss = holistic.distillation_loss(tf.constant([[0.0, 0.0]]),
                                    tf.constant([[0.0, np.log(3.0)]]), 1.0)
  assert float(loss) == pytest.approx(kl, abs=1e-6)
  # T = 2 with teacher (0, 2 ln 3): the same softened probabilities, times
  # T^2 = 4.
  loss = holistic.distillation_loss(tf.constant([[0.0, 0.0]]),
                                    tf.constant([[0.0, 2 * np.log(3.0)]]),
                                    2.0)
  assert float(loss) == pytest.approx(4 * kl, abs=1e-6)


def test_seen_restricted_cross_entropy_by_hand():
  # Logits (1, 2, 3, 0), seen classes {0, 2}, label 2: the softmax over
  # (1, 3) gives -log(e^3 / (e + e^3)) = log(1 + e^-2) = 0.1269280.
  loss = holistic.seen_restricted_cross_entropy(
      tf.constant([2]), tf.constant([[1.0, 2.0, 3.0, 0.0]]), [0, 2])
  assert float(loss) == pytest.approx(np.log1p(np.exp(-2.0)), abs=1e-6)
  # The unseen logits get no gradient.
  logits = tf.Variable([[1.0, 2.0, 3.0, 0.0]])
  with tf.GradientTape() as tape:
    loss = holistic.seen_restricted_cross_entropy(tf.constant([2]), logits,
                                                  [0, 2])
  grad = tape.gradient(loss, logits).numpy()[0]
  assert grad[1] == 0.0 and grad[3] == 0.0 and grad[0] > 0 > grad[2]


def test_local_sgd_round_closed_form():
  # Copy m minimises |x - a_m|^2 / 2: after s steps at rate lr,
  # x_m = a_m + (1 - lr)^s (x0 - a_m); the round returns their mean.
  x = tf.Variable([4.0, -2.0])
  targets = [tf.constant([0.0, 0.0]), tf.constant([2.0, 6.0])]
  holistic.local_sgd_round(
      [x], lambda m, s: 0.5 * tf.reduce_sum((x - targets[m]) ** 2),
      copies=2, local_steps=3, lr=0.5)
  mean = np.array([1.0, 3.0])
  expected = mean + 0.5 ** 3 * (np.array([4.0, -2.0]) - mean)
  np.testing.assert_allclose(x.numpy(), expected, rtol=1e-6)


def test_left_out_classes_are_seen_and_vary_with_the_seed():
  seen = [0, 1, 2, 5, 7]
  draws = {tuple(sorted(holistic.left_out_classes(
      seen, 2, tf.constant([s, 3], tf.int64)).numpy())) for s in range(30)}
  for draw in draws:
    assert len(set(draw)) == 2 and set(draw) <= set(seen)
  assert len(draws) > 3


def test_choose_unseen_shift_on_hand_made_logits():
  # The copy saw classes 0, 1; classes 2, 3 are shifted by delta.
  logits = np.array([
      [2.0, 0.0, 1.5, 0.0],   # label 0: right until delta > 0.5
      [0.0, 3.0, 0.0, 0.0],   # label 1: right until delta > 3
      [1.0, 0.0, 0.2, 0.0],   # label 2: right once delta > 0.8
      [0.0, 1.2, -1.0, 0.0],  # label 3: right once delta > 1.2
  ])
  labels = np.array([0, 1, 2, 3])
  delta, scores = holistic.choose_unseen_shift(
      logits, labels, [0, 1], [0.0, 0.5, 1.0, 1.5, 2.0])
  # delta:       0     0.5   1.0   1.5   2.0
  # seen acc:    1     1     0.5   0.5   0.5
  # unseen acc:  0     0     0.5   1     1
  np.testing.assert_allclose([s[1] for s in scores], [1, 1, .5, .5, .5])
  np.testing.assert_allclose([s[2] for s in scores], [0, 0, .5, 1, 1])
  assert delta == 1.5    # mean 0.75 at 1.5 and 2.0: the smaller one


def test_holistic_accuracies_by_hand():
  logits = np.array([
      [5.0, 1.0, 0.0, 9.0],   # label 0: wrong overall, right among seen
      [0.0, 5.0, 0.0, 0.0],   # label 1: right
      [0.0, 9.0, 1.0, 5.0],   # label 3: wrong overall, right among unseen
      [0.0, 0.0, 5.0, 0.0],   # label 2: right
  ])
  acc = holistic.holistic_accuracies(logits, [0, 1, 3, 2], seen=[0, 1])
  assert acc == {"overall": 0.5, "seen": 0.5, "unseen": 0.5,
                 "seen_restricted": 1.0, "unseen_restricted": 1.0}


@pytest.mark.parametrize("method", methods.methods_for("holistic"))
def test_every_method_runs(tmp_path, method):
  metrics = build_runner(_config(method=method), _data(),
                            str(tmp_path)).run()
  assert metrics["method"] == method
  for key in ("overall", "seen", "unseen", "seen_restricted",
              "unseen_restricted"):
    assert 0.0 <= metrics["holistic"][key] <= 1.0
  # 4 pre-training steps; 6 adaptation steps (6 // 2 = 3 rounds of LOLSGD;
  # calibration fine-tunes twice).
  assert metrics["steps"] == 4 + {"source_only": 0, "calibrated": 12,
                                  "lolsgd": 3}.get(method, 6)


def _run(tmp_path, method, **overrides):
  trainer = build_runner(_config(method=method, **overrides), _data(),
                            str(tmp_path))
  return trainer, trainer.run()


def test_source_model_is_kept_and_frozen_classifier_keeps_the_head(tmp_path):
  source, _ = _run(tmp_path / "source", "source_only")
  frozen, _ = _run(tmp_path / "frozen", "frozen_classifier")
  # Same seed, same pre-training: the teacher is the source model.
  for a, b in zip(source.model.weights, frozen.task.teacher.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
  head = frozen.model.head_0.kernel.numpy()
  np.testing.assert_array_equal(head, frozen.task.teacher.head_0.kernel.numpy())
  trunk = frozen.model.trunk.trainable_variables[0].numpy()
  assert not np.allclose(trunk,
                         frozen.task.teacher.trunk.trainable_variables[0].numpy())


def test_calibrated_is_fine_tune_plus_the_chosen_shift(tmp_path):
  tuned, tuned_metrics = _run(tmp_path / "ft", "fine_tune")
  calibrated, metrics = _run(tmp_path / "cal", "calibrated")
  # After calibration the model restarts from the source model, so its
  # weights are those of plain fine-tuning ...
  for a, b in zip(tuned.model.weights, calibrated.model.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
  # ... and only the unseen logits move, by the delta chosen on H.
  with open(tmp_path / "cal" / "calibration.json") as f:
    record = json.load(f)
  assert metrics["unseen_logit_shift"] == record["delta"]
  assert record["delta"] in [s[0] for s in record["scores"]]
  best = max(s[3] for s in record["scores"])
  assert [s[3] for s in record["scores"]
          if s[0] == record["delta"]][0] == best
  for key in ("seen_restricted", "unseen_restricted"):
    assert metrics["holistic"][key] == tuned_metrics["holistic"][key]


class _Interrupted(Exception):
  pass


@pytest.mark.parametrize("where", ["adaptation_step", "calibration_hook"])
def test_resume_after_interruption_matches_uninterrupted(tmp_path, where,
                                                         monkeypatch):
  # Checkpoints every 5 steps: 4 pre-training steps, the auxiliary
  # fine-tuning ends at step 10, the main one at 16.
  config = _config(method="calibrated", checkpoint_every=5)
  whole = build_runner(config, _data(), str(tmp_path / "whole"))
  whole_metrics = whole.run()
  workdir = str(tmp_path / "resumed")
  if where == "adaptation_step":
    # Killed at step 7, in the auxiliary fine-tuning (last checkpoint: 5).
    original = Runner._check_health

    def check(self, phase, stats, step):
      if step == 7:
        raise _Interrupted()
      original(self, phase, stats, step)
    monkeypatch.setattr(Runner, "_check_health", check)
  else:
    # Killed while calibrating: the checkpoint at the phase's last step
    # (10) is written, the shift and the reset are not.
    def calibrate(self):
      raise _Interrupted()
    monkeypatch.setattr(holistic.HolisticTask, "_calibrate", calibrate)
  with pytest.raises(_Interrupted):
    build_runner(config, _data(), workdir).run()
  monkeypatch.undo()
  resumed = build_runner(config, _data(), workdir)
  metrics = resumed.run()
  assert metrics["resumed_from_step"] == (5 if where == "adaptation_step"
                                          else 10)
  assert metrics["unseen_logit_shift"] == whole_metrics["unseen_logit_shift"]
  for a, b in zip(whole.model.weights, resumed.model.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
  assert metrics["holistic"] == whole_metrics["holistic"]


def test_bad_holistic_settings_are_config_errors(tmp_path):
  with pytest.raises(ConfigError, match="pseudo_unseen"):
    config = _config(method="calibrated")
    config.holistic.pseudo_unseen = 3
    build_runner(config, _data(), str(tmp_path))
  with pytest.raises(ConfigError, match="unknown method"):
    build_runner(_config(method="gradmix"), _data(), str(tmp_path))


def test_pretraining_augmentation_is_a_per_channel_affine_map(tmp_path):
  config = _config(method="source_only")
  config.holistic.pretrain_augment = True
  trainer = build_runner(config, _data(), str(tmp_path))
  images = _data().sources[0].x[:6]
  out = trainer.task.augment_source(tf.constant(images)).numpy()
  assert out.min() >= 0.0 and out.max() <= 255.0 + 1e-3
  flips = []
  for image, augmented in zip(images.astype(np.float64), out):
    for channel in range(3):
      x, y = image[..., channel].ravel(), augmented[..., channel].ravel()
      slope, intercept = np.polyfit(x, y, 1)
      np.testing.assert_allclose(intercept + slope * x, y, atol=1e-2)
      assert 0.3 - 1e-4 <= abs(slope) <= 1.0 + 1e-4
    flips.append(slope < 0)
  assert any(flips) and not all(flips)   # some inverted, some not
  config.holistic.pretrain_augment = False
  plain = build_runner(config, _data(), str(tmp_path / "plain"))
  np.testing.assert_array_equal(
      plain.task.augment_source(tf.constant(images)).numpy(), images)


def test_gradmix_distill_mixes_two_named_gradients(tmp_path):
  trainer, metrics = _run(tmp_path, "gradmix_distill")
  optimizer = trainer.phases[1].optimizer
  assert optimizer.mixed_layer_names[-1].endswith("head_0")
  assert len(optimizer.mixed_layer_names) == 6    # 5 trunk layers + head
  assert metrics["skipped_steps"] == 0
