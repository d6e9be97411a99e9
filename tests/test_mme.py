"""MME: gradient reversal, cosine head and entropy by hand, the minimax
directions, and a run of the trainer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config, tiny_data
from gradmix_tf.tasks import mme
from gradmix_tf.losses import mean_prediction_entropy
from gradmix_tf.runner import build_runner


def test_gradient_reversal_sign_and_scale():
  x = tf.Variable([1.0, -2.0])
  with tf.GradientTape() as tape:
    y = mme.gradient_reversal(x, scale=0.5)
    loss = tf.reduce_sum(3.0 * y)
  np.testing.assert_array_equal(y.numpy(), [1.0, -2.0])   # identity forward
  # d(3 y)/dx = 3, reversed and scaled: -1.5.
  np.testing.assert_allclose(tape.gradient(loss, x).numpy(), [-1.5, -1.5])


def test_cosine_head_by_hand():
  head = mme.CosineHead(2, temperature=0.05)
  head.build((None, 2))
  head.kernel.assign([[1.0, 0.0], [0.0, 2.0]])   # columns (1,0), (0,2)
  # f = (3, 4): cosines 3/5 and 4/5; divided by 0.05: 12 and 16.
  np.testing.assert_allclose(head(tf.constant([[3.0, 4.0]])).numpy(),
                             [[12.0, 16.0]], rtol=1e-6)


def test_entropy_by_hand():
  # softmax(0, ln 3) = (1/4, 3/4): H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351.
  value = mean_prediction_entropy(tf.constant([[0.0, np.log(3.0)]]))
  assert float(value) == pytest.approx(0.5623351, abs=1e-6)
  assert float(mean_prediction_entropy(tf.zeros((3, 4)))) == pytest.approx(np.log(4.0))


def test_minimax_directions():
  # Features -> cosine head. The MME objective -lambda H with the features
  # reversed gives the head the gradient of -lambda H (it ascends H) and the
  # feature extractor that of +lambda H (it descends H).
  rng = np.random.default_rng(0)
  extractor = keras.layers.Dense(3, name="extractor")
  head = mme.CosineHead(4, temperature=0.5)
  x = tf.constant(rng.normal(size=(5, 6)), tf.float32)
  extractor.build((None, 6))
  head.build((None, 3))
  lam = 0.1
  variables = extractor.trainable_variables + head.trainable_variables
  with tf.GradientTape(persistent=True) as tape:
    plain = mean_prediction_entropy(head(extractor(x)))
    objective = -lam * mean_prediction_entropy(head(mme.gradient_reversal(extractor(x))))
  d_plain = tape.gradient(plain, variables)
  d_objective = tape.gradient(objective, variables)
  for g_obj, g_h in zip(d_objective[:2], d_plain[:2]):     # extractor
    np.testing.assert_allclose(g_obj.numpy(), lam * g_h.numpy(), rtol=1e-5,
                               atol=1e-7)
  np.testing.assert_allclose(d_objective[2].numpy(),          # head kernel
                             -lam * d_plain[2].numpy(), rtol=1e-5, atol=1e-7)
  assert np.abs(d_plain[2].numpy()).max() > 1e-4


def test_trainer_runs_mme_on_the_target_source_only(tmp_path):
  config = tiny_config(method="mme")
  trainer = build_runner(config, tiny_data(), str(tmp_path))
  assert isinstance(trainer.model.head_0, mme.CosineHead)
  assert trainer.task.mme_sources == [0]          # s1 has the target's classes
  head_1 = trainer.model.head_1.kernel.numpy().copy()
  metrics = trainer.run()
  assert metrics["method"] == "mme" and metrics["steps"] == config.steps
  assert 0.0 <= metrics["test_accuracy"] <= 1.0
  # The other label space's head is never trained.
  np.testing.assert_array_equal(trainer.model.head_1.kernel.numpy(), head_1)


def test_baselines_refuse_several_replicas(tmp_path):
  from gradmix_tf.errors import ConfigError  # pylint: disable=g-import-not-at-top

  class TwoReplicas:   # all the trainer reads before refusing
    num_replicas_in_sync = 2

  for method in ("mme", "mdda", "dctn"):
    with pytest.raises(ConfigError, match="one device"):
      build_runner(tiny_config(method=method), tiny_data(), str(tmp_path),
                   strategy=TwoReplicas())
