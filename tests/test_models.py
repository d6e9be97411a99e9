"""The multi-head digit ConvNet."""

import ml_collections
import numpy as np
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
