"""Generated datasets (MNIST-M, syndigits) built once and kept as `.npz`.

`cached_dataset` reads the cache file if it is intact; a broken one is
rebuilt, never trusted. Otherwise it checks that the cache directory takes
a file before the build (not after minutes of it), builds, and writes the
file all or nothing: a write that fails leaves no partial file, for lack of
space as `NoSpaceError`, otherwise as one `DataError` line with the fix.
"""

import os

import numpy as np

from gradmix_tf.data import digits
from gradmix_tf.errors import DataError
from gradmix_tf.files import probe_writable, space_for


def cached_dataset(cache_path, name, what, build):
  """The `DigitDataset` cached at `cache_path`, else `build()`, cached.

  Args:
    cache_path: the `.npz` file (its directory is made if needed).
    name: the dataset's name when read from the cache.
    what: the set's name in messages (`"MNIST-M"`).
    build: makes the `DigitDataset` (called only when there is no intact
      cache file).

  Raises:
    DataError: the cache directory cannot be written.
    NoSpaceError: the cache file does not fit.
  """
  if os.path.isfile(cache_path):
    try:
      return digits.load_npz(cache_path, name=name)
    except DataError:
      # Where it cannot be removed, writing the new one below says so.
      try:
        os.remove(cache_path)
      except OSError:
        pass
  cache_dir = os.path.dirname(cache_path)
  try:
    probe_writable(cache_dir)      # before the build, not after it
  except OSError as err:
    raise _cache_error(what, cache_dir, err) from None
  dataset = build()
  arrays = {"x_train": dataset.x_train, "y_train": dataset.y_train,
            "x_test": dataset.x_test, "y_test": dataset.y_test}
  partial = cache_path + f".tmp{os.getpid()}.npz"
  try:
    os.makedirs(cache_dir, exist_ok=True)
    with space_for(cache_dir, f"the {what} cache",
                   sum(a.nbytes for a in arrays.values()), partial=[partial]):
      np.savez(partial, **arrays)
      os.replace(partial, cache_path)
  except OSError as err:
    if os.path.exists(partial):
      os.remove(partial)
    raise _cache_error(what, cache_dir, err) from None
  return dataset


def _cache_error(what, cache_dir, err):
  return DataError(
      f"cannot write the {what} cache in {cache_dir} "
      f"({err.strerror or err}): set --config.cache_dir or "
      "$GRADMIX_CACHE_DIR to a writable directory")
