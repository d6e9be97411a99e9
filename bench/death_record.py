r"""A per-step record of one run's trunk: which ReLU layer dies first, and when.

    python bench/death_record.py --config=digits_mnistm_mnist \
        --method=source_only --k=2 --seed=1 --steps=300

Trains one run in this process with the trainer's own compiled step (its
first phase, from step 0; deaths happen early) and records after every
step, for each ReLU layer of the digit trunk:

* `live`: the fraction of its units (conv channels, dense neurons) that are
  positive somewhere on a fixed probe batch (the first `--probe` H images);
  a unit that is never positive passes no gradient to its weights and is
  dead for that batch;
* `weight_norm` and `update_norm` (|W_t - W_{t-1}| over the layer's kernel
  and bias), and the step's losses.

A layer is counted **dead** from the first step where under 5 % of its units
are live. The summary names each layer's first dead step and, for the first
layer to die, the step before: its update norm relative to its weight norm
and the losses. Writes `--out` (JSON: the summary and every step's record).
"""

import argparse
import ast
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEAD_BELOW = 0.05      # a layer with under 5 % live units is dead


def relu_layers(trunk):
  """The trunk's weight layers whose output goes through a ReLU: their own
  `activation`, or (batch-norm trunk, `norm="batch"`) the `<name>_relu`
  layer that follows their normalisation."""
  import keras  # pylint: disable=g-import-not-at-top
  names = {layer.name for layer in trunk.layers}
  return [layer for layer in trunk.layers
          if getattr(layer, "activation", None) is keras.activations.relu
          or (layer.trainable_variables and f"{layer.name}_relu" in names)]


def live_fractions(trunk, probe):
  """`{layer name: fraction of units positive somewhere on probe}`.

  A unit is a channel of a convolution (positive at any position of any
  probe image) or a neuron of a dense layer, read after its ReLU. The probe
  runs in inference mode (batch norm with its moving statistics).
  """
  names = {layer.name for layer in trunk.layers}
  # Where each watched layer's ReLU output is read: its own output, or
  # that of its `<name>_relu` layer.
  read_at = {(f"{layer.name}_relu" if f"{layer.name}_relu" in names
              else layer.name): layer.name for layer in relu_layers(trunk)}
  out = {}
  x = probe
  for layer in trunk.layers:
    x = layer(x)
    if layer.name in read_at:
      values = np.asarray(x)
      units = values.reshape(-1, values.shape[-1])
      out[read_at[layer.name]] = float(np.mean(np.any(units > 0, axis=0)))
  return out


def _flat_weights(layer):
  return np.concatenate([np.asarray(v).ravel()
                         for v in layer.trainable_variables])


def first_dead_steps(records, layer_names):
  """`{layer: first step with live < DEAD_BELOW, or None}`."""
  first = {}
  for name in layer_names:
    first[name] = next((r["step"] for r in records
                        if r["layers"][name]["live"] < DEAD_BELOW), None)
  return first


def record_run(trainer, steps, probe_images):
  """Runs the first phase for `steps` steps; returns the per-step records
  (step 0: the initial weights)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from gradmix_tf.batches import batch_indices  # pylint: disable=g-import-not-at-top
  phase = trainer.phases[0]
  config = trainer.config
  steps = min(steps, phase.steps)
  sizes = phase.index_sizes
  streams = [batch_indices(n, int(config.batch_size), [int(config.seed), i],
                           0, steps) for i, n in enumerate(sizes)]
  layers = relu_layers(trainer.model.trunk)
  probe = tf.constant(probe_images)
  previous = {layer.name: _flat_weights(layer) for layer in layers}

  def snapshot(step, stats):
    entry = {"step": step, "losses": {
        k: float(v) for k, v in stats.items() if k.startswith("loss/")},
             "layers": {}}
    live = live_fractions(trainer.model.trunk, probe)
    for layer in layers:
      weights = _flat_weights(layer)
      entry["layers"][layer.name] = {
          "live": live[layer.name],
          "weight_norm": float(np.linalg.norm(weights)),
          "update_norm": float(np.linalg.norm(weights
                                              - previous[layer.name])),
      }
      previous[layer.name] = weights
    return entry

  records = [snapshot(0, {})]
  for row in range(steps):
    stats = trainer.step_functions[0](tuple(tf.constant(s[row]) for s in streams))
    trainer.step.assign(row + 1)
    records.append(snapshot(row + 1, stats))
  return records, [layer.name for layer in layers]


def summarize(records, layer_names):
  first = first_dead_steps(records, layer_names)
  dying = sorted((step, name) for name, step in first.items()
                 if step is not None)
  summary = {"first_dead_step": first, "dead_below": DEAD_BELOW}
  if dying:
    step, name = dying[0]
    before = records[max(step - 1, 0)]
    at = records[step]
    layer = at["layers"][name]
    summary["first_to_die"] = {
        "layer": name, "step": step,
        "update_over_weight_norm": layer["update_norm"] / max(
            before["layers"][name]["weight_norm"], 1e-12),
        "losses_before": before["losses"], "losses_at": at["losses"],
        "live_before": before["layers"][name]["live"],
    }
  return summary


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="digits_mnistm_mnist")
  parser.add_argument("--method", default="source_only")
  parser.add_argument("--k", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--probe", type=int, default=256)
  parser.add_argument("--extra", action="append", default=[],
                      help="a config override, field=value")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  import tempfile  # pylint: disable=g-import-not-at-top
  from gradmix_tf import config_lib  # pylint: disable=g-import-not-at-top
  from gradmix_tf.data import build_experiment  # pylint: disable=g-import-not-at-top
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(args.config)
  config.method, config.k, config.seed = args.method, args.k, args.seed
  for override in args.extra:
    field, value = override.split("=", 1)
    section = config
    *parents, leaf = field.split(".")
    for parent in parents:
      section = section[parent]
    try:
      section[leaf] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      section[leaf] = value       # a string
  config = config_lib.resolve(config)
  data = build_experiment(config, seed=args.seed, k=args.k)
  with tempfile.TemporaryDirectory() as workdir:
    trainer = build_runner(config, data, workdir)
    records, names = record_run(trainer, args.steps, data.h.images[:args.probe])
  summary = summarize(records, names)
  out = args.out or os.path.join(
      REPO, "runs", "death_record",
      f"{args.config}_{args.method}_k{args.k}_seed{args.seed}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump({"args": vars(args), "summary": summary, "records": records},
              f, indent=1)
  print(json.dumps(summary, indent=1))
  print(f"per-step record: {out}")


if __name__ == "__main__":
  main()
