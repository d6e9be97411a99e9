"""VAT against finite differences; MixMatch's pieces by hand."""

import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf import semi_supervised as ssl


def _tiny_model():
  rng = np.random.default_rng(0)
  w1 = tf.constant(rng.normal(size=(6, 5)), tf.float64)
  w2 = tf.constant(rng.normal(size=(5, 3)), tf.float64)

  def model(x):
    return tf.matmul(tf.tanh(tf.matmul(x, w1)), w2)
  return model


def test_vat_direction_matches_finite_differences():
  model = _tiny_model()
  x = tf.constant(np.random.default_rng(1).normal(size=(1, 6)), tf.float64)
  seed = tf.constant([3, 4])
  xi = 1e-2
  d = ssl.vat_direction(model, x, xi, seed, scale=1.0).numpy()[0]
  # The same random start, then the gradient of D(r) = KL(p(x) || p(x+r))
  # at r = xi d0 by central differences, normalised.
  d0 = ssl.unit_direction(tf.random.stateless_normal(
      tf.shape(x), seed=seed, dtype=tf.float64)).numpy()[0]
  p = tf.nn.softmax(model(x)).numpy()

  def distance(r):
    return float(ssl.kl_divergence(
        tf.constant(p), model(x + tf.constant(r[None]))))

  h = 1e-6
  grad = np.array([(distance(xi * d0 + h * e) - distance(xi * d0 - h * e))
                   / (2 * h) for e in np.eye(6)])
  np.testing.assert_allclose(d, grad / np.linalg.norm(grad), atol=1e-5)
  assert np.linalg.norm(d) == pytest.approx(1.0)


def test_vat_loss_is_kl_at_the_adversarial_point():
  model = _tiny_model()
  x = tf.constant(np.random.default_rng(2).normal(size=(2, 6)), tf.float64)
  seed = tf.constant([1, 2])
  d = ssl.vat_direction(model, x, 1e-2, seed, scale=1.0)
  p = tf.nn.softmax(model(x))
  expected = ssl.kl_divergence(p, model(x + 0.5 * d))
  loss = ssl.vat_loss(model, x, 1e-2, 0.5, seed, scale=1.0)
  assert float(loss) == pytest.approx(float(expected), rel=1e-10)
  # The adversarial direction hurts more than a random one of equal size.
  random = ssl.unit_direction(tf.random.stateless_normal(
      tf.shape(x), seed=[9, 9], dtype=tf.float64))
  assert float(loss) > float(ssl.kl_divergence(p, model(x + 0.5 * random)))


def test_sharpen_by_hand():
  # (.6, .4) at T = .5: (.36, .16) / .52 = (.6923077, .3076923).
  np.testing.assert_allclose(ssl.sharpen(tf.constant([[.6, .4]]), 0.5),
                             [[.36 / .52, .16 / .52]], rtol=1e-6)
  np.testing.assert_allclose(ssl.sharpen(tf.constant([[.6, .4]]), 1.0),
                             [[.6, .4]], rtol=1e-6)


def test_mixup_by_hand():
  x1, x2 = tf.constant([[1.0, 0.0]]), tf.constant([[0.0, 1.0]])
  p1, p2 = tf.constant([[1.0, 0.0]]), tf.constant([[0.2, 0.8]])
  # lambda = .3 -> lambda' = max(.3, .7) = .7: x' = (.7, .3),
  # p' = .7 (1, 0) + .3 (.2, .8) = (.76, .24).
  x, p = ssl.mixup(x1, p1, x2, p2, tf.constant([0.3]))
  np.testing.assert_allclose(x.numpy(), [[0.7, 0.3]], rtol=1e-6)
  np.testing.assert_allclose(p.numpy(), [[0.76, 0.24]], rtol=1e-6)


def test_translate_shifts_within_bounds():
  image = np.zeros((1, 5, 5, 1), np.float32)
  image[0, 2, 2, 0] = 1.0
  moved = ssl.translate(tf.constant(np.repeat(image, 50, 0)), 1,
                        tf.constant([0, 1])).numpy()
  positions = {tuple(np.argwhere(m[..., 0] == 1.0)[0]) for m in moved}
  assert positions <= {(r, c) for r in (1, 2, 3) for c in (1, 2, 3)}
  assert len(positions) > 4
  assert np.all(moved.sum(axis=(1, 2, 3)) == 1.0)


def test_beta_samples_have_the_right_mean():
  draws = ssl.sample_beta([20000], 0.75, tf.constant([5, 6])).numpy()
  assert 0.0 <= draws.min() and draws.max() <= 1.0
  assert draws.mean() == pytest.approx(0.5, abs=0.01)
  # Var of Beta(a, a) = 1 / (4 (2a + 1)) = 0.1.
  assert draws.var() == pytest.approx(0.1, abs=0.005)


def test_mixmatch_loss_is_zero_for_a_confident_constant_model():
  # A model that always outputs one-hot-ish (sharpened) targets equal to
  # every label: q' and the predictions coincide -> loss 0 ... only when the
  # labelled targets agree too: all labels 0 and the model says class 0.
  def model(x):
    return tf.tile(tf.constant([[20.0, 0.0]]), [tf.shape(x)[0], 1])
  images = tf.zeros((4, 6, 6, 1))
  loss = ssl.mixmatch_unlabelled_loss(
      model, images, tf.zeros(4, tf.int32), 2, images, tf.constant([1, 1]),
      weight=100.0)
  assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_mixmatch_loss_scales_with_its_weight():
  rng = np.random.default_rng(0)
  w = tf.constant(rng.normal(size=(36, 3)), tf.float32)

  def model(x):
    return tf.matmul(tf.reshape(x, [-1, 36]), w)
  labelled = tf.constant(rng.normal(size=(4, 6, 6, 1)), tf.float32)
  unlabelled = tf.constant(rng.normal(size=(5, 6, 6, 1)), tf.float32)
  args = (model, labelled, tf.constant([0, 1, 2, 0]), 3, unlabelled,
          tf.constant([4, 2]))
  one = float(ssl.mixmatch_unlabelled_loss(*args, weight=1.0))
  assert one > 0.0
  assert float(ssl.mixmatch_unlabelled_loss(*args, weight=50.0)) == (
      pytest.approx(50.0 * one, rel=1e-5))


@pytest.mark.parametrize("method", ["gradmix_vat", "gradmix_mixmatch"])
def test_unlabelled_loss_is_one_more_mixed_source(tmp_path, method):
  from conftest import tiny_config, tiny_data  # pylint: disable=g-import-not-at-top
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  from gradmix_tf.batches import batch_indices  # pylint: disable=g-import-not-at-top
  config = tiny_config(method=method)
  config.mixmatch.rampup_steps = 1
  trainer = build_runner(config, tiny_data(), str(tmp_path))
  phase = trainer.phases[0]
  assert phase.source_names == ("s1", "s2", method.split("_")[1])
  sizes = phase.index_sizes
  trainer.step.assign(1)
  stats = trainer.step_functions[0](tuple(tf.constant(batch_indices(n, 8, [0, i], 0, 1)[0])
                                       for i, n in enumerate(sizes)))
  # The trunk's layers are mixed over three sources; the unlabelled loss
  # reaches them and has a gradient there.
  assert stats["weights"].shape[-1] == 3
  assert float(stats["source_grad_norms"][2]) > 0.0
  assert float(stats[f"loss/{method.split('_')[1]}"]) > 0.0
  metrics = trainer.run()
  assert metrics["method"] == method
