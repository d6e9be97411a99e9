r"""Where GradMix's step time goes: the step built up one piece at a time.

    python bench/profile_step.py [--rounds=20 --block=10]

Each variant is one compiled step on the digit ConvNet with the
`digits_mnistm` batches, timed interleaved with the others:

1. floor: sources + V through one summed backward pass and one update;
2. + separate per-source and V gradients (k + 1 backward calls), summed;
3. + the Gram statistics of the mixed layers;
4. + the weight solve, cosines, rho and eta;
5. the full GradMix step (adds the finiteness check, the mixing and the
   learning-rate swap inside `tf.cond`).

The difference between consecutive rows is what that piece costs.
"""

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

import step_time  # pylint: disable=g-import-not-at-top,wrong-import-position
from gradmix_tf import solvers  # pylint: disable=g-import-not-at-top,wrong-import-position


def partial_steps(stepper):
  """Steps 2-4 on the trainer and optimizer of a GradMix stepper."""
  trainer = stepper.trainer
  optimizer = trainer.phases[0].optimizer
  inner = optimizer.inner_optimizer
  variables = trainer.task.variables

  def grads_of(indices):
    with tf.GradientTape(persistent=True) as tape:
      losses = trainer.task.source_losses(indices)
      val_loss = trainer.task.validation_loss()
    source_grads = [tape.gradient(l, variables) for l in losses]
    val_grads = tape.gradient(val_loss, variables)
    return source_grads, val_grads, losses

  def apply_sum(source_grads):
    summed = [tf.add_n([g[i] for g in source_grads if g[i] is not None])
              for i in range(len(variables))]
    inner.apply(summed, variables)

  def statistics(source_grads, val_grads):
    mixed, _ = optimizer._group_layers(source_grads, val_grads, variables)
    return solvers.gram_statistics(
        [[[g[i] for i in idx] for g in source_grads] for _, idx in mixed],
        [[val_grads[i] for i in idx] for _, idx in mixed])

  def separate(indices):
    source_grads, _, losses = grads_of(indices)
    apply_sum(source_grads)
    return {"loss": losses[0]}

  def with_gram(indices):
    source_grads, val_grads, losses = grads_of(indices)
    gram, cross, v_sq = statistics(source_grads, val_grads)
    apply_sum(source_grads)
    return {"loss": losses[0], "gram": gram, "cross": cross, "v_sq": v_sq}

  def with_solve(indices):
    source_grads, val_grads, losses = grads_of(indices)
    gram, cross, v_sq = statistics(source_grads, val_grads)
    weights = optimizer.solve_weights(gram, cross)
    rho = tf.reduce_sum(solvers.mixed_cosine(gram, cross, v_sq, weights))
    eta = optimizer.learning_rate_scale(tf.cast(rho, tf.float32))
    apply_sum(source_grads)
    return {"loss": losses[0], "weights": weights, "eta": eta}

  return [tf.function(f) for f in (separate, with_gram, with_solve)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=20)
  parser.add_argument("--block", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=10)
  args = parser.parse_args()
  data = step_time.bench_data(step_time.bench_config({}))
  workdir = f"/tmp/gradmix_profile_{os.getpid()}"
  floor = step_time.Stepper(step_time.VARIANTS[step_time.FLOOR], data,
                            os.path.join(workdir, "floor"))
  full = step_time.Stepper(step_time.VARIANTS["GradMix (exact)"], data,
                           os.path.join(workdir, "full"))
  steppers = {"1 floor (sources + V, summed backward)": floor}
  names = ["2 + separate per-source and V gradients",
           "3 + Gram statistics", "4 + solve, cosines, rho, eta"]
  for i, (name, fn) in enumerate(zip(names, partial_steps(full))):
    stepper = step_time.Stepper(step_time.VARIANTS["GradMix (exact)"], data,
                                os.path.join(workdir, f"p{i}"))
    stepper.fn = fn
    steppers[name] = stepper
  steppers["5 full GradMix step"] = full
  times = step_time.interleaved(steppers, args.rounds, args.block,
                                args.warmup)
  base = times["1 floor (sources + V, summed backward)"]
  print("| step | ms | / floor |")
  print("|---|---|---|")
  for name, t in times.items():
    print(f"| {name} | {1000 * np.median(t):.2f} | "
          f"{np.median(t / base):.3f}x |")


if __name__ == "__main__":
  main()
