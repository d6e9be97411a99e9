"""Networks with a shared trunk and one classification head per label space.

`MultiHeadClassifier(trunk, num_classes_per_head)` maps raw images (uint8 or
float in 0..255; the trunk rescales) through the trunk to features and
through `heads[h]` to logits. Each head is one `Dense` layer named
`head_<h>`, so `GradMix` sees the trunk layers as shared by all sources and
each head as reached only by the sources of its label space.

The digit ConvNet (`digit_convnet`) follows the 4 conv + 2 fc shape of Luo et
al. 2017, the network the GradMix paper uses for digits. Its widths are not
published; ours is LeNet-like and sized for a 2-core CPU:

    rescale 1/255
    conv1 3x3, w1, ReLU      28x28 (same padding)  -> 2x2 max-pool
    conv2 3x3, w2, ReLU      14x14
    conv3 3x3, w3, ReLU      14x14                 -> 2x2 max-pool
    conv4 3x3, w4, ReLU      7x7
    fc1   dense, units, ReLU
    fc2   = the head, one per label space

With the default widths (32, 32, 64, 64) and 128 units on 28x28x3 inputs
the forward pass is 16.6 MFLOP per image (multiply-adds counted as two
FLOPs; `forward_flops` computes it), about 50 MFLOP per trained image.
Pooling after conv1 rather than conv2 keeps the step small: a GradMix step
of `digits_mnistm` (2 x 32 source images + 10 V images) takes 47 ms on the
2-core CPU machine (`python bench/step_time.py`, docs/PERFORMANCE.md); with
the digit configs' batch norm (`norm="batch"`) about 1.27x that, and the
main job (2000 GradMix steps of `digits_mnistm` with H evaluations) trains
for 125 s. By default there is no batch
normalisation, so a source's forward pass does not depend on the other
sources' batches; `norm="batch"` adds it without trainable offset or scale
(`digit_convnet_trunk`).
"""

import keras
import tensorflow as tf


class MultiHeadClassifier(keras.Model):
  """A shared trunk and one linear head per label space.

  Args:
    trunk: a Keras layer or model from images to a feature vector.
    num_classes_per_head: the number of classes of each head.
    head_factory: `(head index, classes) -> layer`; default a `Dense`
      layer named `head_<h>` (MME puts a cosine classifier on its head).
  """

  def __init__(self, trunk, num_classes_per_head, head_factory=None,
               **kwargs):
    super().__init__(**kwargs)
    self.trunk = trunk
    self.num_classes_per_head = tuple(int(n) for n in num_classes_per_head)
    head_factory = head_factory or (
        lambda h, n: keras.layers.Dense(n, name=f"head_{h}"))
    # One attribute per head: TensorFlow checkpoints follow attributes, not
    # the entries of a Python list, and a model-only checkpoint (best-H
    # weights, export) must hold every head.
    for h, n in enumerate(self.num_classes_per_head):
      setattr(self, f"head_{h}", head_factory(h, n))

  @property
  def heads(self):
    return tuple(getattr(self, f"head_{h}")
                 for h in range(len(self.num_classes_per_head)))

  def call(self, images, head=0, training=False):
    return self.heads[head](self.trunk(images, training=training))

  def build_all(self, input_shape):
    """Creates every variable (all heads) for a batch of `input_shape`."""
    features = self.trunk(keras.ops.zeros((1,) + tuple(input_shape)))
    for head in self.heads:
      head(features)
    self.built = True


NORMS = ("none", "batch")


@keras.saving.register_keras_serializable(package="gradmix_tf")
class FusedBatchNorm(keras.layers.Layer):
  """Batch normalisation without offset or scale, on TF's fused kernel.

  Training: `y = (x - mean_B) / sqrt(var_B + epsilon)` per channel (last
  axis) over the batch (and positions), and the moving statistics move by
  `moving <- momentum * moving + (1 - momentum) * batch` (the biased batch
  variance, as Keras does). Inference: the moving statistics.

  Keras' `BatchNormalization(center=False, scale=False)` computes the same
  with separate ops; `tf.compat.v1.nn.fused_batch_norm` is one kernel
  forward and backward, about 3.5x faster on a 2-core CPU for the digit
  trunk's conv1 batch (docs/PERFORMANCE.md, "Batch norm in the digit
  trunk"), hence this layer. Dense inputs `[N, C]` go through it as
  `[N, 1, 1, C]`.
  """

  def __init__(self, momentum=0.99, epsilon=1e-3, **kwargs):
    super().__init__(**kwargs)
    self.momentum = float(momentum)
    self.epsilon = float(epsilon)

  def build(self, input_shape):
    channels = int(input_shape[-1])
    self.moving_mean = self.add_weight(
        shape=(channels,), initializer="zeros", trainable=False,
        name="moving_mean")
    self.moving_variance = self.add_weight(
        shape=(channels,), initializer="ones", trainable=False,
        name="moving_variance")

  def call(self, inputs, training=False):
    x = tf.cast(inputs, tf.float32)
    flat = len(x.shape) == 2
    if flat:
      x = x[:, None, None, :]
    channels = x.shape[-1]
    scale, offset = tf.ones([channels]), tf.zeros([channels])
    if training:
      y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
          x, scale, offset, epsilon=self.epsilon, is_training=True)
      # The kernel returns the unbiased variance for the moving average.
      count = tf.cast(tf.size(x) // channels, tf.float32)
      biased = variance * (count - 1.0) / count
      self.moving_mean.assign(self.momentum * self.moving_mean
                              + (1.0 - self.momentum) * mean)
      self.moving_variance.assign(self.momentum * self.moving_variance
                                  + (1.0 - self.momentum) * biased)
    else:
      y, _, _ = tf.compat.v1.nn.fused_batch_norm(
          x, scale, offset, mean=self.moving_mean,
          variance=self.moving_variance, epsilon=self.epsilon,
          is_training=False)
    if flat:
      y = y[:, 0, 0, :]
    return tf.cast(y, inputs.dtype)

  def get_config(self):
    return {**super().get_config(), "momentum": self.momentum,
            "epsilon": self.epsilon}


class AllHeads(keras.Model):
  """A `MultiHeadClassifier` with one output per head (the trunk once):
  the shape `gradmix_tf.MultiSourceModel` takes, `source_outputs` being
  head indices. Shares the classifier's variables."""

  def __init__(self, classifier, **kwargs):
    super().__init__(**kwargs)
    self.classifier = classifier
    self.built = classifier.built

  def call(self, images, training=False):
    features = self.classifier.trunk(images, training=training)
    return [head(features) for head in self.classifier.heads]


def digit_convnet_trunk(widths=(32, 32, 64, 64), units=128, norm="none",
                        kernel_initializer="glorot_uniform"):
  """The 4-conv + fc trunk of the digit experiments (module docstring).

  Args:
    widths: channels of conv1..conv4.
    units: width of fc1.
    norm: "none" (the paper's network as we read it: conv + bias + ReLU)
      or "batch": each conv and fc1 without bias, then
      batch norm without offset or scale (`FusedBatchNorm`), then ReLU. The
      normalisation has no trainable offset or scale, so (a) in training
      every unit's pre-activation has batch mean 0 and variance 1 and is
      positive on part of every batch: a ReLU unit cannot go dead on the
      training batches, and (b) the trainable layers stay conv1..conv4 and
      fc1, the same five layers GradMix mixes without it (rho of Eq. 8
      sums over the same layers). Its moving mean and variance (momentum
      0.99) are what evaluation and serving normalise with.
    kernel_initializer: a Keras initializer name for the conv and dense
      kernels ("glorot_uniform" is Keras' default, "he_normal" He et al.
      2015's fan-in ReLU scaling).
  """
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  w1, w2, w3, w4 = widths
  batch_norm = norm == "batch"
  common = dict(use_bias=not batch_norm,
                kernel_initializer=kernel_initializer,
                activation=None if batch_norm else "relu")
  conv = dict(kernel_size=3, padding="same", **common)

  def activation(name):
    """BN (no affine) then ReLU, or nothing when the layer has its ReLU."""
    if not batch_norm:
      return []
    return [FusedBatchNorm(name=f"{name}_bn"),
            keras.layers.ReLU(name=f"{name}_relu")]

  return keras.Sequential([
      keras.layers.Rescaling(1.0 / 255.0, name="rescale"),
      keras.layers.Conv2D(w1, name="conv1", **conv), *activation("conv1"),
      keras.layers.MaxPooling2D(2, name="pool1"),
      keras.layers.Conv2D(w2, name="conv2", **conv), *activation("conv2"),
      keras.layers.Conv2D(w3, name="conv3", **conv), *activation("conv3"),
      keras.layers.MaxPooling2D(2, name="pool2"),
      keras.layers.Conv2D(w4, name="conv4", **conv), *activation("conv4"),
      keras.layers.Flatten(name="flatten"),
      keras.layers.Dense(units, name="fc1", **common), *activation("fc1"),
  ], name="trunk")


def forward_flops(input_shape, widths=(32, 32, 64, 64), units=128,
                  num_classes=5):
  """FLOPs of one forward pass of the digit ConvNet (2 per multiply-add)."""
  size, _, channels = input_shape
  w1, w2, w3, w4 = widths
  half, quarter = size // 2, size // 4
  macs = (size * size * 9 * channels * w1
          + half * half * 9 * w1 * w2
          + half * half * 9 * w2 * w3
          + quarter * quarter * 9 * w3 * w4
          + quarter * quarter * w4 * units
          + units * num_classes)
  return 2 * macs


def build_model(model_config, input_shape, num_classes_per_head,
                head_factory=None):
  """Builds the configured network with all its variables created.

  `model_config.name`: `digit_convnet` (`widths`, `units`, `norm`,
  `kernel_initializer`; `digit_convnet_trunk`) or `resnet18`
  (`weights`: a Keras `.weights.h5` or torchvision `.npz` file of ImageNet
  weights for the trunk; `random` for random weights; '' also random, with
  a warning: `config_lib.validate` allows it only in quick mode).
  """
  if model_config.name == "resnet18":
    from gradmix_tf import resnet  # pylint: disable=g-import-not-at-top
    trunk = resnet.resnet18_trunk(tuple(input_shape))
    weights = model_config.get("weights", "")
    if weights and weights != "random":
      resnet.load_trunk_weights(trunk, weights)
    elif not weights:
      from absl import logging  # pylint: disable=g-import-not-at-top
      logging.warning(
          "ResNet-18 starts from RANDOM weights: config.model.weights is "
          "empty (set it to ImageNet weights, .weights.h5 or a torchvision "
          ".npz; see gradmix_tf/resnet.py)")
    model = MultiHeadClassifier(trunk, num_classes_per_head, head_factory,
                                name="classifier")
    model.build_all(input_shape)
    return model
  if model_config.name != "digit_convnet":
    from gradmix_tf.errors import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError(
        f"unknown model {model_config.name!r}: use digit_convnet or resnet18")
  trunk = digit_convnet_trunk(
      tuple(model_config.widths), model_config.units,
      norm=model_config.get("norm") or "none",
      kernel_initializer=model_config.get("kernel_initializer",
                                          "glorot_uniform"))
  model = MultiHeadClassifier(trunk, num_classes_per_head, head_factory,
                              name="classifier")
  model.build_all(input_shape)
  return model
