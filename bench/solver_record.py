r"""How the exact, SLSQP and meta-SGD weights of a GradMix run behave.

    python bench/solver_record.py --config=digits_mnistm_mnist --seeds=0,1,2 \
        --solvers=exact,slsqp,meta_sgd --steps=2000

For each solver and seed, trains the run's first phase in this process with
the trainer's own compiled step (`exact` and `slsqp`: method `gradmix` with
`config.solver`; `meta_sgd`: method `gradmix_sgd`) and records every step:

* the normalised weights `w~ [layers, k]` the step used (its statistics);
* the mixed gradient of each trunk layer, `sum_i w~_i g_i^l`, from the
  source gradients at the step's starting weights on the step's batches
  (recomputed here with a tape of its own: cross-entropy of each source on
  its head, as the trainer's loss), and its cosine with the previous
  step's.

Per solver and trunk layer, over seeds and steps, it reports the share of
steps whose weights put (almost) everything on one source (largest weight
>= 0.99), the mean weight of each source, and the mean cosine between
consecutive mixed gradients; writes `--out` (JSON; resumable: finished
(solver, seed) records are kept) and, with matplotlib, `--plot`: for the
first seed, one column per solver, the running mean of the first source's
weight per trunk layer and its histogram over steps and layers. Final H
accuracy comes from the launcher's runs (`bench/health.py`), not from here.
"""

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from report import per_config, replace_block  # pylint: disable=g-import-not-at-top,wrong-import-position

ONE_SOURCE = 0.99      # a step "puts everything on one source" above this
METHOD_OF = {"exact": ("gradmix", "exact"), "slsqp": ("gradmix", "slsqp"),
             "meta_sgd": ("gradmix_sgd", "exact")}


def cosine(a, b):
  norm = np.linalg.norm(a) * np.linalg.norm(b)
  return float(np.dot(a, b) / norm) if norm > 0 else 0.0


def record_run(trainer, steps):
  """Per-step weights `[steps, layers, k]` and consecutive cosines
  `[steps - 1, layers]` of the first phase's GradMix steps."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from gradmix_tf.batches import batch_indices  # pylint: disable=g-import-not-at-top
  phase = trainer.phases[0]
  config, data = trainer.config, trainer.data
  steps = min(steps, phase.steps)
  streams = [batch_indices(len(s.y), int(config.batch_size),
                           [int(config.seed), i], 0, steps)
             for i, s in enumerate(data.sources)]
  trunk = trainer.model.trunk
  layers = [layer for layer in trunk.layers if layer.trainable_variables]
  loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  from gradmix_tf.multi_source_step import without_moving_statistics  # pylint: disable=g-import-not-at-top

  @tf.function
  def source_grads(batches):
    # Batch norm normalises with the batch, as in the step; the moving
    # statistics are put back so that this look does not change the run.
    grads = []
    for (x, y), source in zip(batches, data.sources):
      with tf.GradientTape() as tape:
        logits = without_moving_statistics(
            trainer.model,
            lambda x=x, h=source.head: trainer.model(x, head=h,
                                                     training=True))
        value = loss(y, logits)
      grads.append(tape.gradient(value, [v for layer in layers
                                         for v in layer.trainable_variables]))
    return grads

  def flat_per_layer(grads):
    out, start = [], 0
    for layer in layers:
      count = len(layer.trainable_variables)
      out.append(np.concatenate([np.ravel(g) for g in grads[start:
                                                            start + count]]))
      start += count
    return out

  weights, cosines, previous = [], [], None
  for row in range(steps):
    indices = [s[row] for s in streams]
    batches = [(tf.constant(s.x[i]), tf.constant(s.y[i]))
               for s, i in zip(data.sources, indices)]
    per_source = [flat_per_layer([g.numpy() for g in grads])
                  for grads in source_grads(batches)]
    stats = trainer.step_functions[0](tuple(tf.constant(i) for i in indices))
    trainer.step.assign(row + 1)
    w = stats["weights"].numpy()
    mixed = [sum(w[l, s] * per_source[s][l] for s in range(len(per_source)))
             for l in range(len(layers))]
    if previous is not None:
      cosines.append([cosine(a, b) for a, b in zip(mixed, previous)])
    previous = mixed
    weights.append(w)
  return np.asarray(weights), np.asarray(cosines), [l.name for l in layers]


def summarize(weights, cosines, layer_names, source_names):
  """Per layer: share of one-source steps, mean weights, mean cosine."""
  return {name: {
      "one_source_share": float(np.mean(weights[:, l, :].max(-1)
                                        >= ONE_SOURCE)),
      "mean_weight": {s: float(np.mean(weights[:, l, i]))
                      for i, s in enumerate(source_names)},
      "mean_consecutive_cosine": float(np.mean(cosines[:, l]))
                                 if len(cosines) else float("nan"),
  } for l, name in enumerate(layer_names)}


TEMPLATE = """\
### Why GradMix (exact) and GradMix SGD differ: the weights they put on the sources (`{config}`)

    {command}

`{config}`, k = {k}, seeds {seeds}, the first phase's {steps} steps of each
run recorded step by step (`bench/solver_record.py`): per solver and trunk
layer, the share of steps whose weights put >= {one_source} on one source,
the mean weight of each source, and the mean cosine between consecutive
steps' mixed gradients `sum_i w~_i g_i` (mean over seeds; range over seeds
in brackets). Plot, first seed, one column per solver: the running mean
over {smoothing} steps of the first source's weight per layer, and its
histogram over every step and layer.

| solver | seeds | layer | one-source steps | {weight_columns} | cosine, consecutive mixed gradients |
|---|---|---|---|{weight_rule}---|
{rows}

![source weights per step]({plot})

Final H and test accuracy of the launcher's runs of the same cells
(`bench/health.py`, 2000 steps; `slsqp`: `--extra=--config.solver=slsqp
--variant=slsqp`), per seed, and each solver against `exact` paired by seed
(points; Wilcoxon p, two-sided, cannot fall below 0.25 with 3 seeds):

| solver | seeds | final H % (per seed) | final H % mean | final test % mean | H − exact H (points, per seed) | Wilcoxon p |
|---|---|---|---|---|---|---|
{outcome_rows}
"""

# Where the launcher's runs of each solver are, under `--health_runs`:
# (variant folder, method).
HEALTH_RUNS = {"exact": ("default", "gradmix"),
               "slsqp": ("slsqp", "gradmix"),
               "meta_sgd": ("default", "gradmix_sgd")}


def final_accuracies(health_runs, solver, k, seeds):
  """`{seed: (final H, final test)}` of the finished runs of `solver`."""
  import table1  # pylint: disable=g-import-not-at-top
  variant, method = HEALTH_RUNS[solver]
  found = {}
  for seed in seeds:
    path = os.path.join(table1.run_dir(os.path.join(health_runs, variant),
                                       method, k, seed), "metrics.json")
    if os.path.isfile(path):
      with open(path) as f:
        metrics = json.load(f)
      found[seed] = (metrics["hyperval_accuracy"], metrics["test_accuracy"])
  return found


def outcome_rows(health_runs, solvers, k, seeds):
  """Markdown rows: each solver's final H / test, and H paired with exact."""
  import paired  # pylint: disable=g-import-not-at-top
  exact = {s: h for s, (h, _) in final_accuracies(
      health_runs, "exact", k, seeds).items()}
  rows = []
  for solver in solvers:
    found = final_accuracies(health_runs, solver, k, seeds)
    if not found:
      continue
    h = {s: v[0] for s, v in found.items()}
    cells = [", ".join(f"{s}: {100 * h[s]:.2f}" for s in sorted(h)),
             f"{100 * np.mean(list(h.values())):.2f}",
             f"{100 * np.mean([v[1] for v in found.values()]):.2f}"]
    if solver == "exact":
      cells += ["–", "–"]
    else:
      d = paired.paired_difference(h, exact)
      cells += [", ".join(f"{s}: {x:+.2f}" for s, x in zip(d["seeds"],
                                                           d["differences"])),
                f"{d['p']:.2f}"]
    rows.append(f"| {solver} | {','.join(map(str, sorted(h)))} | "
                + " | ".join(cells) + " |")
  return rows


def _spread(values, digits=2):
  values = np.asarray(values, float)
  return (f"{values.mean():.{digits}f} ({values.min():.{digits}f}-"
          f"{values.max():.{digits}f})")


def report_rows(result):
  """Markdown rows (solver, layer) of the summaries over seeds."""
  rows = []
  for solver, runs in result["solvers"].items():
    if not runs:
      continue
    summaries = [run["summary"] for _, run in sorted(runs.items())]
    for layer, first in summaries[0].items():
      cells = [_spread([100 * s[layer]["one_source_share"]
                        for s in summaries], 1) + " %"]
      cells += [_spread([s[layer]["mean_weight"][source] for s in summaries])
                for source in first["mean_weight"]]
      cells.append(_spread([s[layer]["mean_consecutive_cosine"]
                            for s in summaries], 3))
      rows.append(f"| {solver} | {','.join(sorted(runs, key=int))} | "
                  f"{layer} | " + " | ".join(cells) + " |")
  return rows


HOME = "digits_mnistm_mnist"   # the config whose names carry no suffix


def block_name(config):
  """`solver_record` for the twin, `solver_record_<config>` for another."""
  return per_config("solver_record", config, HOME)


def default_paths(args):
  """Fills --out, --plot and --health_runs left empty, per config (the
  twin keeps the names `solver_record.json` and `solver_weights.png`)."""
  docs = os.path.join(REPO, "docs")
  args.out = args.out or os.path.join(
      docs, per_config("solver_record", args.config, HOME) + ".json")
  args.plot = args.plot or os.path.join(
      docs, per_config("solver_weights", args.config, HOME) + ".png")
  args.health_runs = args.health_runs or os.path.join(
      docs, "run_records", "health", args.config)


def write_report(result, args):
  """The table of `result` into `args.results` (block `solver_record`, or
  `solver_record_<config>` for another config than the twin)."""
  runs = next(r for r in result["solvers"].values() if r)
  sources = list(next(iter(runs.values()))["summary"].values())[0][
      "mean_weight"]
  text = TEMPLATE.format(
      command=(f"python bench/solver_record.py --config={args.config} "
               f"--seeds={args.seeds} --solvers={args.solvers} --k={args.k} "
               f"--steps={args.steps}"),
      config=args.config, k=args.k, seeds=args.seeds, steps=args.steps,
      plot=os.path.relpath(args.plot, os.path.dirname(args.results)),
      one_source=ONE_SOURCE, smoothing=SMOOTHING,
      weight_columns=" | ".join(f"mean weight of {s}" for s in sources),
      weight_rule="---|" * len(sources), rows="\n".join(report_rows(result)),
      outcome_rows="\n".join(outcome_rows(
          args.health_runs, list(result["solvers"]), args.k,
          [int(s) for s in args.seeds.split(",")])))
  replace_block(args.results, block_name(args.config), text)
  print(text)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="digits_mnistm_mnist")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--solvers", default="exact,slsqp,meta_sgd")
  parser.add_argument("--k", type=int, default=2)
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--out", default="",
                      help="default: docs/solver_record[_<config>].json")
  parser.add_argument("--plot", default="",
                      help="default: docs/solver_weights[_<config>].png")
  parser.add_argument("--results", default=os.path.join(REPO, "docs",
                                                        "RESULTS.md"))
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument("--health_runs", default="",
                      help="bench/health.py's runs of this config: "
                      "<variant>/<method>/k<k>_seed<seed> (default: "
                      "docs/run_records/health/<config>)")
  args = parser.parse_args()
  default_paths(args)
  if args.report_only:
    with open(args.out) as f:
      result = json.load(f)
    plot_weights(result, args.plot)
    write_report(result, args)
    return
  import tempfile  # pylint: disable=g-import-not-at-top
  from gradmix_tf import config_lib  # pylint: disable=g-import-not-at-top
  from gradmix_tf.data import build_experiment  # pylint: disable=g-import-not-at-top
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  result = {"args": vars(args), "one_source_at": ONE_SOURCE, "solvers": {}}
  if os.path.isfile(args.out):      # resumable: finished (solver, seed) kept
    with open(args.out) as f:
      result["solvers"] = json.load(f).get("solvers", {})
  for solver in args.solvers.split(","):
    for seed in (int(s) for s in args.seeds.split(",")):
      done = result["solvers"].setdefault(solver, {})
      if str(seed) in done:
        continue
      method, solver_field = METHOD_OF[solver]
      config = config_lib.load_config(args.config)
      config.method, config.solver = method, solver_field
      config.k, config.seed = args.k, seed
      config = config_lib.resolve(config)
      data = build_experiment(config, seed=seed, k=args.k)
      with tempfile.TemporaryDirectory() as workdir:
        weights, cosines, names = record_run(build_runner(config, data, workdir),
                                             args.steps)
      done[str(seed)] = {
          "layers": names,
          "summary": summarize(weights, cosines, names,
                               [s.name for s in data.sources]),
          "weights": weights.round(4).tolist()}
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      with open(args.out + ".tmp", "w") as f:
        json.dump(result, f)
      os.replace(args.out + ".tmp", args.out)
      print(f"{solver} seed {seed}: "
            f"{json.dumps(done[str(seed)]['summary'])}", flush=True)
  plot_weights(result, args.plot)
  write_report(result, args)


SMOOTHING = 50     # steps in the plot's running mean


def plot_weights(result, path):
  """One column per solver (first seed): the running mean over SMOOTHING
  steps of source 1's weight per layer (top), and the histogram of that
  weight over every step and layer (bottom: at 0 and 1 the step put
  everything on one source)."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  solvers = [name for name, runs in result["solvers"].items() if runs]
  if not solvers:
    return
  fig, axes = plt.subplots(2, len(solvers), figsize=(5 * len(solvers), 6),
                           squeeze=False, sharey="row")
  window = np.ones(SMOOTHING) / SMOOTHING
  for column, solver in enumerate(solvers):
    seed = sorted(result["solvers"][solver], key=int)[0]
    run = result["solvers"][solver][seed]
    weights = np.asarray(run["weights"])
    top, bottom = axes[0][column], axes[1][column]
    for l, layer in enumerate(run["layers"]):
      top.plot(np.convolve(weights[:, l, 0], window, mode="valid"), lw=0.8,
               label=layer)
    top.set_title(f"{solver}, seed {seed}")
    top.set_xlabel("step")
    bottom.hist(weights[:, :, 0].ravel(), bins=20, range=(0, 1))
    bottom.set_xlabel("weight of source 1 (every step and layer)")
  axes[0][0].set_ylabel(f"weight of source 1, mean of {SMOOTHING} steps")
  axes[1][0].set_ylabel("steps x layers")
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  main()
