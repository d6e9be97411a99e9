"""The warm-up / hold / cosine-decay training rate, value by value."""

import math

import keras
import numpy as np
import pytest

from gradmix_tf.schedules import WarmupHoldCosine


def test_hold_then_cosine_to_zero_over_the_last_steps():
  rate = WarmupHoldCosine(0.05, total_steps=10, decay_steps=4)
  # t < 6: 0.05; t = 6 + j: 0.05 * (1 + cos(pi j / 4)) / 2; t >= 10: 0.
  expected = [0.05] * 6 + [0.05 * (1 + math.cos(math.pi * j / 4)) / 2
                           for j in range(4)] + [0.0, 0.0]
  np.testing.assert_allclose([float(rate(t)) for t in range(12)], expected,
                             rtol=1e-6, atol=1e-9)
  assert float(rate(8)) == pytest.approx(0.025)   # half way down


def test_warmup_and_decay_multiply_where_they_overlap():
  rate = WarmupHoldCosine(1.0, total_steps=4, warmup_steps=4, decay_steps=4)
  # min(t / 4, 1) * (1 + cos(pi t / 4)) / 2
  expected = [(t / 4) * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]
  np.testing.assert_allclose([float(rate(t)) for t in range(4)], expected,
                             rtol=1e-6, atol=1e-9)


def test_warmup_alone_ramps_then_holds():
  rate = WarmupHoldCosine(0.05, total_steps=100, warmup_steps=4)
  np.testing.assert_allclose([float(rate(t)) for t in (0, 1, 2, 4, 99, 500)],
                             [0.0, 0.0125, 0.025, 0.05, 0.05, 0.05],
                             rtol=1e-6)


def test_a_decay_longer_than_training_is_refused():
  with pytest.raises(ValueError, match="decay_steps"):
    WarmupHoldCosine(0.05, total_steps=10, decay_steps=11)


def test_serialises_by_its_registered_name():
  schedule = WarmupHoldCosine(0.05, total_steps=10, warmup_steps=2,
                              decay_steps=3)
  restored = keras.saving.deserialize_keras_object(
      keras.saving.serialize_keras_object(schedule))
  assert isinstance(restored, WarmupHoldCosine)
  assert restored.get_config() == schedule.get_config()
  assert float(restored(8)) == pytest.approx(float(schedule(8)))
