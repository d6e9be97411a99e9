"""The GradMix optimizer: layer-wise mixing of per-source gradients.

`GradMix` wraps an inner Keras optimizer, as `keras.optimizers.
LossScaleOptimizer` does. Each step it receives the gradients of every source
loss and the gradient of the validation loss on `V`, and

1. groups the variables into layers (a Keras layer's variables, by the
   parent of `variable.path`); a layer is *mixed* when every source and the
   validation loss have a gradient for all of its variables (the shared
   trunk), otherwise it is a *head* and gets the plain sum of the source
   gradients it has (paper Eq. 10 stops at layer L-1);
2. per mixed layer computes the Gram form `A = G^T G`, `b = G^T v`, `|v|^2`
   on the device and solves for `w~` (Eq. 6-7, `solve_weights`);
3. `rho = sum_l cos(G w~, v)` (Eq. 8; `rho_reduction="mean"` divides by the
   number of mixed layers), `eta = sigmoid(beta * rho - gamma)` (Eq. 9,
   `learning_rate_scale`; 1 when `adaptive_lr=False`);
4. hands `[G w~]_trunk + [sum_i g_i]_heads` to the inner optimizer's own
   `apply`, with the inner learning rate `alpha` replaced by `eta * alpha`
   for that one call (Eq. 10). The inner update rule (momentum, Adam
   moments, weight decay, clipping) is therefore untouched and its
   `iterations` advances by one.

Under `tf.distribute` the per-source gradients are all-reduced (summed; V's
averaged, every replica computing it on all of V) before step 2, so every
replica solves the same weights; each replica then mixes its own gradients
and the inner optimizer's all-reduce sums them into the global mixed
gradient. Where the strategy needs `merge_call` (`MirroredStrategy`), the
apply-or-skip decision runs in cross-replica context, as in
`LossScaleOptimizer`.

A step with any non-finite source or validation gradient is skipped and
counted (`skipped_steps`, `consecutive_skips`); the runner stops after
`max_consecutive_skips` skips in a row, and the optimizer itself raises
`tf.errors.InvalidArgumentError` on the next one, so a custom loop cannot
skip forever without a word.

`apply(grads)` (what `model.fit` and `apply_gradients` call) takes one
gradient list, which has nothing to mix: it raises unless inside
`with optimizer.plain_steps():`, where it is a step of the inner optimizer.

Mixed precision: `GradMix(keras.optimizers.LossScaleOptimizer(SGD(...)))`.
Compute every loss as `optimizer.scale_loss(loss)`. The Gram statistics and
the solve are float32 and invariant to the common loss scale; the mixed
gradient goes to the loss-scale optimizer's own `apply`, which unscales it,
applies it at `eta * alpha` and grows its scale. A skipped step hands it a
non-finite gradient instead, so its own policy halves the scale.

Subclass and override `solve_weights(gram, cross)`,
`learning_rate_scale(rho)` or, for updates that are not a weighting of the
source gradients alone, `mix_coefficients(gram, cross, v_sq)` (GradMF in
`gradmix_tf/gradmf.py` does) to try other rules.
"""

import contextlib

import keras
import tensorflow as tf

from gradmix_tf import finite_steps
from gradmix_tf import solvers

_BASE_OPTIMIZER_ARGS = (
    "weight_decay", "clipnorm", "global_clipnorm", "clipvalue", "use_ema",
    "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
    "gradient_accumulation_steps", "learning_rate")

NO_NONFINITE_SOURCE = -1


def layer_name(variable):
  """The layer a variable belongs to: its path without the last component."""
  path = getattr(variable, "path", None) or variable.name
  return path.rsplit("/", 1)[0] if "/" in path else path


def _rate_owner(optimizer):
  """The optimizer whose learning rate steps are taken at: a
  `LossScaleOptimizer`'s rate is its inner optimizer's."""
  while isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    optimizer = optimizer.inner_optimizer
  return optimizer


@contextlib.contextmanager
def _learning_rate_scaled_by(optimizer, scale):
  """Makes `optimizer` use `scale * its current learning rate` inside.

  The rate is read once (a schedule at the current iteration, as Keras
  does before incrementing it) and restored afterwards, bypassing attribute
  tracking so the optimizer's checkpoint dependencies do not change.
  """
  base = optimizer._learning_rate  # pylint: disable=protected-access
  rate = optimizer._get_current_learning_rate()  # pylint: disable=protected-access
  scaled = tf.cast(scale, rate.dtype) * rate
  object.__setattr__(optimizer, "_learning_rate", lambda: scaled)
  try:
    yield
  finally:
    object.__setattr__(optimizer, "_learning_rate", base)


@keras.saving.register_keras_serializable(package="gradmix_tf")
class GradMix(keras.optimizers.Optimizer):
  """Mixes per-source gradients layer-wise toward the validation gradient.

  Args:
    inner_optimizer: the `keras.optimizers.Optimizer` that applies the mixed
      gradient (the paper: SGD, momentum 0.9).
    beta: saturation rate of the adaptive learning rate (Eq. 9).
    gamma: shift of the adaptive learning rate (Eq. 9).
    solver: `"exact"` (in-graph NNLS, default), `"slsqp"` (scipy, host) or
      `"meta_sgd"` (GradMix SGD, Ren et al. 2018).
    adaptive_lr: `False` gives GradMix w/o AdaLR (`eta = 1`).
    rho_reduction: `"sum"` over mixed layers (Eq. 8) or `"mean"`.
    max_consecutive_skips: how many non-finite steps in a row are skipped;
      the runner stops after that many, and the next one in a row raises
      `tf.errors.InvalidArgumentError` here.
    name: optimizer name.

  Raises:
    ValueError: for arguments that belong to the inner optimizer, or an
      unknown solver / reduction.
  """

  def __init__(self, inner_optimizer, beta=10.0, gamma=0.6, solver="exact",
               adaptive_lr=True, rho_reduction="sum",
               max_consecutive_skips=10, name=None, **kwargs):
    for arg in _BASE_OPTIMIZER_ARGS:
      if arg in kwargs:
        raise ValueError(
            f"GradMix does not take `{arg}`; set `{arg}` on the "
            "inner_optimizer instead.")
    if kwargs:
      raise ValueError(
          f"GradMix got unexpected arguments: {sorted(kwargs)}.")
    if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
      raise ValueError(
          "GradMix wraps a keras.optimizers.Optimizer; got "
          f"{type(inner_optimizer).__name__}.")
    if solver not in solvers.SOLVERS:
      raise ValueError(
          f"Unknown GradMix solver {solver!r}; choose one of "
          f"{solvers.SOLVERS}.")
    if rho_reduction not in ("sum", "mean"):
      raise ValueError(
          f"rho_reduction must be 'sum' or 'mean', got {rho_reduction!r}.")
    super().__init__(learning_rate=0.0, name=name or "gradmix")
    self.inner_optimizer = inner_optimizer
    self.beta = float(beta)
    self.gamma = float(gamma)
    self.solver = solver
    self.adaptive_lr = bool(adaptive_lr)
    self.rho_reduction = rho_reduction
    self.max_consecutive_skips = int(max_consecutive_skips)
    if self.max_consecutive_skips < 1:
      raise ValueError("max_consecutive_skips must be at least 1, got "
                       f"{max_consecutive_skips!r}.")
    self.mixed_layer_names = None
    self._plain_steps = False

  def build(self, var_list):
    if self.built:
      return
    self.skipped_steps = self.add_variable(
        shape=(), dtype="int64", initializer="zeros", aggregation="none",
        name="skipped_steps")
    self.consecutive_skips = self.add_variable(
        shape=(), dtype="int64", initializer="zeros", aggregation="none",
        name="consecutive_skips")
    self.inner_optimizer.build(var_list)
    super().build(var_list)

  @property
  def variables(self):
    return self._variables + self.inner_optimizer.variables

  @property
  def learning_rate(self):
    return self.inner_optimizer.learning_rate

  @learning_rate.setter
  def learning_rate(self, learning_rate):
    self.inner_optimizer.learning_rate = learning_rate

  @property
  def iterations(self):
    return self.inner_optimizer.iterations

  # -- Hooks for subclasses -------------------------------------------------

  def solve_weights(self, gram, cross):
    """Normalised weights `[layers, k]` from the Gram form (Eq. 6-7)."""
    return solvers.solve_mix_weights(gram, cross, solver=self.solver)

  def mix_coefficients(self, gram, cross, v_sq):
    """How each mixed layer's update is made from the gradients.

    The update of mixed layer `l` is `sum_i W[l, i] g_i^l + u[l] v^l`.

    Args:
      gram: `[layers, k, k]` Gram matrices `<g_i, g_j>`.
      cross: `[layers, k]` inner products `<g_i, v>`.
      v_sq: `[layers]` squared norms `|v|^2`.

    Returns:
      `(W [layers, k], u [layers] or None, cosines [layers])`; `cosines`
      enter `rho` (Eq. 8). GradMix: `W` from `solve_weights`, `u = None`
      (V is never applied), cosines `cos(G W, v)`.
    """
    weights = self.solve_weights(gram, cross)
    return weights, None, solvers.mixed_cosine(gram, cross, v_sq, weights)

  def learning_rate_scale(self, rho):
    """`eta = 1 / (1 + exp(-(beta * rho - gamma)))` (Eq. 9), or 1."""
    if not self.adaptive_lr:
      return tf.ones_like(rho)
    return tf.sigmoid(self.beta * rho - self.gamma)

  # -- The step ---------------------------------------------------------------

  def apply(self, grads, trainable_variables=None):
    """One gradient list: a step of the inner optimizer in `plain_steps()`.

    Raises:
      ValueError: outside `plain_steps()`. `model.fit` with
        `compile(optimizer=GradMix(...))` ends here: it has one loss, so
        there is nothing to mix, and training on silently with the inner
        optimizer would not be GradMix.
    """
    if not self._plain_steps:
      raise ValueError(
          "GradMix got a single gradient list (apply / apply_gradients, "
          "e.g. from model.fit): it mixes one gradient list per source "
          "toward the gradient of V. Call "
          "apply_gradmix(source_grads, validation_grads, variables) in your "
          "train step, or wrap a step that is meant to be a plain step of "
          "the inner optimizer in `with optimizer.plain_steps():`.")
    if not self.built:
      self.build(trainable_variables)
      self.built = True
    self.inner_optimizer.apply(grads, trainable_variables)

  @contextlib.contextmanager
  def plain_steps(self):
    """Lets `apply(grads)` run the inner optimizer (a one-source phase).

    Only while the step is traced or run eagerly inside the block.
    """
    previous, self._plain_steps = self._plain_steps, True
    try:
      yield self
    finally:
      self._plain_steps = previous

  def scale_loss(self, loss):
    """The loss times the inner optimizer's loss scale (mixed precision)."""
    return self.inner_optimizer.scale_loss(loss)

  def apply_gradmix(self, source_grads, validation_grads,
                    trainable_variables):
    """One GradMix step.

    Args:
      source_grads: list over the `k` sources of gradient lists aligned with
        `trainable_variables` (`None` where a source does not reach a
        variable, e.g. another label space's head).
      validation_grads: gradient list of the validation loss, aligned the
        same way (`None` allowed on heads).
      trainable_variables: the variables to update.

    Returns:
      A dict of tensors: `weights [mixed layers, k]`, `cosines [mixed
      layers]`, `rho`, `eta`, `applied` (bool), `nonfinite_source` (index
      of the first source with a non-finite gradient, `k` for the validation
      gradient, -1 for none), `consecutive_skips` (int64: skipped steps in
      a row, this one included; 0 after an applied step) and
      `source_grad_norms [k]` (over mixed layers). Layer names are in
      `self.mixed_layer_names`.

    Raises:
      ValueError: when the gradient lists do not line up with the variables.
    """
    trainable_variables = list(trainable_variables)
    if tf.distribute.in_cross_replica_context() and (
        tf.distribute.get_strategy().num_replicas_in_sync > 1):
      raise ValueError("GradMix.apply_gradmix must run in a replica context.")
    k = len(source_grads)
    if k == 0:
      raise ValueError("GradMix needs at least one source gradient list.")
    for grads in list(source_grads) + [validation_grads]:
      if len(grads) != len(trainable_variables):
        raise ValueError(
            f"Got {len(grads)} gradients for {len(trainable_variables)} "
            "variables; every gradient list must align with the variables.")
    if not self.built:
      self.build(trainable_variables)
      self.built = True

    mixed, heads = self._group_layers(source_grads, validation_grads,
                                      trainable_variables)
    self.mixed_layer_names = [name for name, _ in mixed]

    # Statistics come from the gradients summed over replicas (V's averaged:
    # every replica computes it on all of V), so every replica solves the
    # same weights; a cosine of per-replica gradients would not be the
    # cosine of the summed ones.
    stat_sources, stat_val = _all_reduce_for_statistics(source_grads,
                                                        validation_grads)
    layer_source_grads = [[[stat_sources[s][i] for i in indices]
                           for s in range(k)] for _, indices in mixed]
    layer_val_grads = [[stat_val[i] for i in indices] for _, indices in mixed]
    gram, cross, v_sq = solvers.gram_statistics(layer_source_grads,
                                                layer_val_grads)
    weights, validation_weight, cosines = self.mix_coefficients(
        gram, cross, v_sq)
    cosines = tf.cast(cosines, tf.float32)
    rho = tf.reduce_sum(cosines)
    if self.rho_reduction == "mean":
      rho = rho / float(max(len(mixed), 1))
    eta = tf.cast(self.learning_rate_scale(rho), tf.float32)

    finite = self._finite_per_source(gram, v_sq, stat_sources, heads)
    all_finite = tf.reduce_all(finite)
    nonfinite_source = tf.where(
        all_finite, tf.constant(NO_NONFINITE_SOURCE, tf.int64),
        tf.argmin(tf.cast(finite, tf.int32), output_type=tf.int64))

    # The replica's own gradients are mixed; the inner optimizer's all-reduce
    # then sums them into exactly the mixed global gradient (no double sum).
    mixed_grads = _mix(weights, source_grads, mixed, heads)
    if validation_weight is not None:
      # Every replica holds the gradient of all of V, and the inner
      # optimizer sums over replicas: each adds its 1/R share.
      replicas = tf.distribute.get_strategy().num_replicas_in_sync
      mixed_grads = _add_validation_term(
          mixed_grads, validation_weight / float(replicas), validation_grads,
          mixed)
    pairs = [(g, v) for g, v in zip(mixed_grads, trainable_variables)
             if g is not None]
    grads, variables = [g for g, _ in pairs], [v for _, v in pairs]
    if isinstance(self.inner_optimizer, keras.optimizers.LossScaleOptimizer):
      applied = self._apply_with_loss_scale(all_finite, grads, variables, eta,
                                            nonfinite_source)
    else:
      applied = self._apply_unless_non_finite(all_finite, grads, variables,
                                              eta, nonfinite_source)
    with tf.control_dependencies([applied]):
      consecutive_skips = tf.identity(self.consecutive_skips)
    return {
        "weights": weights,
        "cosines": cosines,
        "rho": rho,
        "eta": eta,
        "applied": applied,
        "nonfinite_source": nonfinite_source,
        "consecutive_skips": consecutive_skips,
        "source_grad_norms": tf.sqrt(tf.maximum(tf.reduce_sum(
            tf.linalg.diag_part(gram), 0), 0.0)),
    }

  def _apply_inner(self, grads, variables, eta):
    # tf.identity puts every gradient inside the calling cond branch's graph,
    # as the inner optimizer's all-reduce (a custom gradient) requires.
    with _learning_rate_scaled_by(_rate_owner(self.inner_optimizer), eta):
      self.inner_optimizer.apply([tf.identity(g) for g in grads], variables)

  def _applied(self):
    self.consecutive_skips.assign(0)
    return tf.constant(True)

  def _skipped(self, nonfinite_source):
    self.skipped_steps.assign_add(1)
    self.consecutive_skips.assign_add(1)
    # The runner stops after max_consecutive_skips in a row; a loop that
    # goes on gets this error on the next one.
    check = tf.debugging.Assert(
        self.consecutive_skips <= self.max_consecutive_skips,
        [f"GradMix skipped more than {self.max_consecutive_skips} "
         "consecutive steps with non-finite gradients (index of the last "
         "culprit, sources 0..k-1, k = V):", nonfinite_source,
         "lower the learning rate, check that source's data, or raise "
         "max_consecutive_skips"])
    with tf.control_dependencies([check]):
      return tf.constant(False)

  def _apply_unless_non_finite(self, all_finite, grads, variables, eta,
                               nonfinite_source):
    """Applies the mixed step, or skips it; returns whether it applied.

    `all_finite` comes from all-reduced statistics, so every replica takes
    the same decision (`finite_steps.apply_or_skip`: in cross-replica
    context where the strategy needs `merge_call`, as `LossScaleOptimizer`).
    """
    return finite_steps.apply_or_skip(
        all_finite, lambda g, e: self._apply_inner(g, variables, e),
        (grads, eta), self._applied,
        lambda: self._skipped(nonfinite_source))

  def _apply_with_loss_scale(self, all_finite, grads, variables, eta,
                             nonfinite_source):
    """The step through a `LossScaleOptimizer`, which always sees it.

    Finite: the mixed gradient (still scaled) goes to its `apply`, which
    unscales, applies and counts toward growing the scale. Skipped: it gets
    the gradient plus NaN, so its own check agrees and halves the scale.
    """
    poison = tf.where(all_finite, 0.0, float("nan"))
    self._apply_inner([g + tf.cast(poison, g.dtype) for g in grads],
                      variables, eta)
    return finite_steps.apply_or_skip(
        all_finite, lambda: None, (), self._applied,
        lambda: self._skipped(nonfinite_source))

  def _finite_per_source(self, gram, v_sq, source_grads, heads):
    """`[k + 1]` booleans: every gradient of source i (and of V) is finite.

    On mixed layers a NaN or Inf anywhere in `g_i^l` makes `|g_i^l|^2`, the
    Gram diagonal, non-finite (and likewise `|v^l|^2` for V), so no second
    pass over those gradients is needed; only head gradients, which are not
    in the Gram form, are checked directly. (A finite gradient whose squared
    norm overflows float32, `|g| > 1.8e19`, also counts as non-finite.) V's
    head gradients are never applied, so they are not checked.
    """
    k = len(source_grads)
    finite = tf.reduce_all(tf.math.is_finite(tf.linalg.diag_part(gram)), 0)
    heads_finite = [
        finite_steps.all_finite([source_grads[s][i] for i in heads])
        for s in range(k)]
    finite = tf.logical_and(finite, tf.stack(heads_finite))
    v_finite = tf.reduce_all(tf.math.is_finite(v_sq))
    return tf.concat([finite, v_finite[None]], 0)

  def _group_layers(self, source_grads, validation_grads, trainable_variables):
    """Splits variable indices into mixed layers and head variables."""
    order, members = [], {}
    for i, variable in enumerate(trainable_variables):
      name = layer_name(variable)
      if name not in members:
        order.append(name)
        members[name] = []
      members[name].append(i)
    mixed, heads = [], []
    for name in order:
      indices = members[name]
      shared = all(grads[i] is not None
                   for grads in list(source_grads) + [validation_grads]
                   for i in indices)
      if shared:
        mixed.append((name, indices))
      else:
        heads.extend(indices)
    return mixed, heads

  # -- Serialisation ----------------------------------------------------------

  def finalize_variable_values(self, var_list):
    self.inner_optimizer.finalize_variable_values(var_list)

  def get_config(self):
    return {
        "name": self.name,
        "inner_optimizer": keras.saving.serialize_keras_object(
            self.inner_optimizer),
        "beta": self.beta,
        "gamma": self.gamma,
        "solver": self.solver,
        "adaptive_lr": self.adaptive_lr,
        "rho_reduction": self.rho_reduction,
        "max_consecutive_skips": self.max_consecutive_skips,
    }

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    inner = keras.saving.deserialize_keras_object(
        config.pop("inner_optimizer"), custom_objects=custom_objects)
    return cls(inner, **config)


def _mix(weights, source_grads, mixed, heads):
  """`sum_i w~_i^l g_i^l` on mixed layers, the plain sum on heads."""
  mixed_grads = [None] * len(source_grads[0])
  for layer_index, (_, indices) in enumerate(mixed):
    for i in indices:
      mixed_grads[i] = tf.add_n([
          tf.cast(weights[layer_index, s], grads[i].dtype) * grads[i]
          for s, grads in enumerate(source_grads)])
  for i in heads:
    present = [grads[i] for grads in source_grads if grads[i] is not None]
    mixed_grads[i] = tf.add_n(present) if present else None
  return mixed_grads


def _add_validation_term(mixed_grads, validation_weight, validation_grads,
                         mixed):
  """Adds `u[l] v^l` to the update of every mixed layer `l`."""
  out = list(mixed_grads)
  for layer_index, (_, indices) in enumerate(mixed):
    for i in indices:
      out[i] = out[i] + tf.cast(validation_weight[layer_index],
                                out[i].dtype) * validation_grads[i]
  return out


def _all_reduce_for_statistics(source_grads, validation_grads):
  """Per-source gradients summed, and V's averaged, over replicas."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return source_grads, validation_grads

  def reduce(grads, op):
    present = [g for g in grads if g is not None]
    reduced = iter(context.all_reduce(op, present))
    return [None if g is None else next(reduced) for g in grads]

  return ([reduce(g, tf.distribute.ReduceOp.SUM) for g in source_grads],
          reduce(validation_grads, tf.distribute.ReduceOp.MEAN))
