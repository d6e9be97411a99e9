"""MME (Saito et al., ICCV 2019): semi-supervised domain adaptation by
minimax entropy, a baseline of the GradMix paper's Tables 1 and 3.

The target head is a cosine classifier with temperature `T`:

    logits = (W_c / |W_c|) . (f / |f|) / T            (one column per class)

on the trunk's features `f`. Each step, with a source batch `S` (the
sources whose label space is the target's: the paper uses S1 only), all of
`V` and an unlabelled target batch `U`,

    L = CE(S) + CE(V)
    H = -mean_U sum_c p_c log p_c         (p = softmax of the cosine logits)

the classifier minimises `L - lambda H` (it *maximises* the entropy on U,
moving its class prototypes toward the target features) and the feature
extractor minimises `L + lambda H` (it *minimises* it, clustering the
target features around the prototypes). Both are one gradient of
`L - lambda H` in which U's features pass a gradient-reversal layer
(identity forward, gradient times -1 backward) before the classifier.

Choices the paper leaves to us (MME's defaults where it has them):
`T = 0.05`, `lambda = 0.1`; SGD at `mme.lr` = 0.01 with momentum 0.9 (MME's
rate; with cosine logits up to 1/T = 20 we did not carry over the 0.05 of
our other digit runs); one optimizer step on the summed gradient rather than
MME's two successive steps (the same gradients; only the momentum state
couples them); the other heads (other label spaces) are untouched.
"""

import keras
import tensorflow as tf

from gradmix_tf import models
from gradmix_tf import sgd
from gradmix_tf.losses import cross_entropy
from gradmix_tf.losses import mean_prediction_entropy
from gradmix_tf.tasks.multi_source import MultiSourceTask


def gradient_reversal(x, scale=1.0):
  """Identity forward; the gradient is multiplied by `-scale` backward."""
  @tf.custom_gradient
  def reverse(x):
    return tf.identity(x), lambda upstream: -float(scale) * upstream
  return reverse(x)


@keras.saving.register_keras_serializable(package="gradmix_tf")
class CosineHead(keras.layers.Layer):
  """`logits = normalise(W)^T normalise(f) / temperature` (no bias)."""

  def __init__(self, units, temperature=0.05, **kwargs):
    super().__init__(**kwargs)
    self.units = int(units)
    self.temperature = float(temperature)

  def build(self, input_shape):
    self.kernel = self.add_weight(
        shape=(int(input_shape[-1]), self.units), name="kernel",
        initializer="glorot_uniform")

  def call(self, features):
    features = tf.math.l2_normalize(features, axis=-1)
    kernel = tf.math.l2_normalize(self.kernel, axis=0)
    return tf.matmul(features, kernel) / self.temperature

  def get_config(self):
    return {**super().get_config(), "units": self.units,
            "temperature": self.temperature}


class MMETask(MultiSourceTask):
  """MME's model (cosine target head) and step on sources, V and U."""

  def build_model(self):
    target = self.data.target_head
    temperature = float(self.config.mme.temperature)

    def head(h, n):
      if h == target:
        return CosineHead(n, temperature, name=f"head_{h}")
      return keras.layers.Dense(n, name=f"head_{h}")

    return models.build_model(self.config.model,
                              tuple(self.config.input_shape),
                              self.data.num_classes_per_head, head)

  def make_phases(self):
    self.mme_sources = [i for i, s in enumerate(self.data.sources)
                        if s.head == self.data.target_head]
    optimizer = sgd.make_sgd(self.config, self.config.mme.lr)
    return [self.phase("mme", int(self.config.steps), optimizer,
                       self._mme_step(optimizer), sources=self.mme_sources,
                       with_unlabelled=True)]

  def _mme_step(self, optimizer):
    lam = float(self.config.mme.entropy_weight)
    head = self.data.target_head

    def step(indices):
      *source_indices, u_index = indices
      with tf.GradientTape() as tape:
        losses = []
        for i, entry in zip(self.mme_sources, source_indices):
          images, labels = self.source_batch(i, entry)
          logits = self.model(images, head=head, training=True)
          losses.append(cross_entropy(labels, logits))
        val_loss = self.validation_loss()
        features = self.model.trunk(self.unlabelled_batch(u_index),
                                    training=True)
        u_entropy = mean_prediction_entropy(self.model.heads[head](
            gradient_reversal(features)))
        total = tf.add_n(losses) + val_loss - lam * u_entropy
      applied = self.apply_finite(optimizer,
                                  tape.gradient(total, self.variables),
                                  self.variables, [total])
      out = {f"loss/{self.data.sources[i].name}": loss
             for i, loss in zip(self.mme_sources, losses)}
      out["applied"] = applied
      out["loss/validation"] = val_loss
      out["entropy/unlabelled"] = u_entropy
      return out
    return step
