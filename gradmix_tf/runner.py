"""The runner: strategy, compiled steps, checkpoints and the loop, for every
task alike.

`Runner(task, workdir, strategy)` builds the task inside the strategy's
scope (`gradmix_tf.task` gives the order of its hooks), wraps each phase's
per-replica step in `strategy.run` and a `tf.function`, and `run()`
trains: batch indices from `batches.batch_indices`, checkpoints
(`tf.train.CheckpointManager`; a rerun resumes exactly), TensorBoard
summaries, the health check (non-finite steps), a clean stop on SIGTERM
or SIGINT (`gradmix_tf.preemption`: a checkpoint at the step it finishes),
the hyper-validation set
`H` every `eval_every` steps (paper Fig. 3) with the best-`H` weights kept
in `best/`, progress, and `metrics.json` at the end: test accuracy of the
final weights (`test_accuracy`) and of the best-`H` weights
(`test_accuracy_at_best_hyperval`).

`run_method(config, data, workdir, strategy)` is the one entry point: it
looks the method up in the registry (`gradmix_tf.methods`), checks what it
needs, and runs its task (or its pipeline).
"""

import json
import os
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from gradmix_tf import batches
from gradmix_tf import checkpoints
from gradmix_tf import distribute
from gradmix_tf import files
from gradmix_tf import finite_steps
from gradmix_tf import methods
from gradmix_tf import model_description
from gradmix_tf import preemption
from gradmix_tf.errors import ConfigError, DataError, NoSpaceError
from gradmix_tf.errors import TrainingError
from gradmix_tf.evaluation import EVAL_BATCH, in_batches, video_accuracy
from gradmix_tf.files import write_json_atomically
from gradmix_tf.optimizer import GradMix
from gradmix_tf.task import RunSetup



def method_entry(config):
  """The registry entry of `config.method` in its experiment."""
  experiment = methods.experiment_of(config)
  entry = methods.lookup(experiment, config.method)
  if entry is None:
    known = methods.methods_for(experiment)
    raise ConfigError(
        f"unknown method {config.method!r} for the {experiment} experiment: "
        f"choose one of {', '.join(known)} (--config.method=...)")
  return entry


def check_data(entry, data):
  """Refuses data the method cannot train on (U empty for a method on U)."""
  if entry.needs_unlabelled and not len(data.u):
    raise ConfigError(f"{entry.name} needs unlabelled target images (U is "
                      "empty)")


def build_runner(config, data, workdir, strategy=None):
  """The `Runner` of `config.method`'s task (not for pipeline methods)."""
  entry = method_entry(config)
  if not entry.task:
    raise ConfigError(f"method {entry.name} runs several tasks in turn; "
                      "use run_method")
  return _runner_of(entry, config, data, workdir, strategy)


def run_method(config, data, workdir, strategy=None):
  """Trains `config.method` on `data` in `workdir`; returns (metrics, the
  runner or None for a pipeline)."""
  entry = method_entry(config)
  if entry.pipeline:
    check_data(entry, data)
    return entry.load()(config, data, workdir, strategy), None
  runner = _runner_of(entry, config, data, workdir, strategy)
  return runner.run(), runner


def _runner_of(entry, config, data, workdir, strategy):
  check_data(entry, data)
  return Runner(entry.load()(config, data), workdir, strategy,
                multi_replica=entry.multi_replica)


class Runner:
  """Trains one task and writes its artifacts.

  Args:
    task: a `gradmix_tf.task.Task` (not yet built).
    workdir: where checkpoints, TensorBoard logs and metrics go.
    strategy: a `tf.distribute.Strategy` (the launcher creates it); default:
      the current one. `batch_size` is the global batch per source and is
      split evenly over replicas; V is replicated (every replica computes
      its loss on all of V).
    multi_replica: False for a task whose steps are written for one device.
  """

  def __init__(self, task, workdir, strategy=None, multi_replica=True):
    config = task.config
    self.task = task
    self.config = config
    self.data = task.data
    self.workdir = workdir
    self.strategy = strategy or tf.distribute.get_strategy()
    self.replicas = self.strategy.num_replicas_in_sync
    if not multi_replica and self.replicas > 1:
      raise ConfigError(
          f"method {config.method} runs on one device; use "
          "--config.distribution=default")
    global_batch = int(config.batch_size)
    if global_batch % self.replicas:
      raise ConfigError(
          f"batch_size {global_batch} does not split over "
          f"{self.replicas} replicas; use a multiple of {self.replicas}")
    self.is_chief = distribute.is_chief(self.strategy)
    keras.utils.set_random_seed(int(config.seed))
    with self.strategy.scope():
      self._build(global_batch)

  def _build(self, global_batch):
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    # Skipped non-finite updates of every step but GradMix's (which counts
    # its own): `Task.apply_finite`, `_check_health`.
    self.skips = finite_steps.SkipCounter()
    self.task.build(RunSetup(
        workdir=self.workdir, is_chief=self.is_chief,
        global_batch=global_batch, replicas=self.replicas, step=self.step,
        skips=self.skips))
    self.model = self.task.model
    self.phases = self.task.phases
    self.total_steps = sum(p.steps for p in self.phases)
    self.step_functions = tuple(self._compile(p) for p in self.phases)
    # How many phases have had their `on_end` hook applied (resume-safe).
    self.phases_finished = tf.Variable(0, dtype=tf.int64, trainable=False,
                                       name="phases_finished")
    trackables = {f"optimizer_{i}": p.optimizer
                  for i, p in enumerate(self.phases)}
    trackables.update(self.task.trackables())
    for phase in self.phases:
      phase.optimizer.build(self.task.variables)
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
    checkpoint_dir = os.path.join(self.workdir, "checkpoints")
    if not self.is_chief:
      checkpoint_dir = os.path.join(
          self.workdir, "workers",
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
    self._predict = tf.function(self.task.prediction)

  def _compile(self, phase):
    """`phase.replica_step` on every replica, reduced, in a tf.function.

    Outputs in `phase.summed_outputs` are replica shares of a global mean
    (summed); everything else (V's loss, GradMix's weights, rho, eta) is the
    same on every replica and taken from the first.
    """
    replica_step = phase.replica_step
    if self.replicas == 1 and not isinstance(
        self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
      fn = replica_step
    else:
      def fn(indices):
        out = self.strategy.run(replica_step, args=(indices,))
        return {
            key: (self.strategy.reduce(tf.distribute.ReduceOp.SUM, value,
                                       axis=None)
                  if key in phase.summed_outputs
                  else self.strategy.experimental_local_results(value)[0])
            for key, value in out.items()}
    return tf.function(fn, jit_compile=bool(self.config.jit_compile))

  # -- Evaluation -------------------------------------------------------------

  def probabilities(self, images):
    """Target-head softmax of `images` (an array or streamed
    `ImageFiles`), `[n, classes]`, in batches."""
    return in_batches(lambda batch: self._predict(tf.convert_to_tensor(
        batch)), images)

  def evaluate(self, split):
    """(loss, accuracy) of the target head on a labelled set.

    The loss is summed in float32 over each batch of `EVAL_BATCH` and the
    batch sums in float64, then divided by the count (the same arithmetic
    as before the Task / Runner split, so metrics are bit-identical).
    """
    if not len(split):
      return 0.0, 0.0
    probs = self.probabilities(split.images)
    labels = split.labels
    picked = probs[np.arange(len(split)), labels]
    total_loss = sum(
        float(-np.log(np.maximum(picked[start:start + EVAL_BATCH],
                                 1e-12)).sum())
        for start in range(0, len(split), EVAL_BATCH))
    correct = int((probs.argmax(-1) == labels).sum())
    return total_loss / len(split), correct / len(split)

  # -- The loop ---------------------------------------------------------------

  def run(self):
    """Trains (resuming from the last checkpoint) and writes metrics.json.

    Raises:
      RunStopped: a stop signal came (`gradmix_tf.preemption`); the run
        saved a checkpoint at the step it was on.
      NoSpaceError: a write failed for lack of space (with the step).
      TrainingError: non-finite steps stopped the run.
    """
    try:
      return self._run()
    except NoSpaceError as err:
      if err.step is None:
        err.step = int(self.step.numpy())
      raise

  def _run(self):
    config, data = self.config, self.data
    os.makedirs(self.workdir, exist_ok=True)
    if self.is_chief:
      model_description.write_model_description(self.workdir, config, data)
    restored = checkpoints.restore_newest_intact(self.checkpoint,
                                                 self.manager.directory)
    start = int(self.step.numpy())
    if restored and start:
      logging.info("Resumed from %s at step %d.", restored, start)
    self._stopper = preemption.StepStopper(self.strategy, self.manager,
                                           self._save)
    started = time.time()
    self._seconds_at_start = (float(self.train_seconds.numpy()), started)
    # A stop asked for before training began (while the data were built).
    self._stopper.after_step(start)
    writer = (tf.summary.create_file_writer(os.path.join(self.workdir, "tb"))
              if self.is_chief else tf.summary.create_noop_writer())
    curve = self._load_curve() if start else []
    if curve:
      best = max(curve, key=lambda point: point[2])
      self.best_hyperval = (best[0], best[2])
    step_seconds, wait_seconds = [], []
    phase_start = 0
    for index, phase in enumerate(self.phases):
      phase_end = phase_start + phase.steps
      first = max(start, phase_start)
      if first < phase_end:
        self._run_phase(index, first, phase_start, phase_end, writer, curve,
                        step_seconds, wait_seconds)
      if int(self.phases_finished.numpy()) <= index:
        if phase.on_end is not None:
          phase.on_end()
        self.phases_finished.assign(index + 1)
        self._save(phase_end)
      phase_start = phase_end
    self._save(self.total_steps)
    hyper_loss, hyper_acc = self.evaluate(data.h)
    test_loss, test_acc = self.evaluate(data.test)
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
        # The part of a step spent waiting for its inputs: ~0 when the
        # pipeline keeps ahead of training (no stall).
        "median_input_wait_seconds": (float(np.median(wait_seconds))
                                      if wait_seconds else None),
        "skipped_steps": self._skipped_steps(),
        "num_examples": {
            **{s.name: int(len(s.y)) for s in data.sources},
            "v": len(data.v), "h": len(data.h), "u": len(data.u),
            "test": len(data.test)},
    }
    metrics["replicas"] = self.replicas
    if data.test.groups is not None:
      metrics["per_frame_accuracy"], metrics["per_video_accuracy"] = (
          video_accuracy(self.probabilities(data.test.images),
                         data.test.labels, data.test.groups))
    metrics.update(self.task.extra_metrics())
    if self.is_chief:
      write_json_atomically(os.path.join(self.workdir, "metrics.json"),
                            metrics)
    logging.info("%s: test accuracy %.4f, hyper-validation accuracy %.4f "
                 "(%d steps, %.0f s).", config.method, test_acc, hyper_acc,
                 self.total_steps, metrics["wall_seconds"])
    return metrics

  def _run_phase(self, index, first, phase_start, phase_end, writer, curve,
                 step_seconds, wait_seconds):
    config = self.config
    phase = self.phases[index]
    index_streams = [
        batches.batch_indices(n, int(config.batch_size),
                              [int(config.seed), i], first - phase_start,
                              phase_end - phase_start)
        for i, n in enumerate(phase.index_sizes)]
    fn = self.step_functions[index]
    inputs = self.step_inputs(phase, index_streams)
    last_log = time.time()
    last_log_step = first
    for step in range(first, phase_end):
      row = step - first
      # A step's time includes waiting for its inputs (a stall shows).
      tick = time.perf_counter()
      indices = self._next_inputs(inputs, phase, index_streams, row, step)
      wait_seconds.append(time.perf_counter() - tick)
      stats = fn(indices)
      done = step + 1
      self.step.assign(done)
      self._check_health(phase, stats, done)
      step_seconds.append(time.perf_counter() - tick)
      if done % int(config.log_every) == 0 or done == phase_end:
        with self._writing_summaries(done):
          self._write_summaries(writer, phase, stats, done)
        now = time.time()
        rate = (done - last_log_step) / max(now - last_log, 1e-9)
        last_log, last_log_step = now, done
        extra = ""
        if "eta" in stats:
          extra = (f" rho {float(stats['rho']):+.3f} "
                   f"eta {float(stats['eta']):.3f}")
        loss = float(tf.add_n([v for k, v in stats.items()
                               if k.startswith("loss/")]))
        logging.info("[%s] step %d/%d  loss %.4f%s  %.1f steps/s  ETA %.0f s",
                     config.method, done, self.total_steps, loss, extra, rate,
                     (self.total_steps - done) / max(rate, 1e-9))
      if done % int(config.eval_every) == 0:
        hyper_loss, hyper_acc = self.evaluate(self.data.h)
        curve.append([done, hyper_loss, hyper_acc])
        with self._writing_summaries(done), writer.as_default(step=done):
          tf.summary.scalar("hyperval/loss", hyper_loss)
          tf.summary.scalar("hyperval/accuracy", hyper_acc)
        if hyper_acc > self.best_hyperval[1]:
          self.best_hyperval = (done, hyper_acc)
          checkpoints.save(self.best_manager, done,
                           checkpoints.variable_bytes(self.model.variables),
                           step=done)
        if self.is_chief:
          self._save_curve(curve)
      saved = done % int(config.checkpoint_every) == 0
      if saved:
        self._save(done)
      self._stopper.after_step(done, saved=saved)
    with self._writing_summaries(phase_end):
      writer.flush()

  def _writing_summaries(self, step):
    """A block that writes TensorBoard events (`files.space_for`)."""
    return files.space_for(os.path.join(self.workdir, "tb"),
                           "TensorBoard events", 64 * 1024, step=step)

  # -- Inputs -----------------------------------------------------------------

  def step_inputs(self, phase, index_streams):
    """An iterator over the phase's step inputs, one element per step.

    `index_streams` holds each set's `[steps, global batch]` rows
    (`batches.batch_indices`). With every set in memory an element is the
    rows themselves (the step gathers them). With streamed sets
    (`phase.file_sets`) a `tf.data` pipeline decodes each streamed set's
    rows in a parallel map and prefetches `config.prefetch_batches`
    steps ahead; under several replicas it is built per worker by
    `strategy.distribute_datasets_from_function`, and each replica gets
    its own rows `[r*b, (r+1)*b)` (as `distribute.replica_rows` takes
    them from memory). The rows come from `(seed, epoch)`, so a resumed
    run's pipeline starts at the resumed step: no iterator state is
    checkpointed.
    """
    if not phase.file_sets:
      return (tuple(tf.constant(stream[row]) for stream in index_streams)
              for row in range(len(index_streams[0]) if index_streams
                               else 0))
    replica_batch = int(self.config.batch_size) // self.replicas

    def per_worker(context=None):
      pipelines = context.num_input_pipelines if context else 1
      worker = context.input_pipeline_id if context else 0
      local = self.replicas // pipelines
      parts = []
      for stream, files in zip(index_streams, phase.file_sets):
        if files is None:   # the global rows, once per local replica
          parts.append(tf.data.Dataset.from_tensor_slices(
              np.repeat(stream, local, axis=0)))
          continue
        rows = stream.reshape(len(stream), self.replicas, replica_batch)
        rows = rows[:, worker * local:(worker + 1) * local].reshape(-1)
        images, labels = files
        parts.append(images.dataset(rows, replica_batch, labels))
      return tf.data.Dataset.zip(tuple(parts)).prefetch(
          int(self.config.get("prefetch_batches", 2)))

    if self.replicas == 1 and not isinstance(
        self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
      return iter(per_worker())
    return iter(self.strategy.distribute_datasets_from_function(per_worker))

  def _next_inputs(self, inputs, phase, index_streams, row, step):
    """The next step's inputs; a file that does not decode is a
    `DataError` naming it (the run resumes once it is replaced)."""
    try:
      return next(inputs)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
            tf.errors.UnknownError) as err:
      self._save(step)       # the rerun resumes at this very step
      for stream, files in zip(index_streams, phase.file_sets):
        if files is not None:
          bad = files[0].first_unreadable(stream[row:row + 1])
          if bad:
            raise DataError(
                f"cannot read image {bad[0]} at step {step + 1} ({bad[1]}); "
                "replace or remove it and run the same command again (the "
                "run resumes from its last checkpoint)") from None
      raise DataError(f"the input pipeline failed at step {step + 1}: "
                      f"{err.message.splitlines()[0]}") from None

  def _save(self, step):
    """Checkpoints at `step`, with the training time so far."""
    before, started = self._seconds_at_start
    self.train_seconds.assign(before + time.time() - started)
    checkpoints.save(self.manager, step, self._checkpoint_bytes(), step=step)

  def _checkpoint_bytes(self):
    """About the size of a checkpoint: the model and optimizer state."""
    return checkpoints.variable_bytes(
        list(self.model.variables) + [v for p in self.phases
                                      for v in p.optimizer.variables])

  def _evaluate_best(self):
    """(step, H accuracy, test accuracy) of the best-H weights, if any."""
    latest = self.best_manager.latest_checkpoint
    if latest is None:
      return None, None, None
    final = [w.numpy() for w in self.model.weights]
    self.best_manager.checkpoint.restore(latest).expect_partial()
    _, test_acc = self.evaluate(self.data.test)
    self.model.set_weights(final)
    return self.best_hyperval[0], self.best_hyperval[1], test_acc

  def _check_health(self, phase, stats, step):
    """Stops the run after too many non-finite steps in a row.

    Every step reports `"applied"`: False when its update was skipped for a
    non-finite gradient (`Task.apply_finite`, or GradMix's own check, whose
    statistics name the culprit and count the skips in a row). A skip is
    logged with the step and the culprit; `config.max_consecutive_skips`
    skips in a row raise `TrainingError`. A custom step that does not
    report `"applied"` is stopped at the first non-finite loss.
    """
    if "applied" not in stats:
      culprit = non_finite_loss(stats)
      if culprit:
        raise TrainingError(
            f"{culprit} is not finite at step {step}; lower the learning "
            "rate or check the data", step=step, reason="non_finite",
            source=culprit)
      return
    if bool(stats["applied"]):
      return
    if "nonfinite_source" in stats:        # a GradMix step's statistics
      names = list(phase.source_names) + ["validation (V)"]
      culprit = f"source {names[int(stats['nonfinite_source'])]}"
      consecutive = int(stats["consecutive_skips"])
    else:
      culprit = non_finite_loss(stats) or "the gradients of finite losses"
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
        names = phase.optimizer.mixed_layer_names
        weights = stats["weights"].numpy()
        cosines = stats["cosines"].numpy()
        for layer_index, layer in enumerate(names):
          tf.summary.scalar(f"cosine/{layer}", cosines[layer_index])
          for s, source in enumerate(phase.source_names):
            tf.summary.scalar(f"weights/{layer}/{source}",
                              weights[layer_index, s])
        for s, source in enumerate(phase.source_names):
          tf.summary.scalar(f"grad_norm/{source}",
                            float(stats["source_grad_norms"][s]))

  def _skipped_steps(self):
    return int(self.skips.skipped_steps.numpy()) + sum(
        int(p.optimizer.skipped_steps.numpy())
        for p in self.phases if isinstance(p.optimizer, GradMix))

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


def non_finite_loss(stats):
  """The first `loss/...` entry of `stats` that is not finite, else the
  first such `stats/...` entry (a method's auxiliary losses), else None."""
  for prefix in ("loss/", "stats/"):
    for name, value in stats.items():
      if name.startswith(prefix) and not np.all(np.isfinite(value)):
        return name
  return None
