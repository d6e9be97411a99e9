"""The main training rate: linear warm-up, a hold, a cosine decay to zero.

With base rate `a`, `T` training steps, `W` warm-up steps and `D` decay
steps, the rate at optimizer step `t` (counted from 0) is

    a * min(t / W, 1) * d(t),
    d(t) = 1                                        t <  T - D
         = (1 + cos(pi * (t - (T - D)) / D)) / 2    T - D <= t < T
         = 0                                        t >= T

(`W = 0`: no warm-up; `D = 0`: no decay). Keras' `CosineDecay` with
`warmup_steps` starts decaying right after the warm-up, which is not a
hold-then-decay over the last `D` steps, hence this small schedule.
"""

import math

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="gradmix_tf")
class WarmupHoldCosine(keras.optimizers.schedules.LearningRateSchedule):
  """`rate * min(t / warmup_steps, 1) * d(t)` (module docstring)."""

  def __init__(self, rate, total_steps, warmup_steps=0, decay_steps=0):
    if not 0 <= decay_steps <= total_steps:
      raise ValueError(f"decay_steps must be in [0, {total_steps}], got "
                       f"{decay_steps}")
    self.rate = float(rate)
    self.total_steps = int(total_steps)
    self.warmup_steps = int(warmup_steps)
    self.decay_steps = int(decay_steps)

  def __call__(self, step):
    t = tf.cast(step, tf.float32)
    factor = tf.constant(1.0)
    if self.warmup_steps > 0:
      factor = tf.minimum(t / float(self.warmup_steps), 1.0)
    if self.decay_steps > 0:
      start = float(self.total_steps - self.decay_steps)
      progress = tf.clip_by_value((t - start) / float(self.decay_steps),
                                  0.0, 1.0)
      factor *= 0.5 * (1.0 + tf.cos(math.pi * progress))
    return self.rate * factor

  def get_config(self):
    return dict(rate=self.rate, total_steps=self.total_steps,
                warmup_steps=self.warmup_steps, decay_steps=self.decay_steps)
