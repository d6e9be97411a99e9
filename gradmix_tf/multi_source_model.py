"""GradMix through Keras' `compile()` / `fit()` on the user's own model.

    model = gradmix_tf.MultiSourceModel(
        user_model,                       # outputs: [target head, other head]
        source_outputs={"web": 0, "other_task": 1},
        validation_output=0)
    model.compile(optimizer=gradmix_tf.GradMix(keras.optimizers.SGD(0.05,
                                                                    momentum=0.9)),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True),
                  metrics=["accuracy"])
    model.fit(gradmix_tf.multi_source_dataset(
                  {"web": web_ds, "other_task": other_ds}, validation=(v_x, v_y)),
              epochs=5, steps_per_epoch=100, callbacks=[...])
    model.evaluate(test_x, test_y)        # the target output
    model.save("run.keras")               # and keras.models.load_model

Each `fit` step takes one batch of every source and V and runs
`multi_source_step.gradmix_step`, the per-replica step of our runner: one
loss per source on its output, V's loss on `validation_output` (its pass
does not move batch-norm statistics), and `GradMix.apply_gradmix`. Layers
every source and V reach are mixed; a layer only some sources reach (a
head) gets the plain sum of their gradients. `shared_variables` and
`source_variables` (as TorchJD's `shared_params` / `tasks_params`) say it
explicitly instead: each source's gradient is kept on the shared variables
and its own only.

Logs (epoch means, as Keras' own): `loss` (the sum of the source losses, the
objective the step trains), `loss_<source>`, `loss_V`, the compiled metrics
of the target output on V (e.g. `accuracy`), `gradmix_rho`,
`gradmix_eta` (Eq. 9's adaptive rate scale, not a time estimate) and, with
`log_mix_weights`, the last step's `mix_weight/<layer>/<source>`, which the
TensorBoard callback draws. `call`, `predict` and `evaluate` use
`validation_output` (the target).

Under `tf.distribute`, create and compile the model inside
`strategy.scope()`. Keras splits every element across the replicas, V
included: a source's loss is divided by the number of replicas (each
replica's mean is its share of the global mean), V's is not (`GradMix`
averages V's per-replica gradients, V's whole gradient when its size is a
multiple of the replica count).

Mixed precision: under the `mixed_float16` policy `compile()` wraps the
optimizer in a `LossScaleOptimizer`; `MultiSourceModel.compile` moves that
wrapper inside, `GradMix(LossScaleOptimizer(inner))`, the order in which
GradMix sees every loss-scaled gradient (gradmix_tf/optimizer.py).
"""

import keras
import tensorflow as tf

from gradmix_tf import multi_source_step
from gradmix_tf.optimizer import GradMix

VALIDATION = "validation"


def multi_source_dataset(sources, validation, batch_size=32, seed=0):
  """The `fit` input: one batch of every source and all of V per element
  (`as_fit_element` gives its layout).

  Args:
    sources: `{name: dataset of (x, y) batches}` (repeat them, or fit stops
      when the shortest ends), or `{name: (x array, y array)}`, shuffled,
      repeated and batched here by `batch_size`.
    validation: V as `(x, y)` arrays, given whole at every step.
    batch_size: per-source batch for array sources.
    seed: shuffle seed for array sources.
  """
  if VALIDATION in sources:
    raise ValueError(f"a source may not be called {VALIDATION!r}: that "
                     "name holds V")
  streams = {}
  for name, source in sources.items():
    if not isinstance(source, tf.data.Dataset):
      x, y = source
      source = (tf.data.Dataset.from_tensor_slices((x, y))
                .shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
                .repeat().batch(batch_size, drop_remainder=True))
    streams[name] = source
  v_x, v_y = validation
  streams[VALIDATION] = tf.data.Dataset.from_tensors(
      (tf.convert_to_tensor(v_x), tf.convert_to_tensor(v_y))).repeat()
  return tf.data.Dataset.zip(streams).map(
      as_fit_element).prefetch(tf.data.AUTOTUNE)


def as_fit_element(batches):
  """`{source: (x, y), ..., "validation": (x_V, y_V)}` -> Keras' `(x, y)`:
  `x = {source: (x, y), ..., "validation": x_V}`, `y = y_V` (so Keras
  builds the compiled loss and metrics on the target output and V)."""
  batches = dict(batches)
  v_x, v_y = batches[VALIDATION]
  batches[VALIDATION] = v_x
  return batches, v_y


def _paths(variables):
  """Sorted variable paths of variables or of paths given as strings."""
  return sorted(v if isinstance(v, str) else v.path for v in variables)


def _select(outputs, key):
  """Output `key` of a model's outputs (a list, a dict or one tensor)."""
  if isinstance(outputs, (list, tuple, dict)):
    return outputs[key]
  if key not in (0, None):
    raise ValueError(f"the model has one output; got output {key!r}")
  return outputs


@keras.saving.register_keras_serializable(package="gradmix_tf")
class MultiSourceModel(keras.Model):
  """A user's Keras model trained by GradMix with `fit()` (module doc).

  Args:
    model: the user's `keras.Model`; its outputs a list, a dict or one
      tensor.
    source_outputs: `{source name: output index or key}`, in the order of
      the sources (GradMix's weights follow it).
    validation_output: the target's output: V's loss, `predict`,
      `evaluate`.
    shared_variables: optional variables (or their `path`s) every source's
      gradient keeps (the trunk); default: inferred from which gradients
      exist. Kept by path, so a saved and loaded model keeps them.
    source_variables: with `shared_variables`, `{source: [its own
      variables or paths]}` (its head).
    log_mix_weights: log each step's per-layer mixing weights too (for
      TensorBoard; off by default: layers x sources entries crowd the
      progress bar).
  """

  def __init__(self, model, source_outputs, validation_output=0,
               shared_variables=None, source_variables=None,
               log_mix_weights=False, **kwargs):
    super().__init__(**kwargs)
    if not source_outputs:
      raise ValueError("source_outputs must name at least one source")
    if VALIDATION in source_outputs:
      raise ValueError(f"a source may not be called {VALIDATION!r}")
    if (source_variables is not None) and shared_variables is None:
      raise ValueError("source_variables needs shared_variables")
    self.model = model
    self.source_outputs = dict(source_outputs)
    self.source_names = list(self.source_outputs)
    self.validation_output = validation_output
    self.log_mix_weights = bool(log_mix_weights)
    self.shared_variables = None
    self.source_variables = None
    if shared_variables is not None:
      paths = [v.path for v in model.trainable_variables]
      if len(set(paths)) < len(paths):
        raise ValueError("shared_variables needs the model's variable paths "
                         "to be distinct; give its layers distinct names")
      self.shared_variables = _paths(shared_variables)
      self.source_variables = {
          name: _paths((source_variables or {}).get(name, ()))
          for name in self.source_names}
    self.loss_trackers = {
        name: keras.metrics.Mean(name=f"loss_{name}")
        for name in self.source_names}
    # Logged as "loss"; its own name keeps it apart from the compiled loss
    # that evaluate() reports under "loss".
    self.total_loss_tracker = keras.metrics.Mean(name="sources_loss")
    self.v_loss_tracker = keras.metrics.Mean(name="loss_V")
    self.rho_tracker = keras.metrics.Mean(name="gradmix_rho")
    self.eta_tracker = keras.metrics.Mean(name="gradmix_eta")
    # A built user model has every variable, so this one is built too
    # (fit, BackupAndRestore and loading need it built before training).
    if not model.built:
      raise ValueError(
          "MultiSourceModel needs a built model: call it once on a batch "
          "(or use a functional model) so that every variable exists")
    self.built = True

  # -- Keras plumbing ---------------------------------------------------------

  def call(self, inputs, training=False):
    """The target output; on a fit element, the target output of V."""
    if isinstance(inputs, dict) and VALIDATION in inputs:
      inputs = inputs[VALIDATION]
    return _select(self.model(inputs, training=training),
                   self.validation_output)

  def compile(self, optimizer, loss, **kwargs):
    """Keras' compile; `optimizer` must be a `GradMix` (module doc)."""
    super().compile(optimizer=optimizer, loss=loss, **kwargs)
    wrapped = self.optimizer
    if (isinstance(wrapped, keras.optimizers.LossScaleOptimizer)
        and isinstance(wrapped.inner_optimizer, GradMix)):
      gradmix = wrapped.inner_optimizer
      if not isinstance(gradmix.inner_optimizer,
                        keras.optimizers.LossScaleOptimizer):
        gradmix.inner_optimizer = keras.optimizers.LossScaleOptimizer(
            gradmix.inner_optimizer, initial_scale=wrapped.initial_scale,
            dynamic_growth_steps=wrapped.dynamic_growth_steps)
      self.optimizer = gradmix
    if not isinstance(self.optimizer, GradMix):
      raise ValueError(
          "MultiSourceModel trains with GradMix: compile(optimizer="
          f"gradmix_tf.GradMix(...)), got {type(self.optimizer).__name__}")
    loss_fn = keras.losses.get(loss)

    def mean_loss(y, y_pred):
      # A loss object returns the batch mean; a loss function (a string
      # such as "sparse_categorical_crossentropy") one value per example.
      return tf.reduce_mean(loss_fn(y, y_pred))

    self._source_loss = mean_loss

  def compile_from_config(self, config):
    """Compiles a loaded model as it was saved (optimizer state follows)."""
    self.compile(**keras.saving.deserialize_keras_object(config))
    if self.built:
      self.optimizer.build(self.trainable_variables)

  @property
  def _train_trackers(self):
    return [self.total_loss_tracker, *self.loss_trackers.values(),
            self.v_loss_tracker, self.rho_tracker, self.eta_tracker]

  def get_config(self):
    return {**super().get_config(),
            "model": keras.saving.serialize_keras_object(self.model),
            "source_outputs": self.source_outputs,
            "validation_output": self.validation_output,
            "shared_variables": self.shared_variables,
            "source_variables": self.source_variables,
            "log_mix_weights": self.log_mix_weights}

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    model = keras.saving.deserialize_keras_object(
        config.pop("model"), custom_objects=custom_objects)
    return cls(model, **config)

  # -- The step ---------------------------------------------------------------

  def train_step(self, data):
    batches, v_y, _ = keras.utils.unpack_x_y_sample_weight(data)
    missing = [n for n in self.source_names + [VALIDATION]
               if not isinstance(batches, dict) or n not in batches]
    if missing or v_y is None:
      raise ValueError(
          f"a fit() element must hold {self.source_names} and V: build the "
          "input with gradmix_tf.multi_source_dataset(sources, validation)")
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    v_x = batches[VALIDATION]

    def source_losses():
      losses = []
      for name in self.source_names:
        x, y = batches[name]
        logits = _select(self.model(x, training=True),
                         self.source_outputs[name])
        losses.append(self._source_loss(y, logits) / float(replicas))
      return losses

    v_logits = []

    def validation_loss():
      v_logits.append(multi_source_step.without_moving_statistics(
          self.model, lambda: self(v_x, training=True)))
      return self._source_loss(v_y, v_logits[-1])

    variables = self.trainable_variables
    losses, v_loss, stats = multi_source_step.gradmix_step(
        self.optimizer, variables, source_losses, validation_loss,
        self._explicit_grads(variables) if self.shared_variables else None)
    for name, loss in zip(self.source_names, losses):
      self.loss_trackers[name].update_state(loss * float(replicas))
    self.total_loss_tracker.update_state(tf.add_n(losses) * float(replicas))
    self.v_loss_tracker.update_state(v_loss)
    self.rho_tracker.update_state(stats["rho"])
    self.eta_tracker.update_state(stats["eta"])
    logs = {m.name: m.result() for m in self._train_trackers}
    logs["loss"] = logs.pop(self.total_loss_tracker.name)
    # The compiled metrics (e.g. accuracy) of the target output, on V.
    ours = {m.name for m in self._train_trackers} | {"loss"}
    for name, value in self.compute_metrics(v_x, v_y, v_logits[-1]).items():
      if name not in ours:
        logs[name] = value
    if self.log_mix_weights:
      for l, layer in enumerate(self.optimizer.mixed_layer_names):
        for s, name in enumerate(self.source_names):
          # + 0.0 turns the solver's -0.0 into 0.0.
          logs[f"mix_weight/{layer}/{name}"] = stats["weights"][l, s] + 0.0
    return logs

  def test_step(self, data):
    logs = super().test_step(data)
    train_only = {m.name for m in self._train_trackers}
    return {k: v for k, v in logs.items() if k not in train_only}

  def _explicit_grads(self, variables):
    """Keeps each source's gradient on the shared and its own variables."""
    kept = [set(self.shared_variables) | set(self.source_variables[name])
            for name in self.source_names]

    def adjust(source_grads):
      return [[g if v.path in keep else None
               for g, v in zip(grads, variables)]
              for keep, grads in zip(kept, source_grads)]
    return adjust

