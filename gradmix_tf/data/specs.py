"""A dataset by its spec: `mnist`, `svhn`, `mnistm` or `npz:<path>`.

The one place that knows every digit dataset (`digits` reads MNIST, SVHN
and `.npz` files; `mnistm` builds MNIST-M from MNIST), so neither of those
modules imports the other's caller.
"""

from gradmix_tf.data import digits
from gradmix_tf.data import mnistm
from gradmix_tf.errors import DataError


def load_dataset(spec, data_dir, cache_dir, mnistm_seed=0):
  """Loads a dataset by spec.

  Raises:
    DataError: an unknown spec; the files are missing, corrupt, or
      inconsistent.
  """
  if spec.startswith("npz:"):
    return digits.load_npz(spec[len("npz:"):], name=spec)
  if spec == "mnist":
    return digits.load_mnist(data_dir)
  if spec == "svhn":
    return digits.load_svhn(data_dir)
  if spec == "mnistm":
    return mnistm.load_mnistm(data_dir, cache_dir, seed=mnistm_seed)
  raise DataError(
      f"unknown dataset {spec!r}: use mnist, svhn, mnistm or npz:<path>")
