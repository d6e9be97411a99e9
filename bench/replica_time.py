r"""GradMix step time on one device vs two replicas (MirroredStrategy).

    python bench/replica_time.py [--steps=60]

Each mode runs in its own process (logical CPU devices must be configured
before TensorFlow starts): `single` is the default strategy, `mirrored`
splits the CPU into two logical devices. Same global batch (32 per source,
V = 10) and the digit ConvNet. On a 2-core CPU the two replicas share the
same cores, so no speed-up is expected; the point of the 2-replica path is
correctness (tests/test_distributed.py).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(mode, steps):
  sys.path.insert(0, REPO)
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from gradmix_tf import distribute  # pylint: disable=g-import-not-at-top
  import step_time  # pylint: disable=g-import-not-at-top
  config = step_time.bench_config(dict(
      distribution="default" if mode == "single" else "mirrored",
      logical_cpus=0 if mode == "single" else 2))
  strategy = distribute.make_strategy(config)
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  from gradmix_tf.batches import batch_indices  # pylint: disable=g-import-not-at-top
  data = step_time.bench_data(config)
  trainer = build_runner(config, data, f"/tmp/gradmix_replicas_{os.getpid()}",
                    strategy=strategy)
  fn = trainer.step_functions[0]
  streams = [batch_indices(len(s.y), 32, [0, i], 0, steps + 10)
             for i, s in enumerate(data.sources)]
  times = []
  for step in range(steps + 10):
    start = time.perf_counter()
    out = fn(tuple(tf.constant(s[step]) for s in streams))
    out["eta"].numpy()
    times.append(time.perf_counter() - start)
  print(json.dumps({"mode": mode, "replicas": strategy.num_replicas_in_sync,
                    "median_ms": 1000 * float(np.median(times[10:])),
                    "min_ms": 1000 * float(np.min(times[10:])),
                    "max_ms": 1000 * float(np.max(times[10:]))}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.child, args.steps)
    return
  for mode in ("single", "mirrored"):
    out = subprocess.run([sys.executable, __file__, f"--child={mode}",
                          f"--steps={args.steps}"], capture_output=True,
                         text=True, check=True)
    print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
  main()
