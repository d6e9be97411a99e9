r"""Fig. 3 of the GradMix paper from the health runs: H loss during training.

The paper's Fig. 3 plots the hyper-validation loss of source only and
GradMix over training. This draws it from the runs `bench/health.py` made
(it trains nothing): for each k, the mean over seeds of each method's H
loss at every evaluation (every 100 steps), with a band of one standard
error, and writes `docs/fig3_<config>.png` and the `fig3_<config>` block of
`docs/RESULTS.md`:

    python bench/fig3.py --config=digits_mnistm_mnist --seeds=0-9 --ks=2,5
"""

import argparse
import json
import os

import numpy as np

import health
from report import replace_block  # pylint: disable=g-import-not-at-top
import table1

METHODS = ("source_only", "fine_tune", "gradmix_sgd", "gradmix")


def curves(runs_dir, method, k, seeds):
  """`(steps, [seeds, evaluations] H losses, seeds found)` of finished runs
  whose curves share their evaluation steps."""
  found, losses, steps = [], [], None
  for seed in seeds:
    path = os.path.join(table1.run_dir(runs_dir, method, k, seed),
                        "metrics.json")
    if not os.path.isfile(path):
      continue
    with open(path) as f:
      curve = np.asarray(json.load(f)["hyperval_curve"], np.float64)
    if steps is None:
      steps = curve[:, 0]
    if len(curve) != len(steps) or np.any(curve[:, 0] != steps):
      continue
    found.append(seed)
    losses.append(curve[:, 1])
  return steps, np.asarray(losses), found


def plot(runs_dir, methods, ks, seeds, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(ks), figsize=(5 * len(ks), 3.6),
                           squeeze=False)
  counts = {}
  for axis, k in zip(axes[0], ks):
    for method in methods:
      steps, losses, found = curves(runs_dir, method, k, seeds)
      counts[(method, k)] = len(found)
      if not found:
        continue
      mean = losses.mean(0)
      error = (losses.std(0, ddof=1) / np.sqrt(len(found))
               if len(found) > 1 else np.zeros_like(mean))
      line, = axis.plot(steps, mean, label=f"{table1.LABELS[method]} "
                        f"(n={len(found)})")
      axis.fill_between(steps, mean - error, mean + error,
                        color=line.get_color(), alpha=0.2)
    axis.set_title(f"k={k}")
    axis.set_xlabel("step")
    axis.set_ylabel("H loss (mean ± s.e. over seeds)")
    axis.set_yscale("log")
    axis.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return counts


TEMPLATE = """### Fig. 3: H loss during training, `{config}`

Mean over seeds (band: ± one standard error) of the hyper-validation loss
at every evaluation (every 100 steps); runs of `bench/health.py` (the
config's own protocol), seeds {seeds}, drawn by

    {command}

![H loss during training]({image})
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="digits_mnistm_mnist")
  parser.add_argument("--seeds", default="0-9")
  parser.add_argument("--ks", default="2,5")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--runs_dir", default="")
  parser.add_argument("--out", default=os.path.join(table1.REPO, "docs",
                                                    "RESULTS.md"))
  args = parser.parse_args()
  seeds = health.parse_seeds(args.seeds)
  ks = [int(k) for k in args.ks.split(",")]
  runs_dir = args.runs_dir or os.path.join(table1.REPO, "runs", "health",
                                           args.config, "default")
  image = f"fig3_{args.config}.png"
  plot(runs_dir, args.methods.split(","), ks, seeds,
       os.path.join(os.path.dirname(args.out), image))
  command = (f"python bench/fig3.py --config={args.config} "
             f"--seeds={args.seeds} --ks={args.ks}")
  text = TEMPLATE.format(config=args.config, seeds=args.seeds,
                         command=command, image=image)
  replace_block(args.out, f"fig3_{args.config}", text)
  print(text)


if __name__ == "__main__":
  main()
