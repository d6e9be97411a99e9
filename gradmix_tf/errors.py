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
