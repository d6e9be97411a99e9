"""The one place a `tf.distribute.Strategy` is created (SPEC section 7).

`config.distribution`:

* ``default``: one device (TensorFlow's default strategy);
* ``mirrored``: `MirroredStrategy` over the local GPUs, or over
  `config.logical_cpus` logical CPU devices when that is 2 or more (to test
  data parallelism on a CPU machine);
* ``multi_worker``: `MultiWorkerMirroredStrategy` from `TF_CONFIG` (set by
  `launch/local_workers.py` or by the Kubeflow TF operator).

Call `make_strategy` before any other TensorFlow work: logical devices and
collective ops cannot be configured once TensorFlow has started. Importing
this module does not start TensorFlow (`make_strategy` imports it), so the
launcher can ask `is_chief_process` before it does.
"""

import json
import os

from gradmix_tf.errors import ConfigError

DISTRIBUTIONS = ("default", "mirrored", "multi_worker")


def make_strategy(config):
  """The strategy named by `config.distribution`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
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


def _chief_task(task_type, task_id, has_chief):
  """The chief is the `chief` task, else worker 0 of a cluster without one;
  a process outside a cluster is its own chief."""
  if not task_type or task_type == "chief":
    return True
  return task_type == "worker" and int(task_id) == 0 and not has_chief


def is_chief(strategy):
  """Whether this process writes checkpoints, summaries and metrics."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None:
    return True
  return _chief_task(resolver.task_type, resolver.task_id,
                     "chief" in resolver.cluster_spec().as_dict())


def is_chief_process(config):
  """`is_chief` of the strategy `make_strategy(config)` will make, read
  from `config.distribution` and `TF_CONFIG` without starting TensorFlow
  (`make_strategy` refuses a missing or broken TF_CONFIG)."""
  if config.distribution != "multi_worker":
    return True
  try:
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    return _chief_task(task.get("type"), task.get("index", 0),
                       "chief" in tf_config.get("cluster", {}))
  except (AttributeError, TypeError, ValueError):
    return True


# -- Inside a replica step: the one place its arithmetic lives --------------


def replica_rows(global_batch, replica_batch):
  """This replica's rows `[r*b, (r+1)*b)` of a global batch (`r` its id,
  `b = replica_batch`); the whole batch on one device."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  replica = tf.distribute.get_replica_context().replica_id_in_sync_group
  start = replica * replica_batch
  return global_batch[start:start + replica_batch]


def replica_share(mean):
  """A replica's share `mean / R` of a global mean over `R` replicas.

  With the global batch split evenly, the mean over a replica's rows
  divided by `R` summed over replicas is the global mean, so summing the
  replicas' gradients gives the gradient of the global mean (what one
  device computes on the whole batch). A quantity every replica computes on
  the same data (V) divided by `R` sums back to itself.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  replicas = tf.distribute.get_replica_context().num_replicas_in_sync
  return mean / float(replicas)
