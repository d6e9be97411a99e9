"""The multi-source trainer: methods, the compiled steps, and the loop.

A run is a list of *phases*, each a step function and an optimizer:

=====================  =====================================================
method                 phases
=====================  =====================================================
``target_only``        V only, `steps` steps at `target_lr`
``source_only``        sum of source losses (paper Eq. 1), `steps` steps
``fine_tune``          source_only, then V for `finetune_steps` at
                       `finetune_lr`
``joint``              sum of source losses and the V loss, one update (all
                       labelled data; the cost floor GradMix is measured
                       against in `bench/step_time.py`)
``gradmix``            GradMix (exact solver, adaptive rate), `steps` steps
``gradmix_no_adalr``   GradMix with `eta = 1`
``gradmix_sgd``        GradMix with the meta-SGD weights (Ren et al. 2018);
                       Eq. 7-10 as in GradMix
``gradmf``             GradMF (`gradmix_tf/gradmf.py`): the summed source
                       gradient turned toward V's, projected on it
``gradmix_vat``        GradMix with VAT's loss on a batch of U as one more
                       source (`gradmix_tf/semi_supervised.py`)
``gradmix_mixmatch``   the same with MixMatch's unlabelled loss
=====================  =====================================================

Every source loss is the mean cross-entropy of its own mini-batch on its own
head. Each source (and V) runs its own forward pass, so its gradient is
computed on its own examples only; with no batch normalisation in the model
this costs the same FLOPs as one pass over the concatenated batch.

Data stays on the device: each step receives only the indices of its source
mini-batches, drawn by `batch_indices` from `(seed, source, epoch)`. The
batches of step `n` therefore do not depend on whether the run was resumed,
and a resumed run continues exactly where the uninterrupted one would be.

The loop checkpoints (`tf.train.CheckpointManager`), writes TensorBoard
summaries, evaluates the hyper-validation set `H` every `eval_every` steps
(paper Fig. 3) and keeps the weights of the best `H` accuracy in `best/`,
shows progress, and writes `metrics.json` at the end: test accuracy of the
final weights (`test_accuracy`) and of the best-`H` weights
(`test_accuracy_at_best_hyperval`).
"""

import json
import os
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from gradmix_tf import checkpoints
from gradmix_tf import distribute
from gradmix_tf import finite_steps
from gradmix_tf import methods as method_names
from gradmix_tf import models
from gradmix_tf import multi_source_step
from gradmix_tf import pseudo_labels
from gradmix_tf import schedules
from gradmix_tf.evaluation import video_accuracy
from gradmix_tf.files import write_json_atomically
from gradmix_tf.errors import ConfigError, TrainingError
from gradmix_tf.gradmf import GradMF
from gradmix_tf.optimizer import GradMix

METHODS = method_names.TRAINER_METHODS
UNLABELLED_SOURCE = {"gradmix_vat": "vat", "gradmix_mixmatch": "mixmatch"}
GRADMIX_VARIANTS = {
    "gradmix": dict(solver=None, adaptive_lr=True),
    "gradmix_no_adalr": dict(solver=None, adaptive_lr=False),
    "gradmix_sgd": dict(solver="meta_sgd", adaptive_lr=True),
}
EVAL_BATCH = 500


def batch_indices(num_examples, batch_size, seed, start_step, end_step):
  """Indices `[end_step - start_step, batch_size]` of steps `start..end`.

  Step `n` takes positions `n*B .. n*B+B-1` of the endless sequence of
  permutations `perm(seed, 0), perm(seed, 1), ...` of `range(num_examples)`.
  """
  first = start_step * batch_size
  last = end_step * batch_size
  epochs = range(first // num_examples, (last - 1) // num_examples + 1)
  stream = np.concatenate([
      np.random.default_rng([*np.atleast_1d(seed), epoch]).permutation(
          num_examples) for epoch in epochs])
  offset = epochs[0] * num_examples
  return stream[first - offset:last - offset].reshape(-1, batch_size).astype(
      np.int32)


def cross_entropy(labels, logits, global_batch=None):
  """Mean cross-entropy; with `global_batch`, the sum divided by it.

  A replica that holds `B / R` of a global batch of `B` returns its share of
  the global mean, so summing gradients over replicas gives the gradient of
  the global mean (what one device computes on the whole batch).
  """
  per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=labels, logits=logits)
  if global_batch is None:
    return tf.reduce_mean(per_example)
  return tf.reduce_sum(per_example) / float(global_batch)


def make_sgd(config, learning_rate, global_clipnorm=None):
  """SGD with `config.momentum` at `learning_rate` (a rate or a schedule),
  clipping the global norm of each update to `global_clipnorm` if given."""
  if not isinstance(learning_rate,
                    keras.optimizers.schedules.LearningRateSchedule):
    learning_rate = float(learning_rate)
  return keras.optimizers.SGD(learning_rate=learning_rate,
                              momentum=float(config.momentum),
                              global_clipnorm=global_clipnorm)


def main_learning_rate(config):
  """`config.lr` with `config.lr_warmup_steps` of linear warm-up and a
  cosine decay to 0 over the last `config.lr_decay_steps` of
  `config.steps` (`schedules.WarmupHoldCosine`).

  Steps are optimizer steps counted from 0 (a skipped GradMix step does not
  count). GradMix's `eta` (Eq. 9) multiplies this rate. Both 0 (the
  default) is the paper's constant rate.
  """
  # None (a protocol field `config_lib.resolve` did not fill): 0.
  warmup_steps = int(config.get("lr_warmup_steps") or 0)
  decay_steps = int(config.get("lr_decay_steps") or 0)
  if warmup_steps <= 0 and decay_steps <= 0:
    return float(config.lr)
  return schedules.WarmupHoldCosine(
      float(config.lr), total_steps=int(config.steps),
      warmup_steps=warmup_steps, decay_steps=decay_steps)


def make_main_sgd(config):
  """SGD at the main training rate (`main_learning_rate`), with
  `config.global_clipnorm` (0: no clipping)."""
  clipnorm = float(config.get("global_clipnorm", 0.0)) or None
  return make_sgd(config, main_learning_rate(config), clipnorm)


def make_gradmix(config, method):
  """The GradMix-family optimizer of `method` (GradMF included)."""
  if method == "gradmf":
    try:
      return GradMF(
          make_main_sgd(config),
          steps=config.gradmf.steps,
          angle_threshold=config.gradmf.angle_threshold,
          mode=config.gradmf.mode,
          update=config.gradmf.update_rule,
          max_consecutive_skips=config.max_consecutive_skips)
    except ValueError as err:
      raise ConfigError(f"config.gradmf: {err}") from None
  variant = GRADMIX_VARIANTS[method]
  return GradMix(
      make_main_sgd(config),
      beta=config.beta,
      gamma=config.gamma,
      solver=variant["solver"] or config.solver,
      adaptive_lr=variant["adaptive_lr"],
      rho_reduction=config.rho_reduction,
      max_consecutive_skips=config.max_consecutive_skips)


class Trainer:
  """Trains one method on one experiment and writes its artifacts.

  Args:
    config: the resolved ConfigDict (see `configs/`).
    data: an `ExperimentData`.
    workdir: where checkpoints, TensorBoard logs and metrics go.
    strategy: a `tf.distribute.Strategy` (the launcher creates it); default:
      the current one. `batch_size` is the global batch per source and is
      split evenly over replicas; V is replicated (every replica computes
      its loss on all of V).
  """

  methods = METHODS
  # Subclasses whose steps are written for one device set this.
  single_device_only = False

  def __init__(self, config, data, workdir, strategy=None):
    if config.method not in self.methods:
      raise ConfigError(
          f"unknown method {config.method!r}: choose one of "
          f"{', '.join(self.methods)}")
    self.config = config
    self.data = data
    self.workdir = workdir
    # Only stage 2 of gradmix_soft_label has a soft-labelled source.
    self._soft_loss_direction = str(
        config.get("pseudo_label", {}).get("soft_loss", "model_label"))
    self.strategy = strategy or tf.distribute.get_strategy()
    self.replicas = self.strategy.num_replicas_in_sync
    if self.single_device_only and self.replicas > 1:
      raise ConfigError(
          f"method {config.method} runs on one device; use "
          "--config.distribution=default")
    self.global_batch = int(config.batch_size)
    if self.global_batch % self.replicas:
      raise ConfigError(
          f"batch_size {self.global_batch} does not split over "
          f"{self.replicas} replicas; use a multiple of {self.replicas}")
    self.replica_batch = self.global_batch // self.replicas
    self.is_chief = distribute.is_chief(self.strategy)
    keras.utils.set_random_seed(int(config.seed))
    with self.strategy.scope():
      self._build_state(config, data, workdir)

  def _build_state(self, config, data, workdir):
    self.model = self._build_model()
    # Skipped non-finite steps of every phase but GradMix's (which counts
    # its own): `apply_finite`, `_check_health`.
    self.skips = finite_steps.SkipCounter()
    self.variables = self.model.trainable_variables
    self.source_images = [tf.constant(s.x) for s in data.sources]
    self.source_labels = [tf.constant(s.y) for s in data.sources]
    self.source_heads = [s.head for s in data.sources]
    self.v_images = tf.constant(data.v[0])
    self.v_labels = tf.constant(data.v[1])
    self._v_clips = self._video_clips(config, data)
    self.phases = self._make_phases()
    self.total_steps = sum(p["steps"] for p in self.phases)
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    # How many phases have had their `on_end` hook applied (resume-safe).
    self.phases_finished = tf.Variable(0, dtype=tf.int64, trainable=False,
                                       name="phases_finished")
    trackables = {f"optimizer_{i}": p["optimizer"]
                  for i, p in enumerate(self.phases)}
    trackables.update(self._extra_trackables())
    for phase in self.phases:
      phase["optimizer"].build(self.variables)
    # Seconds spent in `run` over every invocation up to the last checkpoint
    # (a resumed run's `train_seconds` counts its earlier invocations too).
    self.train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                     name="train_seconds")
    self.checkpoint = tf.train.Checkpoint(
        model=self.model, step=self.step,
        phases_finished=self.phases_finished,
        train_seconds=self.train_seconds, skips=self.skips, **trackables)
    # Every worker saves (saving is collective); only the chief's copy is the
    # run's, the others keep theirs to resume from.
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    if not self.is_chief:
      checkpoint_dir = os.path.join(
          workdir, "workers",
          f"{self.strategy.cluster_resolver.task_type}_"
          f"{self.strategy.cluster_resolver.task_id}", "checkpoints")
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, checkpoint_dir, max_to_keep=2)
    # The weights of the best hyper-validation accuracy so far (model
    # selection on H, as the paper uses H).
    self.best_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=self.model),
        os.path.join(os.path.dirname(checkpoint_dir), "best"), max_to_keep=1)
    self.best_hyperval = (0, -1.0)
    self._predict = tf.function(self._prediction)

  # -- Phases and steps -------------------------------------------------------

  def _make_phases(self):
    config, method = self.config, self.config.method
    steps = int(config.steps)
    if method == "target_only":
      return [self._phase("target", steps, make_sgd(config, config.target_lr))]
    if method in ("source_only", "fine_tune"):
      phases = [self._phase("plain", steps, make_main_sgd(config))]
      if method == "fine_tune":
        phases.append(self._phase("target", int(config.finetune_steps),
                                  make_sgd(config, config.finetune_lr)))
      return phases
    if method == "joint":
      return [self._phase("joint", steps, make_main_sgd(config))]
    if method in UNLABELLED_SOURCE:
      if not len(self.data.u[1]):
        raise ConfigError(f"{method} needs unlabelled target images (U is "
                          "empty)")
      self.u_images = tf.constant(self.data.u[0])
      sizes = [len(s.y) for s in self.data.sources] + [len(self.data.u[1])]
      return [self._phase(
          "gradmix", steps, make_gradmix(config, "gradmix"),
          index_sizes=sizes,
          source_names=[s.name for s in self.data.sources] + [
              UNLABELLED_SOURCE[method]])]
    return [self._phase("gradmix", steps, make_gradmix(config, method))]

  def _prediction(self, images):
    """Target-class probabilities of `images` (subclasses may change it)."""
    return tf.nn.softmax(self.model(images, head=self.data.target_head))

  def _build_model(self):
    """The network (subclasses may change its heads)."""
    return models.build_model(self.config.model,
                              tuple(self.config.input_shape),
                              self.data.num_classes_per_head)

  def _extra_trackables(self):
    """More objects for the checkpoint (subclasses)."""
    return {}

  def _phase(self, kind, steps, optimizer, replica_step=None, **options):
    """A phase: `steps` steps of `replica_step` (default: by `kind`).

    `options` may hold `index_sizes` (the sizes of the sets whose batch
    indices each step receives; default the sources'), `on_end` (called
    once when the phase is complete, before the next starts; its effect is
    checkpointed) and `source_names` (what GradMix's sources are called in
    summaries; default the data's sources).
    """
    makers = {"target": self._target_step, "plain": self._plain_step,
              "joint": self._joint_step, "gradmix": self._gradmix_step}
    if replica_step is None:
      replica_step = makers[kind](optimizer)
    if self.replicas == 1 and not isinstance(
        self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
      fn = replica_step
    else:
      fn = self._distributed(replica_step)
    return {"kind": kind, "steps": steps, "optimizer": optimizer,
            "fn": tf.function(fn, jit_compile=bool(self.config.jit_compile)),
            **options}

  def _distributed(self, replica_step):
    """Runs `replica_step` on every replica; reduces what it returns.

    Source losses are shares of the global mean (summed); everything else
    (V's loss, GradMix's weights, rho, eta) is the same on every replica.
    """
    source_keys = {f"loss/{s.name}" for s in self.data.sources} | {
        f"loss/{name}" for name in UNLABELLED_SOURCE.values()}

    def step(indices):
      out = self.strategy.run(replica_step, args=(indices,))
      return {key: (self.strategy.reduce(tf.distribute.ReduceOp.SUM, value,
                                         axis=None) if key in source_keys
                    else self.strategy.experimental_local_results(value)[0])
              for key, value in out.items()}
    return step

  def _source_losses(self, indices):
    """Each source's share of its global-batch mean loss on this replica."""
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    start = replica * self.replica_batch
    losses = []
    for images, labels, head, index in zip(
        self.source_images, self.source_labels, self.source_heads, indices):
      index = index[start:start + self.replica_batch]
      logits = self.model(self._augment_source(tf.gather(images, index)),
                          head=head, training=True)
      if labels.dtype.is_floating:
        # Soft pseudo-labels [N, C]: KL(p_model || y) (paper section 3.5)
        # or KL(y || p_model), per `pseudo_label.soft_loss`.
        losses.append(pseudo_labels.soft_label_loss(
            logits, tf.gather(labels, index), self._soft_loss_direction)
                      * (self.replica_batch / self.global_batch))
      else:
        losses.append(cross_entropy(tf.gather(labels, index), logits,
                                    self.global_batch))
    return losses

  def _video_clips(self, config, data):
    """(first frame, frame count) of each V clip when V holds video clips
    and `actions.frames_per_step` frames of each are drawn per step."""
    per_step = int(config.get("actions", {}).get("frames_per_step", 0))
    if data.v_groups is None or not per_step:
      return None
    groups = np.asarray(data.v_groups)
    if np.any(np.diff(groups) < 0):
      raise ConfigError("V's frames must be grouped by clip")
    _, first, counts = np.unique(groups, return_index=True,
                                 return_counts=True)
    return (tf.constant(first, tf.int32), tf.constant(counts, tf.float32),
            per_step)

  def _validation_images(self):
    """All of V, or `frames_per_step` random frames of each V clip (drawn
    from `(seed, step)`, so a resumed run draws the same frames)."""
    if self._v_clips is None:
      return self.v_images, self.v_labels
    first, counts, per_step = self._v_clips
    seed = tf.stack([tf.constant(int(self.config.seed), tf.int64),
                     tf.cast(self.step, tf.int64)])
    uniform = tf.random.stateless_uniform([tf.shape(first)[0], per_step],
                                          seed=seed)
    offset = tf.minimum(tf.floor(uniform * counts[:, None]),
                        counts[:, None] - 1.0)
    index = tf.reshape(first[:, None] + tf.cast(offset, tf.int32), [-1])
    return tf.gather(self.v_images, index), tf.gather(self.v_labels, index)

  def _augment_source(self, images):
    """Source images as the model sees them in training (subclasses)."""
    return images

  def _validation_loss(self, moves_statistics=True):
    """Mean cross-entropy of V (or of its frames drawn this step).

    V is normalised with its own batch statistics (`training=True`).
    Where V trains the model (target only, fine-tuning, joint, MME) its
    pass also moves batch norm's moving statistics; where V only steers
    the mix (GradMix, `moves_statistics=False`) it must not train them
    either, so they are put back after its pass
    (`multi_source_step.without_moving_statistics`). ResNet-18 has batch
    norm, the digit ConvNet with `model.norm="batch"`.
    """
    images, labels = self._validation_images()

    def forward():
      return self.model(images, head=self.data.target_head, training=True)

    if moves_statistics:
      logits = forward()
    else:
      logits = multi_source_step.without_moving_statistics(self.model,
                                                           forward)
    return cross_entropy(labels, logits)

  def _target_step(self, optimizer):
    def step(indices):
      del indices
      with tf.GradientTape() as tape:
        loss = self._validation_loss()
        # Every replica has all of V; their gradients are summed on apply.
        applied_loss = loss / float(self.replicas)
      applied = self.apply_finite(
          optimizer, tape.gradient(applied_loss, self.variables),
          self.variables, [loss])
      return {"loss/validation": loss, "applied": applied}
    return step

  def _plain_step(self, optimizer, with_validation=False):
    def step(indices):
      with tf.GradientTape() as tape:
        losses = self._source_losses(indices)
        if with_validation:
          val_loss = self._validation_loss()
          total = tf.add_n(losses + [val_loss / float(self.replicas)])
        else:
          total = tf.add_n(losses)
      applied = self.apply_finite(optimizer,
                                  tape.gradient(total, self.variables),
                                  self.variables, [total])
      out = self._loss_stats(losses)
      out["applied"] = applied
      if with_validation:
        out["loss/validation"] = val_loss
      return out
    return step

  def _joint_step(self, optimizer):
    return self._plain_step(optimizer, with_validation=True)

  def apply_finite(self, optimizer, grads, variables, losses=()):
    """Applies `grads` (None entries left out) unless one is not finite.

    The step is also skipped when one of `losses` is not finite (a loss
    that overflowed can still have finite, saturated gradients, which would
    carry the run further out). A skipped step leaves the variables and the
    optimizer's state as they were and is counted in `self.skips`; the step
    function returns the result as `"applied"`, and `_check_health` stops
    the run after `config.max_consecutive_skips` skips in a row. Every
    phase's step but GradMix's (which skips on its own) applies its updates
    through this.

    Returns:
      A bool tensor: whether the update was applied.
    """
    return finite_steps.apply_if_finite(optimizer, grads, variables,
                                        self.skips, losses)

  def _unlabelled_loss(self, index):
    """VAT's or MixMatch's loss on this replica's share of a U batch, as a
    share of the global mean (`gradmix_tf/semi_supervised.py`)."""
    from gradmix_tf import semi_supervised  # pylint: disable=g-import-not-at-top
    config = self.config
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    start = replica * self.replica_batch
    images = tf.cast(tf.gather(self.u_images,
                               index[start:start + self.replica_batch]),
                     tf.float32)
    head = self.data.target_head
    seed = tf.stack([tf.constant(int(config.seed) + 31, tf.int64),
                     tf.cast(self.step, tf.int64)])

    def model_fn(x):
      return self.model(x, head=head, training=True)

    if self.config.method == "gradmix_vat":
      loss = semi_supervised.vat_loss(
          model_fn, images, float(config.vat.xi), float(config.vat.epsilon),
          seed, int(config.vat.power_iterations))
    else:
      mixmatch = config.mixmatch
      ramp = tf.minimum(1.0, tf.cast(self.step, tf.float32)
                        / float(max(int(mixmatch.rampup_steps), 1)))
      images_v, labels_v = self._validation_images()
      loss = semi_supervised.mixmatch_unlabelled_loss(
          model_fn, tf.cast(images_v, tf.float32), labels_v,
          self.data.num_classes_per_head[head], images, seed,
          weight=float(mixmatch.lambda_u) * ramp,
          augmentations=int(mixmatch.augmentations),
          temperature=float(mixmatch.temperature),
          alpha=float(mixmatch.alpha), max_shift=int(mixmatch.max_shift))
    return loss * (self.replica_batch / self.global_batch)

  def _gradmix_step(self, optimizer):
    unlabelled = self.config.method in UNLABELLED_SOURCE
    adjust = None
    if unlabelled and not self._unlabelled_settings().get("train_head", True):
      def adjust(source_grads):
        return source_grads[:-1] + [self._without_target_head(
            source_grads[-1])]

    def step(indices):
      def source_losses():
        losses = self._source_losses(indices)
        if unlabelled:
          losses.append(self._unlabelled_loss(indices[-1]))
        return losses

      losses, val_loss, stats = multi_source_step.gradmix_step(
          optimizer, self.variables, source_losses,
          lambda: self._validation_loss(moves_statistics=False), adjust)
      out = self._loss_stats(losses)
      if unlabelled:
        out[f"loss/{UNLABELLED_SOURCE[self.config.method]}"] = losses[-1]
      out["loss/validation"] = val_loss
      out.update(stats)
      return out
    return step

  def _unlabelled_settings(self):
    """The config section of this run's unlabelled loss (vat, mixmatch)."""
    return self.config[UNLABELLED_SOURCE[self.config.method]]

  def _without_target_head(self, grads):
    """`grads` with None for the target head's variables (a source that
    does not reach the head, like another label space's)."""
    head = {v.path for v in
            self.model.heads[self.data.target_head].trainable_variables}
    return [None if v.path in head else g
            for g, v in zip(grads, self.variables)]

  def _loss_stats(self, losses):
    return {f"loss/{s.name}": loss for s, loss in zip(self.data.sources, losses)}

  # -- Evaluation -------------------------------------------------------------

  def probabilities(self, images):
    """Target-head softmax of `images`, `[n, classes]`, in batches."""
    return np.concatenate([
        self._predict(tf.constant(images[start:start + EVAL_BATCH])).numpy()
        for start in range(0, len(images), EVAL_BATCH)])

  def evaluate(self, images, labels):
    """(loss, accuracy) of the target head on a labelled set."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), EVAL_BATCH):
      probs = self._predict(tf.constant(images[start:start + EVAL_BATCH]))
      probs = probs.numpy()
      batch_labels = labels[start:start + EVAL_BATCH]
      picked = probs[np.arange(len(batch_labels)), batch_labels]
      total_loss += float(-np.log(np.maximum(picked, 1e-12)).sum())
      correct += int((probs.argmax(-1) == batch_labels).sum())
    count = max(len(labels), 1)
    return total_loss / count, correct / count

  # -- The loop ---------------------------------------------------------------

  def run(self):
    """Trains (resuming from the last checkpoint) and writes metrics.json."""
    config = self.config
    os.makedirs(self.workdir, exist_ok=True)
    if self.is_chief:
      from gradmix_tf import export  # pylint: disable=g-import-not-at-top
      export.write_model_description(self.workdir, config, self.data)
    restored = checkpoints.restore_newest_intact(self.checkpoint,
                                                 self.manager.directory)
    start = int(self.step.numpy())
    if restored and start:
      logging.info("Resumed from %s at step %d.", restored, start)
    writer = (tf.summary.create_file_writer(os.path.join(self.workdir, "tb"))
              if self.is_chief else tf.summary.create_noop_writer())
    curve = self._load_curve() if start else []
    if curve:
      best = max(curve, key=lambda point: point[2])
      self.best_hyperval = (best[0], best[2])
    started = time.time()
    self._seconds_at_start = (float(self.train_seconds.numpy()), started)
    step_seconds = []
    phase_start = 0
    for index, phase in enumerate(self.phases):
      phase_end = phase_start + phase["steps"]
      first = max(start, phase_start)
      if first < phase_end:
        self._run_phase(phase, first, phase_start, phase_end, writer, curve,
                        step_seconds)
      if int(self.phases_finished.numpy()) <= index:
        if phase.get("on_end") is not None:
          phase["on_end"]()
        self.phases_finished.assign(index + 1)
        self._save(phase_end)
      phase_start = phase_end
    self._save(self.total_steps)
    hyper_loss, hyper_acc = self.evaluate(*self.data.h)
    test_loss, test_acc = self.evaluate(*self.data.test)
    best_step, best_hyper_acc, best_test_acc = self._evaluate_best()
    metrics = {
        # 2: best-H weights include the heads (version 1 checkpoints of the
        # model alone lacked them, so its best-H accuracies are invalid).
        "metrics_version": 2,
        "config": config.name,
        "method": config.method,
        "seed": int(config.seed),
        "k": int(config.k),
        "steps": self.total_steps,
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "hyperval_accuracy": hyper_acc,
        "hyperval_loss": hyper_loss,
        "hyperval_curve": curve,
        "best_hyperval_step": best_step,
        "best_hyperval_accuracy": best_hyper_acc,
        "test_accuracy_at_best_hyperval": best_test_acc,
        "wall_seconds": time.time() - started,      # this invocation
        "train_seconds": float(self.train_seconds.numpy()),   # all of them
        "resumed_from_step": start,
        "median_step_seconds": (float(np.median(step_seconds))
                                if step_seconds else None),
        "skipped_steps": self._skipped_steps(),
        "num_examples": {
            **{s.name: int(len(s.y)) for s in self.data.sources},
            "v": int(len(self.data.v[1])), "h": int(len(self.data.h[1])),
            "u": int(len(self.data.u[1])),
            "test": int(len(self.data.test[1]))},
    }
    metrics["replicas"] = self.replicas
    if self.data.test_groups is not None:
      images, labels = self.data.test
      metrics["per_frame_accuracy"], metrics["per_video_accuracy"] = (
          video_accuracy(self.probabilities(images), labels,
                         self.data.test_groups))
    metrics.update(self._extra_metrics())
    if self.is_chief:
      write_json_atomically(os.path.join(self.workdir, "metrics.json"),
                            metrics)
    logging.info("%s: test accuracy %.4f, hyper-validation accuracy %.4f "
                 "(%d steps, %.0f s).", config.method, test_acc, hyper_acc,
                 self.total_steps, metrics["wall_seconds"])
    return metrics

  def _extra_metrics(self):
    """More entries for metrics.json (subclasses)."""
    return {}

  def _run_phase(self, phase, first, phase_start, phase_end, writer, curve,
                 step_seconds):
    config = self.config
    sizes = phase.get("index_sizes") or [len(s.y) for s in self.data.sources]
    index_streams = [
        batch_indices(n, int(config.batch_size), [int(config.seed), i],
                      first - phase_start, phase_end - phase_start)
        for i, n in enumerate(sizes)]
    fn = phase["fn"]
    last_log = time.time()
    last_log_step = first
    for step in range(first, phase_end):
      row = step - first
      indices = tuple(tf.constant(stream[row]) for stream in index_streams)
      tick = time.perf_counter()
      stats = fn(indices)
      done = step + 1
      self.step.assign(done)
      self._check_health(phase, stats, done)
      step_seconds.append(time.perf_counter() - tick)
      if done % int(config.log_every) == 0 or done == phase_end:
        self._write_summaries(writer, phase, stats, done)
        now = time.time()
        rate = (done - last_log_step) / max(now - last_log, 1e-9)
        last_log, last_log_step = now, done
        extra = ""
        if "eta" in stats:
          extra = f" rho {float(stats['rho']):+.3f} eta {float(stats['eta']):.3f}"
        loss = float(tf.add_n([v for k, v in stats.items()
                               if k.startswith("loss/")]))
        logging.info("[%s] step %d/%d  loss %.4f%s  %.1f steps/s  ETA %.0f s",
                     config.method, done, self.total_steps, loss, extra, rate,
                     (self.total_steps - done) / max(rate, 1e-9))
      if done % int(config.eval_every) == 0:
        hyper_loss, hyper_acc = self.evaluate(*self.data.h)
        curve.append([done, hyper_loss, hyper_acc])
        with writer.as_default(step=done):
          tf.summary.scalar("hyperval/loss", hyper_loss)
          tf.summary.scalar("hyperval/accuracy", hyper_acc)
        if hyper_acc > self.best_hyperval[1]:
          self.best_hyperval = (done, hyper_acc)
          self.best_manager.save(checkpoint_number=done)
        if self.is_chief:
          self._save_curve(curve)
      if done % int(config.checkpoint_every) == 0:
        self._save(done)
    writer.flush()

  def _save(self, step):
    """Checkpoints at `step`, with the training time so far."""
    before, started = self._seconds_at_start
    self.train_seconds.assign(before + time.time() - started)
    self.manager.save(checkpoint_number=step)

  def _evaluate_best(self):
    """(step, H accuracy, test accuracy) of the best-H weights, if any."""
    latest = self.best_manager.latest_checkpoint
    if latest is None:
      return None, None, None
    final = [w.numpy() for w in self.model.weights]
    self.best_manager.checkpoint.restore(latest).expect_partial()
    _, test_acc = self.evaluate(*self.data.test)
    self.model.set_weights(final)
    return self.best_hyperval[0], self.best_hyperval[1], test_acc

  def _check_health(self, phase, stats, step):
    """Stops the run after too many non-finite steps in a row.

    Every step reports `"applied"`: False when its update was skipped for a
    non-finite gradient (`apply_finite`, or GradMix's own check). A skip is
    logged with the step and the culprit; `max_consecutive_skips` skips in
    a row raise `TrainingError`. A custom step that does not report
    `"applied"` is stopped at the first non-finite loss.
    """
    if "applied" not in stats:
      culprit = _non_finite_loss(stats)
      if culprit:
        raise TrainingError(
            f"{culprit} is not finite at step {step}; lower the learning "
            "rate or check the data", step=step, reason="non_finite",
            source=culprit)
      return
    if bool(stats["applied"]):
      return
    if isinstance(phase["optimizer"], GradMix):
      names = self._source_names(phase) + ["validation (V)"]
      culprit = f"source {names[int(stats['nonfinite_source'])]}"
      consecutive = int(phase["optimizer"].consecutive_skips.numpy())
      limit = phase["optimizer"].max_consecutive_skips
    else:
      culprit = _non_finite_loss(stats) or "the gradients of finite losses"
      consecutive = int(self.skips.consecutive_skips.numpy())
      limit = int(self.config.max_consecutive_skips)
    logging.warning("Step %d skipped: non-finite gradient from %s.", step,
                    culprit)
    if consecutive >= limit:
      raise TrainingError(
          f"{consecutive} consecutive steps up to step {step} had "
          f"non-finite gradients (last from {culprit}); lower the learning "
          "rate or check that source's data", step=step, reason="non_finite",
          source=culprit)

  def _write_summaries(self, writer, phase, stats, step):
    with writer.as_default(step=step):
      for name, value in stats.items():
        if name.startswith(("loss/", "entropy/", "stats/")) or name in (
            "rho", "eta"):
          tf.summary.scalar(name, value)
      if "weights" in stats:
        names = phase["optimizer"].mixed_layer_names
        weights = stats["weights"].numpy()
        cosines = stats["cosines"].numpy()
        sources = self._source_names(phase)
        for layer_index, layer in enumerate(names):
          tf.summary.scalar(f"cosine/{layer}", cosines[layer_index])
          for s, source in enumerate(sources):
            tf.summary.scalar(f"weights/{layer}/{source}",
                              weights[layer_index, s])
        for s, source in enumerate(sources):
          tf.summary.scalar(f"grad_norm/{source}",
                            float(stats["source_grad_norms"][s]))

  def _source_names(self, phase):
    return list(phase.get("source_names")
                or [s.name for s in self.data.sources])

  def _skipped_steps(self):
    return int(self.skips.skipped_steps.numpy()) + sum(
        int(p["optimizer"].skipped_steps.numpy())
        for p in self.phases if isinstance(p["optimizer"], GradMix))

  def _curve_path(self):
    return os.path.join(self.workdir, "hyperval_curve.json")

  def _save_curve(self, curve):
    write_json_atomically(self._curve_path(), curve)

  def _load_curve(self):
    """The curve up to the restored step (later points were not saved)."""
    if not os.path.isfile(self._curve_path()):
      return []
    with open(self._curve_path()) as f:
      curve = json.load(f)
    return [point for point in curve if point[0] <= int(self.step.numpy())]


def _non_finite_loss(stats):
  """The first `loss/...` entry of `stats` that is not finite, else the
  first such `stats/...` entry (a method's auxiliary losses), else None."""
  for prefix in ("loss/", "stats/"):
    for name, value in stats.items():
      if name.startswith(prefix) and not np.all(np.isfinite(value)):
        return name
  return None
