r"""A sample grid of the printed digits and their statistics (docs/DATA.md).

    python bench/syndigits_sample.py

Builds (or reads from the cache) the full `syndigits` set, draws the first
128 train images with their labels to docs/syndigits_grid.png, and writes
the set's statistics beside MNIST's (class counts, per-channel mean and
standard deviation, mean per-image luminance spread) into the
`syndigits` block of docs/DATA.md.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gradmix_tf import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from gradmix_tf.data import digits, specs  # pylint: disable=g-import-not-at-top,wrong-import-position
import report  # pylint: disable=g-import-not-at-top,wrong-import-position

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "docs")


def statistics(name, x, y):
  x = np.asarray(x, np.float64)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  luminance = x @ [0.299, 0.587, 0.114]
  counts = np.bincount(y, minlength=10)
  return (f"| {name} | {len(y)} | {counts.min()}-{counts.max()} | "
          + " / ".join(f"{m:.1f}" for m in x.mean(axis=(0, 1, 2))) + " | "
          + " / ".join(f"{s:.1f}" for s in x.std(axis=(0, 1, 2))) + " | "
          + f"{luminance.reshape(len(x), -1).std(axis=1).mean():.1f} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=None,
                      help="default: the config's (../shared/data)")
  args = parser.parse_args()
  config = config_lib.resolve(config_lib.load_config("digits_syn_mnist"))
  data_dir = args.data_dir or config.data_dir
  syn = specs.load_dataset("syndigits", data_dir, config.cache_dir)
  mnist = digits.load_mnist(data_dir)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(8, 16, figsize=(12, 6.6))
  for i, ax in enumerate(axes.flat):
    ax.imshow(syn.x_train[i])
    ax.set_title(str(syn.y_train[i]), fontsize=7)
    ax.axis("off")
  fig.suptitle("syndigits: the first 128 train images and their labels")
  fig.tight_layout()
  grid = os.path.join(DOCS, "syndigits_grid.png")
  fig.savefig(grid, dpi=80)
  rows = [statistics("syndigits train", syn.x_train, syn.y_train),
          statistics("syndigits test", syn.x_test, syn.y_test),
          statistics("MNIST train", mnist.x_train, mnist.y_train)]
  text = "\n".join([
      "Command: `python bench/syndigits_sample.py`.", "",
      "![syndigits](syndigits_grid.png)", "",
      "| set | images | per class | channel mean (R / G / B) | channel std "
      "| mean per-image luminance std |",
      "|---|---|---|---|---|---|", *rows])
  report.replace_block(os.path.join(DOCS, "DATA.md"), "syndigits", text)
  print(text)


if __name__ == "__main__":
  main()
