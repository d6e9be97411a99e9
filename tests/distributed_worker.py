"""A few GradMix steps under a given strategy, for the equivalence tests.

    python tests/distributed_worker.py single   OUT.npz   # one device
    python tests/distributed_worker.py mirrored OUT.npz   # 2 logical CPUs
    python tests/distributed_worker.py multi_worker OUT.npz  # TF_CONFIG

Method `stream`: GradMix on the same data as PNG files, each replica's
rows decoded by the runner's input pipeline
(`distribute_datasets_from_function`).

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
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  from gradmix_tf.batches import batch_indices  # pylint: disable=g-import-not-at-top
  data = tiny_data()
  stream = method == "stream"
  workdir = os.path.join(os.path.dirname(out_path), f"work_{mode}")
  if stream:   # the same data as PNG files, decoded by the input pipeline
    from test_streaming import streamed  # pylint: disable=g-import-not-at-top
    data = streamed(data, f"{out_path}.files")     # one copy per worker
  config = tiny_config(method="gradmix" if method in ("fit", "stream")
                       else method, batch_size=8,
                       input_pipeline="stream" if stream else "memory")
  trainer = build_runner(config, data, workdir, strategy=strategy)
  rng = np.random.default_rng(0)
  trainer.model.set_weights([0.1 * rng.normal(size=w.shape).astype(np.float32)
                             for w in trainer.model.get_weights()])
  streams = [batch_indices(len(s.y), 8, [0, i], 0, STEPS)
             for i, s in enumerate(data.sources)]
  record = {}
  if method == "fit":
    _fit(trainer, data, config, strategy, streams, record)
    if trainer.is_chief:
      np.savez(out_path, **record)
    return
  fn = trainer.step_functions[0]
  inputs = trainer.step_inputs(trainer.phases[0], streams)
  for step in range(STEPS):
    stats = fn(next(inputs))
    for key, value in stats.items():
      if key in ("weights", "rho", "eta") or key.startswith("loss/"):
        record[f"{key}_{step}"] = np.asarray(value)
  for i, weight in enumerate(trainer.model.get_weights()):
    record[f"param_{i}"] = weight
  if trainer.is_chief:
    np.savez(out_path, **record)


def _fit(trainer, data, config, strategy, streams, record):
  """STEPS fit() steps of MultiSourceModel on the runner's global batches."""
  import keras  # pylint: disable=g-import-not-at-top
  import gradmix_tf  # pylint: disable=g-import-not-at-top
  from gradmix_tf.multi_source_model import as_fit_element  # pylint: disable=g-import-not-at-top
  from gradmix_tf.tasks.multi_source import make_gradmix  # pylint: disable=g-import-not-at-top
  from gradmix_tf.models import AllHeads  # pylint: disable=g-import-not-at-top
  names = [s.name for s in data.sources]
  element = {n: (np.stack([s.x[i] for i in stream]),
                 np.stack([s.y[i] for i in stream]))
             for n, s, stream in zip(names, data.sources, streams)}
  element["validation"] = (np.stack([data.v.images] * STEPS),
                           np.stack([data.v.labels] * STEPS))
  # One element per step, each a global batch (Keras splits it across the
  # replicas: 4 + 4 source images, 3 + 3 of V).
  dataset = tf.data.Dataset.from_tensor_slices(element).map(
      as_fit_element)
  with strategy.scope():
    model = gradmix_tf.MultiSourceModel(
        AllHeads(trainer.model), {s.name: s.head for s in data.sources},
        validation_output=data.target_head)
    model.compile(optimizer=make_gradmix(config, "gradmix"),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
  model.fit(dataset, epochs=1, verbose=0)
  for i, weight in enumerate(trainer.model.get_weights()):
    record[f"param_{i}"] = weight


if __name__ == "__main__":
  main(*sys.argv[1:])
