"""Seed-by-seed comparisons of two methods: mean difference, Wilcoxon p.

Two runs with the same seed share V and the initial weights, so methods are
compared on their per-seed differences `d_s = a_s - b_s` (points): the mean
and its standard error, how many seeds `a` wins, and the two-sided Wilcoxon
signed-rank p-value of `scipy.stats.wilcoxon(d)` (exact for small n without
ties or zeros; zero differences are dropped, Wilcoxon's own convention).
"""

import numpy as np
from scipy import stats

# The comparisons issue 17 asks for: GradMix against each of its rivals.
PAIRS = (("gradmix", "fine_tune"), ("gradmix", "gradmix_sgd"),
         ("gradmix", "gradmix_no_adalr"))


def paired_difference(a_by_seed, b_by_seed):
  """`{seeds, differences, mean, se, wins, p}` over the seeds both have.

  Args:
    a_by_seed, b_by_seed: `{seed: accuracy in [0, 1]}`.
  """
  seeds = sorted(set(a_by_seed) & set(b_by_seed))
  d = np.array([100.0 * (a_by_seed[s] - b_by_seed[s]) for s in seeds])
  result = dict(seeds=seeds, differences=d.tolist(),
                mean=float(d.mean()) if len(d) else float("nan"),
                se=float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1
                else float("nan"),
                wins=int(np.sum(d > 0)), p=float("nan"))
  if np.count_nonzero(d) >= 1:
    result["p"] = float(stats.wilcoxon(d).pvalue)
  return result


def paired_rows(values, labels, ks, pairs=PAIRS):
  """Markdown rows of `paired_difference` for each pair and k.

  Args:
    values: `{(method, k): {seed: accuracy}}`; source only under any k.
    labels: display names of the methods.
  """
  rows = ["| comparison | k | seeds | mean difference (points, ± s.e.) | "
          "wins | Wilcoxon p | per seed (points) |",
          "|---|---|---|---|---|---|---|"]
  for a, b in pairs:
    for k in ks:
      found = paired_difference(values.get((a, k), {}), values.get((b, k), {}))
      if not found["seeds"]:
        continue
      per_seed = ", ".join(f"{s}: {d:+.1f}" for s, d in
                           zip(found["seeds"], found["differences"]))
      rows.append(
          f"| {labels.get(a, a)} − {labels.get(b, b)} | {k} | "
          f"{len(found['seeds'])} | {found['mean']:+.2f} ± {found['se']:.2f} "
          f"| {found['wins']}/{len(found['seeds'])} | {found['p']:.3f} | "
          f"{per_seed} |")
  return rows
