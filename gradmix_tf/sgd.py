"""The inner optimizers: SGD with momentum at a rate or a schedule."""

import keras

from gradmix_tf import schedules


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
