"""The multi-source task: the paper's methods on sources, V and U.

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

Every source loss is the mean loss of its own mini-batch on its own head:
cross-entropy, or for a soft-labelled source (stage 2 of the pseudo-label
pipeline) the KL divergence its `SourceData.loss` names. Each source (and V) runs its own forward pass, so
its gradient is computed on its own examples only; with no batch
normalisation in the model this costs the same FLOPs as one pass over the
concatenated batch.

MME, MDDA, DCTN and holistic transfer subclass this task for its data
tensors, V loss and steps.
"""

import numpy as np
import tensorflow as tf

from gradmix_tf import distribute
from gradmix_tf import methods
from gradmix_tf import models
from gradmix_tf import multi_source_step
from gradmix_tf import pseudo_labels
from gradmix_tf import sgd
from gradmix_tf.data import image_files
from gradmix_tf.data.experiment import CROSS_ENTROPY
from gradmix_tf.data.experiment import KL_LABEL_MODEL
from gradmix_tf.data.experiment import KL_MODEL_LABEL
from gradmix_tf.errors import ConfigError
from gradmix_tf.gradmf import GradMF
from gradmix_tf.losses import cross_entropy
from gradmix_tf.optimizer import GradMix
from gradmix_tf.task import Phase, Task

# `SourceData.loss` of a soft-labelled source -> `soft_label_loss` direction.
SOFT_LOSS_DIRECTIONS = {KL_MODEL_LABEL: "model_label",
                        KL_LABEL_MODEL: "label_model"}
UNLABELLED_SOURCE = {"gradmix_vat": "vat", "gradmix_mixmatch": "mixmatch"}
GRADMIX_VARIANTS = {
    "gradmix": dict(solver=None, adaptive_lr=True),
    "gradmix_no_adalr": dict(solver=None, adaptive_lr=False),
    "gradmix_sgd": dict(solver="meta_sgd", adaptive_lr=True),
}


def make_gradmix(config, method):
  """The GradMix-family optimizer of `method` (GradMF included)."""
  if method == "gradmf":
    try:
      return GradMF(
          sgd.make_main_sgd(config),
          steps=config.gradmf.steps,
          angle_threshold=config.gradmf.angle_threshold,
          mode=config.gradmf.mode,
          update=config.gradmf.update_rule,
          max_consecutive_skips=config.max_consecutive_skips)
    except ValueError as err:
      raise ConfigError(f"config.gradmf: {err}") from None
  variant = GRADMIX_VARIANTS[method]
  return GradMix(
      sgd.make_main_sgd(config),
      beta=config.beta,
      gamma=config.gamma,
      solver=variant["solver"] or config.solver,
      adaptive_lr=variant["adaptive_lr"],
      rho_reduction=config.rho_reduction,
      max_consecutive_skips=config.max_consecutive_skips)


class MultiSourceTask(Task):
  """Sources, V and U as device tensors; the methods of the table above."""

  def build(self, setup):
    data = self.data
    # In memory: device constants the steps gather their rows from.
    # Streamed (`ImageFiles`): None; the runner decodes the rows
    # (`Phase.file_sets`).
    self.source_images = [_in_memory(s.x) for s in data.sources]
    self.source_labels = [tf.constant(s.y) for s in data.sources]
    self.v_images = tf.constant(data.v.images)
    self.v_labels = tf.constant(data.v.labels)
    entry = methods.lookup(methods.experiment_of(self.config),
                           self.config.method)
    self.u_images = (_in_memory(data.u.images)
                     if entry is not None and entry.needs_unlabelled
                     else None)
    self._v_clips = _clips(data.v.groups, int(data.v_frames_per_step))
    super().build(setup)

  # -- Hooks ------------------------------------------------------------------

  def build_model(self):
    return models.build_model(self.config.model,
                              tuple(self.config.input_shape),
                              self.data.num_classes_per_head)

  def make_phases(self):
    config, method = self.config, self.config.method
    steps = int(config.steps)
    if method == "target_only":
      optimizer = sgd.make_sgd(config, config.target_lr)
      return [self.phase("target", steps, optimizer,
                         self.target_step(optimizer))]
    if method in ("source_only", "fine_tune"):
      optimizer = sgd.make_main_sgd(config)
      phases = [self.phase("plain", steps, optimizer,
                           self.plain_step(optimizer))]
      if method == "fine_tune":
        optimizer = sgd.make_sgd(config, config.finetune_lr)
        phases.append(self.phase("target", int(config.finetune_steps),
                                 optimizer, self.target_step(optimizer)))
      return phases
    if method == "joint":
      optimizer = sgd.make_main_sgd(config)
      return [self.phase("joint", steps, optimizer,
                         self.plain_step(optimizer, with_validation=True))]
    if method in UNLABELLED_SOURCE:
      optimizer = make_gradmix(config, "gradmix")
      return [self.phase(
          "gradmix", steps, optimizer, self.gradmix_step(optimizer),
          with_unlabelled=True,
          source_names=self.source_names() + (UNLABELLED_SOURCE[method],))]
    if method == "gradmix_finetune":
      # Not a method of the paper: GradMix's model fine-tuned on V as
      # fine_tune fine-tunes source only's.
      optimizer = make_gradmix(config, "gradmix")
      tuning = sgd.make_sgd(config, config.finetune_lr)
      return [self.phase("gradmix", steps, optimizer,
                         self.gradmix_step(optimizer),
                         source_names=self.source_names()),
              self.phase("target", int(config.finetune_steps), tuning,
                         self.target_step(tuning))]
    optimizer = make_gradmix(config, method)
    return [self.phase("gradmix", steps, optimizer,
                       self.gradmix_step(optimizer),
                       source_names=self.source_names())]

  # -- Building blocks for this task and its subclasses -----------------------

  def phase(self, name, steps, optimizer, replica_step, index_sizes=None,
            source_names=(), on_end=None, sources=None,
            with_unlabelled=False):
    """A `Phase` whose source losses (and unlabelled one) are replica
    shares.

    Its steps get one batch of each of `sources` (indices into
    `data.sources`; default all), then one of U when `with_unlabelled`,
    streamed sets decoded by the runner (`source_batch`,
    `unlabelled_batch` read either); or, given `index_sizes`, rows of sets
    of those sizes the step gathers from memory itself.
    """
    summed = {f"loss/{s.name}" for s in self.data.sources} | {
        f"loss/{name}" for name in UNLABELLED_SOURCE.values()}
    file_sets = ()
    if index_sizes is None:
      chosen = [self.data.sources[i] for i in
                (range(len(self.data.sources)) if sources is None
                 else sources)]
      index_sizes = [len(s.y) for s in chosen]
      file_sets = [_file_set(s.x, s.y) for s in chosen]
      if with_unlabelled:
        index_sizes.append(len(self.data.u))
        file_sets.append(_file_set(self.data.u.images, None))
      if not any(file_sets):
        file_sets = ()
    return Phase(name, int(steps), optimizer, replica_step,
                 tuple(index_sizes), frozenset(summed), tuple(source_names),
                 on_end, tuple(file_sets))

  def source_sizes(self):
    return tuple(len(s.y) for s in self.data.sources)

  def source_names(self):
    return tuple(s.name for s in self.data.sources)

  def augment_source(self, images):
    """Source images as the model sees them in training (subclasses)."""
    return images

  def source_losses(self, indices):
    """Each source's share of its global-batch mean loss on this replica
    (`distribute.replica_share`)."""
    losses = []
    for i, (source, entry) in enumerate(zip(self.data.sources, indices)):
      images, labels = self.source_batch(i, entry)
      logits = self.model(self.augment_source(images), head=source.head,
                          training=True)
      if source.loss == CROSS_ENTROPY:
        loss = cross_entropy(labels, logits)
      else:
        loss = pseudo_labels.soft_label_loss(
            logits, labels, SOFT_LOSS_DIRECTIONS[source.loss])
      losses.append(distribute.replica_share(loss))
    return losses

  def source_batch(self, i, entry):
    """(images, labels) of source `i`'s batch on this replica: its rows
    of the global batch `entry` gathered from memory, or the rows the
    runner decoded (`Phase.file_sets`)."""
    if isinstance(entry, dict):
      return entry["images"], entry["labels"]
    index = distribute.replica_rows(entry, self.setup.replica_batch)
    return (tf.gather(self.source_images[i], index),
            tf.gather(self.source_labels[i], index))

  def unlabelled_batch(self, entry):
    """The images of this replica's rows of a U batch (as `source_batch`)."""
    if isinstance(entry, dict):
      return entry["images"]
    return tf.gather(self.u_images, distribute.replica_rows(
        entry, self.setup.replica_batch))

  def validation_images(self):
    """All of V, or `frames_per_step` random frames of each V clip (drawn
    from `(seed, step)`, so a resumed run draws the same frames)."""
    if self._v_clips is None:
      return self.v_images, self.v_labels
    first, counts, per_step = self._v_clips
    seed = tf.stack([tf.constant(int(self.config.seed), tf.int64),
                     tf.cast(self.setup.step, tf.int64)])
    uniform = tf.random.stateless_uniform([tf.shape(first)[0], per_step],
                                          seed=seed)
    offset = tf.minimum(tf.floor(uniform * counts[:, None]),
                        counts[:, None] - 1.0)
    index = tf.reshape(first[:, None] + tf.cast(offset, tf.int32), [-1])
    return tf.gather(self.v_images, index), tf.gather(self.v_labels, index)

  def validation_loss(self, moves_statistics=True):
    """Mean cross-entropy of V (or of its frames drawn this step).

    V is normalised with its own batch statistics (`training=True`).
    Where V trains the model (target only, fine-tuning, joint, MME) its
    pass also moves batch norm's moving statistics; where V only steers
    the mix (GradMix, `moves_statistics=False`) it must not train them
    either, so they are put back after its pass
    (`multi_source_step.without_moving_statistics`). ResNet-18 has batch
    norm, the digit ConvNet with `model.norm="batch"`.
    """
    images, labels = self.validation_images()

    def forward():
      return self.model(images, head=self.data.target_head, training=True)

    if moves_statistics:
      logits = forward()
    else:
      logits = multi_source_step.without_moving_statistics(self.model,
                                                           forward)
    return cross_entropy(labels, logits)

  def target_step(self, optimizer):
    """One step on V's loss alone."""
    def step(indices):
      del indices
      with tf.GradientTape() as tape:
        loss = self.validation_loss()
        # Every replica has all of V; their gradients are summed on apply.
        applied_loss = distribute.replica_share(loss)
      applied = self.apply_finite(
          optimizer, tape.gradient(applied_loss, self.variables),
          self.variables, [loss])
      return {"loss/validation": loss, "applied": applied}
    return step

  def plain_step(self, optimizer, with_validation=False):
    """One step on the sum of the source losses (and V's, `joint`)."""
    def step(indices):
      with tf.GradientTape() as tape:
        losses = self.source_losses(indices)
        if with_validation:
          val_loss = self.validation_loss()
          total = tf.add_n(losses + [distribute.replica_share(val_loss)])
        else:
          total = tf.add_n(losses)
      applied = self.apply_finite(optimizer,
                                  tape.gradient(total, self.variables),
                                  self.variables, [total])
      out = self.loss_outputs(losses)
      out["applied"] = applied
      if with_validation:
        out["loss/validation"] = val_loss
      return out
    return step

  def unlabelled_loss(self, index):
    """VAT's or MixMatch's loss on this replica's share of a U batch, as a
    share of the global mean (`gradmix_tf/semi_supervised.py`)."""
    from gradmix_tf import semi_supervised  # pylint: disable=g-import-not-at-top
    config = self.config
    images = tf.cast(self.unlabelled_batch(index), tf.float32)
    head = self.data.target_head
    seed = tf.stack([tf.constant(int(config.seed) + 31, tf.int64),
                     tf.cast(self.setup.step, tf.int64)])

    def model_fn(x):
      return self.model(x, head=head, training=True)

    if config.method == "gradmix_vat":
      loss = semi_supervised.vat_loss(
          model_fn, images, float(config.vat.xi), float(config.vat.epsilon),
          seed, int(config.vat.power_iterations))
    else:
      mixmatch = config.mixmatch
      ramp = tf.minimum(1.0, tf.cast(self.setup.step, tf.float32)
                        / float(max(int(mixmatch.rampup_steps), 1)))
      images_v, labels_v = self.validation_images()
      loss = semi_supervised.mixmatch_unlabelled_loss(
          model_fn, tf.cast(images_v, tf.float32), labels_v,
          self.data.num_classes_per_head[head], images, seed,
          weight=float(mixmatch.lambda_u) * ramp,
          augmentations=int(mixmatch.augmentations),
          temperature=float(mixmatch.temperature),
          alpha=float(mixmatch.alpha), max_shift=int(mixmatch.max_shift))
    return distribute.replica_share(loss)

  def gradmix_step(self, optimizer):
    """One GradMix step: the sources (and the unlabelled loss) mixed
    toward V (`multi_source_step.gradmix_step`)."""
    method = self.config.method
    unlabelled = method in UNLABELLED_SOURCE
    adjust = None
    if unlabelled and not self.config[UNLABELLED_SOURCE[method]].get(
        "train_head", True):
      def adjust(source_grads):
        return source_grads[:-1] + [self.without_target_head(
            source_grads[-1])]

    def step(indices):
      def source_losses():
        losses = self.source_losses(indices)
        if unlabelled:
          losses.append(self.unlabelled_loss(indices[-1]))
        return losses

      losses, val_loss, stats = multi_source_step.gradmix_step(
          optimizer, self.variables, source_losses,
          lambda: self.validation_loss(moves_statistics=False), adjust)
      out = self.loss_outputs(losses)
      if unlabelled:
        out[f"loss/{UNLABELLED_SOURCE[method]}"] = losses[-1]
      out["loss/validation"] = val_loss
      out.update(stats)
      return out
    return step

  def without_target_head(self, grads):
    """`grads` with None for the target head's variables (a source that
    does not reach the head, like another label space's)."""
    head = {v.path for v in
            self.model.heads[self.data.target_head].trainable_variables}
    return [None if v.path in head else g
            for g, v in zip(grads, self.variables)]

  def loss_outputs(self, losses):
    """`{"loss/<source>": loss}` of the data's sources."""
    return {f"loss/{s.name}": loss
            for s, loss in zip(self.data.sources, losses)}


def _in_memory(images):
  """A device constant of in-memory images; None for streamed ones."""
  return None if image_files.is_streamed(images) else tf.constant(images)


def _file_set(images, labels):
  """`Phase.file_sets`' entry of a set: None in memory, else its files
  and labels."""
  return (images, labels) if image_files.is_streamed(images) else None


def _clips(groups, frames_per_step):
  """(first frame, frame count, frames per step) of each V clip when V
  holds video clips and `frames_per_step` frames of each are drawn per
  step; else None."""
  if groups is None or not frames_per_step:
    return None
  groups = np.asarray(groups)
  if np.any(np.diff(groups) < 0):
    raise ConfigError("V's frames must be grouped by clip")
  _, first, counts = np.unique(groups, return_index=True, return_counts=True)
  return (tf.constant(first, tf.int32), tf.constant(counts, tf.float32),
          frames_per_step)
