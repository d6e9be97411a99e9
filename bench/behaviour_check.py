r"""Same behaviour before and after a refactor: fixed short runs, compared.

Runs every method of `digits_mnistm` (200 steps, seed 0), and of
`holistic_digits` and `ucf101` in quick mode, with the package of
`--code` (a checkout, e.g. a `git worktree` at the old commit), into
`--out`; then, given two such folders, compares their `metrics.json`
field by field, timings aside:

    git worktree add /tmp/old <old commit>
    python bench/behaviour_check.py --code=/tmp/old --out=/tmp/check/old
    python bench/behaviour_check.py --code=. --out=/tmp/check/new
    python bench/behaviour_check.py --compare=/tmp/check/old,/tmp/check/new

A method the old code does not run is reported as such (exit status of
its run; no metrics.json to compare).
"""

import argparse
import json
import math
import os
import subprocess
import sys

DIGIT_METHODS = ("target_only", "source_only", "fine_tune", "joint",
                 "gradmix", "gradmix_no_adalr", "gradmix_sgd", "gradmf",
                 "gradmix_vat", "gradmix_mixmatch", "mme", "mdda", "dctn",
                 "gradmix_hard_label", "gradmix_soft_label")
HOLISTIC_METHODS = ("source_only", "fine_tune", "frozen_classifier",
                    "lolsgd", "distill", "gradmix_distill", "calibrated")
ACTION_METHODS = ("target_only", "source_only", "fine_tune", "gradmix",
                  "gradmix_vat", "gradmix_mixmatch")
PSEUDO_LABEL_FLAGS = ("--config.pseudo_label.betas=(5.0,)",
                      "--config.pseudo_label.gammas=(0.6,)",
                      "--config.pseudo_label.members=1")
CASES = (
    [("digits_mnistm", m, ("--config.steps=200", "--config.seed=0",
                           "--config.finetune_steps=50",
                           *PSEUDO_LABEL_FLAGS)) for m in DIGIT_METHODS]
    + [("holistic_digits", m, ("--config.quick=True",))
       for m in HOLISTIC_METHODS]
    + [("ucf101", m, ("--config.quick=True", "--config.steps=10"))
       for m in ACTION_METHODS])
# Fields that measure time or name folders, not behaviour.
IGNORED = {"wall_seconds", "train_seconds", "median_step_seconds", "dir",
           "members"}


def run_all(code, out):
  env = dict(os.environ, PYTHONPATH=os.path.abspath(code),
             TF_CPP_MIN_LOG_LEVEL="3")
  for config, method, flags in CASES:
    workdir = os.path.join(os.path.abspath(out), config, method)
    if os.path.isfile(os.path.join(workdir, "metrics.json")):
      continue
    result = subprocess.run(
        [sys.executable, "-m", "gradmix_tf.launch", f"--config={config}",
         f"--config.method={method}", *flags, f"--workdir={workdir}"],
        cwd=os.path.abspath(code), env=env, capture_output=True, text=True)
    print(f"{config} {method}: exit {result.returncode}", flush=True)


def differences(a, b, path=""):
  """Paths where two metrics trees differ (ignoring `IGNORED` keys)."""
  if isinstance(a, dict) and isinstance(b, dict):
    found = []
    for key in sorted(set(a) | set(b)):
      if key in IGNORED:
        continue
      if key not in a or key not in b:
        found.append(f"{path}/{key} (only in one)")
        continue
      found += differences(a[key], b[key], f"{path}/{key}")
    return found
  if isinstance(a, list) and isinstance(b, list):
    if len(a) != len(b):
      return [f"{path} (lengths {len(a)} and {len(b)})"]
    found = []
    for i, (x, y) in enumerate(zip(a, b)):
      found += differences(x, y, f"{path}[{i}]")
    return found
  same = (a == b or (isinstance(a, float) and isinstance(b, float)
                     and math.isnan(a) and math.isnan(b)))
  return [] if same else [f"{path}: {a!r} != {b!r}"]


def compare(first, second):
  rows, identical = [], 0
  for config, method, _ in CASES:
    paths = [os.path.join(d, config, method, "metrics.json")
             for d in (first, second)]
    missing = [d for d, p in zip((first, second), paths)
               if not os.path.isfile(p)]
    if missing:
      rows.append(f"| {config} | {method} | no metrics.json in "
                  f"{', '.join(missing)} |")
      continue
    a, b = (json.load(open(p)) for p in paths)
    found = differences(a, b)
    identical += not found
    rows.append(f"| {config} | {method} | "
                f"{'bit-identical' if not found else '; '.join(found[:3])} |")
  print("| config | method | metrics.json, timings aside |\n|---|---|---|")
  print("\n".join(rows))
  print(f"\n{identical} of {len(CASES)} runs bit-identical.")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--code", default=".")
  parser.add_argument("--out", default="")
  parser.add_argument("--compare", default="",
                      help="two --out folders, comma-separated")
  args = parser.parse_args()
  if args.compare:
    compare(*args.compare.split(","))
  else:
    run_all(args.code, args.out)


if __name__ == "__main__":
  main()
