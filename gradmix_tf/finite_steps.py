"""Updates that are applied only when finite, under any tf.distribute strategy.

A step whose gradients hold a NaN or an Inf is skipped: the variables and the
optimizer's state (momentum, iterations) stay as they were, and the skip is
counted. The runner stops a run after `max_consecutive_skips` skips in a row
(`runner.Runner._check_health`); GradMix keeps its own counters (`GradMix.
skipped_steps`, `consecutive_skips`), every other phase uses a `SkipCounter`.

Where the strategy synchronises through `merge_call` (`MirroredStrategy`),
the apply-or-skip decision runs in cross-replica context and the update per
replica inside it, as `keras.optimizers.LossScaleOptimizer` does: a
synchronisation point (the optimizer's all-reduce) may not sit inside
replica-side control flow. The decision must be the same on every replica:
callers pass a flag computed from all-reduced values (`replicas_agree`).
"""

import tensorflow as tf


def all_finite(tensors):
  """Whether every tensor in `tensors` (None entries ignored) is finite."""
  present = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors
             if t is not None]
  if not present:
    return tf.constant(True)
  return tf.reduce_all(tf.stack(present))


def replicas_agree(finite):
  """`finite` on every replica (a logical AND over replicas)."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return finite
  bad = context.all_reduce(tf.distribute.ReduceOp.SUM,
                           tf.cast(tf.logical_not(finite), tf.float32))
  return tf.equal(bad, 0.0)


def apply_or_skip(finite, apply_fn, args, on_applied, on_skipped):
  """`apply_fn(*args)` then `on_applied()` if `finite`, else `on_skipped()`.

  Args:
    finite: a scalar bool, the same on every replica.
    apply_fn: the per-replica update (it may all-reduce).
    args: its arguments (per-replica values in replica context).
    on_applied, on_skipped: functions of no arguments returning the result
      (a bool tensor), e.g. `SkipCounter.applied` / `.skipped`.

  Returns:
    What `on_applied` or `on_skipped` returned.
  """
  def apply_then(*values):
    apply_fn(*values)
    return on_applied()

  context = tf.distribute.get_replica_context()
  if (context is None or context.num_replicas_in_sync == 1
      or tf.__internal__.distribute.strategy_supports_no_merge_call()):
    return tf.cond(finite, lambda: apply_then(*args), on_skipped)

  def in_cross_replica(distribution, finite, *values):
    finite = distribution.experimental_local_results(finite)[0]

    def apply_everywhere():
      distribution.extended.call_for_each_replica(apply_fn, args=values)
      return on_applied()

    return tf.cond(finite, apply_everywhere, on_skipped)

  return context.merge_call(in_cross_replica, args=(finite, *args))


class SkipCounter(tf.Module):
  """How many steps were skipped, in all and in a row (checkpointed).

  The variables are kept per replica (`ON_READ`) and read from the first:
  every replica takes the same decision, so the copies agree.
  """

  def __init__(self, name="skips"):
    super().__init__(name=name)

    def counter(variable_name):
      return tf.Variable(
          0, dtype=tf.int64, trainable=False, name=variable_name,
          synchronization=tf.VariableSynchronization.ON_READ,
          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    self.skipped_steps = counter("skipped_steps")
    self.consecutive_skips = counter("consecutive_skips")

  def applied(self):
    self.consecutive_skips.assign(0)
    return tf.constant(True)

  def skipped(self):
    self.skipped_steps.assign_add(1)
    self.consecutive_skips.assign_add(1)
    return tf.constant(False)

  def record(self, applied):
    """Counts a step that was (`applied`) or was not applied elsewhere."""
    return tf.cond(applied, self.applied, self.skipped)


def apply_if_finite(optimizer, grads, variables, counter=None, losses=()):
  """`optimizer.apply` of the gradients that exist, unless one of them or
  one of `losses` is not finite.

  Args:
    optimizer: a Keras optimizer.
    grads: gradients aligned with `variables` (None where a variable has
      none, e.g. another label space's head; those are left out).
    variables: the variables.
    counter: a `SkipCounter`, or None not to count.
    losses: scalar losses that must be finite too.

  Returns:
    A bool tensor: whether the update was applied.
  """
  pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
  present = [g for g, _ in pairs]
  finite = replicas_agree(all_finite(present + list(losses)))

  def apply_fn(*values):
    # tf.identity puts every gradient inside the calling cond branch's
    # graph, as the optimizer's all-reduce (a custom gradient) requires.
    optimizer.apply([tf.identity(g) for g in values], [v for _, v in pairs])

  on_applied = counter.applied if counter else lambda: tf.constant(True)
  on_skipped = counter.skipped if counter else lambda: tf.constant(False)
  return apply_or_skip(finite, apply_fn, present, on_applied, on_skipped)
