r"""Holistic transfer on `holistic_digits`: every method, several seeds.

Runs each (method, seed) through the launcher (resumable: a run with
`metrics.json` is skipped) and writes the `holistic` block of
`docs/RESULTS.md`: overall, seen-class and unseen-class test accuracy, mean
± standard error over seeds.

    python bench/holistic.py --seeds=0,1,2
    python bench/holistic.py --report_only
"""

import argparse
import json
import os

import numpy as np

from report import replace_block  # pylint: disable=g-import-not-at-top
import runs

METHODS = ("source_only", "fine_tune", "frozen_classifier", "lolsgd",
           "distill", "gradmix_distill", "calibrated")
LABELS = {
    "source_only": "Source model (no adaptation)",
    "fine_tune": "Fine-tune (baseline)",
    "frozen_classifier": "Frozen classifier",
    "lolsgd": "Leave-Out Local SGD",
    "distill": "Distillation of the source logits",
    "gradmix_distill": "GradMix of CE and distillation",
    "calibrated": "Fine-tune + post-hoc calibration",
}
COLUMNS = ("overall", "seen", "unseen", "seen_restricted",
           "unseen_restricted")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(runs_dir, method, seed, extra):
  return runs.launch(os.path.join(runs_dir, method, f"seed{seed}"),
                     ["--config=holistic_digits", f"--config.method={method}",
                      f"--config.seed={seed}", *extra])

def mean_se(values):
  values = 100.0 * np.asarray([v for v in values if v is not None])
  if not len(values):
    return "–"
  if len(values) < 2:
    return f"{values.mean():.2f}"
  return (f"{values.mean():.2f} ± "
          f"{values.std(ddof=1) / np.sqrt(len(values)):.2f}")


def write_report(args, seeds):
  rows = ["| Method | overall | seen (0-4) | unseen (5-9) | seen, among "
          "seen | unseen, among unseen | seeds |",
          "|---|---|---|---|---|---|---|"]
  minutes = 0.0
  for method in METHODS:
    runs = []
    for seed in seeds:
      path = os.path.join(args.runs_dir, method, f"seed{seed}",
                          "metrics.json")
      if os.path.isfile(path):
        with open(path) as f:
          runs.append(json.load(f))
    minutes += sum(r.get("train_seconds", r["wall_seconds"]) for r in runs) / 60.0
    cells = [mean_se([r["holistic"][c] for r in runs]) for c in COLUMNS]
    rows.append(f"| {LABELS[method]} | " + " | ".join(cells)
                + f" | {len(runs)} |")
  command = f"python bench/holistic.py --seeds={','.join(map(str, seeds))}"
  text = TEMPLATE.format(table="\n".join(rows), command=command,
                         minutes=minutes)
  replace_block(args.out, "holistic", text)
  print(text)


TEMPLATE = """## Holistic transfer: `holistic_digits`

A 10-class digit ConvNet pre-trained on MNIST (1500 steps, SGD lr 0.05
momentum 0.9, batch 32) is adapted to MNIST-M with 100 labelled images of
each of the digits 0-4 only (300 steps at lr 0.005, momentum 0.9, batch
32), and tested on MNIST-M from MNIST test, all ten digits (9,999 images).
Test accuracy (%), mean ± standard error over seeds (the seed draws the
labelled images, the initial weights and the batches). "seen" / "unseen":
images of digits 0-4 / 5-9, argmax over all ten classes; "among seen" /
"among unseen": argmax over that subset's logits only. Methods and choices:
`gradmix_tf/tasks/holistic.py`; config: `configs/holistic_digits.py`.

{table}

Command (resumable; {minutes:.0f} minutes of training on the 2-core CPU
machine):

    {command}
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--runs_dir", default=os.path.join(REPO, "runs",
                                                         "holistic"))
  parser.add_argument("--out", default=os.path.join(REPO, "docs",
                                                    "RESULTS.md"))
  parser.add_argument("--report_only", action="store_true")
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  if not args.report_only:
    for seed in seeds:
      for method in args.methods.split(","):
        print(f"seed {seed} {method}: {run_one(args.runs_dir, method, seed, [])}",
              flush=True)
  write_report(args, seeds)


if __name__ == "__main__":
  main()
