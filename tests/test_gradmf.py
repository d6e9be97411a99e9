"""GradMF: progressive steps and projection by hand, the Gram form against
the vector recurrence, and the optimizer and trainer end to end."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf import gradmf
from gradmix_tf import solvers
from gradmix_tf.gradmf import GradMF
from tests.conftest import tiny_config, tiny_data


def _vector_turn(s, t, steps, angle_threshold=0.0):
  """Step (1) on explicit vectors (float64): the reference recurrence."""
  s = np.asarray(s, np.float64).copy()
  t = np.asarray(t, np.float64)
  for _ in range(steps):
    cos = s @ t / (np.linalg.norm(s) * np.linalg.norm(t))
    if angle_threshold > 0 and cos >= np.cos(np.radians(angle_threshold)):
      break
    r = (t @ s) / (s @ s) if s @ s > 0 else 0.0
    s = s + (t - r * s)
  return s


def _statistics(sources, t):
  """Gram form of one layer: sources [k, n], t [n]."""
  sources = np.asarray(sources, np.float64)
  t = np.asarray(t, np.float64)
  return (tf.constant((sources @ sources.T)[None]),
          tf.constant((sources @ t)[None]), tf.constant([t @ t]))


def _coefficients(sources, t, **kwargs):
  w, u, cosine = gradmf.gradmf_coefficients(*_statistics(sources, t),
                                            **kwargs)
  return w.numpy()[0], float(u[0]), float(cosine[0])


def test_two_dimensional_steps_by_hand():
  # G_s = (2, 0), G_t = (1, 1).
  # K=1: r = <t,s>/|s|^2 = 2/4; s' = (2,0) + (1,1) - 0.5 (2,0) = (2, 1);
  #      cos = 3 / (sqrt 5 sqrt 2) = 0.9486833; projection 3/2 G_t.
  # K=2: r = 3/5; s'' = (2,1) + (1,1) - 0.6 (2,1) = (1.8, 1.4);
  #      cos = 3.2 / (sqrt 5.2 sqrt 2) = 0.9922779; projection 1.6 G_t.
  sources, t = [[2.0, 0.0]], [1.0, 1.0]
  w, u, cosine = _coefficients(sources, t, steps=0)
  assert cosine == pytest.approx(0.7071068, abs=1e-7)
  assert u == pytest.approx(1.0)  # <(2,0),(1,1)> / 2
  w, u, cosine = _coefficients(sources, t, steps=1)
  np.testing.assert_allclose(w, [0.0])
  assert u == pytest.approx(1.5, abs=1e-12)
  assert cosine == pytest.approx(0.9486833, abs=1e-7)
  w, u, cosine = _coefficients(sources, t, steps=2)
  assert u == pytest.approx(1.6, abs=1e-12)
  assert cosine == pytest.approx(0.9922779, abs=1e-7)
  # The turned gradient itself: s'' = 0.4 G_s + 1.4 G_t = (1.8, 1.4).
  w, u, _ = _coefficients(sources, t, steps=2, update="turned")
  np.testing.assert_allclose(w * np.array([2.0, 0.0]) + u * np.array(t),
                             [1.8, 1.4], atol=1e-12)


def test_three_dimensional_two_sources_by_hand():
  # g1 = e1, g2 = e2, G_s = (1,1,0), G_t = e3 orthogonal to it.
  # K=1: r = 0, s' = (1,1,1), cos = 1/sqrt 3.
  # K=2: r = 1/3, s'' = (2/3)(1,1,1) + e3 = (2/3, 2/3, 5/3),
  #      cos = 5/sqrt 33 = 0.8703883, projection (5/3) G_t.
  sources = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
  t = [0.0, 0.0, 1.0]
  _, u, cosine = _coefficients(sources, t, steps=1)
  assert u == pytest.approx(1.0, abs=1e-12)
  assert cosine == pytest.approx(1 / np.sqrt(3), abs=1e-12)
  w, u, cosine = _coefficients(sources, t, steps=2, update="turned")
  # s'' = (2/3) g1 + (2/3) g2 + (5/3) G_t.
  np.testing.assert_allclose(w, [2 / 3, 2 / 3], atol=1e-12)
  assert u == pytest.approx(5 / 3, abs=1e-12)
  assert cosine == pytest.approx(5 / np.sqrt(33), abs=1e-12)
  _, u, _ = _coefficients(sources, t, steps=2)
  assert u == pytest.approx(5 / 3, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_gram_form_equals_vector_recurrence(seed):
  rng = np.random.default_rng(seed)
  k, n = 3, 40
  sources = rng.normal(size=(k, n))
  t = rng.normal(size=n)
  for steps in range(5):
    turned = _vector_turn(sources.sum(0), t, steps)
    w, u, cosine = _coefficients(sources, t, steps=steps, update="turned")
    np.testing.assert_allclose(w @ sources + u * t, turned, rtol=1e-9,
                               atol=1e-9)
    assert cosine == pytest.approx(
        turned @ t / np.linalg.norm(turned) / np.linalg.norm(t), abs=1e-9)
    _, u, _ = _coefficients(sources, t, steps=steps)
    assert u == pytest.approx(turned @ t / (t @ t), rel=1e-9)


@pytest.mark.parametrize("seed", range(10))
def test_cosine_rises_with_k_when_source_is_longer(seed):
  # |G_s| >= |G_t|: no step overshoots and |G_s| grows (module docstring).
  rng = np.random.default_rng(seed)
  sources = rng.normal(size=(2, 30)) * 3.0
  t = rng.normal(size=30)
  assert np.linalg.norm(sources.sum(0)) >= np.linalg.norm(t)
  cosines = [_coefficients(sources, t, steps=steps)[2] for steps in range(8)]
  assert all(b > a for a, b in zip(cosines, cosines[1:])), cosines
  assert cosines[-1] > cosines[0]


def test_short_source_can_overshoot_and_threshold_stops_it():
  # G_s = (0.01, 0) is nearly along G_t = (1, 0.1) (cos 0.995); one step
  # gives s' = (0.01, 0.1) + ... = (0.01, 0.1): the cosine falls to 0.1097.
  sources, t = [[0.01, 0.0]], [1.0, 0.1]
  before = _coefficients(sources, t, steps=0)[2]
  after = _coefficients(sources, t, steps=1)[2]
  assert before == pytest.approx(1 / np.sqrt(1.01), abs=1e-9)
  s1 = np.array([0.01, 0.1])
  assert after == pytest.approx(
      s1 @ np.array(t) / np.linalg.norm(s1) / np.sqrt(1.01), abs=1e-9)
  assert after < before
  # A 10 degree threshold: the angle (5.7 degrees) is already below it.
  w, u, cosine = _coefficients(sources, t, steps=1, angle_threshold=10.0,
                               update="turned")
  np.testing.assert_allclose(w, [1.0])
  assert u == 0.0 and cosine == pytest.approx(before, abs=1e-12)


def test_layer_mode_differs_from_global_mode():
  # Two layers; the source agrees with V on layer 0 and opposes it on 1.
  gram = tf.constant([[[1.0]], [[1.0]]], tf.float64)
  cross = tf.constant([[1.0], [-1.0]], tf.float64)
  v_sq = tf.constant([1.0, 1.0], tf.float64)
  # Layer-wise, K=0: projections +1 and -1. Globally: <s,t> = 0 -> 0.
  _, u, _ = gradmf.gradmf_coefficients(gram, cross, v_sq, steps=0,
                                       mode="layer")
  np.testing.assert_allclose(u.numpy(), [1.0, -1.0])
  _, u, _ = gradmf.gradmf_coefficients(gram, cross, v_sq, steps=0,
                                       mode="global")
  np.testing.assert_allclose(u.numpy(), [0.0, 0.0])
  # Globally with K=1: r = 0, s' = s + t, <s',t> = 2, |t|^2 = 2 -> 1.
  _, u, cosine = gradmf.gradmf_coefficients(gram, cross, v_sq, steps=1)
  np.testing.assert_allclose(u.numpy(), [1.0, 1.0])
  np.testing.assert_allclose(cosine.numpy(), [np.sqrt(0.5)] * 2)


def test_zero_target_gradient_falls_back_to_the_source_sum():
  w, u, cosine = _coefficients([[1.0, 2.0], [3.0, 0.0]], [0.0, 0.0], steps=3)
  np.testing.assert_allclose(w, [1.0, 1.0])
  assert u == 0.0 and cosine == 0.0


def _variables():
  with keras.name_scope("trunk"):
    trunk = keras.Variable(np.array([1.0, 2.0], np.float32), name="kernel")
  with keras.name_scope("head_1"):
    head1 = keras.Variable(np.array([0.3], np.float32), name="kernel")
  return [trunk, head1]


def test_optimizer_step_by_hand():
  variables = _variables()
  optimizer = GradMF(keras.optimizers.SGD(0.1), steps=1)
  source_grads = [[tf.constant([2.0, 0.0]), None],
                  [tf.constant([0.0, 0.0]), tf.constant([-0.2])]]
  val_grads = [tf.constant([1.0, 1.0]), None]
  stats = optimizer.apply_gradmix(source_grads, val_grads, variables)
  # Trunk: G_s = (2, 0), G_t = (1, 1) -> update 1.5 (1, 1) (first test);
  # (1, 2) - 0.1 * (1.5, 1.5) = (0.85, 1.85). eta = 1.
  np.testing.assert_allclose(variables[0].numpy(), [0.85, 1.85], atol=1e-6)
  # The head V does not reach gets its source's gradient: 0.3 + 0.02.
  np.testing.assert_allclose(variables[1].numpy(), [0.32], atol=1e-6)
  assert float(stats["eta"]) == 1.0
  assert float(stats["cosines"][0]) == pytest.approx(0.9486833, abs=1e-6)
  assert optimizer.mixed_layer_names == ["trunk"]


def test_config_round_trip_and_bad_arguments():
  optimizer = GradMF(keras.optimizers.SGD(0.1), steps=3, angle_threshold=5.0,
                     mode="layer", update="turned")
  clone = GradMF.from_config(optimizer.get_config())
  assert (clone.steps, clone.angle_threshold, clone.mode, clone.update) == (
      3, 5.0, "layer", "turned")
  with pytest.raises(ValueError, match="mode"):
    GradMF(keras.optimizers.SGD(0.1), mode="both")
  with pytest.raises(ValueError, match="update"):
    GradMF(keras.optimizers.SGD(0.1), update="mix")
  with pytest.raises(ValueError, match="GradMF takes no `solver`"):
    GradMF(keras.optimizers.SGD(0.1), solver="exact")


def test_gradmix_gram_statistics_feed_gradmf():
  # The statistics GradMix computes from gradient tensors give the 2-D case.
  gram, cross, v_sq = solvers.gram_statistics(
      [[[tf.constant([2.0, 0.0])]]], [[tf.constant([1.0, 1.0])]])
  _, u, _ = gradmf.gradmf_coefficients(gram, cross, v_sq, steps=2)
  assert float(u[0]) == pytest.approx(1.6, abs=1e-6)


def test_trainer_runs_gradmf(tmp_path):
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  config = tiny_config(method="gradmf")
  config.gradmf.steps = 2
  metrics = build_runner(config, tiny_data(), str(tmp_path)).run()
  assert metrics["method"] == "gradmf"
  assert metrics["steps"] == config.steps
  assert 0.0 <= metrics["test_accuracy"] <= 1.0
  assert metrics["skipped_steps"] == 0
