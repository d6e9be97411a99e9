"""A dataset by its spec: `mnist`, `svhn`, `mnistm`, `npz:<path>` or
`tfds:<name>[:<split>]`.

The one place that knows every digit dataset (`digits` reads MNIST, SVHN
and `.npz` files; `mnistm` builds MNIST-M from MNIST), so neither of those
modules imports the other's caller.

`tfds:<name>` is a TensorFlow Datasets dataset already prepared under
`<data_dir>/tfds` (`tfds build <name> --data_dir=<data_dir>/tfds` on a
machine that can download; nothing is downloaded here), with `image` and
`label` features: its `train` split trains, its `test` split (if it has
one) tests. `tfds:<name>:<split>` trains on `<split>` instead (any TFDS
split string, e.g. `train[:50%]`). The images are read into memory, as
every digit dataset is (the streaming path for large sets is issue 21's).
"""

import os

import numpy as np

from gradmix_tf.data import digits
from gradmix_tf.data import mnistm
from gradmix_tf.errors import DataError

TFDS_FEATURES = ("image", "label")


def load_dataset(spec, data_dir, cache_dir, mnistm_seed=0):
  """Loads a dataset by spec.

  Raises:
    DataError: an unknown spec; the files are missing, corrupt, or
      inconsistent; a TFDS dataset that is not prepared.
  """
  if spec.startswith("npz:"):
    return digits.load_npz(spec[len("npz:"):], name=spec)
  if spec.startswith("tfds:"):
    name, _, split = spec[len("tfds:"):].partition(":")
    return load_tfds(name, split or "train", os.path.join(data_dir, "tfds"),
                     spec)
  if spec == "mnist":
    return digits.load_mnist(data_dir)
  if spec == "svhn":
    return digits.load_svhn(data_dir)
  if spec == "mnistm":
    return mnistm.load_mnistm(data_dir, cache_dir, seed=mnistm_seed)
  raise DataError(
      f"unknown dataset {spec!r}: use mnist, svhn, mnistm, npz:<path> or "
      "tfds:<name>[:<split>]")


def load_tfds(name, train_split, tfds_dir, spec):
  """A prepared TFDS dataset's `train_split` and `test` split (module
  docstring) as a `DigitDataset`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not name:
    raise DataError(f"{spec!r}: name the dataset, tfds:<name>[:<split>]")
  try:
    builder = tfds.builder(name, data_dir=tfds_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(
        f"{spec!r}: no dataset {name!r} is prepared under {tfds_dir}, and "
        "TFDS has no such dataset to build: check the name (tfds.list_"
        "builders()) or prepare your own there") from None
  if not builder.is_prepared():
    raise DataError(
        f"{spec!r}: TFDS dataset {name!r} is not prepared under {tfds_dir} "
        f"(nothing is downloaded here): run `tfds build {name} "
        f"--data_dir={tfds_dir}` on a machine that can download, and copy "
        "the folder here")
  missing = [f for f in TFDS_FEATURES if f not in builder.info.features]
  if missing:
    raise DataError(
        f"{spec!r}: the dataset has no {' or '.join(missing)} feature (it "
        f"has {', '.join(builder.info.features)}); a source or target needs "
        "image and label")

  def read(split):
    try:
      data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    except ValueError as err:       # an unknown or malformed split
      raise DataError(f"{spec!r}: split {split!r}: {err}") from None
    return data["image"], np.asarray(data["label"]).astype(np.int64)

  x_train, y_train = read(train_split)
  if "test" in builder.info.splits:
    x_test, y_test = read("test")
  else:
    x_test = np.zeros((0,) + x_train.shape[1:], x_train.dtype)
    y_test = np.zeros(0, np.int64)
  return digits.checked_dataset(spec, x_train, y_train, x_test, y_test)
