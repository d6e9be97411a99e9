"""A dataset by its spec: `mnist`, `svhn`, `mnistm`, `syndigits` (printed
digits, `syndigits.py`; `syndigits:<train>,<test>` a smaller set), `npz:<path>`, `folder:<path>` or
`tfds:<name>[:<split>]`.

The one place that knows every digit dataset (`digits` reads MNIST, SVHN
and `.npz` files; `mnistm` builds MNIST-M from MNIST), so neither of those
modules imports the other's caller.

`tfds:<name>` is a TensorFlow Datasets dataset already prepared under
`<data_dir>/tfds` (`tfds build <name> --data_dir=<data_dir>/tfds` on a
machine that can download; nothing is downloaded here), with `image` and
`label` features: its `train` split trains, its `test` split (if it has
one) tests. `tfds:<name>:<split>` trains on `<split>` instead (any TFDS
split string, e.g. `train[:50%]`). The images are read into memory, or
with `stream=True` (`config.input_pipeline="stream"`) read record by
record from a dataset prepared in ArrayRecord format
(`tfds build ... --file_format=array_record`), which has random access.

`folder:<path>` is an image folder as Keras' `image_dataset_from_directory`
lays it out: one sub-folder per class, `<path>/<class>/*.{png,jpg,...}`,
the whole folder training (no test images); or `<path>/train/<class>/...`
and `<path>/test/<class>/...`. A class folder named by an integer holds that
label (`classes=(5, 6, 7, 8, 9)` selects folders `5`..`9`); otherwise the
class folders are labelled 0, 1, ... in sorted order (logged, and written
to the run's `model.json` as `folder_labels`). Images are decoded with
`tf.io.decode_image` and brought to the first image's size (antialiased
bilinear) when sizes differ: into memory, or with `stream=True` only listed
(`image_files.ImageFiles`, decoded batch by batch in the run's `tf.data`
pipeline to the same pixels).
"""

import dataclasses
import os

import numpy as np

from gradmix_tf.data import digits
from gradmix_tf.data import image_files
from gradmix_tf.data import mnistm
from gradmix_tf.data import syndigits
from gradmix_tf.errors import DataError

TFDS_FEATURES = ("image", "label")


def load_dataset(spec, data_dir, cache_dir, mnistm_seed=0, stream=False):
  """Loads a dataset by spec (`stream`: a `folder:` is listed, not decoded;
  the other specs are arrays either way).

  Raises:
    DataError: an unknown spec; the files are missing, corrupt, or
      inconsistent; a TFDS dataset that is not prepared.
  """
  if spec.startswith("npz:"):
    return digits.load_npz(spec[len("npz:"):], name=spec)
  if spec.startswith("folder:"):
    return load_folder(spec[len("folder:"):], spec, stream)
  if spec.startswith("tfds:"):
    name, _, split = spec[len("tfds:"):].partition(":")
    return load_tfds(name, split or "train", os.path.join(data_dir, "tfds"),
                     spec, stream)
  if spec == "mnist":
    return digits.load_mnist(data_dir)
  if spec == "svhn":
    return digits.load_svhn(data_dir)
  if spec == "mnistm":
    return mnistm.load_mnistm(data_dir, cache_dir, seed=mnistm_seed)
  if spec == "syndigits" or spec.startswith("syndigits:"):
    return syndigits.load_syndigits(data_dir, cache_dir,
                                    sizes=_syndigits_sizes(spec))
  raise DataError(
      f"unknown dataset {spec!r}: use mnist, svhn, mnistm, syndigits, "
      "npz:<path>, folder:<path> or tfds:<name>[:<split>]")


def _syndigits_sizes(spec):
  """`syndigits` -> the full sizes; `syndigits:<train>,<test>` -> those
  (a smaller set for smoke tests)."""
  if spec == "syndigits":
    return syndigits.TRAIN_SIZE, syndigits.TEST_SIZE
  sizes = spec[len("syndigits:"):].split(",")
  if len(sizes) != 2 or not all(n.isdigit() and int(n) > 0 for n in sizes):
    raise DataError(f"{spec!r}: write syndigits or syndigits:<train "
                    "images>,<test images> (e.g. syndigits:3000,500)")
  return int(sizes[0]), int(sizes[1])


def _not_prepared(spec, name, tfds_dir):
  return (f"{spec!r}: TFDS dataset {name!r} is not prepared under "
          f"{tfds_dir} (nothing is downloaded here): run `tfds build {name} "
          f"--data_dir={tfds_dir}` on a machine that can download, and copy "
          "the folder here")


def load_tfds(name, train_split, tfds_dir, spec, stream=False):
  """A prepared TFDS dataset's `train_split` and `test` split (module
  docstring) as a `DigitDataset`; with `stream`, of `RecordImages` read
  by record number when it is prepared in ArrayRecord format (else read
  into memory, with a warning naming the command that converts it)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not name:
    raise DataError(f"{spec!r}: name the dataset, tfds:<name>[:<split>]")
  if not os.path.isdir(os.path.join(tfds_dir, name)):
    known = tfds.list_builders(with_community_datasets=False)
    if name.split("/")[0] in known:
      raise DataError(_not_prepared(spec, name, tfds_dir))
    raise DataError(
        f"{spec!r}: no dataset {name!r} is prepared under {tfds_dir}, and "
        "TFDS has no such dataset to build: check the name (tfds.list_"
        "builders()) or prepare your own there")
  builder = tfds.builder(name, data_dir=tfds_dir)
  if not builder.is_prepared():
    raise DataError(_not_prepared(spec, name, tfds_dir))
  missing = [f for f in TFDS_FEATURES if f not in builder.info.features]
  if missing:
    raise DataError(
        f"{spec!r}: the dataset has no {' or '.join(missing)} feature (it "
        f"has {', '.join(builder.info.features)}); a source or target needs "
        "image and label")

  if "array_record" in str(builder.info.file_format).lower():
    # Random access (and no `as_dataset`): read record by record.
    records = _tfds_records(builder, train_split, spec)
    if stream:
      return records
    return digits.checked_dataset(
        spec, records.x_train.numpy(), records.y_train,
        records.x_test.numpy(), records.y_test)
  if stream:
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning(
        "%s is prepared as %s, which has no random access: it is read into "
        "memory. To stream it, prepare it as ArrayRecord: `tfds build %s "
        "--file_format=array_record --data_dir=%s`", spec,
        builder.info.file_format, name, tfds_dir)

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


def _tfds_records(builder, train_split, spec):
  """A dataset prepared in ArrayRecord format as `RecordImages` over its
  splits' data sources (only the labels are read up front)."""
  shape = tuple(builder.info.features["image"].shape)
  if None in shape:
    raise DataError(f"{spec!r}: its images have no fixed shape ({shape}); "
                    "streaming needs one")
  dtype = np.dtype(getattr(builder.info.features["image"], "np_dtype",
                           builder.info.features["image"].dtype))
  if dtype != np.uint8:
    # Streamed records reach the model as stored: only uint8 pixels skip
    # the checks (finite, in range) and scaling `digits.pixels_as_uint8`
    # applies in memory.
    raise DataError(f"{spec!r}: its images are {dtype}, and only uint8 "
                    "images stream; use --config.input_pipeline=memory (which "
                    "checks and scales them) or store them as uint8")

  def records(split):
    try:
      source = builder.as_data_source(split=split)
    except ValueError as err:       # an unknown or malformed split
      raise DataError(f"{spec!r}: split {split!r}: {err}") from None
    labels = np.array([source[i]["label"] for i in range(len(source))],
                      np.int64)
    return image_files.RecordImages(
        np.arange(len(source)), image_files.stored_image, shape,
        source=source, source_shape=shape), labels

  x_train, y_train = records(train_split)
  if "test" in builder.info.splits:
    x_test, y_test = records("test")
  else:
    x_test, y_test = x_train[:0], np.zeros(0, np.int64)
  return digits.DigitDataset(spec, x_train, y_train, x_test, y_test)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def folder_labels(class_dirs):
  """`{class folder name: label}`: integer names are their labels, other
  names 0, 1, ... in sorted order."""
  if all(name.isdigit() for name in class_dirs):
    return {name: int(name) for name in class_dirs}
  return {name: label for label, name in enumerate(sorted(class_dirs))}


def load_folder(path, spec, stream=False):
  """An image folder (module docstring) as a `DigitDataset` (of
  `ImageFiles` when `stream`)."""
  if not os.path.isdir(path):
    raise DataError(f"{spec!r}: {path} is not a folder")
  split_dirs = {split: os.path.join(path, split) for split in ("train", "test")}
  if all(os.path.isdir(d) for d in split_dirs.values()):
    roots = split_dirs
  else:
    roots = {"train": path, "test": None}
  train_classes = _class_dirs(roots["train"], spec)
  labels = folder_labels(train_classes)
  if not all(name.isdigit() for name in train_classes):
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.info("%s: class folders labelled %s", spec, labels)
  named = None if all(name.isdigit() for name in train_classes) else labels
  if roots["test"] is not None:
    unknown = sorted(set(_class_dirs(roots["test"], spec)) - set(labels))
    if unknown:
      raise DataError(f"{spec!r}: test class folders {unknown} are not "
                      "train class folders")
  if stream:
    return dataclasses.replace(_listed_folder(roots, labels, spec),
                               folder_labels=named)
  x_train, y_train = _read_split(roots["train"], labels, spec)
  if roots["test"] is None:
    x_test = np.zeros((0,) + x_train.shape[1:], np.uint8)
    y_test = np.zeros(0, np.int64)
  else:
    x_test, y_test = _read_split(roots["test"], labels, spec,
                                 size=x_train.shape[1:3])
  return dataclasses.replace(
      digits.checked_dataset(spec, x_train, y_train, x_test, y_test),
      folder_labels=named)


def _listed_folder(roots, labels, spec):
  """`load_folder` with `ImageFiles`: paths listed and their signatures
  checked; only the first training image is decoded (its size is the
  folder's reference size)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  splits = {}
  for split, root in roots.items():
    if root is None:
      splits[split] = (np.zeros(0, object), np.zeros(0, np.int64))
      continue
    paths, targets = _image_paths(root, labels, spec)
    splits[split] = (np.asarray(paths, object), np.asarray(targets, np.int64))
  first = splits["train"][0][0]
  try:
    shape = tf.io.decode_image(tf.io.read_file(first), channels=3,
                               expand_animations=False).shape
  except tf.errors.InvalidArgumentError as err:
    raise DataError(f"{spec!r}: cannot read image {first} "
                    f"({err.message.splitlines()[0]}); replace or remove "
                    "it") from None
  reference = (int(shape[0]), int(shape[1]))
  decode = image_files.folder_image(reference)

  def files(split):
    paths, targets = splits[split]
    return image_files.ImageFiles(paths, decode, reference + (3,)), targets

  return digits.DigitDataset(spec, *files("train"), *files("test"))


def _image_paths(root, labels, spec):
  """(paths, labels) of one split's image files, class by class, each
  file's signature checked."""
  paths, targets = [], []
  for name, label in labels.items():
    directory = os.path.join(root, name)
    if not os.path.isdir(directory):
      continue
    for file in sorted(os.listdir(directory)):
      if file.lower().endswith(IMAGE_SUFFIXES):
        path = os.path.join(directory, file)
        try:
          image_files.check_signature(path)
        except DataError as err:
          raise DataError(f"{spec!r}: {err}") from None
        paths.append(path)
        targets.append(label)
  if not paths:
    raise DataError(f"{spec!r}: no images ({', '.join(IMAGE_SUFFIXES)}) in "
                    f"the class folders of {root}")
  return paths, targets


def _class_dirs(root, spec):
  names = sorted(name for name in os.listdir(root)
                 if os.path.isdir(os.path.join(root, name)))
  if not names:
    raise DataError(
        f"{spec!r}: {root} has no class sub-folders: put each class's "
        "images in a folder of its own (<folder>/<class>/<image>)")
  return names


def _read_split(root, labels, spec, size=None):
  """`(images [N, H, W, C] uint8, labels [N])` of one split's folders."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  images = []
  paths, targets = _image_paths(root, labels, spec)
  for file_path in paths:
    try:
      with open(file_path, "rb") as f:
        image = tf.io.decode_image(f.read(), channels=0,
                                   expand_animations=False)
    except (OSError, tf.errors.InvalidArgumentError) as err:
      raise DataError(f"{spec!r}: cannot read image {file_path} "
                      f"({getattr(err, 'message', err)}); replace or "
                      "remove it") from None
    if size is None:
      size = tuple(image.shape[:2])
    if tuple(image.shape[:2]) != tuple(size):
      image = tf.cast(tf.round(tf.clip_by_value(tf.image.resize(
          image, size, antialias=True), 0, 255)), tf.uint8)
    images.append(image.numpy())
  channels = max(image.shape[-1] for image in images)
  images = [np.repeat(image, channels, -1) if image.shape[-1] == 1 else image
            for image in images]
  return np.stack(images), np.asarray(targets, np.int64)
