"""The one place a `tf.distribute.Strategy` is created (SPEC section 7).

`config.distribution`:

* ``default``: one device (TensorFlow's default strategy);
* ``mirrored``: `MirroredStrategy` over the local GPUs, or over
  `config.logical_cpus` logical CPU devices when that is 2 or more (to test
  data parallelism on a CPU machine);
* ``multi_worker``: `MultiWorkerMirroredStrategy` from `TF_CONFIG` (set by
  `launch/local_workers.py` or by the Kubeflow TF operator).

Call `make_strategy` before any other TensorFlow work: logical devices and
collective ops cannot be configured once TensorFlow has started.
"""

import json
import os

import tensorflow as tf

from gradmix_tf.errors import ConfigError

DISTRIBUTIONS = ("default", "mirrored", "multi_worker")


def make_strategy(config):
  """The strategy named by `config.distribution`."""
  kind = config.distribution
  if kind not in DISTRIBUTIONS:
    raise ConfigError(f"unknown distribution {kind!r}: choose one of "
                      f"{', '.join(DISTRIBUTIONS)}")
  if kind == "default":
    return tf.distribute.get_strategy()
  if kind == "mirrored":
    devices = None
    if int(config.logical_cpus) >= 2:
      cpu = tf.config.list_physical_devices("CPU")[0]
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()]
          * int(config.logical_cpus))
      devices = [f"CPU:{i}" for i in range(int(config.logical_cpus))]
    return tf.distribute.MirroredStrategy(devices)
  tf_config = os.environ.get("TF_CONFIG")
  if not tf_config:
    raise ConfigError(
        "distribution=multi_worker needs TF_CONFIG: start the workers with "
        "launch/local_workers.py or a TFJob (launch/tfjob.yaml)")
  try:
    json.loads(tf_config)
  except ValueError:
    raise ConfigError("TF_CONFIG is not valid JSON") from None
  return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy):
  """Whether this process writes checkpoints, summaries and metrics."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return resolver.task_type == "worker" and resolver.task_id == 0 and (
      not has_chief)
