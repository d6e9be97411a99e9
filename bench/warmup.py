r"""Stage-2 learning-rate warm-up against early trunk deaths (`digits_mnistm`).

Reruns stage 2 of the label pipelines (k=2, seeds 0, 1, 2, hard and soft
labels) and the Fig. 4 R = 2 run with `--config.lr_warmup_steps=200`: the
rate rises linearly from 0 to lr 0.05 over the first 200 of 2000 steps.
Stage 1 is the runs the pipelines without warm-up trained
(`--config.pseudo_label.stage1_lr_warmup_steps=0`), so both arms label U
with the same ensemble and differ only in stage 2's first 200 steps. Writes
the `warmup` block of `docs/RESULTS.md`: every run beside the same run
without warm-up (`bench/baselines.py`, `bench/r_ablation.py`).

    python bench/warmup.py
    python bench/warmup.py --report_only
"""

import argparse
import os

import baselines
import r_ablation
import runs
import table1
from report import replace_block  # pylint: disable=g-import-not-at-top

WARMUP_STEPS = 200
WARMUP_FLAGS = [f"--config.lr_warmup_steps={WARMUP_STEPS}",
                "--config.pseudo_label.stage1_lr_warmup_steps=0"]
PIPELINES = {"gradmix_soft_label": "soft label",
             "gradmix_hard_label": "hard label"}
K = 2
R_ABLATION_SEED = 0
R_ABLATION_MEMBERS = 2


def variant(method):
  """The folder of `method` with warm-up, beside the method's own."""
  return f"{method}_warmup{WARMUP_STEPS}"


def _r_ablation_args(args, runs_dir):
  return argparse.Namespace(
      config="digits_mnistm", k=K, seed=R_ABLATION_SEED, betas="5.0,10.0",
      gammas="0.3,0.6,0.9",
      steps=args.steps,
      stage1_dir=baselines.stage1_dir(args.baselines_dir, K, R_ABLATION_SEED),
      runs_dir=runs_dir)


def cases(args):
  """(label, seed, run without warm-up, run with it, launcher flags)."""
  found = []
  for method, label in PIPELINES.items():
    for seed in args.seeds:
      stage1 = baselines.stage1_dir(args.baselines_dir, K, seed)
      found.append((
          label, seed, table1.run_dir(args.baselines_dir, method, K, seed),
          table1.run_dir(args.baselines_dir, variant(method), K, seed),
          table1.launch_flags(
              method, K, seed, args.steps,
              [f"--config.pseudo_label.stage1_dir={stage1}", *WARMUP_FLAGS])))
  without = _r_ablation_args(args, args.r_ablation_dir)
  with_warmup = _r_ablation_args(args, args.r_ablation_dir +
                                 f"_warmup{WARMUP_STEPS}")
  found.append((
      f"hard label, R = {R_ABLATION_MEMBERS} (Fig. 4)", R_ABLATION_SEED,
      r_ablation.run_dir(without, R_ABLATION_MEMBERS),
      r_ablation.run_dir(with_warmup, R_ABLATION_MEMBERS),
      r_ablation.flags(with_warmup, R_ABLATION_MEMBERS) + WARMUP_FLAGS))
  return found


def accuracies(run):
  """(final, best-H) test accuracy (%) of a finished run, or None."""
  record = runs.finished_metrics(run)
  if record is None:
    return None
  return (100 * record["test_accuracy"],
          100 * record["test_accuracy_at_best_hyperval"])


def _cell(result):
  return "– | –" if result is None else f"{result[0]:.2f} | {result[1]:.2f}"


def write_report(args):
  rows = ["| run (k=2) | seed | without: final | without: best-H | "
          f"warm-up {WARMUP_STEPS}: final | warm-up {WARMUP_STEPS}: best-H |",
          "|---|---|---|---|---|---|"]
  pairs = {}
  for label, seed, without, with_warmup, _ in cases(args):
    before, after = accuracies(without), accuracies(with_warmup)
    rows.append(f"| {label} | {seed} | {_cell(before)} | {_cell(after)} |")
    if before is not None and after is not None:
      pairs.setdefault(label, []).append((before, after))
  for label in PIPELINES.values():
    paired = pairs.get(label, [])
    if len(paired) < 2:
      continue
    cells = [table1.mean_se([p[arm][which] / 100 for p in paired])
             for arm in (0, 1) for which in (0, 1)]
    rows.append(f"| {label}, mean ± s.e. of the {len(paired)} seeds with "
                f"both arms | | " + " | ".join(cells) + " |")
  text = TEMPLATE.format(
      steps=args.steps, warmup=WARMUP_STEPS, table="\n".join(rows),
      command=(f"python bench/warmup.py "
               f"--seeds={','.join(map(str, args.seeds))} "
               f"--steps={args.steps}"))
  replace_block(args.out, "warmup", text)
  print(text)


TEMPLATE = """## Learning-rate warm-up in stage 2 (`digits_mnistm`, k=2)

The runs of the lower block and of Fig. 4 again, with stage 2's rate
warmed up linearly from 0 to lr 0.05 over its first {warmup} of {steps}
steps (`--config.lr_warmup_steps={warmup}`; opt-in, the default is the
paper's constant rate). Stage 1 and so the pseudo-labels are the same
runs in both arms (`--config.pseudo_label.stage1_lr_warmup_steps=0`);
only stage 2's first {warmup} steps differ. Test accuracy (%) after the
last step and at the best-H step; a dash is a run not (yet) finished.

{table}

Command (resumable; the runs without warm-up are `bench/baselines.py`'s
and `bench/r_ablation.py`'s):

    {command}
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--baselines_dir", default=os.path.join(
      table1.REPO, "runs", "baselines"))
  parser.add_argument("--r_ablation_dir", default=os.path.join(
      table1.REPO, "runs", "r_ablation"))
  parser.add_argument("--out", default=os.path.join(table1.REPO, "docs",
                                                    "RESULTS.md"))
  parser.add_argument("--report_only", action="store_true")
  args = parser.parse_args()
  args.seeds = [int(s) for s in args.seeds.split(",")]
  if not args.report_only:
    for label, seed, _, run, flags in cases(args):
      status = runs.launch(run, flags)
      print(f"{label} seed {seed}: {status}", flush=True)
  write_report(args)


if __name__ == "__main__":
  main()
