"""The multi-head digit ConvNet."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf.models import build_model, forward_flops


def _model():
  return build_model(ml_collections.ConfigDict(dict(
      name="digit_convnet", widths=(4, 4, 8, 8), units=16)), (28, 28, 3),
                     (5, 3))


def test_forward_flops_by_hand():
  # conv1 28*28*9*3*32 + conv2 14*14*9*32*32 + conv3 14*14*9*32*64
  # + conv4 7*7*9*64*64 + fc1 7*7*64*128 + head 128*5 multiply-adds, x2.
  macs = (677376 + 1806336 + 3612672 + 1806336 + 401408 + 640)
  assert forward_flops((28, 28, 3)) == 2 * macs == 16609536


def test_layer_paths_separate_trunk_and_heads():
  paths = [v.path for v in _model().trainable_variables]
  assert paths == [
      "trunk/conv1/kernel", "trunk/conv1/bias", "trunk/conv2/kernel",
      "trunk/conv2/bias", "trunk/conv3/kernel", "trunk/conv3/bias",
      "trunk/conv4/kernel", "trunk/conv4/bias", "trunk/fc1/kernel",
      "trunk/fc1/bias", "head_0/kernel", "head_0/bias", "head_1/kernel",
      "head_1/bias"]


def test_a_head_reaches_only_its_own_variables():
  model = _model()
  images = tf.constant(np.zeros((2, 28, 28, 3), np.uint8))
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(images, head=1))
  grads = tape.gradient(loss, model.trainable_variables)
  reached = [v.path for v, g in zip(model.trainable_variables, grads)
             if g is not None]
  assert "head_1/kernel" in reached and "trunk/conv1/kernel" in reached
  assert not any(path.startswith("head_0") for path in reached)
  assert model(images, head=0).shape == (2, 5)
  assert model(images, head=1).shape == (2, 3)


def test_a_model_only_checkpoint_restores_every_head(tmp_path):
  model = _model()
  path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
  names = [name for name, _ in tf.train.list_variables(path)]
  assert sum("head_0" in n for n in names) == 2    # kernel and bias
  assert sum("head_1" in n for n in names) == 2
  other = _model()
  tf.train.Checkpoint(model=other).restore(path).assert_existing_objects_matched()
  for a, b in zip(model.weights, other.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert len(model.trainable_variables) == 14   # no head counted twice


def _batch_norm_model(kernel_initializer="glorot_uniform"):
  return build_model(ml_collections.ConfigDict(dict(
      name="digit_convnet", widths=(4, 4, 8, 8), units=16, norm="batch",
      kernel_initializer=kernel_initializer)), (28, 28, 3), (5, 3))


def test_batch_norm_trunk_mixes_the_same_five_layers_without_biases():
  from gradmix_tf.optimizer import layer_name  # pylint: disable=g-import-not-at-top
  model = _batch_norm_model()
  trunk_layers = sorted({layer_name(v) for v in model.trunk.trainable_variables})
  assert [name.rsplit("/", 1)[-1] for name in trunk_layers] == [
      "conv1", "conv2", "conv3", "conv4", "fc1"]
  assert all(v.path.endswith("kernel") for v in model.trunk.trainable_variables)
  # Moving mean and variance of five normalisations, none trainable.
  assert len(model.trunk.non_trainable_variables) == 10


def test_batch_norm_keeps_every_relu_alive_on_the_training_batch():
  # All-negative conv1 kernels on non-negative pixels: without
  # normalisation every conv1 ReLU is 0 on every image (dead). With it
  # each channel is normalised with its batch statistics, numpy's
  # (x - mean) / sqrt(var + 1e-3), and is positive on part of the batch.
  model = _batch_norm_model()
  conv1 = model.trunk.get_layer("conv1")
  conv1.kernel.assign(-np.abs(conv1.kernel.numpy()) - 0.1)
  images = np.random.default_rng(0).uniform(0, 255, (16, 28, 28, 3)).astype(
      np.float32)
  rescaled = model.trunk.get_layer("rescale")(images)
  pre = conv1(rescaled).numpy()
  assert pre.max() < 0.0
  mean, var = pre.mean(axis=(0, 1, 2)), pre.var(axis=(0, 1, 2))
  expected = np.maximum((pre - mean) / np.sqrt(var + 1e-3), 0.0)
  relu = model.trunk.get_layer("conv1_relu")(
      model.trunk.get_layer("conv1_bn")(pre, training=True))
  np.testing.assert_allclose(relu.numpy(), expected, rtol=1e-3, atol=1e-4)
  assert np.all((relu.numpy() > 0).mean(axis=(0, 1, 2)) > 0.2)


def test_he_normal_kernels_have_fan_in_variance():
  # He et al.: std sqrt(2 / fan_in) (Keras truncates at 2 std and widens
  # the draw to keep it); Glorot uniform: sqrt(2 / (fan_in + fan_out)).
  # conv4 (3x3, 8 -> 8 channels): fan_in = fan_out = 72, 576 weights:
  # 0.1667 against 0.1179.
  def conv4_std(initializer):
    kernel = _batch_norm_model(initializer).trunk.get_layer("conv4").kernel
    return float(np.std(kernel.numpy()))
  assert conv4_std("he_normal") == pytest.approx(np.sqrt(2 / 72), rel=0.1)
  assert conv4_std("glorot_uniform") == pytest.approx(np.sqrt(2 / 144),
                                                      rel=0.1)


@pytest.mark.parametrize("shape", [(16, 7, 7, 8), (16, 12)])
def test_fused_batch_norm_equals_keras_batch_norm_without_affine(shape):
  # Keras' BatchNormalization(center=False, scale=False) is the independent
  # reference: training output, moving statistics over three calls,
  # inference output and the input gradient.
  import keras  # pylint: disable=g-import-not-at-top
  from gradmix_tf.models import FusedBatchNorm  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  reference = keras.layers.BatchNormalization(center=False, scale=False)
  fused = FusedBatchNorm()
  for _ in range(3):
    x = tf.constant(rng.normal(2.0, 3.0, shape).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(x)
      expected, got = reference(x, training=True), fused(x, training=True)
      cubes = (tf.reduce_sum(expected ** 3), tf.reduce_sum(got ** 3))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-6)
    np.testing.assert_allclose(tape.gradient(cubes[1], x).numpy(),
                               tape.gradient(cubes[0], x).numpy(),
                               atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(fused.moving_mean.numpy(),
                             reference.moving_mean.numpy(), atol=1e-6)
  np.testing.assert_allclose(fused.moving_variance.numpy(),
                             reference.moving_variance.numpy(), atol=1e-6)
  assert np.abs(fused.moving_mean.numpy()).max() > 0.01   # they moved
  np.testing.assert_allclose(fused(x).numpy(), reference(x).numpy(),
                             atol=5e-6)
  assert not fused.trainable_variables
