r"""Streaming input at full scale: host memory, input throughput, step time.

    python bench/input_pipeline.py --root=/work/standin      # writes docs/PERFORMANCE.md
    python bench/input_pipeline.py --root=/work/standin --report_only

1. Generates (once, resumable: a finished dataset has `DONE`) stand-ins of
   the action data in their official layouts (`gradmix_tf/data/actions.py`)
   at two sizes: `full`, with UCF101's 101 classes and 50,500 extracted
   frames as JPEG at UCF101's 320x240 (4,040 clips of 12 or 13 frames:
   30 train and 10 test clips per class), an MPII-sized folder (17,408
   training images with an activity, 1280x720, 410 activities) and a
   BU101-sized one (23,800 images, 400x300); and `fifth`, a fifth of each.
   Pixels are smooth colour fields with noise (JPEG sizes like photos').
2. Input throughput: images/s of the streamed pipeline alone
   (`ImageFiles.dataset`: read, decode, resize to 224x224, batches of 32,
   parallel map) on UCF101 frames and on MPII images.
3. Runs `--config=ucf101` (ResNet-18 at 224x224, random weights, k = 1,
   batch 8 per source, `--steps` steps, the first 40 test clips with every
   frame) from the launcher, each in its own process, and reads its peak
   resident memory (`ru_maxrss` of the child) and `median_step_seconds`
   (a step's wall time, waiting for its inputs included):
   GradMix streamed on both sizes (memory must not grow with the data),
   GradMix in memory on `fifth` (the same batches; streamed / in-memory
   step time must be <= 1.05), and plain training on the sources + V
   (`joint`) in memory on `fifth`, for GradMix (exact) / plain on
   ResNet-18 at 224x224. Every run is repeated `--rounds` times (2),
   rounds in turn.

Results go to `<root>/results.json` (a finished measurement is not redone)
and the table into docs/PERFORMANCE.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from report import replace_block  # pylint: disable=g-import-not-at-top,wrong-import-position

FULL = dict(classes=101, train_clips=30, test_clips=10, frames=(12, 13),
            mpii=17408, mpii_activities=410, bu101=23800)
SIZES = {"full": 1.0, "fifth": 0.2}
FRAME_SIZE = (240, 320)        # UCF101's frames, h x w
MPII_SIZE = (720, 1280)
BU101_SIZE = (300, 400)
VARIANTS = 6                   # distinct JPEGs per class and dataset


def _jpegs(rng, shape, count, quality=90):
  """`count` JPEG encodings of smooth colour fields with noise."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = []
  h, w = shape
  for _ in range(count):
    low = rng.uniform(0, 255, (h // 40 + 2, w // 40 + 2, 3)).astype(np.float32)
    field = tf.image.resize(low[None], (h, w), method="bicubic")[0].numpy()
    image = np.clip(field + rng.normal(0, 12, field.shape), 0, 255)
    out.append(tf.io.encode_jpeg(image.astype(np.uint8),
                                 quality=quality).numpy())
  return out


def _write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def generate(root, scale, seed=0):
  """The stand-in at `scale` of FULL under `root` (module docstring)."""
  from gradmix_tf.data import action_fixtures  # pylint: disable=g-import-not-at-top
  if os.path.isfile(os.path.join(root, "DONE")):
    return
  rng = np.random.default_rng(seed)
  classes = [f"Action{i:03d}" for i in range(FULL["classes"])]
  train_clips = max(2, round(FULL["train_clips"] * scale))
  test_clips = max(1, round(FULL["test_clips"] * scale))
  frames = {name: _jpegs(rng, FRAME_SIZE, VARIANTS) for name in classes}
  ucf = os.path.join(root, "ucf101")
  lists = os.path.join(ucf, "ucfTrainTestlist")
  os.makedirs(lists, exist_ok=True)
  with open(os.path.join(lists, "classInd.txt"), "w") as f:
    for i, name in enumerate(classes, start=1):
      f.write(f"{i} {name}\r\n")
  count = 0
  with open(os.path.join(lists, "trainlist01.txt"), "w") as train, open(
      os.path.join(lists, "testlist01.txt"), "w") as test:
    for label, name in enumerate(classes):
      for clip in range(train_clips + test_clips):
        group = 8 + clip if clip < train_clips else 1 + clip - train_clips
        stem = f"v_{name}_g{group:02d}_c01"
        if clip < train_clips:
          train.write(f"{name}/{stem}.avi {label + 1}\r\n")
        else:
          test.write(f"{name}/{stem}.avi\r\n")
        for frame in range(FULL["frames"][clip % 2]):
          _write(os.path.join(ucf, "frames", name, stem,
                              f"frame{frame + 1:06d}.jpg"),
                 frames[name][(clip + frame) % VARIANTS])
          count += 1
  mpii = os.path.join(root, "mpii")
  images = _jpegs(rng, MPII_SIZE, VARIANTS)
  entries = []
  activities = FULL["mpii_activities"]
  for i in range(round(FULL["mpii"] * scale)):
    name = f"{100000000 + i:09d}.jpg"
    _write(os.path.join(mpii, "images", name), images[i % VARIANTS])
    act_id = i % activities
    entries.append((name, (act_id, f"activity {act_id}", "category")))
  action_fixtures.write_mpii_annotation(mpii, entries, [1] * len(entries))
  images = _jpegs(rng, BU101_SIZE, VARIANTS)
  per_class = round(FULL["bu101"] * scale) // len(classes)
  for name in classes:
    for i in range(per_class):
      _write(os.path.join(root, "bu101", name, f"{name}_{i:05d}.jpg"),
             images[i % VARIANTS])
  with open(os.path.join(root, "DONE"), "w") as f:
    json.dump({"ucf101_frames": count, "mpii_images": len(entries),
               "bu101_images": per_class * len(classes)}, f)


def _counts(root):
  with open(os.path.join(root, "DONE")) as f:
    return json.load(f)


def _disk_bytes(root):
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(root) for f in files)


def throughput(root, size=224, images=2048, batch=32):
  """Images/s of the streamed pipeline on UCF101 frames and MPII images."""
  import glob  # pylint: disable=g-import-not-at-top
  from gradmix_tf.data import image_files  # pylint: disable=g-import-not-at-top
  out = {}
  for name, pattern in (("ucf101_frames", "ucf101/frames/*/*/*.jpg"),
                        ("mpii_images", "mpii/images/*.jpg")):
    paths = np.asarray(sorted(glob.glob(os.path.join(root, pattern)))[:images],
                       object)
    files = image_files.ImageFiles(paths, image_files.frame_image(size),
                                   (size, size, 3))
    data = files.dataset(batch_size=batch).prefetch(2)
    for _ in data.take(2):        # warm up the pipeline
      pass
    started = time.perf_counter()
    seen = sum(int(b["images"].shape[0]) for b in data)
    out[name] = seen / (time.perf_counter() - started)
  return out


def launch_run(root, workdir, method, pipeline, steps):
  """One launcher run; (metrics, peak RSS in MB)."""
  flags = ["--config=ucf101", f"--config.actions.root={root}",
           "--config.model.weights=random", f"--config.method={method}",
           f"--config.input_pipeline={pipeline}", "--config.k=1",
           "--config.batch_size=8", f"--config.steps={steps}",
           "--config.log_every=2", "--config.eval_every=100000",
           "--config.checkpoint_every=100000", "--config.max_test=40",
           f"--workdir={workdir}"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  os.makedirs(os.path.dirname(workdir), exist_ok=True)
  with open(os.path.join(os.path.dirname(workdir),
                         os.path.basename(workdir) + ".log"), "w") as log:
    process = subprocess.Popen([sys.executable, "-m", "gradmix_tf.launch",
                                *flags], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
  if status:
    raise SystemExit(f"run {workdir} failed ({status}); see its .log")
  with open(os.path.join(workdir, "metrics.json")) as f:
    metrics = json.load(f)
  return metrics, usage.ru_maxrss / 1024.0


RUNS = (  # (name, size, method, pipeline)
    ("gradmix_stream_fifth", "fifth", "gradmix", "stream"),
    ("gradmix_stream_full", "full", "gradmix", "stream"),
    ("gradmix_memory_fifth", "fifth", "gradmix", "memory"),
    ("joint_memory_fifth", "fifth", "joint", "memory"),
)
# Step times of separate runs vary by several per cent here: every run is
# repeated `--rounds` times (round r > 0 is stored as `<name>_r<r>`, rounds
# in turn), and the table shows the median over rounds of each run's
# median step (peak RSS: the largest).


def _round_names(name, rounds):
  return [name] + [f"{name}_r{r}" for r in range(1, rounds)]


def _over_rounds(results, name, rounds):
  """The run's record with step time the median over its rounds, RSS the
  largest, and every round's step time."""
  records = [results[n] for n in _round_names(name, rounds) if n in results]
  steps = [r["median_step_seconds"] for r in records]
  waits = [r["median_input_wait_seconds"] for r in records]
  return {**records[0], "median_step_seconds": float(np.median(steps)),
          "median_input_wait_seconds": float(np.median(waits)),
          "rss_mb": max(r["rss_mb"] for r in records), "rounds": steps}

TEMPLATE = """\
### Streaming input at full scale (issue 21)

    {command}

Stand-ins of the action data (`bench/input_pipeline.py` generates them:
UCF101's 101 classes with extracted JPEG frames at 320x240, an MPII-sized
folder at 1280x720, a BU101-sized one at 400x300, in the official layouts)
at two sizes; `--config=ucf101` (ResNet-18 at 224x224, random weights,
k = 1: 101 V frames a step, batch 8 per source, {steps} steps, the first
40 test clips with every frame) from the launcher, each run in its own
process, on this machine ({machine}). Peak RSS is the run's `ru_maxrss`;
step time is the median wall time of a step, waiting for its inputs
included; input wait is the median part of a step spent waiting for them
(`median_input_wait_seconds` in metrics.json).

| data | UCF101 frames | MPII | BU101 | on disk |
|---|---|---|---|---|
{sizes}

| run | pipeline | data | peak RSS (MB) | median step (s): over rounds (each round) | input wait (ms) | per-video test acc. |
|---|---|---|---|---|---|---|
{runs}

- Host memory with streaming: {rss_fifth:.0f} MB on `fifth`, {rss_full:.0f}
  MB on `full` (5x the files): {rss_growth:+.1f} %. In memory the same
  `fifth` run takes {rss_memory:.0f} MB; the full sources alone would take
  {full_memory_gb:.1f} GB decoded at 224x224 (and every test frame {test_memory_gb:.1f} GB).
- Streamed / in-memory step time on the same batches: {stream_ratio:.3f}x
  on `fifth`, {stream_ratio_full:.3f}x on `full` (bound 1.05x). A streamed
  step waits {wait_fifth:.1f} ms (`fifth`) and {wait_full:.1f} ms (`full`)
  for its inputs, {wait_share:.2f} % of the step.
- Input throughput of the streamed pipeline alone (read, decode, resize to
  224x224, 2 cores): {ucf_rate:.0f} UCF101 frames/s, {mpii_rate:.0f} MPII
  images/s; a GradMix step needs 16 source images and takes
  {gradmix_step:.2f} s, so the pipeline could feed
  {headroom:.0f}x the step rate (no stall).
- GradMix (exact) / plain (sources + V, `joint`) on ResNet-18 at 224x224:
  {gradmix_ratio:.3f}x ({gradmix_step:.2f} s / {joint_step:.2f} s, in
  memory).
"""


def report(root, results, steps, out, rounds=1):
  import platform  # pylint: disable=g-import-not-at-top
  results = {**results, **{name: _over_rounds(results, name, rounds)
                           for name, *_ in RUNS}}
  sizes = []
  for size in SIZES:
    counts = _counts(os.path.join(root, size))
    sizes.append(f"| `{size}` | {counts['ucf101_frames']:,} | "
                 f"{counts['mpii_images']:,} | {counts['bu101_images']:,} | "
                 f"{results['disk'][size] / 1e9:.2f} GB |")
  rows = []
  for name, size, method, pipeline in RUNS:
    r = results[name]
    each = ", ".join(f"{t:.2f}" for t in r["rounds"])
    rows.append(f"| {method} | {pipeline} | `{size}` | {r['rss_mb']:.0f} | "
                f"{r['median_step_seconds']:.2f} ({each}) | "
                f"{1000 * r['median_input_wait_seconds']:.1f} | "
                f"{100 * r['per_video_accuracy']:.1f} % |")
  full = _counts(os.path.join(root, "full"))
  image_bytes = 224 * 224 * 3
  test_frames = round(FULL["classes"] * FULL["test_clips"]
                      * np.mean(FULL["frames"]))
  fifth, whole = results["gradmix_stream_fifth"], results["gradmix_stream_full"]
  gradmix = results["gradmix_memory_fifth"]["median_step_seconds"]
  rate = min(results["throughput"].values())
  text = TEMPLATE.format(
      command=(f"python bench/input_pipeline.py --root={root} "
               f"--steps={steps} --rounds={rounds}"),
      steps=steps, machine=f"{os.cpu_count()} cores, {platform.machine()}",
      sizes="\n".join(sizes), runs="\n".join(rows),
      rss_fifth=fifth["rss_mb"], rss_full=whole["rss_mb"],
      rss_growth=100 * (whole["rss_mb"] / fifth["rss_mb"] - 1),
      rss_memory=results["gradmix_memory_fifth"]["rss_mb"],
      full_memory_gb=(full["mpii_images"] + full["bu101_images"])
      * image_bytes / 1e9,
      test_memory_gb=test_frames * image_bytes / 1e9,
      stream_ratio=fifth["median_step_seconds"] / gradmix,
      stream_ratio_full=whole["median_step_seconds"] / gradmix,
      wait_fifth=1000 * fifth["median_input_wait_seconds"],
      wait_full=1000 * whole["median_input_wait_seconds"],
      wait_share=100 * max(
          r["median_input_wait_seconds"] / r["median_step_seconds"]
          for r in (fifth, whole)),
      ucf_rate=results["throughput"]["ucf101_frames"],
      mpii_rate=results["throughput"]["mpii_images"],
      gradmix_step=gradmix, headroom=rate * gradmix / 16,
      gradmix_ratio=gradmix
      / results["joint_memory_fifth"]["median_step_seconds"],
      joint_step=results["joint_memory_fifth"]["median_step_seconds"])
  replace_block(out, "input_pipeline", text)
  print(text)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", required=True,
                      help="where the stand-ins and runs go (outside the repo)")
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--out", default=os.path.join(REPO, "docs",
                                                    "PERFORMANCE.md"))
  parser.add_argument("--report_only", action="store_true")
  args = parser.parse_args()
  path = os.path.join(args.root, "results.json")
  results = {}
  if os.path.isfile(path):
    with open(path) as f:
      results = json.load(f)

  def save():
    with open(path + ".tmp", "w") as f:
      json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)

  if not args.report_only:
    for size, scale in SIZES.items():
      started = time.time()
      generate(os.path.join(args.root, size), scale)
      print(f"stand-in {size}: {_counts(os.path.join(args.root, size))} "
            f"({time.time() - started:.0f} s)", flush=True)
    results.setdefault("disk", {s: _disk_bytes(os.path.join(args.root, s))
                                for s in SIZES})
    if "throughput" not in results:
      results["throughput"] = throughput(os.path.join(args.root, "full"))
      save()
    print("throughput", results["throughput"], flush=True)
    for round_index in range(args.rounds):
      for base, size, method, pipeline in RUNS:
        name = _round_names(base, args.rounds)[round_index]
        if name in results:
          continue
        metrics, rss = launch_run(os.path.join(args.root, size),
                                  os.path.join(args.root, "runs", name),
                                  method, pipeline, args.steps)
        results[name] = {"rss_mb": rss, **{
          key: metrics[key] for key in (
                "median_step_seconds", "median_input_wait_seconds",
                "per_video_accuracy",
                "per_frame_accuracy", "wall_seconds", "num_examples")}}
        save()
        print(name, results[name], flush=True)
  report(args.root, results, args.steps, args.out, args.rounds)


if __name__ == "__main__":
  main()
