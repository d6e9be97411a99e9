"""Holistic transfer: adapt a source model with target labels of some classes.

A model pre-trained on the source (all classes) is adapted to the target
domain with labelled target images of the *seen* classes only and must stay
good on every class (the abstract in `../shared/papers/`). Each run is

1. *pre-training* on the source (`holistic.pretrain_steps` steps of SGD at
   `lr`, with colour augmentation when `holistic.pretrain_augment`); its
   weights are kept as the *source model* (the teacher), then
2. *adaptation* on `V` for `steps` steps by one of the methods below, at
   `finetune_lr` (SGD, momentum `momentum`) unless stated.

=====================  =====================================================
method                 adaptation
=====================  =====================================================
``source_only``        none: the source model itself
``fine_tune``          cross-entropy over all classes on `V` (the baseline)
``frozen_classifier``  the same, the classifier (head) frozen
``lolsgd``             Leave-Out Local SGD: each round, `local_models`
                       copies start from the current weights; copy `m`
                       leaves out `leave_out` random seen classes and takes
                       `local_steps` plain-SGD steps at `local_lr`; the new
                       weights are the average of the copies
``distill``            cross-entropy + `distill_weight * T^2 *
                       KL(softmax(z_src / T) || softmax(z / T))` on the same
                       images (z_src: the source model's logits)
``gradmix_distill``    GradMix of two gradients, cross-entropy and the
                       distillation term, toward the *domain* gradient: the
                       cross-entropy restricted to the seen classes' logits
                       (it adapts to the domain without pushing the unseen
                       logits down); all layers mixed, adaptive rate
``calibrated``         fine_tune, then a constant `delta` added to the
                       unseen classes' logits, chosen on `H` (below)
=====================  =====================================================

Post-hoc calibration. Before the main fine-tuning, an auxiliary copy of the
source model is fine-tuned (same recipe) on `V` without `pseudo_unseen`
randomly chosen seen classes. On `H` (held-out seen-class images) `delta`
is added to the logits of every class that copy did not see, and the
`delta` on the grid `0, delta_step, ..., delta_max` maximising the mean of
its accuracies on the pseudo-seen and the pseudo-unseen images (argmax over
all classes; the smallest on ties) is kept; the model is then reset to the
source model, fine-tuned, and evaluated with `delta` on its unseen logits.

Metrics (`metrics.json` -> `holistic`): accuracy on the target test set
overall, on seen-class and on unseen-class images (argmax over all
classes), and each restricted to its own subset (argmax over the seen
logits for seen images, over the unseen logits for unseen ones).

Choices of ours where the abstract is silent: LOLSGD's local steps are
plain SGD at `local_lr` = 0.05 (the effective step of SGD at 0.005 with
momentum 0.9), and there are `steps // local_steps` rounds, so each copy
takes as many local steps as fine-tuning takes steps; distillation
uses the labelled `V` images (no unlabelled target data of unseen classes
exists in this problem).
"""

import json
import os

import numpy as np
import tensorflow as tf

from gradmix_tf import finite_steps
from gradmix_tf import models
from gradmix_tf.errors import ConfigError
from gradmix_tf.evaluation import in_batches
from gradmix_tf.files import write_json_atomically
from gradmix_tf.losses import cross_entropy
from gradmix_tf.tasks.multi_source import MultiSourceTask
from gradmix_tf.optimizer import GradMix
from gradmix_tf.sgd import make_main_sgd, make_sgd


def distillation_loss(student_logits, teacher_logits, temperature):
  """`T^2 * mean_batch KL(softmax(z_t / T) || softmax(z_s / T))`."""
  t = float(temperature)
  teacher = tf.nn.log_softmax(teacher_logits / t)
  student = tf.nn.log_softmax(student_logits / t)
  kl = tf.reduce_sum(tf.exp(teacher) * (teacher - student), -1)
  return t * t * tf.reduce_mean(kl)


def seen_restricted_cross_entropy(labels, logits, seen):
  """Mean cross-entropy of the softmax over the `seen` logits only.

  `labels` are class indices, all in `seen`; the unseen logits get no
  gradient, so the loss adapts features to the domain without pushing the
  unseen classes down.
  """
  seen = np.asarray(seen)
  position = np.full(int(logits.shape[-1]), -1, np.int64)
  position[seen] = np.arange(len(seen))
  return cross_entropy(tf.gather(tf.constant(position), labels),
                       tf.gather(logits, tf.constant(seen, tf.int32), axis=1))


def left_out_classes(seen, leave_out, seed):
  """`leave_out` of the `seen` classes, drawn by a stateless `seed` [2]."""
  order = tf.argsort(tf.random.stateless_uniform([len(seen)], seed=seed))
  return tf.gather(tf.constant(np.asarray(seen), tf.int32),
                   order[:leave_out])


def local_sgd_round(variables, local_loss, copies, local_steps, lr):
  """One round of local SGD: `copies` copies from the current values, each
  `local_steps` steps of `x <- x - lr * grad local_loss(copy, step)`, then
  the variables are set to the average of the copies. Returns the last
  local loss.

  (For `local_loss(m, s) = |x - a_m|^2 / 2` the result is
  `mean(a) + (1 - lr)^local_steps (x_0 - mean(a))`.)
  """
  start = [tf.identity(v) for v in variables]
  total = [tf.zeros_like(v) for v in variables]
  loss = tf.constant(0.0)
  for copy in range(copies):
    for variable, value in zip(variables, start):
      variable.assign(value)
    for local in tf.range(local_steps):
      with tf.GradientTape() as tape:
        loss = local_loss(copy, local)
      for variable, grad in zip(variables, tape.gradient(loss, variables)):
        variable.assign_sub(lr * grad)
    total = [t + v - s for t, v, s in zip(total, variables, start)]
  for variable, value, delta in zip(variables, start, total):
    variable.assign(value + delta / float(copies))
  return loss


def choose_unseen_shift(logits, labels, pseudo_seen, grid):
  """The calibration constant (module docstring) and its score per value.

  Args:
    logits: `[n, C]` logits of held-out images of seen classes from a model
      that saw only `pseudo_seen` of them.
    labels: `[n]` their labels.
    pseudo_seen: the class indices that model saw; the others are shifted.
    grid: candidate constants, ascending.

  Returns:
    `(delta, scores)`: the best constant (the smallest on ties) and the
    list of `[delta, pseudo_seen_acc, pseudo_unseen_acc, mean]`.
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  shifted = ~np.isin(np.arange(logits.shape[1]), pseudo_seen)
  is_seen = np.isin(labels, pseudo_seen)
  if is_seen.all() or not is_seen.any():
    raise ValueError("held-out images must include pseudo-seen and "
                     "pseudo-unseen classes")
  scores = []
  for delta in grid:
    correct = (logits + delta * shifted).argmax(-1) == labels
    seen_acc = float(correct[is_seen].mean())
    unseen_acc = float(correct[~is_seen].mean())
    scores.append([float(delta), seen_acc, unseen_acc,
                   0.5 * (seen_acc + unseen_acc)])
  best = max(range(len(scores)), key=lambda i: (scores[i][3], -i))
  return scores[best][0], scores


def holistic_accuracies(logits, labels, seen):
  """Overall / seen / unseen accuracy, and seen / unseen restricted."""
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  seen = np.asarray(seen)
  unseen = np.setdiff1d(np.arange(logits.shape[1]), seen)
  correct = logits.argmax(-1) == labels
  is_seen = np.isin(labels, seen)
  within_seen = seen[logits[:, seen].argmax(-1)] == labels
  within_unseen = unseen[logits[:, unseen].argmax(-1)] == labels

  def mean(values):
    return float(values.mean()) if values.size else None

  return {
      "overall": mean(correct),
      "seen": mean(correct[is_seen]),
      "unseen": mean(correct[~is_seen]),
      "seen_restricted": mean(within_seen[is_seen]),
      "unseen_restricted": mean(within_unseen[~is_seen]),
  }


class HolisticTask(MultiSourceTask):
  """Pre-training on the source, then a partial-label adaptation.

  `data` comes from `gradmix_tf.data.partial.build_partial_experiment`
  (one source, one head over all classes, `V` and `H` of seen classes).
  """

  def __init__(self, config, data):
    super().__init__(config, data)
    classes = data.head_classes[0]
    self.seen = np.array(sorted(classes.index(c)
                                for c in config.holistic.seen_classes))
    self.num_classes = len(classes)
    self.unseen = np.setdiff1d(np.arange(self.num_classes), self.seen)
    rng = np.random.default_rng([int(config.seed), 19])
    count = int(config.holistic.pseudo_unseen)
    if not 0 < count < len(self.seen):
      raise ConfigError(
          f"holistic.pseudo_unseen must be between 1 and {len(self.seen) - 1}"
          f" (the seen classes minus one), got {count}")
    self.pseudo_unseen = np.sort(rng.choice(self.seen, count, replace=False))
    self.pseudo_seen = np.setdiff1d(self.seen, self.pseudo_unseen)
    leave_out = int(config.holistic.leave_out)
    if not 0 <= leave_out < len(self.seen):
      raise ConfigError(
          f"holistic.leave_out must be between 0 and {len(self.seen) - 1}, "
          f"got {leave_out}")

  def prediction(self, images):
    """Softmax of the logits with the unseen-class shift added."""
    unseen = tf.constant(np.isin(np.arange(self.num_classes), self.unseen),
                         tf.float32)
    return tf.nn.softmax(self.model(images) + self.unseen_shift * unseen)

  # -- Phases -----------------------------------------------------------------

  def make_phases(self):
    config, method = self.config, self.config.method
    holistic = config.holistic
    self.teacher = models.build_model(config.model, tuple(config.input_shape),
                                      (self.num_classes,))
    self.unseen_shift = tf.Variable(0.0, trainable=False,
                                    name="unseen_logit_shift")
    pretrain = make_main_sgd(config)
    phases = [self.phase("plain", int(holistic.pretrain_steps), pretrain,
                         self.plain_step(pretrain),
                         on_end=self._keep_source_model)]
    if method == "source_only":
      return phases
    steps = int(config.steps)
    v_size = [len(self.data.v.labels)]
    trunk = self.model.trunk.trainable_variables
    if method == "calibrated":
      subset = np.flatnonzero(np.isin(self.data.v.labels, self.pseudo_seen))
      optimizer = make_sgd(config, config.finetune_lr)
      phases.append(self.phase(
          "adapt", steps, optimizer,
          self._cross_entropy_step(optimizer, self.variables,
                                   tf.constant(subset, tf.int32)),
          index_sizes=[len(subset)], on_end=self._calibrate))
    if method in ("fine_tune", "calibrated", "frozen_classifier"):
      variables = trunk if method == "frozen_classifier" else self.variables
      optimizer = make_sgd(config, config.finetune_lr)
      phases.append(self.phase(
          "adapt", steps, optimizer,
          self._cross_entropy_step(optimizer, variables),
          index_sizes=v_size))
    elif method == "distill":
      optimizer = make_sgd(config, config.finetune_lr)
      phases.append(self.phase("adapt", steps, optimizer,
                                self._distill_step(optimizer),
                                index_sizes=v_size))
    elif method == "gradmix_distill":
      optimizer = GradMix(make_sgd(config, config.finetune_lr),
                          beta=config.beta, gamma=config.gamma,
                          solver=config.solver,
                          rho_reduction=config.rho_reduction,
                          max_consecutive_skips=config.max_consecutive_skips)
      phases.append(self.phase(
          "gradmix", steps, optimizer, self._gradmix_distill_step(optimizer),
          index_sizes=v_size,
          source_names=["cross_entropy", "distillation"]))
    elif method == "lolsgd":
      # The local steps update the variables directly; the optimizer only
      # gives the phase its (unused) state.
      rounds = max(1, steps // int(holistic.local_steps))
      phases.append(self.phase("adapt", rounds,
                                make_sgd(config, holistic.local_lr),
                                self._lolsgd_step(), index_sizes=[1]))
    return phases

  def trackables(self):
    return {"teacher": self.teacher, "unseen_shift": self.unseen_shift}

  def _keep_source_model(self):
    for target, source in zip(self.teacher.weights, self.model.weights):
      target.assign(source)

  def _calibrate(self):
    """Chooses the unseen-logit shift and resets to the source model."""
    holistic = self.config.holistic
    logits = self._logits(self.data.h.images)
    grid = np.arange(0.0, float(holistic.delta_max) + 1e-9,
                     float(holistic.delta_step))
    delta, scores = choose_unseen_shift(logits, self.data.h.labels,
                                        self.pseudo_seen, grid)
    self.unseen_shift.assign(delta)
    if self.setup.is_chief:
      write_json_atomically(os.path.join(self.setup.workdir, "calibration.json"), {
          "pseudo_unseen": self.pseudo_unseen.tolist(),
          "delta": delta,
          "scores": scores,
      })
    for target, source in zip(self.model.weights, self.teacher.weights):
      target.assign(source)

  # -- Steps ------------------------------------------------------------------

  def augment_source(self, images):
    """Colour augmentation of the pre-training images (`pretrain_augment`).

    Per image: inverted with probability 1/2, then per channel
    `x <- o + g x` with `g ~ U(0.3, 1)` and `o ~ U(0, 255 (1 - g))`, so the
    digit and background take random colours and stay in 0..255. Drawn
    from `(seed, step)`.
    """
    if not self.config.holistic.get("pretrain_augment", False):
      return images
    batch = tf.shape(images)[0]
    seed = tf.stack([tf.constant(int(self.config.seed) + 7, tf.int64),
                     tf.cast(self.setup.step, tf.int64)])
    draws = tf.random.stateless_uniform([batch, 7], seed=seed)
    images = tf.cast(images, tf.float32)
    flip = tf.cast(draws[:, 0] < 0.5, tf.float32)[:, None, None, None]
    images = flip * (255.0 - images) + (1.0 - flip) * images
    gain = 0.3 + 0.7 * draws[:, 1:4]
    offset = draws[:, 4:7] * 255.0 * (1.0 - gain)
    return offset[:, None, None, :] + gain[:, None, None, :] * images

  def _target_batch(self, indices, subset=None):
    index = indices[0]
    if subset is not None:
      index = tf.gather(subset, index)
    return tf.gather(self.v_images, index), tf.gather(self.v_labels, index)

  def _cross_entropy_step(self, optimizer, variables, subset=None):
    def step(indices):
      images, labels = self._target_batch(indices, subset)
      with tf.GradientTape() as tape:
        loss = cross_entropy(labels, self.model(images, training=True))
      applied = self.apply_finite(optimizer, tape.gradient(loss, variables),
                                  variables, [loss])
      return {"loss/target": loss, "applied": applied}
    return step

  def _distill_step(self, optimizer):
    holistic = self.config.holistic

    def step(indices):
      images, labels = self._target_batch(indices)
      teacher_logits = self.teacher(images)
      with tf.GradientTape() as tape:
        logits = self.model(images, training=True)
        ce = cross_entropy(labels, logits)
        kd = distillation_loss(logits, teacher_logits, holistic.temperature)
        loss = ce + float(holistic.distill_weight) * kd
      applied = self.apply_finite(optimizer,
                                  tape.gradient(loss, self.variables),
                                  self.variables, [loss])
      return {"loss/target": ce, "loss/distillation": kd, "applied": applied}
    return step

  def _gradmix_distill_step(self, optimizer):
    holistic = self.config.holistic
    def step(indices):
      images, labels = self._target_batch(indices)
      teacher_logits = self.teacher(images)
      with tf.GradientTape(persistent=True) as tape:
        logits = self.model(images, training=True)
        ce = cross_entropy(labels, logits)
        kd = float(holistic.distill_weight) * distillation_loss(
            logits, teacher_logits, holistic.temperature)
        domain = seen_restricted_cross_entropy(labels, logits, self.seen)
      grads = [tape.gradient(loss, self.variables) for loss in (ce, kd)]
      domain_grads = tape.gradient(domain, self.variables)
      del tape
      stats = optimizer.apply_gradmix(grads, domain_grads, self.variables)
      out = {"loss/target": ce, "loss/distillation": kd,
             "loss/domain": domain}
      out.update(stats)
      return out
    return step

  def _lolsgd_step(self):
    holistic = self.config.holistic
    leave_out = int(holistic.leave_out)
    batch = int(self.config.batch_size)
    v_count = len(self.data.v.labels)
    base_seed = int(self.config.seed)

    def step(indices):
      del indices
      keeps = []
      for copy in range(int(holistic.local_models)):
        seed = tf.stack([tf.constant(base_seed * 1000 + copy, tf.int64),
                         self.setup.step])
        keeps.append((seed, 1.0 - tf.reduce_sum(tf.one_hot(
            left_out_classes(self.seen, leave_out, seed), self.num_classes),
            0)))

      def local_loss(copy, local):
        seed, keep = keeps[copy]
        index = tf.random.stateless_uniform(
            [batch], seed=seed + 1000003 * tf.stack(
                [0, 1 + tf.cast(local, tf.int64)]),
            maxval=v_count, dtype=tf.int32)
        labels = tf.gather(self.v_labels, index)
        weight = tf.gather(keep, labels)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels,
            logits=self.model(tf.gather(self.v_images, index),
                              training=True))
        return tf.reduce_sum(weight * per_example) / tf.maximum(
            tf.reduce_sum(weight), 1.0)

      start = [tf.identity(v) for v in self.variables]
      loss = local_sgd_round(self.variables, local_loss,
                             int(holistic.local_models),
                             int(holistic.local_steps),
                             float(holistic.local_lr))
      # A round that ends non-finite is undone and counted as skipped.
      finite = finite_steps.all_finite(self.variables)
      for variable, value in zip(self.variables, start):
        variable.assign(tf.where(finite, variable, value))
      return {"loss/target": loss, "applied": self.setup.skips.record(finite)}
    return step

  # -- Metrics ----------------------------------------------------------------

  def _logits(self, images):
    """The model's logits (no shift) of `images`, in batches."""
    return in_batches(lambda batch: self.model(tf.constant(batch)), images)

  def extra_metrics(self):
    images, labels = self.data.test.images, self.data.test.labels
    shift = float(self.unseen_shift.numpy())
    logits = self._logits(images) + shift * np.isin(
        np.arange(self.num_classes), self.unseen)
    extra = {
        "holistic": holistic_accuracies(logits, labels, self.seen),
        "seen_classes": self.seen.tolist(),
        "unseen_logit_shift": float(self.unseen_shift.numpy()),
    }
    path = os.path.join(self.setup.workdir, "calibration.json")
    if self.config.method == "calibrated" and os.path.isfile(path):
      with open(path) as f:
        extra["calibration"] = json.load(f)
    return extra
