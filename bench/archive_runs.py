r"""Keeps the record of finished runs small enough to commit.

Copies, for every run under `--runs_dir` that finished (its `metrics.json`
exists), `metrics.json`, `config.json` and the TensorBoard scalars (`tb/`)
to the same place under `--out`, leaving checkpoints behind:

    python bench/archive_runs.py --runs_dir=runs/health/digits_mnistm_mnist/default \
        --out=docs/run_records/health/digits_mnistm_mnist/default

The reports read an archive as they read the runs (`bench/health.py
--runs_dir=<archive> --report_only`, `bench/fig3.py --runs_dir=<archive>`),
and copying an archive into a runs folder lets `bench/health.py` go on
where it stopped (`runs.launch` skips a run whose `metrics.json` exists).
"""

import argparse
import os
import shutil

KEPT_FILES = ("metrics.json", "config.json", "grid.json", "grid.md",
              "pseudo_labels.json")   # the last three: label pipelines
KEPT_FOLDERS = ("tb",)


def archive(runs_dir, out):
  """Copies the kept files of every finished run; returns how many runs."""
  count = 0
  for folder, _, files in os.walk(runs_dir):
    if "metrics.json" not in files:
      continue
    target = os.path.join(out, os.path.relpath(folder, runs_dir))
    os.makedirs(target, exist_ok=True)
    for name in KEPT_FILES:
      if name in files:
        shutil.copy2(os.path.join(folder, name), target)
    for name in KEPT_FOLDERS:
      source = os.path.join(folder, name)
      if os.path.isdir(source):
        shutil.copytree(source, os.path.join(target, name),
                        dirs_exist_ok=True)
    count += 1
  return count


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs_dir", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  print(f"archived {archive(args.runs_dir, args.out)} finished runs to "
        f"{args.out}")


if __name__ == "__main__":
  main()
