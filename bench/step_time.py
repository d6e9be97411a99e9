r"""Step time of GradMix against plain multi-source training.

    python bench/step_time.py                 # writes docs/PERFORMANCE.md
    python bench/step_time.py --rounds=5      # a quick look

Measures, on the digit ConvNet with the `digits_mnistm` batch sizes (32 per
source, V = 5k images, k = 2 shots here):

1. the train step of plain source-only training, plain training on the
   sources plus the V batch (the floor: same examples forward and backward,
   one summed update), and GradMix with each solver and without AdaLR,
   timed interleaved (A, B, C, ... A, B, C, ...) after warm-up, in one
   process. Each round times a block of steps of every variant; ratios are
   taken within a round, then the median / min / max over rounds is shown;
2. peak memory of each variant, in a subprocess of its own (peak RSS);
3. the weight solve alone for 60 layers and k = 2, 3, 4, 8, exact vs SLSQP,
   with the cosine objective each reaches;
4. step time as the number of sources grows (k = 2, 4, 8 sources made from
   the same data), GradMix (exact) and the plain floor, plus a PNG;
5. the levers: eager vs compiled step, XLA (`jit_compile`) vs graph, and
   the host work per step (drawing the batch indices);
6. the `fit()` path: `MultiSourceModel`'s compiled train function (what
   `model.fit` calls each step, its batches gathered by a prefetching
   `tf.data` pipeline) against the runner's GradMix step on the same
   batches (`--only=fit` runs this part alone).

Every step uses the trainer's own compiled step functions
(`gradmix_tf.runner.Runner`), so what is timed is what trains.
"""

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from gradmix_tf import config_lib, solvers  # pylint: disable=g-import-not-at-top,wrong-import-position
from gradmix_tf.data import build_experiment  # pylint: disable=g-import-not-at-top,wrong-import-position
from gradmix_tf.models import AllHeads  # pylint: disable=g-import-not-at-top,wrong-import-position
from gradmix_tf.multi_source_model import MultiSourceModel, as_fit_element  # pylint: disable=g-import-not-at-top,wrong-import-position
from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top,wrong-import-position
from gradmix_tf.batches import batch_indices  # pylint: disable=g-import-not-at-top,wrong-import-position
from gradmix_tf.tasks.multi_source import make_gradmix  # pylint: disable=g-import-not-at-top,wrong-import-position
from report import replace_block  # pylint: disable=g-import-not-at-top,wrong-import-position

# name -> config overrides of digits_mnistm
VARIANTS = {
    "plain (sources)": dict(method="source_only"),
    "plain (sources + V)": dict(method="joint"),
    "GradMix (exact)": dict(method="gradmix"),
    "GradMix (slsqp)": dict(method="gradmix", solver="slsqp"),
    "GradMix SGD (meta_sgd)": dict(method="gradmix_sgd"),
    "GradMix w/o AdaLR (exact)": dict(method="gradmix_no_adalr"),
}
FLOOR = "plain (sources + V)"
SOURCE_ONLY = "plain (sources)"


def bench_config(overrides):
  """The resolved `digits_mnistm` config (k = 2) with dotted `overrides`."""
  config = config_lib.load_config("digits_mnistm")
  config.k = 2
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    section = config
    for parent in parents:
      section = section[parent]
    section[leaf] = value
  return config_lib.resolve(config)


_BENCH_DATA = {}


def bench_data(config):
  """The experiment's data (built once per process)."""
  if "data" not in _BENCH_DATA:
    _BENCH_DATA["data"] = build_experiment(config, seed=0, k=int(config.k))
  return _BENCH_DATA["data"]


def with_sources(data, k):
  """The experiment with its sources repeated to make `k` sources."""
  sources = [dataclasses.replace(data.sources[i % len(data.sources)],
                                 name=f"s{i}") for i in range(k)]
  return dataclasses.replace(data, sources=tuple(sources))


class Stepper:
  """One variant's compiled step with its stream of batch indices."""

  def __init__(self, overrides, data, workdir, steps=100000):
    config = bench_config(overrides)
    self.trainer = build_runner(config, data, workdir)
    self.fn = self.trainer.step_functions[0]
    self.streams = [batch_indices(len(s.y), int(config.batch_size), [0, i], 0,
                                  steps) for i, s in enumerate(data.sources)]
    self.position = 0

  def indices(self):
    row = self.position % len(self.streams[0])
    self.position += 1
    return tuple(tf.constant(stream[row]) for stream in self.streams)

  def run(self, steps):
    """Seconds per step over `steps` steps (results forced to the host)."""
    start = time.perf_counter()
    for _ in range(steps):
      out = self.fn(self.indices())
    next(iter(out.values())).numpy()
    return (time.perf_counter() - start) / steps


class FitStepper:
  """`model.fit`'s step: MultiSourceModel's train function, same batches."""

  def __init__(self, data, workdir, steps=100000):
    import keras  # pylint: disable=g-import-not-at-top
    config = bench_config(VARIANTS["GradMix (exact)"])
    twin = build_runner(config, data, workdir)
    self.model = MultiSourceModel(
        AllHeads(twin.model), {s.name: s.head for s in data.sources},
        validation_output=data.target_head)
    self.model.compile(
        optimizer=make_gradmix(config, "gradmix"),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False)
    streams = tuple(batch_indices(len(s.y), int(config.batch_size), [0, i],
                                  0, steps)
                    for i, s in enumerate(data.sources))
    images = [tf.constant(s.x) for s in data.sources]
    labels = [tf.constant(s.y) for s in data.sources]
    validation = (tf.constant(data.v.images), tf.constant(data.v.labels))
    names = [s.name for s in data.sources]

    def element(*indices):
      batches = {name: (tf.gather(x, i), tf.gather(y, i))
                 for name, x, y, i in zip(names, images, labels, indices)}
      batches["validation"] = validation
      return as_fit_element(batches)

    self.iterator = iter(tf.data.Dataset.from_tensor_slices(streams)
                         .map(element).repeat().prefetch(tf.data.AUTOTUNE))
    self.model.make_train_function()
    self.fn = self.model.train_function

  def run(self, steps):
    start = time.perf_counter()
    for _ in range(steps):
      logs = self.fn(self.iterator)
    next(iter(logs.values())).numpy()
    return (time.perf_counter() - start) / steps


def fit_table(args, workdir):
  """fit()'s step against the runner's GradMix step, interleaved."""
  data = bench_data(bench_config({}))
  steppers = {"runner": Stepper(VARIANTS["GradMix (exact)"], data,
                                os.path.join(workdir, "runner")),
              "fit": FitStepper(data, os.path.join(workdir, "fit"))}
  times = interleaved(steppers, args.rounds, args.block, args.warmup)
  return {"runner_ms": spread(1000 * times["runner"]),
          "fit_ms": spread(1000 * times["fit"]),
          "ratio": spread(times["fit"] / times["runner"])}


NORM_VARIANTS = {
    "plain (sources + V), no norm": dict(method="joint", **{"model.norm":
                                                           "none"}),
    "GradMix (exact), no norm": dict(method="gradmix", **{"model.norm":
                                                        "none"}),
    "plain (sources + V), batch norm": dict(method="joint", **{
        "model.norm": "batch"}),
    "GradMix (exact), batch norm": dict(method="gradmix", **{
        "model.norm": "batch"}),
}


def norm_table(args, workdir):
  """Step times with and without batch norm in the digit trunk."""
  data = bench_data(bench_config({}))
  steppers = {name: Stepper(overrides, data, os.path.join(workdir, f"n{i}"))
              for i, (name, overrides) in enumerate(NORM_VARIANTS.items())}
  times = interleaved(steppers, args.rounds, args.block, args.warmup)
  base = times["GradMix (exact), no norm"]
  return [{"variant": name, "ms": spread(1000 * t),
           "vs_gradmix_no_norm": spread(t / base)}
          for name, t in times.items()], {
              norm: spread(times[f"GradMix (exact), {norm}"]
                           / times[f"plain (sources + V), {norm}"])
              for norm in ("no norm", "batch norm")}


def write_norm_report(args, rows, overheads):
  lines = [
      "## Batch norm in the digit trunk (`--config.model.norm`)",
      "",
      "The digit ConvNet without normalisation and with batch norm without "
      "affine before each ReLU (`models.digit_convnet_trunk`), on the "
      "`digits_mnistm` batches, interleaved: "
      f"{args.rounds} rounds of {args.block} steps after {args.warmup} "
      "warm-up steps; median (min–max).",
      "",
      "| variant | ms / step | / GradMix (exact), no norm |",
      "|---|---|---|"]
  for row in rows:
    lines.append(f"| {row['variant']} | {fmt(row['ms'])} | "
                 f"{fmt(row['vs_gradmix_no_norm'], 'x')} |")
  lines += ["", "GradMix (exact) / plain (sources + V): "
            + "; ".join(f"{norm} {fmt(ratio, 'x')}"
                        for norm, ratio in overheads.items()) + ".", "",
            f"Machine: {machine()}. {args.load_note} Command:", "",
            f"    {args.command}", ""]
  text = "\n".join(lines)
  replace_block(os.path.join(REPO, "docs", "PERFORMANCE.md"), "norm_cost",
                text)
  print(text)


def write_fit_report(args, row):
  text = "\n".join([
      "## The `fit()` path",
      "",
      "`MultiSourceModel`'s compiled train function (the step `model.fit` "
      "runs, `jit_compile=False`; its batches gathered by a prefetching "
      "`tf.data` pipeline) against the runner's GradMix (exact) step, on "
      "the same batches of `digits_mnistm` (2 x 32 source images, V = 10), "
      f"interleaved: {args.rounds} rounds of {args.block} steps each after "
      f"{args.warmup} warm-up steps; median (min–max).",
      "",
      "| path | ms / step |",
      "|---|---|",
      f"| runner (`Runner` GradMix step) | {fmt(row['runner_ms'])} |",
      f"| `fit()` (`MultiSourceModel.train_function`) | {fmt(row['fit_ms'])} |",
      f"| fit / runner | {fmt(row['ratio'], 'x')} |",
      "",
      f"Machine: {machine()}. {args.load_note} Command:",
      "",
      f"    {args.command}",
      ""])
  replace_block(os.path.join(REPO, "docs", "PERFORMANCE.md"), "fit_path",
                text)
  print(text)


def interleaved(steppers, rounds, block, warmup):
  for stepper in steppers.values():
    stepper.run(warmup)
  times = {name: [] for name in steppers}
  for _ in range(rounds):
    for name, stepper in steppers.items():
      times[name].append(stepper.run(block))
  return {name: np.asarray(t) for name, t in times.items()}


def spread(values):
  return float(np.median(values)), float(np.min(values)), float(np.max(values))


def step_table(args, workdir):
  data = bench_data(bench_config({}))
  steppers = {name: Stepper(overrides, data, os.path.join(workdir, str(i)))
              for i, (name, overrides) in enumerate(VARIANTS.items())}
  times = interleaved(steppers, args.rounds, args.block, args.warmup)
  rows = []
  for name, t in times.items():
    rows.append({
        "variant": name,
        "ms": spread(1000 * t),
        "vs_floor": spread(t / times[FLOOR]),
        "vs_source_only": spread(t / times[SOURCE_ONLY]),
    })
  return rows


def peak_memory(args):
  """Peak RSS of each variant, each in its own process."""
  peaks = {}
  for name in VARIANTS:
    out = subprocess.run(
        [sys.executable, __file__, "--memory_of", name,
         f"--warmup={args.warmup}"], capture_output=True, text=True,
        check=True, cwd=REPO)
    peaks[name] = json.loads(out.stdout.strip().splitlines()[-1])
  return peaks


def _status_kib(field):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(name, warmup):
  """Peak RSS while stepping, and how far above the RSS before stepping.

  The data set dominates the process (all of MNIST-M is loaded), so the
  kernel's high-water mark is reset (`/proc/self/clear_refs`, value 5)
  after the data and the model are built and one step has traced the
  function; what is left is the cost of stepping.
  """
  data = bench_data(bench_config({}))
  stepper = Stepper(VARIANTS[name], data, f"/tmp/gradmix_bench_mem_{os.getpid()}")
  stepper.run(1)
  before = _status_kib("VmRSS")
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    reset = True
  except OSError:
    reset = False
  stepper.run(warmup + 10)
  peak = _status_kib("VmHWM") if reset else (
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
  print(json.dumps({"peak_mib": peak / 1024.0,
                    "above_start_mib": (peak - before) / 1024.0}))


def solver_table(repeats):
  rng = np.random.default_rng(0)
  rows = []
  for k in (2, 3, 4, 8):
    grads = rng.normal(size=(60, k, 200))
    val = (np.einsum("lkn,lk->ln", grads, rng.uniform(-0.5, 1, (60, k)))
           + 0.5 * rng.normal(size=(60, 200)))
    gram = tf.constant(np.einsum("lkn,ljn->lkj", grads, grads), tf.float32)
    cross = tf.constant(np.einsum("lkn,ln->lk", grads, val), tf.float32)
    v_sq = tf.constant(np.einsum("ln,ln->l", val, val), tf.float32)
    timings, objective = {}, {}
    for solver in ("exact", "slsqp"):
      fn = tf.function(lambda g, c, s=solver: solvers.solve_mix_weights(g, c, s))
      weights = fn(gram, cross)
      samples = []
      for _ in range(repeats):
        start = time.perf_counter()
        fn(gram, cross).numpy()
        samples.append(time.perf_counter() - start)
      timings[solver] = 1000 * float(np.median(samples))
      objective[solver] = solvers.mixed_cosine(
          tf.cast(gram, tf.float64), tf.cast(cross, tf.float64),
          tf.cast(v_sq, tf.float64), tf.cast(weights, tf.float64)).numpy()
    rows.append({
        "k": k, "exact_ms": timings["exact"], "slsqp_ms": timings["slsqp"],
        "speedup": timings["slsqp"] / timings["exact"],
        "max_objective_gap": float(np.max(np.abs(objective["exact"]
                                                 - objective["slsqp"]))),
        "exact_not_worse": bool(np.all(objective["exact"]
                                       >= objective["slsqp"] - 1e-6)),
    })
  return rows


def k_table(args, workdir):
  data = bench_data(bench_config({}))
  rows = []
  for k in (2, 4, 8):
    data_k = with_sources(data, k)
    steppers = {
        FLOOR: Stepper(VARIANTS[FLOOR], data_k, os.path.join(workdir, f"f{k}")),
        "GradMix (exact)": Stepper(VARIANTS["GradMix (exact)"], data_k,
                                   os.path.join(workdir, f"g{k}")),
    }
    times = interleaved(steppers, max(args.rounds // 2, 3), args.block,
                        args.warmup)
    rows.append({"k": k,
                 "floor_ms": 1000 * float(np.median(times[FLOOR])),
                 "gradmix_ms": 1000 * float(np.median(times["GradMix (exact)"])),
                 "ratio": spread(times["GradMix (exact)"] / times[FLOOR])})
  return rows


def lever_table(args, workdir):
  data = bench_data(bench_config({}))
  rows = []
  # Compiled vs eager: the whole step in one tf.function or op by op.
  compiled = Stepper(VARIANTS["GradMix (exact)"], data,
                     os.path.join(workdir, "c"))
  eager = Stepper(VARIANTS["GradMix (exact)"], data, os.path.join(workdir, "e"))
  eager.fn = eager.fn.python_function
  times = interleaved({"compiled": compiled, "eager": eager},
                      max(args.rounds // 3, 3), max(args.block // 2, 2),
                      args.warmup)
  rows.append(("GradMix step in one `tf.function` (after) vs op by op in "
               "eager mode (before)", times["eager"], times["compiled"]))
  # XLA.
  for name in (FLOOR, "GradMix (exact)"):
    graph = Stepper(VARIANTS[name], data, os.path.join(workdir, f"x0{name}"))
    xla = Stepper(dict(VARIANTS[name], jit_compile=True), data,
                  os.path.join(workdir, f"x1{name}"))
    times = interleaved({"graph": graph, "xla": xla},
                        max(args.rounds // 2, 3), args.block, args.warmup)
    rows.append((f"{name}: `jit_compile=True` (after) vs graph (before)",
                 times["graph"], times["xla"]))
  # Host work per step: the index draw that replaces an input pipeline.
  start = time.perf_counter()
  for _ in range(200):
    compiled.indices()
  host = (time.perf_counter() - start) / 200
  return rows, host


def machine():
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return (f"{cpu}, {os.cpu_count()} cores visible, TensorFlow {tf.__version__}"
          f", Python {platform.python_version()}, CPU only")


def fmt(triple, unit=""):
  median, low, high = triple
  return f"{median:.3f}{unit} ({low:.3f}–{high:.3f})"


def write_report(args, steps, memory, solver_rows, k_rows, levers, host,
                 plot):
  by_name = {row["variant"]: row for row in steps}
  headline = by_name["GradMix (exact)"]["vs_floor"][0]
  paper = by_name["GradMix (exact)"]["vs_source_only"][0]
  lines = [
      "# Performance",
      "",
      f"GradMix (exact) / plain (sources + V): {headline:.2f}x",
      "",
      f"GradMix (exact) / plain source-only: {paper:.2f}x (the paper reports "
      "about 1.40x for its implementation).",
      "",
      f"Machine: {machine()}. Command:",
      "",
      f"    {args.command}",
      "",
      "## Step time",
      "",
      "Digit ConvNet (`digits_mnistm`: 28x28x3, 2 sources x 32 images, "
      "V = 10 images). Median over rounds (min–max in brackets); each round "
      f"times {args.block} steps of every variant in turn, {args.rounds} "
      f"rounds after {args.warmup} warm-up steps. Memory: peak RSS while "
      "stepping, in a process that runs only that variant, and how far it "
      "rises above the RSS before stepping (the whole data set, about 4 GiB "
      "with all of MNIST-M, is resident in every process).",
      "",
      "| variant | ms / step | / plain (sources + V) | / plain (sources) | "
      "peak RSS (MiB) | rise while stepping (MiB) |",
      "|---|---|---|---|---|---|",
  ]
  for row in steps:
    mem = memory.get(row["variant"], {})
    lines.append(
        f"| {row['variant']} | {fmt(row['ms'])} | {fmt(row['vs_floor'], 'x')}"
        f" | {fmt(row['vs_source_only'], 'x')} | "
        f"{mem.get('peak_mib', float('nan')):.0f} | "
        f"{mem.get('above_start_mib', float('nan')):.1f} |")
  lines += [
      "",
      "## The weight solve alone (60 layers)",
      "",
      "Random Gram forms with partly aligned gradients; `exact` is the "
      "in-graph NNLS, `slsqp` scipy through `tf.py_function`. The objective "
      "gap is the largest difference of the per-layer cosine (Eq. 6) between "
      "the two solutions.",
      "",
      "| k | exact (ms) | slsqp (ms) | exact speed-up | max objective gap | "
      "exact >= slsqp |",
      "|---|---|---|---|---|---|",
  ]
  for row in solver_rows:
    lines.append(
        f"| {row['k']} | {row['exact_ms']:.2f} | {row['slsqp_ms']:.1f} | "
        f"{row['speedup']:.0f}x | {row['max_objective_gap']:.1e} | "
        f"{row['exact_not_worse']} |")
  lines += [
      "",
      "## Growth with the number of sources",
      "",
      "k sources made by repeating the two digit sources (32 images each).",
      "",
      "| k | plain (sources + V) ms | GradMix (exact) ms | ratio |",
      "|---|---|---|---|",
  ]
  for row in k_rows:
    lines.append(f"| {row['k']} | {row['floor_ms']:.1f} | "
                 f"{row['gradmix_ms']:.1f} | {fmt(row['ratio'], 'x')} |")
  lines += ["", f"![step time against k]({plot})", "", "## Levers", "",
            "| lever | before (ms) | after (ms) | after / before |",
            "|---|---|---|---|"]
  for name, before, after in levers:
    lines.append(f"| {name} | {1000 * np.median(before):.1f} | "
                 f"{1000 * np.median(after):.1f} | "
                 f"{np.median(after / before):.2f}x |")
  lines += [
      "",
      f"Host work per step: {1e6 * host:.0f} µs to draw the batch indices "
      "and hand them to the step. The images live in device memory "
      "(`tf.constant` captured by the step) and are gathered inside the "
      "compiled step, so there is no input pipeline to starve it; V is "
      "a constant of the step (cached by construction).",
      "",
      "No forward pass is recomputed: each source and V go through the trunk "
      "once, on their own examples, and each source's backward pass covers "
      "only its own examples, so the FLOPs of the GradMix step equal those "
      "of the plain (sources + V) step. The digit ConvNet here has "
      f"`model.norm={bench_config({}).model.norm!r}` (the config's protocol, "
      f"`{bench_config({}).protocol}`); with batch norm each source and V are "
      "normalised with their own batch, and V's pass puts the moving "
      "statistics back (see \"Batch norm in the digit trunk\").",
      "",
  ]
  text = "\n".join(lines[2:])  # the "# Performance" title stays outside
  replace_block(os.path.join(REPO, "docs", "PERFORMANCE.md"), "step_time",
                text)
  print(text)


def plot_k(k_rows):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ks = [row["k"] for row in k_rows]
  fig, axis = plt.subplots(figsize=(5, 3.5))
  axis.plot(ks, [row["floor_ms"] for row in k_rows], "o--",
            label="plain (sources + V)")
  axis.plot(ks, [row["gradmix_ms"] for row in k_rows], "o-",
            label="GradMix (exact)")
  axis.set_xlabel("number of sources k")
  axis.set_ylabel("ms per step")
  axis.set_xticks(ks)
  axis.legend()
  fig.tight_layout()
  path = os.path.join(REPO, "docs", "step_time_vs_k.png")
  fig.savefig(path, dpi=110)
  return os.path.basename(path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--block", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=10)
  parser.add_argument("--solver_repeats", type=int, default=20)
  parser.add_argument("--memory_of", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--only", choices=("fit", "norm"), default=None,
                      help="run one part alone (fit: the fit() path; norm: "
                      "batch norm's cost in the digit trunk)")
  parser.add_argument("--load_note", default="",
                      help="what else ran on the machine, for the report")
  args = parser.parse_args()
  if args.memory_of:
    memory_child(args.memory_of, args.warmup)
    return
  args.command = "python bench/step_time.py " + " ".join(sys.argv[1:])
  workdir = f"/tmp/gradmix_bench_{os.getpid()}"
  if args.only == "fit":
    write_fit_report(args, fit_table(args, workdir))
    return
  if args.only == "norm":
    write_norm_report(args, *norm_table(args, workdir))
    return
  steps = step_table(args, workdir)
  solver_rows = solver_table(args.solver_repeats)
  k_rows = k_table(args, workdir)
  levers, host = lever_table(args, workdir)
  memory = peak_memory(args)
  write_report(args, steps, memory, solver_rows, k_rows, levers, host,
               plot_k(k_rows))


if __name__ == "__main__":
  main()
