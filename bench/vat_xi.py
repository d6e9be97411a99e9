r"""Is VAT's xi large enough to survive float32 on 0..255 pixels?

For a few images of the tiny-data experiment and the digit ConvNet at its
default widths (random weights), computes VAT's adversarial direction from
two random starts for several `xi` and prints, per image, the cosine of the
two directions (1 or -1: the power iteration found the same dominant
direction; 0: a zero direction, the perturbation was rounded away) and the
VAT loss at eps = 2.0.

    python bench/vat_xi.py
"""

import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from conftest import tiny_config, tiny_data  # pylint: disable=g-import-not-at-top,wrong-import-position
from gradmix_tf import semi_supervised as ssl  # pylint: disable=g-import-not-at-top,wrong-import-position
from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  config = tiny_config(method="gradmix_vat")
  config.model.widths, config.model.units = (32, 32, 64, 64), 128
  trainer = build_runner(config, tiny_data(), "/tmp/vat_xi_workdir")
  images = tf.cast(tf.constant(tiny_data().u.images[:8]), tf.float32)

  def model_fn(x):
    return trainer.model(x, head=0)

  for xi in (1e-6, 1e-5, 1e-4, 1e-3):
    a = ssl.vat_direction(model_fn, images, xi, tf.constant([1, 2]))
    b = ssl.vat_direction(model_fn, images, xi, tf.constant([3, 4]))
    cosines = tf.reduce_sum(a * b, [1, 2, 3]).numpy()
    loss = float(ssl.vat_loss(model_fn, images, xi, 2.0,
                              tf.constant([1, 2])))
    print(f"xi {xi:.0e}: cosines {np.round(cosines, 3).tolist()}  "
          f"VAT loss {loss:.5f}")


if __name__ == "__main__":
  main()
