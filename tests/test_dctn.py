"""DCTN: the perplexity-weighted cocktail by hand, category shift, the
target cross-entropy over the sources that hold a class, and a run."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config, tiny_data
from gradmix_tf.tasks import dctn
from gradmix_tf.runner import build_runner


def test_perplexity_score_is_minus_log_one_minus_d():
  logits = tf.constant([[0.0, 2.0]])
  d = 1 / (1 + np.exp(-np.array([0.0, 2.0])))
  np.testing.assert_allclose(dctn.perplexity_scores(logits).numpy()[0],
                             -np.log(1 - d), rtol=1e-6)


def test_cocktail_by_hand():
  # Target classes (a, b, c); source 0 holds a, b, source 1 holds b, c.
  # Scores s = (1, 3); source 0 says (a .2, b .8), source 1 (b .5, c .5).
  # a: .2 (source 0 only); b: (1 * .8 + 3 * .5) / 4 = .575; c: .5.
  # Renormalised over 1.275: .156863, .450980, .392157.
  membership = tf.constant([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
  probs = tf.constant([[[0.2, 0.8, 0.0], [0.0, 0.5, 0.5]]])
  out = dctn.cocktail_probabilities(tf.constant([[1.0, 3.0]]), probs,
                                    membership)
  np.testing.assert_allclose(out.numpy()[0],
                             np.array([0.2, 0.575, 0.5]) / 1.275, rtol=1e-6)


def test_category_shift_prediction_is_the_covering_source(tmp_path):
  trainer = build_runner(tiny_config(method="dctn"), tiny_data(),
                             str(tmp_path))
  # s1 holds the target's classes (5, 6, 7), s2 (0, 1) none of them.
  np.testing.assert_array_equal(trainer.task.source_map,
                                [[0, 1, 2], [-1, -1, -1]])
  images = tf.constant(tiny_data().test.images[:4])
  expected = tf.nn.softmax(trainer.model.heads[0](trainer.model.trunk(
      images))).numpy()
  np.testing.assert_allclose(trainer.probabilities(images.numpy()), expected,
                             rtol=1e-5, atol=1e-6)


def test_target_cross_entropy_uses_sources_holding_the_class(tmp_path):
  trainer = build_runner(tiny_config(method="dctn"), tiny_data(),
                             str(tmp_path))
  features = tf.constant(np.random.default_rng(0).normal(size=(3, 4)),
                         tf.float32)
  labels = tf.constant([0, 2, 1])
  logits = trainer.model.heads[0](features).numpy()
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  mask = tf.constant([1.0, 0.0, 1.0])
  # Only source 0 holds the classes; image 1 is masked out.
  expected = -(log_p[0, 0] + log_p[2, 1]) / 2
  value = trainer.task.target_cross_entropy(features, labels, mask)
  assert float(value) == pytest.approx(expected, rel=1e-5)


def test_trainer_runs_dctn_with_pseudo_labels(tmp_path):
  config = tiny_config(method="dctn")
  config.dctn.pseudo_label_start = 2
  config.dctn.confidence = 0.0          # every U image is pseudo-labelled
  trainer = build_runner(config, tiny_data(), str(tmp_path))
  before = [v.numpy().copy() for v in trainer.task.discriminators[0].weights]
  metrics = trainer.run()
  assert metrics["method"] == "dctn"
  assert 0.0 <= metrics["test_accuracy"] <= 1.0
  after = [v.numpy() for v in trainer.task.discriminators[0].weights]
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
