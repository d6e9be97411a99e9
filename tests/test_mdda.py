"""MDDA: weighted batch-norm statistics and the domain-discovery loss by
hand, inference on the running statistics, and a run of the trainer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config, tiny_data
from gradmix_tf.tasks import mdda
from gradmix_tf.runner import build_runner

# x = (1, 2, 3, 4), one channel; weights over two domains.
_X = tf.constant([[1.0], [2.0], [3.0], [4.0]])
_W = tf.constant([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])


def test_weighted_moments_by_hand():
  mean, variance, present = mdda.weighted_moments(_X, _W)
  # Domain 0: weights 1, 1, 0, .5 -> mean (1 + 2 + 2) / 2.5 = 2,
  #   variance (1 + 0 + .5 * 4) / 2.5 = 1.2.
  # Domain 1: weights 0, 0, 1, .5 -> mean (3 + 2) / 1.5 = 10/3,
  #   variance ((1/3)^2 + .5 (2/3)^2) / 1.5 = 2/9.
  np.testing.assert_allclose(mean.numpy()[:, 0], [2.0, 10 / 3], rtol=1e-6)
  np.testing.assert_allclose(variance.numpy()[:, 0], [1.2, 2 / 9],
                             rtol=1e-5)
  assert present.numpy().tolist() == [True, True]


def test_weighted_moments_pool_spatial_positions():
  # Two images of 2 positions; image 0 in domain 0: mean of (1, 3) = 2,
  # variance 1; image 1 in domain 1: (5, 5) -> 5, 0; domain 2 absent.
  x = tf.constant([[[1.0], [3.0]], [[5.0], [5.0]]])
  w = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  mean, variance, present = mdda.weighted_moments(x, w)
  np.testing.assert_allclose(mean.numpy()[:, 0], [2.0, 5.0, 0.0])
  np.testing.assert_allclose(variance.numpy()[:, 0], [1.0, 0.0, 1.0],
                             atol=1e-6)
  assert present.numpy().tolist() == [True, True, False]


def test_weighted_batch_norm_output_and_running_statistics():
  layer = mdda.WeightedBatchNorm(2, momentum=0.9, epsilon=0.0)
  layer.build((None, 1))
  out = layer(_X, _W, training=True).numpy()[:, 0]
  # Sample 4: .5 (4 - 2) / sqrt(1.2) + .5 (4 - 10/3) / sqrt(2/9) = 1.6200089.
  assert out[3] == pytest.approx(
      0.5 * 2 / np.sqrt(1.2) + 0.5 * (2 / 3) / np.sqrt(2 / 9), rel=1e-5)
  assert out[0] == pytest.approx((1 - 2) / np.sqrt(1.2), rel=1e-5)
  # Running statistics: 0.9 * (0, 1) + 0.1 * batch statistics.
  np.testing.assert_allclose(layer.moving_mean.numpy()[:, 0],
                             [0.2, 1 / 3], rtol=1e-5)
  np.testing.assert_allclose(layer.moving_variance.numpy()[:, 0],
                             [0.9 + 0.12, 0.9 + 0.2 / 9], rtol=1e-5)
  # Inference uses them: (x - 0.2) / sqrt(1.02) for domain 0.
  out = layer(_X[:1], _W[:1], training=False).numpy()[0, 0]
  assert out == pytest.approx((1 - 0.2) / np.sqrt(1.02), rel=1e-5)


def test_domain_discovery_loss_by_hand():
  # Confident and balanced: mean H(w_n) = 0, H(mean) = ln 2 -> -ln 2.
  loss = mdda.domain_discovery_loss(tf.constant([[1.0, 0.0], [0.0, 1.0]]))
  assert float(loss) == pytest.approx(-np.log(2.0), abs=1e-6)
  # Uncertain: every w_n = (1/2, 1/2): ln 2 - ln 2 = 0.
  loss = mdda.domain_discovery_loss(tf.fill([3, 2], 0.5))
  assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_trainer_runs_mdda(tmp_path):
  config = tiny_config(method="mdda")
  trainer = build_runner(config, tiny_data(), str(tmp_path))
  target_stats = trainer.model.norms[0].moving_mean.numpy()[-1].copy()
  metrics = trainer.run()
  assert metrics["method"] == "mdda"
  assert 0.0 <= metrics["test_accuracy"] <= 1.0
  # The target's own statistics were updated by the target batches.
  assert not np.allclose(trainer.model.norms[0].moving_mean.numpy()[-1],
                         target_stats)


def test_mdda_resnet18_with_one_domain_is_the_resnet18_trunk():
  # ImageNet-style weights (random here, moving statistics included) copied
  # from a plain ResNet-18 trunk: with one-hot domain weights and training
  # off, every mDA layer is that batch norm, so the features are the
  # trunk's, for the target's own domain and for a latent source domain.
  from gradmix_tf import resnet  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  trunk = resnet.resnet18_trunk((32, 32, 3))
  for layer in trunk.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      channels = layer.gamma.shape[0]
      layer.gamma.assign(rng.uniform(0.5, 1.5, channels))
      layer.beta.assign(rng.normal(0, 0.1, channels))
      layer.moving_mean.assign(rng.normal(0, 0.1, channels))
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels))
  model = mdda.MDDAResNet18((5, 3), latent_domains=2)
  model.build_all((32, 32, 3))
  model.copy_trunk_weights(trunk)
  images = tf.constant(rng.integers(0, 256, (3, 32, 32, 3)), tf.float32)
  expected = trunk(images, training=False).numpy()
  for domain in (2, 0):            # the target's statistics; a source's
    weights = tf.one_hot([domain] * 3, 3)
    np.testing.assert_allclose(
        model.features(images, weights, training=False).numpy(), expected,
        rtol=1e-4, atol=1e-5)
