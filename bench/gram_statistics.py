r"""The Gram statistics of the digit ConvNet's gradients, two ways.

    python bench/gram_statistics.py

`stacked`: per variable, stack the k source gradients into `[k, n]` and take
`G G^T` and `G v` with MatMul (the first implementation). `pairwise`:
`gradmix_tf.solvers.gram_statistics`, one `reduce_sum(a * b)` per pair.
Shapes are the trainable variables of the 5 mixed layers (k = 2). Both are
compiled (`tf.function`), timed interleaved, median of 50.
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from gradmix_tf import solvers  # pylint: disable=g-import-not-at-top,wrong-import-position

SHAPES = [[(3, 3, 3, 32), (32,)], [(3, 3, 32, 32), (32,)],
          [(3, 3, 32, 64), (64,)], [(3, 3, 64, 64), (64,)],
          [(3136, 128), (128,)]]


def stacked(source_grads, validation_grads):
  grams, crosses, v_sqs = [], [], []
  for layer_sources, layer_val in zip(source_grads, validation_grads):
    gram, cross, v_sq = 0.0, 0.0, 0.0
    for i, v in enumerate(layer_val):
      g = tf.stack([tf.reshape(src[i], [-1]) for src in layer_sources])
      v = tf.reshape(v, [-1, 1])
      gram += tf.matmul(g, g, transpose_b=True)
      cross += tf.squeeze(tf.matmul(g, v), -1)
      v_sq += tf.reduce_sum(tf.square(v))
    grams.append(gram)
    crosses.append(cross)
    v_sqs.append(v_sq)
  return tf.stack(grams), tf.stack(crosses), tf.stack(v_sqs)


def main(k=2, repeats=50):
  rng = np.random.default_rng(0)

  def tensor(shape):
    return tf.constant(rng.normal(size=shape).astype(np.float32))

  sources = [[[tensor(s) for s in layer] for _ in range(k)]
             for layer in SHAPES]
  val = [[tensor(s) for s in layer] for layer in SHAPES]
  fns = {"stacked MatMul": tf.function(stacked),
         "pairwise reductions": tf.function(solvers.gram_statistics)}
  results = {name: fn(sources, val) for name, fn in fns.items()}
  for a, b in zip(*results.values()):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4)
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn(sources, val)[0].numpy()
      times[name].append(time.perf_counter() - start)
  for name, t in times.items():
    print(f"{name}: {1000 * np.median(t):.2f} ms")


if __name__ == "__main__":
  main()
