"""gradmix_tf: multi-source transfer across domains and tasks with GradMix.

    import gradmix_tf
    optimizer = gradmix_tf.GradMix(keras.optimizers.SGD(0.05, momentum=0.9))
    weights = gradmix_tf.solve_mix_weights(gram, cross, solver="exact")

The names below are imported on first use (PEP 562 module `__getattr__`),
so the config layer, the launcher's `--help` and its bad-input errors load
no TensorFlow.
"""

import importlib

from gradmix_tf.errors import ConfigError, DataError, TrainingError, UserError

__version__ = "0.1.0"

# Public name -> the module that defines it.
_LAZY = {
    "MultiHeadClassifier": "gradmix_tf.models",
    "build_model": "gradmix_tf.models",
    "GradMF": "gradmix_tf.gradmf",
    "GradMix": "gradmix_tf.optimizer",
    "MultiSourceModel": "gradmix_tf.multi_source_model",
    "multi_source_dataset": "gradmix_tf.multi_source_model",
    "gram_statistics": "gradmix_tf.solvers",
    "mixed_cosine": "gradmix_tf.solvers",
    "solve_mix_weights": "gradmix_tf.solvers",
    "Phase": "gradmix_tf.task",
    "Task": "gradmix_tf.task",
    "MultiSourceTask": "gradmix_tf.tasks.multi_source",
    "Runner": "gradmix_tf.runner",
    "build_runner": "gradmix_tf.runner",
    "run_method": "gradmix_tf.runner",
}

__all__ = sorted([*_LAZY, "ConfigError", "DataError", "TrainingError",
                  "UserError", "data"])


def __getattr__(name):
  if name == "data":
    return importlib.import_module("gradmix_tf.data")
  if name not in _LAZY:
    raise AttributeError(f"module 'gradmix_tf' has no attribute {name!r}")
  value = getattr(importlib.import_module(_LAZY[name]), name)
  globals()[name] = value
  return value


def __dir__():
  return __all__
