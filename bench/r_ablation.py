r"""Fig. 4 of the GradMix paper: the number R of ensemble members.

For each R, the hard-label pipeline (`gradmix_hard_label`) labels U with
the top R models of one stage-1 (beta, gamma) grid and trains stage 2. All
R share the grid (`pseudo_label.stage1_dir`), and the grid shares its runs
with `bench/baselines.py` where the cells agree (the default 2 x 2 grid
is a subset of this script's 2 x 3), so only the missing cells train.
Writes a PNG (test accuracy and pseudo-label count against R) and the
`fig4` block of `docs/RESULTS.md`.

    python bench/r_ablation.py --k=2 --seed=0
    python bench/r_ablation.py --k=2 --seed=0 --report_only
    python bench/r_ablation.py --config=digits_mnistm_mnist --k=2 --seed=0 \
        --stage1_dir=runs/baselines/stage1/k2_seed0
"""

import argparse
import json
import os

import runs
import table1
from report import per_config, replace_block  # pylint: disable=g-import-not-at-top


def run_dir(args, members):
  return os.path.join(args.runs_dir, f"k{args.k}_seed{args.seed}",
                      f"R{members}")


def flags(args, members):
  stage1 = args.stage1_dir or os.path.join(
      table1.REPO, "runs", "baselines", "stage1", f"k{args.k}_seed{args.seed}")
  return [f"--config={args.config}", "--config.method=gradmix_hard_label",
          f"--config.k={args.k}", f"--config.seed={args.seed}",
          f"--config.steps={args.steps}",
          f"--config.pseudo_label.members={members}",
          f"--config.pseudo_label.betas=({args.betas},)",
          f"--config.pseudo_label.gammas=({args.gammas},)",
          f"--config.pseudo_label.stage1_dir={stage1}"]


def load(args, members_list):
  found = {}
  for members in members_list:
    path = os.path.join(run_dir(args, members), "metrics.json")
    if os.path.isfile(path):
      with open(path) as f:
        found[members] = json.load(f)
  return found


def plot(found, path):
  """Test accuracy and hard pseudo-label count against R; False without
  matplotlib."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  members = sorted(found)
  figure, accuracy_axis = plt.subplots(figsize=(5, 3.2))
  accuracy_axis.plot(members, [100 * found[r]["test_accuracy"]
                               for r in members], "o-", label="test (final)")
  accuracy_axis.plot(members, [100 * found[r]["test_accuracy_at_best_hyperval"]
                               for r in members], "^:", label="test (best-H)")
  accuracy_axis.plot(members, [100 * found[r]["pseudo_labels"]
                               ["hard_accuracy"] for r in members], "s--",
                     label="pseudo-labels correct")
  accuracy_axis.set_xlabel("R (ensemble members)")
  accuracy_axis.set_ylabel("accuracy (%)")
  accuracy_axis.set_xticks(members)
  count_axis = accuracy_axis.twinx()
  count_axis.bar(members, [found[r]["pseudo_labels"]["num_hard"]
                           for r in members], alpha=0.2, color="grey")
  count_axis.set_ylabel("hard pseudo-labels")
  accuracy_axis.set_zorder(count_axis.get_zorder() + 1)
  accuracy_axis.patch.set_visible(False)
  accuracy_axis.legend(loc="lower right", fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)
  return True


def write_report(args, members_list):
  found = load(args, members_list)
  command = (f"python bench/r_ablation.py --k={args.k} --seed={args.seed} "
             f"--members={','.join(map(str, members_list))}")
  if args.config != "digits_mnistm":
    command += (f" --config={args.config} --stage1_dir={args.stage1_dir}"
                f" --runs_dir={args.runs_dir}")
  rows = ["| R | test final | test best-H | hard labels | of them correct |",
          "|---|---|---|---|---|"]
  for members in members_list:
    if members not in found:
      rows.append(f"| {members} | – | – | – | – |")
      continue
    result = found[members]
    record = result["pseudo_labels"]
    rows.append(
        f"| {members} | {100 * result['test_accuracy']:.2f} | "
        f"{100 * result['test_accuracy_at_best_hyperval']:.2f} | "
        f"{record['num_hard']} of {record['num_unlabelled']} | "
        f"{100 * record['hard_accuracy']:.2f} |")
  drawn = bool(found) and plot(found, args.png)
  text = TEMPLATE.format(
      k=args.k, seed=args.seed, betas=args.betas, gammas=args.gammas,
      steps=args.steps, table="\n".join(rows),
      figure=(f"![R ablation]({os.path.relpath(args.png, os.path.dirname(args.out))})"
              if drawn else "(figure not drawn: no finished run or no "
              "matplotlib)"),
      config=args.config, command=command)
  replace_block(args.out, per_config("fig4", args.config), text)
  print(text)


TEMPLATE = """## Fig. 4: the number R of ensemble members (`{config}`)

Hard-label pipeline, k={k}, seed {seed} (one seed: a measurement of this
seed, not a mean): stage 1 is the grid beta ({betas}) x gamma ({gammas}),
{steps} steps each, shared by every R; the top R by H label U (all agree,
each at probability >= 0.8); stage 2 trains from scratch on S1, S2, S_u and
V enlarged to 100 per class.

{table}

{figure}

Command (resumable):

    {command}
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="digits_mnistm")
  parser.add_argument("--k", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--members", default="1,2,3,4,5")
  parser.add_argument("--betas", default="5.0,10.0")
  parser.add_argument("--gammas", default="0.3,0.6,0.9")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--stage1_dir", default="",
                      help="default: runs/baselines/stage1/k<k>_seed<seed>")
  parser.add_argument("--runs_dir", default=os.path.join(
      table1.REPO, "runs", "r_ablation"))
  parser.add_argument("--png", default="",
                      help="default: docs/fig4_r_ablation.png, "
                      "docs/fig4_r_ablation_<config>.png for another twin")
  parser.add_argument("--out", default=os.path.join(table1.REPO, "docs",
                                                    "RESULTS.md"))
  parser.add_argument("--report_only", action="store_true")
  args = parser.parse_args()
  members_list = [int(r) for r in args.members.split(",")]
  if not args.png:
    args.png = os.path.join(table1.REPO, "docs",
                            per_config("fig4_r_ablation", args.config) + ".png")
  if not args.report_only:
    for members in members_list:
      status = runs.launch(run_dir(args, members), flags(args, members))
      print(f"R={members}: {status}", flush=True)
  write_report(args, members_list)


if __name__ == "__main__":
  main()
