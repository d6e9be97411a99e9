"""Tasks and phases: what a method trains, seen from one replica.

A `Task` (one per method family, as in TF Model Garden's `official/core`)
builds the model, declares the run's phases and owns its losses and its
per-replica steps. It never touches the strategy: the
`gradmix_tf.runner.Runner` creates it, compiles each phase's step, runs
it on every replica and reduces what it returns, checkpoints, evaluates and
writes the artifacts, for every task alike.

The runner calls a task's hooks in this order:

1. `task.build(setup)` inside `strategy.scope()`, after seeding Keras:
   stores the `RunSetup`, then `self.model = self.build_model()`, then
   `self.phases = tuple(self.make_phases())` (which may create more state:
   a second network, discriminators, variables);
2. `task.trackables()`: more objects for the checkpoint besides the model,
   the phases' optimizers and the runner's counters;
3. during training, each phase's `replica_step(indices)` once per step
   (in a `tf.function`, on every replica), and its `on_end()` once when the
   phase is complete (before the next starts; resume-safe);
4. `task.prediction(images)` for every evaluation (compiled by the runner);
5. `task.extra_metrics()` after training, merged into `metrics.json`.
"""

import dataclasses
from typing import Any, Callable, Optional

import tensorflow as tf

from gradmix_tf import finite_steps


@dataclasses.dataclass(frozen=True)
class Phase:
  """`steps` steps of `replica_step` with `optimizer`.

  Attributes:
    name: what the phase does (`target`, `plain`, `gradmix`, ...).
    steps: how many steps.
    optimizer: its optimizer (checkpointed; a `GradMix` counts its own
      skipped steps).
    replica_step: `indices -> {name: tensor}` on one replica. `indices`
      holds one entry per entry of `index_sizes`: a `[batch]` int32
      tensor of the global batch's rows (`distribute.replica_rows` takes
      this replica's), or, for a set in `file_sets`, this replica's rows
      already decoded by the runner's input pipeline, `{"images",
      "labels"}` (`{"images"}` for a set without labels).
      Outputs named `loss/...` are logged and checked; `applied` (a bool)
      says whether the update was made; GradMix's statistics (`weights`,
      `cosines`, `rho`, `eta`, ...) are logged when present.
    index_sizes: the sizes of the sets whose batch indices each step
      receives (`gradmix_tf.batches.batch_indices`).
    summed_outputs: outputs that are this replica's share of a global mean
      (`distribute.replica_share`); the runner sums them over replicas and
      takes every other output from the first replica.
    source_names: GradMix's sources in the order of its mix weights (for
      summaries and health messages); empty when the phase does not mix.
    on_end: called once when the phase is complete; its effect must live in
      checkpointed state.
    file_sets: per entry of `index_sizes`, None (the step gathers its rows
      from memory) or `(ImageFiles, labels or None)` the runner decodes
      that entry's rows from (`gradmix_tf.data.image_files`); empty: all
      from memory.
  """
  name: str
  steps: int
  optimizer: Any
  replica_step: Callable[[tuple], dict]
  index_sizes: tuple
  summed_outputs: frozenset = frozenset()
  source_names: tuple = ()
  on_end: Optional[Callable[[], None]] = None
  file_sets: tuple = ()


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """What the runner tells a task about the run it is part of.

  Attributes:
    workdir: the run's directory (a task writes its own records there).
    is_chief: this worker writes the run's files.
    global_batch: `config.batch_size`, the global batch per source.
    replicas: replicas in sync (the global batch is split evenly).
    step: the runner's step counter (int64 variable; reading it in a step
      gives the step being taken, counted from 0).
    skips: the runner's `finite_steps.SkipCounter` for updates skipped as
      non-finite (`Task.apply_finite`).
  """
  workdir: str
  is_chief: bool
  global_batch: int
  replicas: int
  step: tf.Variable
  skips: finite_steps.SkipCounter

  @property
  def replica_batch(self):
    return self.global_batch // self.replicas


class Task:
  """A method family: its model, phases, losses and per-replica steps.

  Args:
    config: the resolved ConfigDict of the run.
    data: the run's data (`gradmix_tf.data.experiment.ExperimentData`).

  Subclasses implement `build_model` and `make_phases`, and may override
  `prediction`, `trackables` and `extra_metrics` (module docstring).
  """

  def __init__(self, config, data):
    self.config = config
    self.data = data
    self.setup = None
    self.model = None
    self.phases = ()

  def build(self, setup):
    """Builds the model and the phases (called once, by the runner)."""
    self.setup = setup
    self.model = self.build_model()
    self.phases = tuple(self.make_phases())

  @property
  def variables(self):
    """The model's trainable variables (what the phases train)."""
    return self.model.trainable_variables

  def build_model(self):
    """The network (`keras.Model`)."""
    raise NotImplementedError

  def make_phases(self):
    """The run's `Phase`s, in order."""
    raise NotImplementedError

  def prediction(self, images):
    """Target-class probabilities of `images` `[n, classes]`."""
    return tf.nn.softmax(self.model(images, head=self.data.target_head))

  def trackables(self):
    """`{name: trackable}` checkpointed besides the model."""
    return {}

  def extra_metrics(self):
    """More entries for metrics.json, after training."""
    return {}

  def apply_finite(self, optimizer, grads, variables, losses=()):
    """Applies `grads` (None entries left out) unless one is not finite.

    The step is also skipped when one of `losses` is not finite (a loss
    that overflowed can still have finite, saturated gradients, which would
    carry the run further out). A skipped step leaves the variables and the
    optimizer's state as they were and is counted in the runner's
    `SkipCounter`; a step returns the result as `"applied"`, and the
    runner's health check stops the run after `config.max_consecutive_skips`
    skips in a row. Every step but GradMix's (which skips on its own)
    applies its updates through this.

    Returns:
      A bool tensor: whether the update was applied.
    """
    return finite_steps.apply_if_finite(optimizer, grads, variables,
                                        self.setup.skips, losses)
