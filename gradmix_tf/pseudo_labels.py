"""Pseudo-labels of U from an ensemble of GradMix models (paper section 3.5).

Given the softmax outputs `probs [R, N, C]` of the top-R models on U:

* **hard labels**: image `n` gets class `c` when every model's argmax is
  `c` and every model gives `c` probability >= `threshold` (0.8; equality
  counts);
* **soft labels**: the mean of the R softmax outputs, for every image; the
  training loss is `KL(p_model || y_soft)` (the paper's `D_KL(p_Theta, y)`,
  `direction="model_label"`) or `KL(y_soft || p_model)`
  (`"label_model"`: cross-entropy with soft targets less their entropy).
  The first has a plateau the second lacks: where the model puts all its
  mass on a class `c` the labels rule out, its gradient in the logits,
  `p_j (log p_j - log y_j - KL)`, is 0 for every `j` (for `j = c`,
  `log p_c = 0` and `KL = -log y_c`; elsewhere `p_j = 0`), so a confidently
  wrong model is not pushed back; the second's gradient is `p - y`.

`enlarge_validation` adds hard-labelled images to V until each class has
`per_class` (100) images, never more, drawing by seed among that class's
hard-labelled images.
"""

import numpy as np
import tensorflow as tf


def hard_labels(probs, threshold=0.8):
  """`(indices, labels)` of the images all R models agree on confidently."""
  probs = np.asarray(probs)
  if probs.ndim != 3:
    raise ValueError(f"probs must be [models, images, classes], got shape "
                     f"{probs.shape}")
  argmax = probs.argmax(-1)                                   # [R, N]
  agree = (argmax == argmax[:1]).all(0)
  chosen = argmax[0]
  confidence = np.take_along_axis(probs, chosen[None, :, None], -1)[..., 0]
  confident = (confidence >= threshold).all(0)
  indices = np.flatnonzero(agree & confident)
  return indices, chosen[indices].astype(np.int64)


def soft_labels(probs):
  """The mean softmax of the R models, `[N, C]`."""
  return np.asarray(probs, np.float64).mean(0).astype(np.float32)


SOFT_LOSS_DIRECTIONS = ("model_label", "label_model")


def soft_label_loss(logits, soft_targets, direction="model_label"):
  """`mean_batch KL(softmax(logits) || soft_targets)` ("model_label", the
  paper's) or `mean_batch KL(soft_targets || softmax(logits))`
  ("label_model"). Targets are floored at 1e-8 inside the logarithm."""
  if direction not in SOFT_LOSS_DIRECTIONS:
    raise ValueError(f"direction must be one of {SOFT_LOSS_DIRECTIONS}, got "
                     f"{direction!r}")
  log_p = tf.nn.log_softmax(logits)
  targets = tf.maximum(tf.cast(soft_targets, log_p.dtype), 1e-8)
  log_y = tf.math.log(targets)
  if direction == "label_model":
    return tf.reduce_mean(tf.reduce_sum(targets * (log_y - log_p), -1))
  return tf.reduce_mean(tf.reduce_sum(tf.exp(log_p) * (log_p - log_y), -1))


def enlarge_validation(v_labels, hard_classes, num_classes, per_class=100,
                       seed=0):
  """Positions in the hard-labelled set that bring V to `per_class`.

  Returns the positions (into `hard_classes`) chosen, class by class: for a
  class with `m` images in V, `max(0, per_class - m)` of its hard-labelled
  images, drawn with `seed`, or all of them when there are fewer.
  """
  rng = np.random.default_rng([seed, 23])
  v_counts = np.bincount(np.asarray(v_labels, np.int64),
                         minlength=num_classes)
  chosen = []
  for label in range(num_classes):
    members = np.flatnonzero(np.asarray(hard_classes) == label)
    need = max(0, per_class - int(v_counts[label]))
    take = min(need, len(members))
    if take:
      chosen.append(np.sort(rng.choice(members, size=take, replace=False)))
  return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)


def provenance(hard_index, hard_label, soft, true_labels, members,
               threshold, num_classes):
  """What made `S_u` and how good it is (true labels: reporting only)."""
  record = {
      "members": members,
      "threshold": threshold,
      "num_unlabelled": int(len(soft)),
      "num_hard": int(len(hard_index)),
      "hard_per_class": np.bincount(hard_label,
                                    minlength=num_classes).tolist(),
      "soft_argmax_per_class": np.bincount(
          soft.argmax(-1), minlength=num_classes).tolist(),
  }
  if true_labels is not None and len(true_labels):
    true_labels = np.asarray(true_labels)
    record["hard_accuracy"] = (float((true_labels[hard_index]
                                      == hard_label).mean())
                               if len(hard_index) else None)
    record["soft_argmax_accuracy"] = float(
        (soft.argmax(-1) == true_labels).mean())
  return record
