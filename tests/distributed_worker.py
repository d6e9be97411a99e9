"""A few GradMix steps under a given strategy, for the equivalence tests.

    python tests/distributed_worker.py single   OUT.npz   # one device
    python tests/distributed_worker.py mirrored OUT.npz   # 2 logical CPUs
    python tests/distributed_worker.py multi_worker OUT.npz  # TF_CONFIG

All modes start from the same weights (drawn with numpy) and take the same
global batches, so their weights, rho, eta and parameters must agree.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

STEPS = 3


def make_strategy(mode):
  if mode == "single":
    return tf.distribute.get_strategy()
  if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
  if mode == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise SystemExit(f"unknown mode {mode}")


def main(mode, out_path, method="gradmix"):
  strategy = make_strategy(mode)
  from conftest import tiny_config, tiny_data  # pylint: disable=g-import-not-at-top
  from gradmix_tf.trainer import Trainer, batch_indices  # pylint: disable=g-import-not-at-top
  data = tiny_data()
  config = tiny_config(method=method, batch_size=8)
  workdir = os.path.join(os.path.dirname(out_path), f"work_{mode}")
  trainer = Trainer(config, data, workdir, strategy=strategy)
  rng = np.random.default_rng(0)
  trainer.model.set_weights([0.1 * rng.normal(size=w.shape).astype(np.float32)
                             for w in trainer.model.get_weights()])
  streams = [batch_indices(len(s.y), 8, [0, i], 0, STEPS)
             for i, s in enumerate(data.sources)]
  fn = trainer.phases[0]["fn"]
  record = {}
  for step in range(STEPS):
    stats = fn(tuple(tf.constant(s[step]) for s in streams))
    for key, value in stats.items():
      if key in ("weights", "rho", "eta") or key.startswith("loss/"):
        record[f"{key}_{step}"] = np.asarray(value)
  for i, weight in enumerate(trainer.model.get_weights()):
    record[f"param_{i}"] = weight
  if trainer.is_chief:
    np.savez(out_path, **record)


if __name__ == "__main__":
  main(*sys.argv[1:])
