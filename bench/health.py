r"""Training health of a digit protocol: dead runs and oscillation.

Runs every (method, k, seed) through the launcher (resumable: a finished or
stopped run is not run again, an interrupted one resumes from its
checkpoint), then writes the health table into `docs/RESULTS.md`:

    python bench/health.py --config=digits_mnistm --seeds=0-9 --ks=2
    python bench/health.py --config=digits_mnistm --seeds=0-9 --ks=2 --report_only

`--extra` adds launcher flags (a protocol variant, e.g.
`--extra=--config.lr_warmup_steps=200`) and `--variant` names the variant's
run folders and its block in the docs.

Definitions (SPEC section 9):

* a run is **dead** when its trunk stops learning: its final H accuracy is
  within 5 points of chance (1/C, C = the target's classes), or every loss
  logged over its last 200 steps (TensorBoard `loss/<source>`, every
  `log_every` steps) is within 1 % of ln C_loss, C_loss the classes of that
  loss's head (a network that outputs a constant on every head). A run that
  training stopped (exit status 3, `stopped.json`) is counted apart as
  *stopped*; neither is dropped.
* **oscillation**: `best-H - final H`, the H accuracy of the best evaluation
  minus that of the last (points), and the standard deviation of H accuracy
  over the evaluations of the last 1000 steps (points).
"""

import argparse
import glob
import json
import math
import os

import numpy as np

import paired
from report import replace_block  # pylint: disable=g-import-not-at-top
import runs
import table1

METHODS = table1.METHODS
CHANCE_MARGIN = 0.05      # final H accuracy within 5 points of chance
LOSS_TOLERANCE = 0.01     # every loss within 1 % of ln C
TAIL_STEPS = 200          # ... over the last 200 steps
OSCILLATION_STEPS = 1000  # std of H accuracy over the last 1000 steps


def parse_seeds(text):
  """`0-9` or `0,1,2` (or a mix, `0-4,7`) as a list of ints."""
  seeds = []
  for part in text.split(","):
    if "-" in part:
      first, last = part.split("-")
      seeds.extend(range(int(first), int(last) + 1))
    else:
      seeds.append(int(part))
  return seeds


def is_dead(final_h, num_classes, tail_losses):
  """(dead, why) by the definitions above.

  Args:
    final_h: final H accuracy in [0, 1].
    num_classes: C of the target.
    tail_losses: `{name: (values over the last 200 steps, C of its head)}`.
  """
  if abs(final_h - 1.0 / num_classes) <= CHANCE_MARGIN:
    return True, "final H at chance"
  if tail_losses and all(
      len(values) and np.all(np.abs(np.asarray(values) - math.log(c))
                             <= LOSS_TOLERANCE * math.log(c))
      for values, c in tail_losses.values()):
    return True, "every loss at ln C"
  return False, ""


def scalar_series(tb_dir):
  """`{tag: [(step, value), ...]}` of the scalars in a TensorBoard dir."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  series = {}
  for events_file in sorted(glob.glob(os.path.join(tb_dir, "events.*"))):
    events = event_accumulator.EventAccumulator(
        events_file, size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    for tag in events.Tags()["tensors"]:
      for event in events.Tensors(tag):
        value = tensor_util.make_ndarray(event.tensor_proto)
        if value.ndim == 0:
          series.setdefault(tag, {})[event.step] = float(value)
  return {tag: sorted(points.items()) for tag, points in series.items()}


def _head_classes(config, loss_name):
  """C of the head a `loss/<name>` is computed on (V's: the target's)."""
  name = loss_name[len("loss/"):]
  sources = config.get("sources", {})
  if name in sources:
    return len(sources[name]["classes"])
  return len(config["target"]["classes"])


def run_health(workdir):
  """Health of one finished run, or None if it has no metrics."""
  metrics = runs.finished_metrics(workdir)
  if metrics is None:
    return None
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  steps = int(metrics["steps"])
  series = scalar_series(os.path.join(workdir, "tb"))
  tail = {}
  for tag, points in series.items():
    if tag.startswith("loss/"):
      values = [v for s, v in points if s > steps - TAIL_STEPS]
      tail[tag] = (values, _head_classes(config, tag))
  num_classes = len(config["target"]["classes"])
  dead, why = is_dead(metrics["hyperval_accuracy"], num_classes, tail)
  curve = np.asarray(metrics["hyperval_curve"], np.float64).reshape(-1, 3)
  late = curve[curve[:, 0] > steps - OSCILLATION_STEPS, 2]
  return {
      "dead": dead,
      "why": why,
      "final_h": metrics["hyperval_accuracy"],
      "best_h": metrics["best_hyperval_accuracy"],
      "best_minus_final": (metrics["best_hyperval_accuracy"]
                           - metrics["hyperval_accuracy"]),
      "late_h_std": float(late.std()) if len(late) > 1 else 0.0,
      "test": metrics["test_accuracy"],
      "test_at_best_h": metrics["test_accuracy_at_best_hyperval"],
      "train_seconds": metrics.get("train_seconds", metrics["wall_seconds"]),
  }


def health_table(runs_dir, methods, ks, seeds):
  """Markdown rows, one per (method, k), and the training minutes."""
  rows = ["| method | k | runs | dead | stopped | mean best-H - final H "
          "(points) | mean std of H, last 1000 steps (points) | final H % "
          "(mean ± s.e.) | final test % (mean ± s.e.) | dead seeds |",
          "|---|---|---|---|---|---|---|---|---|---|"]
  minutes = 0.0
  finals = {}
  for method in methods:
    for k in ks:
      if method == "source_only" and k != ks[0]:
        continue
      found, stopped, dead_seeds = [], [], []
      for seed in seeds:
        workdir = table1.run_dir(runs_dir, method, k, seed)
        if runs.stopped_record(workdir):
          stopped.append(seed)
          continue
        health = run_health(workdir)
        if health is None:
          continue
        found.append(health)
        finals.setdefault((method, k), {})[seed] = health["test"]
        minutes += health["train_seconds"] / 60.0
        if health["dead"]:
          dead_seeds.append(f"{seed} ({health['why']})")
      if not found and not stopped:
        continue
      gap = (np.mean([h["best_minus_final"] for h in found]) * 100
             if found else float("nan"))
      std = (np.mean([h["late_h_std"] for h in found]) * 100
             if found else float("nan"))
      rows.append(
          f"| {table1.LABELS.get(method, method)} | "
          f"{'any' if method == 'source_only' else k} | "
          f"{len(found) + len(stopped)} | {len(dead_seeds)} | {len(stopped)} "
          f"| {gap:.2f} | {std:.2f} | "
          f"{table1.mean_se([h['final_h'] for h in found])} | "
          f"{table1.mean_se([h['test'] for h in found])} | "
          f"{', '.join(dead_seeds) or '–'} |")
  return rows, minutes, finals


def paired_section(finals, ks):
  """The paired table of `finals`, or nothing when no pair of methods ran."""
  rows = paired.paired_rows(finals, table1.LABELS, ks)
  if len(rows) <= 2:   # the header alone
    return ""
  return PAIRED_TEMPLATE.format(rows="\n".join(rows))


TEMPLATE = """### Training health: `{config}`{variant_title}

Dead: final H accuracy within 5 points of chance, or every loss logged over
the last 200 steps within 1 % of ln C (`bench/health.py`). Stopped: training
ended by non-finite steps (exit 3). Oscillation on H (1000 images,
evaluated every 100 steps). Seeds {seeds}; {minutes:.0f} minutes of
training. Command (resumable):

    {command}

{table}

{paired}
"""

PAIRED_TEMPLATE = """Paired by seed (same V, same initial weights), final test accuracy
(`bench/paired.py`; Wilcoxon signed-rank, two-sided):

{rows}"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="digits_mnistm")
  parser.add_argument("--seeds", default="0-9")
  parser.add_argument("--ks", default="2")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--extra", action="append", default=[],
                      help="a launcher flag added to every run")
  parser.add_argument("--variant", default="",
                      help="names the runs of --extra flags")
  parser.add_argument("--runs_dir", default="")
  parser.add_argument("--out", default=os.path.join(table1.REPO, "docs",
                                                    "RESULTS.md"))
  parser.add_argument("--report_only", action="store_true")
  args = parser.parse_args()
  if args.extra and not args.variant:
    parser.error("--extra needs --variant (the runs' folder name)")
  seeds = parse_seeds(args.seeds)
  ks = [int(k) for k in args.ks.split(",")]
  methods = args.methods.split(",")
  runs_dir = args.runs_dir or os.path.join(
      table1.REPO, "runs", "health", args.config, args.variant or "default")
  if not args.report_only:
    for seed in seeds:
      for k in ks:
        for method in methods:
          if method == "source_only" and k != ks[0]:
            continue
          status = runs.launch(
              table1.run_dir(runs_dir, method, k, seed),
              table1.launch_flags(method, k, seed, args.steps, args.extra,
                                  config=args.config))
          print(f"seed {seed} k={k} {method}: {status}", flush=True)
  rows, minutes, finals = health_table(runs_dir, methods, ks, seeds)
  command = " ".join(
      ["python bench/health.py", f"--config={args.config}",
       f"--seeds={args.seeds}", f"--ks={args.ks}", f"--steps={args.steps}"]
      + ([f"--methods={args.methods}"]
         if methods != list(METHODS) else [])
      + [f"--extra={e}" for e in args.extra]
      + ([f"--variant={args.variant}"] if args.variant else []))
  text = TEMPLATE.format(
      config=args.config,
      variant_title=f", {args.variant}" if args.variant else
      " (the config's own protocol)",
      seeds=args.seeds, minutes=minutes, command=command,
      table="\n".join(rows),
      paired=paired_section(finals, ks))
  replace_block(args.out, f"health_{args.config}_{args.variant or 'default'}",
                text)
  print(text)


if __name__ == "__main__":
  main()
