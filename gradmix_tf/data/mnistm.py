"""MNIST-M by the recipe of Ganin & Lempitsky (2015).

Each MNIST digit `d` (28x28, grey) is blended with a random 28x28 patch `p`
of a random BSDS500 train photo: `out = |p - d|` per RGB channel. The choice
of photo and patch position comes from `numpy.random.default_rng([seed,
split])`, so the same seed always gives the same images. The full train and
test sets are built once and cached as `.npz` in the cache directory.
"""

import hashlib
import os

import numpy as np

from gradmix_tf.data import cache
from gradmix_tf.data import digits
from gradmix_tf.errors import DataError

BSDS_FILE = "bsds500_train.npz"
_CHUNK = 8192


def blend_with_backgrounds(images, backgrounds, seed):
  """`|patch - digit|` per channel for every image.

  Args:
    images: uint8 `[N, H, W]` or `[N, H, W, 1]` grey digits.
    backgrounds: uint8 `[M, BH, BW, 3]` photos, `BH >= H`, `BW >= W`.
    seed: an int or a sequence of ints for `numpy.random.default_rng`.

  Returns:
    uint8 `[N, H, W, 3]`.
  """
  images = np.asarray(images)
  if images.ndim == 4:
    images = images[..., 0]
  n, height, width = images.shape
  _, bg_height, bg_width, _ = backgrounds.shape
  rng = np.random.default_rng(seed)
  which = rng.integers(0, backgrounds.shape[0], size=n)
  tops = rng.integers(0, bg_height - height + 1, size=n)
  lefts = rng.integers(0, bg_width - width + 1, size=n)
  rows = np.arange(height)
  cols = np.arange(width)
  out = np.empty((n, height, width, 3), np.uint8)
  for start in range(0, n, _CHUNK):
    sl = slice(start, start + _CHUNK)
    patch = backgrounds[which[sl, None, None],
                        tops[sl, None, None] + rows[None, :, None],
                        lefts[sl, None, None] + cols[None, None, :]]
    digit = images[sl, :, :, None].astype(np.int16)
    out[sl] = np.abs(patch.astype(np.int16) - digit).astype(np.uint8)
  return out


def load_backgrounds(data_dir):
  path = os.path.join(data_dir, BSDS_FILE)
  if not os.path.isfile(path):
    raise DataError(
        f"MNIST-M needs the BSDS500 photos {path}: copy {BSDS_FILE} there "
        "or set --config.data_dir")
  try:
    with np.load(path, allow_pickle=False) as data:
      images = data["images"]
  except (OSError, ValueError, KeyError, EOFError) as err:
    raise DataError(f"cannot read {path} ({err}); re-copy it") from None
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise DataError(f"{path}: 'images' must be uint8 [M, H, W, 3], got "
                    f"{images.dtype} {images.shape}")
  return images


def load_mnistm(data_dir, cache_dir, seed=0):
  """MNIST-M train and test, built from MNIST + BSDS500 (cached by seed)."""
  mnist = digits.load_mnist(data_dir)
  fingerprint = hashlib.sha256(
      mnist.x_train[::97].tobytes() + mnist.x_test[::97].tobytes()
  ).hexdigest()[:12]
  cache_path = os.path.join(cache_dir, f"mnistm_seed{seed}_{fingerprint}.npz")

  def build():
    backgrounds = load_backgrounds(data_dir)
    return digits.DigitDataset(
        "mnistm",
        blend_with_backgrounds(mnist.x_train, backgrounds, [seed, 0]),
        mnist.y_train,
        blend_with_backgrounds(mnist.x_test, backgrounds, [seed, 1]),
        mnist.y_test)

  return cache.cached_dataset(cache_path, "mnistm", "MNIST-M", build)
