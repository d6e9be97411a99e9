"""Digit dataset loaders: MNIST (npz or idx), SVHN (.mat or TFDS), MNIST-M, npz.

A dataset spec names where the images come from (`gradmix_tf.data.specs.
load_dataset` dispatches on it):

* ``mnist``: `<data_dir>/mnist.npz`, else the four official idx files
  (`train-images-idx3-ubyte[.gz]`, ...) in `<data_dir>`.
* ``svhn``: the official `train_32x32.mat` / `test_32x32.mat` in
  `<data_dir>` (label 10 means digit 0), else TensorFlow Datasets'
  `svhn_cropped` if it is already prepared under `<data_dir>/tfds` (nothing
  is downloaded).
* ``mnistm``: MNIST-M built from MNIST and the BSDS500 train photos
  (`bsds500_train.npz`), see `gradmix_tf.data.mnistm`; cached.
* ``npz:<path>``: any `.npz` with `x_train, y_train, x_test, y_test`.
* ``folder:<path>``: an image folder, one sub-folder per class, and
  ``tfds:<name>[:<split>]``: a prepared TensorFlow Datasets dataset
  (`gradmix_tf.data.specs`).

Images are `uint8` NHWC, labels `int64`. `conform_images` brings any of them
to a model's input size and channel count.
"""

import dataclasses
import gzip
import os
import struct
import zipfile
import zlib

import numpy as np

from gradmix_tf.errors import DataError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


@dataclasses.dataclass(frozen=True)
class DigitDataset:
  """Train and test images (uint8 NHWC) with int64 labels."""
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  # `folder:` with named class folders: {folder name: label}.
  folder_labels: dict = None

  def split(self, split):
    if split == "train":
      return self.x_train, self.y_train
    if split == "test":
      return self.x_test, self.y_test
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a member; an empty archive


def load_npz(path, name=None):
  """An `.npz` with `x_train, y_train, x_test, y_test` (no pickles).

  Raises:
    DataError: the file is missing, not a zip archive (a `.npz` is one),
      damaged inside (a member that does not decompress), or lacks a key.
  """
  if not os.path.isfile(path):
    raise DataError(f"dataset file {path} does not exist: check the path")
  try:
    with open(path, "rb") as f:
      magic = f.read(4)
  except OSError as err:
    raise DataError(f"cannot read {path} ({err.strerror}); check its "
                    "permissions") from None
  if magic not in _ZIP_MAGIC:
    raise DataError(
        f"{path} is not a .npz file (it is not a zip archive); write it with "
        "numpy.savez or numpy.savez_compressed")
  try:
    with np.load(path, allow_pickle=False) as data:
      missing = [key for key in NPZ_KEYS if key not in data.files]
      if missing:
        raise DataError(
            f"{path} lacks the keys {missing}: a dataset .npz needs "
            f"{', '.join(NPZ_KEYS)}")
      arrays = {key: data[key] for key in NPZ_KEYS}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError,
          zlib.error) as err:
    raise DataError(f"{path} is not a readable .npz file ({err}); "
                    "re-create or re-copy it") from None
  return checked_dataset(name or path, **arrays)


def load_mnist(data_dir):
  """MNIST from `mnist.npz` or the official idx files in `data_dir`."""
  npz_path = os.path.join(data_dir, "mnist.npz")
  if os.path.isfile(npz_path):
    return load_npz(npz_path, name="mnist")
  arrays = {}
  for key, stem in IDX_FILES.items():
    path = _first_existing(data_dir, [stem + ".gz", stem])
    if path is None:
      raise DataError(
          f"MNIST not found in {data_dir!r}: put mnist.npz or the four idx "
          "files (train-images-idx3-ubyte.gz, ...) there, or set "
          "--config.data_dir")
    arrays[key] = read_idx(path)
  arrays["x_train"] = arrays["x_train"][..., None]
  arrays["x_test"] = arrays["x_test"][..., None]
  return checked_dataset("mnist", **arrays)


def read_idx(path):
  """Reads an idx file (optionally gzipped): uint8 images or labels."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as err:
    raise DataError(f"cannot read idx file {path} ({err}); re-copy it") from None
  if len(raw) < 8:
    raise DataError(f"{path} is too short to be an idx file")
  zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
  if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
    raise DataError(f"{path} is not a uint8 idx file (bad magic number)")
  dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
  body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(dims)):
    raise DataError(
        f"{path} is truncated: header says {dims}, found {body.size} bytes")
  array = body.reshape(dims)
  return array.astype(np.int64) if ndim == 1 else array


def load_svhn(data_dir):
  """SVHN cropped digits from the official .mat files, else prepared TFDS."""
  paths = {split: os.path.join(data_dir, name)
           for split, name in SVHN_FILES.items()}
  if all(os.path.isfile(p) for p in paths.values()):
    x_train, y_train = read_svhn_mat(paths["train"])
    x_test, y_test = read_svhn_mat(paths["test"])
    return checked_dataset("svhn", x_train, y_train, x_test, y_test)
  tfds_dataset = _svhn_from_tfds(os.path.join(data_dir, "tfds"))
  if tfds_dataset is not None:
    return tfds_dataset
  raise DataError(
      f"SVHN not found in {data_dir!r}: put train_32x32.mat and "
      "test_32x32.mat (ufldl.stanford.edu/housenumbers) there, or prepare "
      "TFDS svhn_cropped under <data_dir>/tfds, or use "
      "--config=digits_mnistm which needs no SVHN")


def read_svhn_mat(path):
  """Official SVHN layout: `X` [32, 32, 3, N] uint8, `y` [N, 1], 10 = '0'."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  try:
    mat = scipy.io.loadmat(path)
  except (OSError, ValueError, NotImplementedError) as err:
    raise DataError(f"cannot read SVHN file {path} ({err}); re-copy it") from None
  if "X" not in mat or "y" not in mat:
    raise DataError(f"{path} lacks the SVHN variables X and y")
  x = np.asarray(mat["X"])
  y = np.asarray(mat["y"]).reshape(-1).astype(np.int64)
  if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.size:
    raise DataError(
        f"{path}: X has shape {x.shape}, expected (32, 32, 3, N) with N = "
        f"{y.size} labels")
  y = np.where(y == 10, 0, y)
  return np.ascontiguousarray(np.transpose(x, (3, 0, 1, 2))).astype(np.uint8), y


def _svhn_from_tfds(tfds_dir):
  if not os.path.isdir(os.path.join(tfds_dir, "svhn_cropped")):
    return None
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  splits = {}
  for split in ("train", "test"):
    data = tfds.as_numpy(tfds.load("svhn_cropped", split=split,
                                   data_dir=tfds_dir, download=False,
                                   batch_size=-1))
    splits[split] = (data["image"], data["label"].astype(np.int64))
  return checked_dataset("svhn", *splits["train"], *splits["test"])


def _first_existing(directory, names):
  for name in names:
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  return None


def checked_dataset(name, x_train, y_train, x_test, y_test):
  """Validates shapes and dtypes; grey images get a channel axis."""
  arrays = []
  for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
    x = np.asarray(x)
    y = np.asarray(y).reshape(-1)
    if x.ndim == 3:
      x = x[..., None]
    if x.ndim != 4 or x.shape[0] != y.shape[0]:
      raise DataError(
          f"{name}: {split} images have shape {x.shape} for {y.shape[0]} "
          "labels; expected [N, H, W] or [N, H, W, C] with one label each")
    if not np.issubdtype(y.dtype, np.integer):
      raise DataError(f"{name}: {split} labels must be integers, got {y.dtype}")
    if x.dtype != np.uint8:
      x = pixels_as_uint8(x, f"{name}: {split} images")
    arrays += [x, y.astype(np.int64)]
  return DigitDataset(name, *arrays)


# A float set whose values lie in [0, 1] but for a few above 1 is a [0, 1]
# set with stray values, not a [0, 255] one: fewer than this share of its
# non-zero values above 1 is refused as ambiguous.
STRAY_ABOVE_ONE = 0.01


def pixels_as_uint8(x, what):
  """Images of any numeric dtype as uint8 0..255, by a rule that one bad
  value cannot switch.

  * Integers must lie in 0..255 (they are kept).
  * Floats must all be finite. Their range decides the scale: within
    [0, 1], times 255; within [0, 255] with values above 1, as they are
    (a set that has fewer than `STRAY_ABOVE_ONE` of its non-zero values
    above 1 is refused: a [0, 1] set with stray values); any other range
    is refused. Then rounded.

  Raises:
    DataError: non-finite values (how many, the first image), values
      outside both ranges, a [0, 1] set with stray values, or a dtype
      that is not numeric; each with the fix.
  """
  x = np.asarray(x)
  if not x.size:
    return x.astype(np.uint8)
  if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
    low, high = int(x.min()), int(x.max())
    if low < 0 or high > 255:
      raise DataError(
          f"{what} are {x.dtype} in [{low}, {high}], outside 0..255: "
          "rescale them to 0..255 (e.g. 16-bit images: divide by 257) and "
          "store them as uint8")
    return x.astype(np.uint8)
  if not np.issubdtype(x.dtype, np.floating):
    raise DataError(f"{what} have dtype {x.dtype}: store them as uint8 "
                    "0..255 or floats in [0, 1]")
  finite = np.isfinite(x)
  if not finite.all():
    bad = np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))
    raise DataError(
        f"{what} hold {int((~finite).sum())} non-finite values (NaN or "
        f"infinite) in {len(bad)} images, the first in image {int(bad[0])}: "
        "replace them (e.g. numpy.nan_to_num) or drop those images")
  low, high = float(x.min()), float(x.max())
  if low < 0.0 or high > 255.0:
    raise DataError(
        f"{what} are floats in [{low:g}, {high:g}], neither [0, 1] nor "
        "[0, 255]: rescale them to one of those ranges, or store them as "
        "uint8 0..255")
  if high > 1.0:
    above = x > 1.0
    nonzero = int(np.count_nonzero(x))
    if int(above.sum()) < STRAY_ABOVE_ONE * nonzero:
      first = int(np.flatnonzero(above.reshape(len(x), -1).any(axis=1))[0])
      raise DataError(
          f"{what} are floats in [0, 1] but for {int(above.sum())} of "
          f"{nonzero} non-zero values above 1 (up to {high:g}; the first in "
          f"image {first}): clip them to [0, 1], or store the images as "
          "uint8 0..255")
    scaled = x
  else:
    scaled = x * 255.0
  return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def conform_images(x, size, channels, name="dataset"):
  """Brings uint8 NHWC images to `[N, size, size, channels]`.

  Smaller images are zero-padded around the centre (MNIST 28 -> 32, as is
  usual for MNIST next to SVHN); larger ones are resized (area). Grey becomes
  RGB by repetition; RGB becomes grey by luminance.

  Raises:
    DataError: images whose channel count is neither 1 nor 3.
  """
  x = np.asarray(x)
  height, width, in_channels = x.shape[1:]
  if in_channels not in (1, 3) or channels not in (1, 3):
    raise DataError(
        f"{name}: cannot convert {in_channels}-channel images to "
        f"{channels} channels; only grey (1) and RGB (3) are supported")
  if (height, width) != (size, size):
    if height <= size and width <= size:
      top, left = (size - height) // 2, (size - width) // 2
      padded = np.zeros((x.shape[0], size, size, in_channels), np.uint8)
      padded[:, top:top + height, left:left + width] = x
      x = padded
    else:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      x = tf.image.resize(x, (size, size), method="area").numpy()
      x = np.clip(np.round(x), 0, 255).astype(np.uint8)
  if in_channels == 1 and channels == 3:
    x = np.repeat(x, 3, axis=-1)
  elif in_channels == 3 and channels == 1:
    lum = x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    x = np.clip(np.round(lum), 0, 255).astype(np.uint8)[..., None]
  return x
