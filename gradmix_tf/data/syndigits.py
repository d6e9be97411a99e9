"""Printed digits, a far domain in SVHN's role (the way SynNumbers was made,
Ganin & Lempitsky 2015): `syndigits`.

Each 32x32 RGB image shows one digit `d` (its label) between two random
neighbours that the frame cuts, as a crop of a house number does:

1. **Glyphs**: the three digits in one of `FONTS` (TrueType files shipped
   with matplotlib, so every machine renders the same pixels), rendered
   once per font at `GLYPH_PX` pixels per em by FreeType
   (`matplotlib.ft2font`) and set side by side with a random gap (5-35 %
   of the digit's height), each centred on one line.
2. **Stroke**: made thicker (grey dilation, 3x3 or 5x5 at glyph size) or
   thinner (erosion, 3x3), or left, with probabilities 0.25 / 0.15 / 0.6.
3. **Geometry**: one affine map puts the centre digit at the middle of the
   frame (+- 2 px), `DIGIT_HEIGHT` px high (16-28), rotated by -15..15
   degrees; the glyph layer is smoothed first (Gaussian, sigma 0.4 / scale)
   so that the shrinking does not alias.
4. **Colour**: the background is a random 32x32 crop of a BSDS500 train
   photo (p = 0.6) or a flat colour; the digit a random colour whose
   luminance differs from the background's mean by at least 60 of 255
   (redrawn up to 20 times, then black or white).
5. **Camera**: Gaussian blur (sigma 0-1.2 px) and Gaussian noise (std
   0-8), rounded to uint8.

Train (60,000) and test (10,000) images come from the same distribution with
different seeds (`numpy.random.default_rng([seed, split])`), as SVHN's
splits do; labels are uniform over 0-9. The set is built once (about a
minute on 2 cores, with a progress line) and cached as `.npz` in the cache
directory, named by seed and a fingerprint of the fonts, the photos and
`VERSION`.
"""

import hashlib
import os
import time

from absl import logging
import numpy as np
from scipy import ndimage

from gradmix_tf.data import cache
from gradmix_tf.data import digits
from gradmix_tf.data import mnistm
from gradmix_tf.errors import DataError

# Bump when the recipe changes: a new version is a new cache file.
VERSION = 1
SIZE = 32
TRAIN_SIZE, TEST_SIZE = 60_000, 10_000
GLYPH_PX = 64
DIGIT_HEIGHT = (16.0, 28.0)
MAX_ROTATION = 15.0
PHOTO_BACKGROUND = 0.6
MIN_CONTRAST = 60.0
MAX_BLUR, MAX_NOISE = 1.2, 8.0
# matplotlib's bundled TrueType fonts that have the ten digits.
FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf", "cmr10.ttf",
    "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf")
_LUMINANCE = np.array([0.299, 0.587, 0.114], np.float32)


def font_dir():
  import matplotlib  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data",
                      "fonts", "ttf")


def font_path(name):
  """The path of matplotlib's font file `name`.

  Raises:
    DataError: it is missing (matplotlib without its fonts).
  """
  path = os.path.join(font_dir(), name)
  if not os.path.isfile(path):
    raise DataError(f"syndigits needs the font {path}, which matplotlib "
                    "ships: reinstall matplotlib (pip install matplotlib)")
  return path


def glyph_bank(fonts=None):
  """`[font][digit]` -> float32 `[h, w]` coverage in [0, 1], tightly
  cropped, rendered at `GLYPH_PX` px per em (`fonts`: default `FONTS`).

  Raises:
    DataError: a font file is missing.
  """
  from matplotlib.ft2font import FT2Font, LoadFlags  # pylint: disable=g-import-not-at-top
  bank = []
  for name in fonts or FONTS:
    font = FT2Font(font_path(name))
    font.set_size(GLYPH_PX, 72)
    glyphs = []
    for digit in "0123456789":
      font.set_text(digit, 0.0, flags=LoadFlags.NO_HINTING)
      font.draw_glyphs_to_bitmap(antialiased=True)
      image = np.asarray(font.get_image(), np.float32) / 255.0
      rows = np.flatnonzero(image.max(axis=1) > 0)
      cols = np.flatnonzero(image.max(axis=0) > 0)
      glyphs.append(image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    bank.append(glyphs)
  return bank


def _line_of_glyphs(glyphs, gap):
  """Three glyphs side by side, each centred on one line, on a canvas
  with a margin; returns (canvas, centre row, centre column of the middle
  glyph, its height)."""
  margin = GLYPH_PX // 2
  height = max(g.shape[0] for g in glyphs) + 2 * margin
  width = sum(g.shape[1] for g in glyphs) + 2 * gap + 2 * margin
  canvas = np.zeros((height, width), np.float32)
  left = margin
  for index, glyph in enumerate(glyphs):
    top = (height - glyph.shape[0]) // 2
    canvas[top:top + glyph.shape[0], left:left + glyph.shape[1]] = glyph
    if index == 1:
      centre = (height / 2.0, left + glyph.shape[1] / 2.0, glyph.shape[0])
    left += glyph.shape[1] + gap
  return (canvas,) + centre


def _stroke(canvas, rng):
  draw = rng.uniform()
  if draw < 0.25:
    size = int(rng.choice([3, 5]))
    return ndimage.grey_dilation(canvas, size=(size, size))
  if draw < 0.40:
    return ndimage.grey_erosion(canvas, size=(3, 3))
  return canvas


def _digit_mask(canvas, centre_row, centre_col, glyph_height, rng):
  """The glyph layer mapped into the 32x32 frame (step 3)."""
  scale = rng.uniform(*DIGIT_HEIGHT) / glyph_height
  angle = np.deg2rad(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
  smoothed = ndimage.gaussian_filter(canvas, 0.4 / scale)
  # Output pixel o maps to canvas pixel R(angle) (o - c_out) / scale + c_in.
  cos, sin = np.cos(angle), np.sin(angle)
  matrix = np.array([[cos, -sin], [sin, cos]]) / scale
  out_centre = SIZE / 2.0 - 0.5 + rng.uniform(-2.0, 2.0, size=2)
  offset = np.array([centre_row, centre_col]) - matrix @ out_centre
  mask = ndimage.affine_transform(smoothed, matrix, offset=offset,
                                  output_shape=(SIZE, SIZE), order=1)
  return np.clip(mask, 0.0, 1.0)


def _background(backgrounds, rng):
  if rng.uniform() < PHOTO_BACKGROUND:
    photo = backgrounds[rng.integers(len(backgrounds))]
    top = rng.integers(0, photo.shape[0] - SIZE + 1)
    left = rng.integers(0, photo.shape[1] - SIZE + 1)
    return photo[top:top + SIZE, left:left + SIZE].astype(np.float32)
  return np.broadcast_to(rng.uniform(0, 255, 3).astype(np.float32),
                         (SIZE, SIZE, 3))


def _digit_colour(background, rng):
  level = float(background.reshape(-1, 3).mean(axis=0) @ _LUMINANCE)
  for _ in range(20):
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    if abs(float(colour @ _LUMINANCE) - level) >= MIN_CONTRAST:
      return colour
  return np.full(3, 0.0 if level > 127.5 else 255.0, np.float32)


def render(label, bank, backgrounds, rng):
  """One uint8 `[32, 32, 3]` image of digit `label` (module docstring)."""
  glyphs = bank[rng.integers(len(bank))]
  left, right = rng.integers(0, 10, size=2)
  middle = glyphs[label]
  gap = int(round(rng.uniform(0.05, 0.35) * middle.shape[0]))
  canvas, row, col, height = _line_of_glyphs(
      [glyphs[left], middle, glyphs[right]], gap)
  mask = _digit_mask(_stroke(canvas, rng), row, col, height, rng)[..., None]
  background = _background(backgrounds, rng)
  image = background * (1.0 - mask) + _digit_colour(background, rng) * mask
  image = ndimage.gaussian_filter(image, (rng.uniform(0, MAX_BLUR),) * 2 +
                                  (0.0,))
  image = image + rng.normal(0.0, rng.uniform(0, MAX_NOISE), image.shape)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def render_split(count, bank, backgrounds, seed, name="syndigits"):
  """`count` images and their labels (uniform over 0-9), from `seed`."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, size=count).astype(np.int64)
  images = np.empty((count, SIZE, SIZE, 3), np.uint8)
  started = last = time.time()
  for i, label in enumerate(labels):
    images[i] = render(int(label), bank, backgrounds, rng)
    if time.time() - last > 10.0 or i + 1 == count:
      last = time.time()
      logging.info("Rendering %s: %d/%d images (%.0f s)", name, i + 1, count,
                   last - started)
  return images, labels


def _fingerprint(backgrounds):
  digest = hashlib.sha256(f"syndigits v{VERSION}".encode())
  for name in FONTS:
    with open(font_path(name), "rb") as f:
      digest.update(f.read())
  digest.update(backgrounds[:, ::16, ::16].tobytes())
  return digest.hexdigest()[:12]


def load_syndigits(data_dir, cache_dir, seed=0, sizes=(TRAIN_SIZE,
                                                         TEST_SIZE)):
  """Train and test printed digits (module docstring), cached by seed.

  Raises:
    DataError: the BSDS500 photos or a font are missing; the cache cannot
      be written (`NoSpaceError` when the disk is full).
  """
  backgrounds = mnistm.load_backgrounds(data_dir)
  sizes_tag = "" if tuple(sizes) == (TRAIN_SIZE, TEST_SIZE) else (
      f"_{sizes[0]}x{sizes[1]}")
  cache_path = os.path.join(
      cache_dir,
      f"syndigits_seed{seed}{sizes_tag}_{_fingerprint(backgrounds)}.npz")

  def build():
    bank = glyph_bank()
    x_train, y_train = render_split(sizes[0], bank, backgrounds, [seed, 0],
                                    "syndigits train")
    x_test, y_test = render_split(sizes[1], bank, backgrounds, [seed, 1],
                                  "syndigits test")
    return digits.DigitDataset("syndigits", x_train, y_train, x_test, y_test)

  return cache.cached_dataset(cache_path, "syndigits", "syndigits", build)
