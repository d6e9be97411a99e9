"""A method added as one task and one registry line; the registry itself."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config, tiny_data
from gradmix_tf import config_lib
from gradmix_tf import distribute
from gradmix_tf import launch
from gradmix_tf import losses
from gradmix_tf import methods
from gradmix_tf import sgd
from gradmix_tf.batches import batch_indices
from gradmix_tf.errors import ConfigError
from gradmix_tf.tasks.multi_source import MultiSourceTask
from gradmix_tf.runner import build_runner, run_method
from gradmix_tf.task import Phase, Task

ENTROPY_WEIGHT = 0.1


# The README's "Adding a method" example: entropy minimisation on U.
class EntropyMinimisation(MultiSourceTask):
  """Source losses + 0.1 x the mean prediction entropy of a U batch."""

  def make_phases(self):
    optimizer = sgd.make_main_sgd(self.config)
    return [self.phase("entropy", self.config.steps, optimizer,
                       self.entropy_step(optimizer),
                       with_unlabelled=True)]

  def entropy_step(self, optimizer):
    def step(indices):
      with tf.GradientTape() as tape:
        source_losses = self.source_losses(indices[:-1])
        u_logits = self.model(self.unlabelled_batch(indices[-1]),
                              head=self.data.target_head, training=True)
        u_entropy = losses.mean_prediction_entropy(u_logits)
        total = tf.add_n(source_losses) + ENTROPY_WEIGHT * (
            distribute.replica_share(u_entropy))
      applied = self.apply_finite(optimizer,
                                  tape.gradient(total, self.variables),
                                  self.variables, [total])
      return {**self.loss_outputs(source_losses),
              "entropy/unlabelled": u_entropy, "applied": applied}
    return step


@pytest.fixture
def registered(monkeypatch):
  """The registry with one more line: the method above."""
  entry = methods.Method("entropy_min", ("digits",),
                         "test_task:EntropyMinimisation",
                         needs_unlabelled=True)
  monkeypatch.setattr(methods, "REGISTRY", methods.REGISTRY + (entry,))
  return entry


def test_an_added_method_takes_the_step_computed_by_hand(tmp_path,
                                                         registered):
  del registered
  config = tiny_config(method="entropy_min", steps=1, momentum=0.0,
                       lr=0.05)
  # The launcher's checks and --help know it from its registry line.
  assert "entropy_min" in launch.help_text(["--config=digits_mnistm"])
  with pytest.raises(ConfigError, match="config.target.dataset"):
    config_lib.validate(config)           # past the method check
  data = tiny_data()
  runner = build_runner(config, data, str(tmp_path))
  assert isinstance(runner.task, EntropyMinimisation)
  model = runner.model
  before = [v.numpy() for v in model.trainable_variables]
  # One SGD step by hand: the same batches (seed [0, i], step 0), the loss
  # written out from log-softmax, gradient by a separate tape.
  index = [batch_indices(n, 8, [0, i], 0, 1)[0]
           for i, n in enumerate([40, 30, 10])]
  with tf.GradientTape() as tape:
    total = 0.0
    for source, rows in zip(data.sources, index[:2]):
      log_p = tf.nn.log_softmax(model(source.x[rows], head=source.head,
                                      training=True))
      total += -tf.reduce_mean(tf.gather(log_p, source.y[rows], axis=1,
                                         batch_dims=1))
    log_p = tf.nn.log_softmax(model(data.u.images[index[2]], head=0,
                                    training=True))
    total += ENTROPY_WEIGHT * -tf.reduce_mean(
        tf.reduce_sum(tf.exp(log_p) * log_p, -1))
  grads = tape.gradient(total, model.trainable_variables)
  expected = [w - 0.05 * g.numpy() for w, g in zip(before, grads)]
  metrics = runner.run()
  for got, want in zip(model.trainable_variables, expected):
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)
  assert metrics["method"] == "entropy_min"
  assert (tmp_path / "tb").is_dir() and (tmp_path / "metrics.json").exists()


def test_an_added_method_needing_u_is_refused_without_it(tmp_path,
                                                         registered):
  del registered
  data = dataclasses.replace(tiny_data(), u=(tiny_data().u.images[:0],
                                             tiny_data().u.labels[:0]))
  with pytest.raises(ConfigError, match="entropy_min needs unlabelled"):
    run_method(tiny_config(method="entropy_min"), data, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_every_registry_entry_loads_and_every_section_is_in_the_config():
  config = config_lib.base_config()
  for entry in methods.REGISTRY:
    loaded = entry.load()
    if entry.task:
      assert issubclass(loaded, Task), entry.name
    else:
      assert callable(loaded), entry.name
    if entry.section_defaults is not None:
      assert dict(config[entry.section]) == dict(entry.section_defaults)
    assert set(entry.experiments) <= set(methods.EXPERIMENTS)
  # One name per experiment at most.
  for experiment in methods.EXPERIMENTS:
    names = methods.methods_for(experiment)
    assert len(names) == len(set(names)), experiment
  assert config_lib.METHOD_SECTIONS["pseudo_label"] == (
      "gradmix_hard_label", "gradmix_soft_label")


def test_the_experiment_is_a_field_not_a_guess():
  for name, experiment in (("digits_mnistm", "digits"),
                           ("holistic_digits", "holistic"),
                           ("ucf101", "actions")):
    assert config_lib.load_config(name).experiment == experiment
  config = tiny_config(experiment="video")
  with pytest.raises(ConfigError, match="config.experiment is 'video'"):
    config_lib.validate(config)
  config = tiny_config(method="calibrated")      # a holistic method
  with pytest.raises(ConfigError, match="unknown method 'calibrated' for "
                     "the digits experiment"):
    config_lib.validate(config)


def test_phases_are_frozen_values():
  phase = Phase("plain", 3, None, lambda indices: {}, (10,))
  with pytest.raises(dataclasses.FrozenInstanceError):
    phase.steps = 4
