"""DCTN (Xu et al., CVPR 2018): deep cocktail network, a baseline of the
GradMix paper's Tables 1 and 3.

A shared feature extractor `F` (the digit trunk), and for every source `j`
a classifier `C_j` over *its own* label space and a domain discriminator
`D_j` (source `j` vs target, `D_j(f)` = probability that `f` comes from
source `j`).

*Perplexity-weighted cocktail.* For a target image with features `f`, the
perplexity score of source `j` is `s_j = -log(1 - D_j(f))` (large when the
image looks like source `j`), and the target's class `c` gets

    p(c | x) = sum_{j: c in L_j} s_j softmax(C_j(f))_c / sum_{j: c in L_j} s_j

over the sources whose label space `L_j` contains `c` (category shift: a
source votes only on its own classes); the scores are renormalised over
the target's classes.

*Training*, each step (DCTN alternates the two stages by epochs; we
interleave them step by step):

1. multi-way adversarial learning: every `D_j` descends the binary
   cross-entropy of (source `j` features -> 1, target features -> 0) on
   stopped features; `F` descends `adversarial_weight * sum_j BCE(D_j(F(x_t))
   -> 1)`, making the target look like every source;
2. target-discriminative adaptation: `F` and the classifiers descend the
   source cross-entropies, the cross-entropy of `V` and, after
   `pseudo_label_start` steps, of the U images whose cocktail confidence is
   at least `confidence` (their argmax as label), each target image on the
   classifiers of the sources that contain its class.

Choices DCTN leaves to us: discriminators `Dense(64, relu) -> Dense(1)` on
the 128-d features; `adversarial_weight` 0.1, `confidence` 0.9,
`pseudo_label_start` 500 steps; SGD at `lr` with momentum for `F` and the
classifiers, and for the discriminators.
"""

import keras
import numpy as np
import tensorflow as tf

from gradmix_tf import finite_steps
from gradmix_tf import models
from gradmix_tf import sgd
from gradmix_tf.tasks.multi_source import MultiSourceTask


def cocktail_probabilities(scores, source_probs, membership):
  """The perplexity-weighted target prediction.

  Args:
    scores: `[N, S]` perplexity scores `s_j >= 0`.
    source_probs: `[N, S, C]` each source's softmax, scattered onto the
      target's `C` classes (0 where the source lacks the class).
    membership: `[S, C]` 1 where source `j` has target class `c`.

  Returns:
    `[N, C]` probabilities (rows sum to 1).
  """
  membership = tf.cast(membership, scores.dtype)
  weights = scores[:, :, None] * membership[None]               # [N, S, C]
  numerator = tf.reduce_sum(weights * source_probs, 1)
  denominator = tf.reduce_sum(weights, 1)
  per_class = numerator / tf.maximum(denominator, 1e-12)
  return per_class / tf.maximum(tf.reduce_sum(per_class, -1, keepdims=True),
                                1e-12)


def perplexity_scores(discriminator_logits):
  """`s = -log(1 - sigmoid(logits))` = `softplus(logits)`, `[N, S]`."""
  return tf.nn.softplus(discriminator_logits)


def _bce(logits, label):
  return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
      labels=tf.fill(tf.shape(logits), float(label)), logits=logits))


class DCTNTask(MultiSourceTask):
  """DCTN's classifiers, discriminators and step on sources, V and U."""

  def build_model(self):
    # One classifier per source (its label space), not per label space.
    self.source_classes = [self.data.head_classes[s.head]
                           for s in self.data.sources]
    return models.build_model(self.config.model,
                              tuple(self.config.input_shape),
                              [len(c) for c in self.source_classes])

  def make_phases(self):
    config = self.config
    target_classes = self.data.head_classes[self.data.target_head]
    # source_map[j][c]: index of target class c in source j's head, or -1.
    self.source_map = np.array(
        [[classes.index(c) if c in classes else -1 for c in target_classes]
         for classes in self.source_classes], np.int32)
    self.membership = tf.constant(self.source_map >= 0, tf.float32)
    self.discriminators = [
        keras.Sequential([keras.layers.Dense(64, activation="relu"),
                          keras.layers.Dense(1)], name=f"discriminator_{j}")
        for j in range(len(self.data.sources))]
    features = int(self.model.trunk.compute_output_shape(
        (None,) + tuple(config.input_shape))[-1])
    for d in self.discriminators:
      d.build((None, features))
    self.discriminator_optimizer = sgd.make_main_sgd(config)
    self.discriminator_optimizer.build(
        [v for d in self.discriminators for v in d.trainable_variables])
    optimizer = sgd.make_main_sgd(config)
    return [self.phase("dctn", int(config.steps), optimizer,
                       self._dctn_step(optimizer),
                       with_unlabelled=True)]

  def prediction(self, images):
    return self.cocktail(self.model.trunk(images))[0]

  def trackables(self):
    return {"discriminators": self.discriminators,
            "discriminator_optimizer": self.discriminator_optimizer}

  def cocktail(self, features):
    """(target probabilities `[N, C]`, discriminator logits `[N, S]`)."""
    logits = tf.concat([d(features) for d in self.discriminators], -1)
    scattered = []
    for j, head in enumerate(self.model.heads):
      probs = tf.nn.softmax(head(features))
      index = tf.constant(np.maximum(self.source_map[j], 0))
      scattered.append(tf.gather(probs, index, axis=1)
                       * self.membership[j][None])
    return (cocktail_probabilities(perplexity_scores(logits),
                                   tf.stack(scattered, 1), self.membership),
            logits)

  def target_cross_entropy(self, features, labels, mask):
    """Mean over masked images of the CE on every source containing the
    label (labels index the target's classes)."""
    total, count = 0.0, 0.0
    for j, head in enumerate(self.model.heads):
      local = tf.gather(tf.constant(self.source_map[j]), labels)
      valid = tf.cast(local >= 0, tf.float32) * mask
      per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=tf.maximum(local, 0), logits=head(features))
      total += tf.reduce_sum(valid * per_example)
      count += tf.reduce_sum(valid)
    return total / tf.maximum(count, 1.0)

  def _dctn_step(self, optimizer):
    dctn = self.config.dctn
    model = self.model
    discriminator_variables = [v for d in self.discriminators
                               for v in d.trainable_variables]

    def step(indices):
      *source_indices, u_index = indices
      batches = [self.source_batch(i, entry)
                 for i, entry in enumerate(source_indices)]
      source_images = [x for x, _ in batches]
      source_labels = [y for _, y in batches]
      u_images = self.unlabelled_batch(u_index)
      v_images, v_labels = self.validation_images()
      target_images = tf.concat([v_images, u_images], 0)
      v_count = tf.shape(v_labels)[0]
      # 1a. Discriminators: source j -> 1, target -> 0 (features stopped).
      with tf.GradientTape() as tape:
        target_features = tf.stop_gradient(model.trunk(target_images))
        d_loss = tf.add_n([
            _bce(d(tf.stop_gradient(model.trunk(x))), 1.0)
            + _bce(d(target_features), 0.0)
            for d, x in zip(self.discriminators, source_images)])
      # Skipped when not finite; the step counts as skipped only through
      # the main update below (whose adversarial loss a broken
      # discriminator soon makes non-finite too).
      discriminator_applied = finite_steps.apply_if_finite(
          self.discriminator_optimizer,
          tape.gradient(d_loss, discriminator_variables),
          discriminator_variables, losses=[d_loss])
      # 1b + 2. Features and classifiers.
      with tf.GradientTape() as tape:
        losses = [tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y, logits=model.heads[j](model.trunk(x,
                                                            training=True))))
                  for j, (x, y) in enumerate(zip(source_images,
                                                 source_labels))]
        features = model.trunk(target_images, training=True)
        probs, d_logits = self.cocktail(features)
        adversarial = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.ones_like(d_logits), logits=d_logits)) * float(
                len(self.discriminators))
        val_loss = self.target_cross_entropy(
            features[:v_count], v_labels, tf.ones_like(v_labels, tf.float32))
        u_probs = tf.stop_gradient(probs[v_count:])
        started = tf.cast(self.setup.step >= int(dctn.pseudo_label_start),
                          tf.float32)
        confident = tf.cast(tf.reduce_max(u_probs, -1) >= float(
            dctn.confidence), tf.float32) * started
        pseudo_loss = self.target_cross_entropy(
            features[v_count:], tf.argmax(u_probs, -1, output_type=tf.int32),
            confident)
        total = (tf.add_n(losses) + val_loss + pseudo_loss
                 + float(dctn.adversarial_weight) * adversarial)
      applied = self.apply_finite(optimizer,
                                  tape.gradient(total, self.variables),
                                  self.variables, [total])
      out = self.loss_outputs(losses)
      out["applied"] = applied
      out["stats/discriminator_applied"] = tf.cast(discriminator_applied,
                                                   tf.float32)
      out["loss/validation"] = val_loss
      out["loss/pseudo_labels"] = pseudo_loss
      out["stats/discriminator_loss"] = d_loss
      out["stats/adversarial_loss"] = adversarial
      out["stats/confident_fraction"] = tf.reduce_mean(confident)
      return out
    return step
