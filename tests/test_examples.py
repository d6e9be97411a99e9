"""The examples run as a user runs them, on their tiny generated data."""

import importlib.util
import os

import keras
import pytest

_EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples")


def _example(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(_EXAMPLES, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("mixed_precision", [False, True])
def test_custom_loop_example_trains_the_target_head(mixed_precision):
  accuracy, stats, optimizer = _example("custom_loop").train(
      steps=150, mixed_precision=mixed_precision, log_every=0)
  assert accuracy > 0.7                  # 3 classes: chance is 0.33
  assert bool(stats["applied"])
  assert optimizer.mixed_layer_names == ["trunk_1", "trunk_2"]
  assert isinstance(optimizer.inner_optimizer,
                    keras.optimizers.LossScaleOptimizer) == mixed_precision
  assert keras.mixed_precision.global_policy().name == "float32"


def test_own_model_fit_example_fits_saves_reloads_and_predicts(tmp_path):
  import gradmix_tf  # pylint: disable=g-import-not-at-top
  accuracy, reloaded, history = _example("own_model_fit").train(
      str(tmp_path), epochs=2, steps_per_epoch=40, verbose=0)
  assert accuracy > 0.7                  # 3 classes: chance is 0.33
  assert isinstance(reloaded, gradmix_tf.MultiSourceModel)
  assert int(reloaded.optimizer.iterations) == 80
  assert {"loss_other_domain", "loss_other_task", "gradmix_eta",
          "val_accuracy"} <= set(history.history)
  for name in ("log.csv", "best.keras", "model.keras"):
    assert (tmp_path / name).is_file()
