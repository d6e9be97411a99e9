"""Pseudo-label rules and V enlargement on hand-made probability arrays."""

import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf import pseudo_labels


def test_hard_labels_need_agreement_and_confidence():
  probs = np.array([
      # image:  0 agree+conf   1 disagree   2 threshold exactly 0.8   3 low
      [[.9, .1, 0], [.85, .15, 0], [.8, .2, 0], [.1, .7, .2]],   # model 1
      [[.95, .05, 0], [.1, .9, 0], [.8, .1, .1], [.1, .79, .11]],  # model 2
      [[.85, .1, .05], [.9, .1, 0], [.81, .19, 0], [0, .9, .1]],  # model 3
  ])
  index, labels = pseudo_labels.hard_labels(probs, threshold=0.8)
  # 0: all say class 0 with >= .85; 1: model 2 says 1; 2: >= 0.8 counts;
  # 3: model 1 gives class 1 only .7 (and model 2 .79).
  np.testing.assert_array_equal(index, [0, 2])
  np.testing.assert_array_equal(labels, [0, 0])


def test_a_class_with_no_confident_image():
  probs = np.array([[[.9, .1], [.6, .4]], [[.95, .05], [.55, .45]]])
  index, labels = pseudo_labels.hard_labels(probs)
  np.testing.assert_array_equal(index, [0])
  assert np.bincount(labels, minlength=2).tolist() == [1, 0]


def test_soft_labels_and_loss_by_hand():
  probs = np.array([[[.5, .5]], [[.9, .1]], [[.7, .3]]])
  np.testing.assert_allclose(pseudo_labels.soft_labels(probs), [[.7, .3]],
                             rtol=1e-6)
  # KL(p || y) with p = softmax(0, ln 3) = (1/4, 3/4), y = (.7, .3):
  # 1/4 ln(.25/.7) + 3/4 ln(.75/.3) = 0.4297...
  expected = 0.25 * np.log(0.25 / 0.7) + 0.75 * np.log(0.75 / 0.3)
  loss = pseudo_labels.soft_label_loss(tf.constant([[0.0, np.log(3.0)]]),
                                       tf.constant([[0.7, 0.3]]))
  assert float(loss) == pytest.approx(expected, abs=1e-6)


def test_soft_loss_in_the_other_direction_by_hand():
  # KL(y || p), y = (.7, .3), p = (1/4, 3/4): .7 ln(.7/.25) + .3 ln(.3/.75)
  expected = 0.7 * np.log(0.7 / 0.25) + 0.3 * np.log(0.3 / 0.75)
  loss = pseudo_labels.soft_label_loss(tf.constant([[0.0, np.log(3.0)]]),
                                       tf.constant([[0.7, 0.3]]),
                                       direction="label_model")
  assert float(loss) == pytest.approx(expected, abs=1e-6)
  with pytest.raises(ValueError, match="direction"):
    pseudo_labels.soft_label_loss(tf.constant([[0.0, 0.0]]),
                                  tf.constant([[0.5, 0.5]]), direction="x")


def _logit_gradient(logits, targets, direction):
  logits = tf.Variable(logits)
  with tf.GradientTape() as tape:
    loss = pseudo_labels.soft_label_loss(logits, tf.constant(targets),
                                         direction)
  return tape.gradient(loss, logits).numpy()


def test_a_confidently_wrong_model_gets_no_gradient_from_the_papers_kl():
  # The model puts (almost) all its mass on class 0, which the labels rule
  # out. KL(p || y): gradient p_j (log p_j - log y_j - KL) -> 0; KL(y || p):
  # gradient p - y = (1, -0.5, -0.5) up to the tiny off-class mass.
  logits = [[30.0, 0.0, 0.0]]
  targets = [[0.0, 0.5, 0.5]]
  model_label = _logit_gradient(logits, targets, "model_label")
  label_model = _logit_gradient(logits, targets, "label_model")
  assert np.abs(model_label).max() < 1e-10
  np.testing.assert_allclose(label_model, [[1.0, -0.5, -0.5]], atol=1e-6)
  # Away from the plateau both directions agree with finite differences.
  logits = np.array([[0.3, -0.2, 0.5]])
  targets = np.array([[0.2, 0.5, 0.3]], np.float32)
  for direction in pseudo_labels.SOFT_LOSS_DIRECTIONS:
    analytic = _logit_gradient(logits, targets, direction)
    numeric = np.zeros_like(logits)
    for j in range(3):
      step = np.zeros_like(logits)
      step[0, j] = 1e-4
      numeric[0, j] = (
          float(pseudo_labels.soft_label_loss(tf.constant(logits + step),
                                              targets, direction))
          - float(pseudo_labels.soft_label_loss(tf.constant(logits - step),
                                                targets, direction))) / 2e-4
    np.testing.assert_allclose(analytic, numeric, atol=1e-6)


def test_enlargement_takes_hard_labelled_images_up_to_the_cap():
  v_labels = np.array([0, 0, 1, 1, 2, 2])          # 2 per class in V
  hard_classes = np.array([0] * 150 + [1] * 50 + [3] * 5)
  chosen = pseudo_labels.enlarge_validation(v_labels, hard_classes,
                                            num_classes=4, per_class=100,
                                            seed=0)
  counts = np.bincount(hard_classes[chosen], minlength=4)
  # Class 0: 98 of 150; class 1: all 50 (fewer than 98); class 2: none
  # hard-labelled; class 3 (not in V): 5 (capped by what exists).
  assert counts.tolist() == [98, 50, 0, 5]
  assert len(set(chosen.tolist())) == len(chosen)          # no repeats
  again = pseudo_labels.enlarge_validation(v_labels, hard_classes, 4, 100,
                                           seed=0)
  np.testing.assert_array_equal(chosen, again)
  full = pseudo_labels.enlarge_validation(np.repeat([0], 100),
                                          hard_classes, 4, 100, seed=0)
  assert not np.any(hard_classes[full] == 0)               # already full


def test_provenance_reports_accuracy_separately():
  soft = np.array([[.9, .1], [.2, .8], [.6, .4]], np.float32)
  record = pseudo_labels.provenance(
      np.array([0, 1]), np.array([0, 1]), soft, np.array([0, 0, 0]),
      members=["a", "b"], threshold=0.8, num_classes=2)
  assert record["num_hard"] == 2 and record["hard_per_class"] == [1, 1]
  assert record["hard_accuracy"] == 0.5
  assert record["soft_argmax_accuracy"] == pytest.approx(2 / 3)
