"""Images listed as files and decoded only when a batch needs them.

`config.input_pipeline = "stream"` makes file-backed datasets (`folder:`,
the action data) `ImageFiles` instead of decoded arrays: the paths are
listed up front, and `tf.data` decodes, resizes and conforms each image
in a parallel map (`ImageFiles.dataset`). Everything else about a run is
unchanged: the runner still draws every step's rows from
`gradmix_tf.batches` (so a resumed run takes the same batches) and maps
them through the files (`gradmix_tf.runner`), and an image decodes to the
same uint8 pixels as the in-memory path decodes it to:

* `folder_image`: `tf.io.decode_image`, brought to the folder's reference
  size (its first training image's) by antialiased bilinear resizing when
  it differs, then `conform_image` (as `digits.conform_images` does to an
  array);
* `frame_image`: `tf.io.decode_image` as RGB, then
  `actions.resize_frames` to `size x size` (every action image and frame).
"""

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from gradmix_tf.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
# File signatures `list_images` accepts (what `tf.io.decode_image` reads).
SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM")
LUMINANCE = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class ImageFiles:
  """`len(paths)` images, decoded by `decode` when read.

  Attributes:
    paths: `[N]` file paths (str).
    decode: a file's bytes (`tf.string` scalar) -> `uint8 [h, w, c]` of
      `shape`; runs inside `tf.data`.
    shape: `(h, w, c)` of every decoded image.
  """
  paths: np.ndarray
  decode: Callable
  shape: tuple

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    """The files at `index` (an index array or a slice)."""
    return dataclasses.replace(self, paths=self.paths[index])

  def read(self, path):
    """The decoded image of one key (here a path, a `tf.string` scalar)."""
    return self.decode(tf.io.read_file(path))

  def key_table(self):
    """Every key as one tensor (`read` takes one of its entries)."""
    return tf.constant(self.paths.astype(str))

  def dataset(self, rows=None, batch_size=None, labels=None):
    """`tf.data` of the images at `rows` (default: all, in order), decoded
    in parallel and in order; batched when `batch_size` is given. With
    `labels` (indexed by row like the files) each element is
    `{"images", "labels"}`, else `{"images"}`."""
    rows = np.arange(len(self)) if rows is None else np.asarray(rows)
    paths = self.key_table()
    label_table = None if labels is None else tf.constant(labels)

    def load(row):
      element = {"images": self.read(tf.gather(paths, row))}
      if label_table is not None:
        element["labels"] = tf.gather(label_table, row)
      return element

    data = tf.data.Dataset.from_tensor_slices(rows.astype(np.int64)).map(
        load, num_parallel_calls=AUTOTUNE, deterministic=True)
    if batch_size:
      data = data.batch(batch_size)
    return data

  def numpy(self):
    """Every image decoded, `[N, h, w, c]` uint8 (for small selections:
    V, H, a few added pseudo-labelled images)."""
    out = np.zeros((len(self),) + tuple(self.shape), np.uint8)
    for start, batch in zip(range(0, len(self), 256),
                            self.dataset(batch_size=256)):
      out[start:start + len(batch["images"])] = batch["images"].numpy()
    return out

  def first_unreadable(self, rows):
    """(path, reason) of the first of `rows` that does not decode, or None
    (to name the file when a streamed batch fails)."""
    keys = self.key_table()
    for row in np.unique(np.asarray(rows).reshape(-1)):
      try:
        self.read(keys[int(row)])
      except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
              tf.errors.UnknownError) as err:
        return str(self.paths[row]), err.message.splitlines()[0]
    return None


@dataclasses.dataclass(frozen=True)
class RecordImages(ImageFiles):
  """Images of a random-access record source (a prepared TFDS dataset in
  ArrayRecord format, `builder.as_data_source(split)`), read by record
  number: `paths` holds the record numbers, `source[n]["image"]` is the
  stored `uint8` image of `source_shape`, and `decode` takes it from there
  (`stored_image`, then `conformed`)."""
  source: object = None
  source_shape: tuple = None

  def read(self, record):
    def fetch(number):
      return np.asarray(self.source[int(number)]["image"], np.uint8)

    image = tf.numpy_function(fetch, [record], tf.uint8, stateful=False)
    return self.decode(tf.ensure_shape(image, self.source_shape))

  def key_table(self):
    return tf.constant(self.paths.astype(np.int64))


def stored_image(contents):
  """The decoder of an image stored decoded (`RecordImages`): itself."""
  return contents


def as_array(images):
  """`images` as a uint8 array (decoding `ImageFiles`)."""
  if isinstance(images, ImageFiles):
    return images.numpy()
  return images


def is_streamed(images):
  """Whether `images` are listed (`ImageFiles`, `RecordImages`), not
  decoded."""
  return isinstance(images, ImageFiles)


def concatenate(first, second):
  """Two image sets as one: files when both are files, else an array."""
  if isinstance(first, ImageFiles) and isinstance(second, ImageFiles):
    if tuple(first.shape) != tuple(second.shape):
      raise DataError(f"cannot join images of shapes {first.shape} and "
                      f"{second.shape}")
    return dataclasses.replace(
        first, paths=np.concatenate([first.paths, second.paths]))
  return np.concatenate([as_array(first), as_array(second)])


def check_signature(path):
  """Refuses a file that is not a PNG, JPEG, GIF or BMP image (read from
  its first bytes, so listing stays cheap)."""
  try:
    with open(path, "rb") as f:
      head = f.read(8)
  except OSError as err:
    raise DataError(f"cannot read image {path} ({err.strerror}); replace or "
                    "remove it") from None
  if not head.startswith(SIGNATURES):
    raise DataError(f"cannot read image {path} (not a PNG, JPEG, GIF or BMP "
                    "file); replace or remove it")


# -- Decoders ----------------------------------------------------------------


def resize_rounded(image, size, method="bilinear", antialias=True):
  """`image` resized to `size` (h, w): float32 rounded and clipped to
  0..255, as uint8."""
  resized = tf.image.resize(image, size, method=method, antialias=antialias)
  return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


def conform_image(image, size, channels):
  """One uint8 image `[h, w, c]` -> `[size, size, channels]`, the
  arithmetic of `digits.conform_images`: zero-padded around the centre when
  smaller, area-resized when larger; grey repeated to RGB, RGB to grey by
  luminance."""
  height, width = int(image.shape[0]), int(image.shape[1])
  if (height, width) != (size, size):
    if height <= size and width <= size:
      top, left = (size - height) // 2, (size - width) // 2
      image = tf.pad(image, [[top, size - height - top],
                             [left, size - width - left], [0, 0]])
    else:
      resized = tf.image.resize(image, (size, size), method="area")
      image = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0),
                      tf.uint8)
  in_channels = int(image.shape[-1])
  if in_channels == 1 and channels == 3:
    image = tf.repeat(image, 3, axis=-1)
  elif in_channels == 3 and channels == 1:
    lum = tf.linalg.matvec(tf.cast(image, tf.float32),
                           tf.constant(LUMINANCE, tf.float32))
    image = tf.cast(tf.clip_by_value(tf.round(lum), 0.0, 255.0),
                    tf.uint8)[..., None]
  return image


def folder_image(reference_size):
  """The decoder of a folder's images (module docstring), `reference_size`
  its first image's `(h, w)`. Images decode as RGB (grey replicated, as
  the in-memory path repeats a grey image beside RGB ones); a grey target
  takes their luminance in `conform_image`, which gives back every grey
  value exactly."""
  height, width = reference_size
  channels = 3

  def decode(contents):
    image = tf.io.decode_image(contents, channels=channels,
                               expand_animations=False)
    shape = tf.shape(image)
    image = tf.cond(
        tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width)),
        lambda: image,
        lambda: resize_rounded(image, (height, width)))
    return tf.ensure_shape(image, (height, width, channels))
  return decode


def conformed(files, size, channels):
  """`files` decoded and then brought to `[size, size, channels]`."""
  inner = files.decode

  def decode(contents):
    return conform_image(inner(contents), size, channels)
  return dataclasses.replace(files, decode=decode,
                             shape=(size, size, channels))


def frame_image(size):
  """The decoder of action images and frames: RGB, `size x size`
  (`actions.resize_frames`, antialiased bilinear, rounded)."""

  def decode(contents):
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image = tf.ensure_shape(image, (None, None, 3))
    return resize_rounded(tf.cast(image, tf.float32), (size, size))
  return decode
