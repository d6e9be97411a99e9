r"""Cost of the non-finite check in a plain step (sources + V, `joint`).

    taskset -c 0 python bench/finite_check_cost.py

Every non-GradMix step applies its update through `Task.apply_finite`
(skip a step whose gradients or loss are not finite: docs/RELIABILITY.md).
This times the `digits_mnistm` joint step with that check and with the
plain `optimizer.apply` it replaced, interleaved in blocks of 30 steps in
one process, and prints the median ratio over the rounds.
"""

import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from gradmix_tf import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from gradmix_tf.data import build_experiment  # pylint: disable=g-import-not-at-top,wrong-import-position
from gradmix_tf.tasks.multi_source import MultiSourceTask  # pylint: disable=g-import-not-at-top,wrong-import-position
from gradmix_tf.runner import Runner  # pylint: disable=g-import-not-at-top,wrong-import-position
from gradmix_tf.batches import batch_indices  # pylint: disable=g-import-not-at-top,wrong-import-position

ROUNDS, BLOCK, BATCH = 12, 30, 32


class UncheckedTask(MultiSourceTask):
  """The task with each update as it was before the check: applied
  whatever it is."""

  def apply_finite(self, optimizer, grads, variables, losses=()):
    del losses
    pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
    optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
    return tf.constant(True)


def main():
  config = config_lib.load_config("digits_mnistm")
  config.method = "joint"
  config = config_lib.resolve(config)
  data = build_experiment(config, seed=0, k=2)
  trainers = {}
  for checked in (False, True):
    task = (MultiSourceTask if checked else UncheckedTask)(config, data)
    trainers[checked] = Runner(task, f"/tmp/finite_check_cost_{checked}")
  steps = 10 + ROUNDS * BLOCK
  streams = [batch_indices(len(s.y), BATCH, [0, i], 0, steps)
             for i, s in enumerate(data.sources)]

  def run(trainer, start, count):
    step = trainer.step_functions[0]
    for row in range(start, start + count):
      out = step(tuple(tf.constant(s[row]) for s in streams))
      bool(out["applied"])      # the loop reads it every step

  for trainer in trainers.values():
    run(trainer, 0, 10)         # trace and warm up
  times, ratios = {False: [], True: []}, []
  for index in range(ROUNDS):
    block = {}
    for checked, trainer in trainers.items():
      tick = time.perf_counter()
      run(trainer, 10 + index * BLOCK, BLOCK)
      block[checked] = (time.perf_counter() - tick) / BLOCK
      times[checked].append(block[checked])
    ratios.append(block[True] / block[False])
  print(f"joint step: unchecked {1e3 * np.median(times[False]):.2f} ms, "
        f"checked {1e3 * np.median(times[True]):.2f} ms; checked/unchecked "
        f"median {np.median(ratios):.3f} (min {min(ratios):.3f}, max "
        f"{max(ratios):.3f}) over {ROUNDS} rounds of {BLOCK} steps")


if __name__ == "__main__":
  main()
