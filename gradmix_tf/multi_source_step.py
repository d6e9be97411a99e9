"""The per-replica GradMix step, shared by the runner and `fit()`.

For source losses `f_1..f_k` (each this replica's share of its global-batch
mean) and V's loss `f_V` (the mean over all of V, which every replica
holds), one persistent tape gives

    g_i = d s(f_i) / d theta,   v = d s(f_V) / d theta

with `s` the optimizer's loss scale (the identity without mixed precision),
and `GradMix.apply_gradmix([g_1..g_k], v, theta)` mixes and applies them
(Eq. 6-10). `gradmix_tf.tasks.multi_source.MultiSourceTask` and
`gradmix_tf.MultiSourceModel` both call `gradmix_step`, so the launcher's
runs and `model.fit` take the same step.

V only steers the mix, so its forward pass must not train anything, batch
norm's moving statistics included: `without_moving_statistics` runs a
forward pass and puts them back.
"""

import tensorflow as tf


def without_moving_statistics(model, forward):
  """`forward()`, with `model`'s non-trainable variables put back after.

  Batch norm in training mode normalises with the batch's own statistics
  and moves its moving mean and variance; restoring them afterwards (in
  program order: automatic control dependencies order the assignments on
  each variable) leaves the pass's output unchanged and the statistics
  where they were.
  """
  statistics = model.non_trainable_variables
  saved = [tf.identity(v) for v in statistics]
  output = forward()
  for variable, value in zip(statistics, saved):
    variable.assign(value)
  return output


def gradmix_step(optimizer, variables, source_losses, validation_loss,
                 adjust_source_grads=None):
  """One GradMix step; returns `(source losses, V's loss, GradMix stats)`.

  Args:
    optimizer: a `GradMix` (or subclass, e.g. `GradMF`).
    variables: the trainable variables, in a fixed order.
    source_losses: `() -> [k scalar losses]`, run under the tape.
    validation_loss: `() -> V's scalar loss`, run under the tape.
    adjust_source_grads: optional `[k gradient lists] -> [k gradient
      lists]`, e.g. setting `None` where a source must not reach a variable.
  """
  with tf.GradientTape(persistent=True) as tape:
    losses = list(source_losses())
    val_loss = validation_loss()
    scaled = [optimizer.scale_loss(loss) for loss in losses]
    scaled_val = optimizer.scale_loss(val_loss)
  source_grads = [tape.gradient(loss, variables) for loss in scaled]
  if adjust_source_grads is not None:
    source_grads = adjust_source_grads(source_grads)
  val_grads = tape.gradient(scaled_val, variables)
  del tape
  stats = optimizer.apply_gradmix(source_grads, val_grads, variables)
  return losses, val_loss, stats
