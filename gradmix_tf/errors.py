"""Errors that reach the user as one line: what is wrong and how to fix it.

The launcher catches `UserError` and prints `error: <message>` with a non-zero
exit instead of a traceback; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Bad input from the user: a config, a data file, a path."""


class ConfigError(UserError):
  """A config value that cannot work (unknown name, impossible setting)."""


class DataError(UserError):
  """A data file that is missing, corrupt or does not fit the config."""


class TrainingError(UserError):
  """Training cannot go on (e.g. non-finite gradients step after step).

  Attributes:
    step: the step at which training stopped, if known.
    reason: a short name of the cause (`non_finite`).
    source: the loss or source whose values were not finite, if known.
  """

  def __init__(self, message, step=None, reason=None, source=None):
    super().__init__(message)
    self.step = step
    self.reason = reason
    self.source = source


class RunStopped(Exception):
  """A stop signal ended training after a checkpoint at `step`.

  Not an error: the same command resumes at `step`
  (`gradmix_tf.preemption`).

  Attributes:
    step: the step the checkpoint was written at.
    signal_name: `"SIGTERM"` or `"SIGINT"`; None on a worker of a
      multi-worker run that stopped because another worker got the signal.
    exit_status: 128 + the signal's number (143 on such a peer, as for the
      SIGTERM a preempted cluster gets).
  """

  def __init__(self, step, signal_name=None, exit_status=None):
    self.step = step
    self.signal_name = signal_name
    self.exit_status = exit_status or 143
    cause = (f"by {signal_name}" if signal_name
             else "because another worker of the cluster was stopped")
    super().__init__(f"stopped {cause} at step {step}; rerun the same "
                     "command to resume")


class NoSpaceError(UserError):
  """A write failed for lack of space; its partial files were removed.

  Attributes:
    step: the training step the run was at (None before training), for
      `stopped.json` and the exit status (3 mid-training, else 2).
  """

  def __init__(self, message, step=None):
    super().__init__(message)
    self.step = step
    self.reason = "no_space"
    self.source = None
