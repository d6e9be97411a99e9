"""Loaders on fixtures in the official formats, MNIST-M, and the splits."""

import gzip
import os
import struct

import ml_collections
import numpy as np
import pytest
import scipy.io

from conftest import prepared_tfds
from gradmix_tf import config_lib
from gradmix_tf.data import digits, experiment, mnistm
from gradmix_tf.errors import ConfigError, DataError


def _write_idx(path, array):
  header = struct.pack(">HBB", 0, 0x08, array.ndim)
  header += struct.pack(">" + "I" * array.ndim, *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_from_official_idx_files(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {"x_train": rng.integers(0, 256, (5, 28, 28)),
            "y_train": np.arange(5), "x_test": rng.integers(0, 256, (3, 28, 28)),
            "y_test": np.array([7, 8, 9])}
  for key, stem in digits.IDX_FILES.items():
    _write_idx(str(tmp_path / (stem + ".gz")), arrays[key])
  mnist = digits.load_mnist(str(tmp_path))
  assert mnist.x_train.shape == (5, 28, 28, 1)
  np.testing.assert_array_equal(mnist.x_test[..., 0], arrays["x_test"])
  np.testing.assert_array_equal(mnist.y_test, [7, 8, 9])


def test_truncated_idx_file_is_a_data_error(tmp_path):
  path = str(tmp_path / "t10k-labels-idx1-ubyte.gz")
  with gzip.open(path, "wb") as f:
    f.write(struct.pack(">HBBI", 0, 8, 1, 10) + b"\x01\x02")
  with pytest.raises(DataError, match="truncated"):
    digits.read_idx(path)


def test_svhn_from_official_mat_layout(tmp_path):
  rng = np.random.default_rng(1)
  for split, n in (("train", 4), ("test", 2)):
    x = rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8)
    y = np.array([[10], [1], [5], [9]][:n], np.uint8)
    scipy.io.savemat(str(tmp_path / digits.SVHN_FILES[split]), {"X": x, "y": y})
    if split == "train":
      x_train = x
  svhn = digits.load_svhn(str(tmp_path))
  np.testing.assert_array_equal(svhn.y_train, [0, 1, 5, 9])  # 10 means '0'
  np.testing.assert_array_equal(svhn.x_train[2], x_train[:, :, :, 2])
  assert svhn.x_test.shape == (2, 32, 32, 3)


def test_missing_svhn_says_which_files_to_provide(tmp_path):
  with pytest.raises(DataError, match="train_32x32.mat"):
    digits.load_svhn(str(tmp_path))


def test_npz_errors(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    digits.load_npz(str(tmp_path / "absent.npz"))
  np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 4, 4)))
  with pytest.raises(DataError, match="lacks the keys"):
    digits.load_npz(str(tmp_path / "partial.npz"))
  (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
  with pytest.raises(DataError, match="not a readable"):
    digits.load_npz(str(tmp_path / "corrupt.npz"))


def test_mnistm_blend_by_hand():
  # One flat photo of colour (100, 50, 0): every patch is that colour, so
  # |patch - digit| is (|100-d|, |50-d|, |0-d|) whatever the random crop.
  photo = np.zeros((1, 5, 6, 3), np.uint8)
  photo[..., 0], photo[..., 1] = 100, 50
  digit = np.array([[[0, 255], [60, 30]]], np.uint8)
  out = mnistm.blend_with_backgrounds(digit, photo, seed=3)
  np.testing.assert_array_equal(out[0, 0, 1], [155, 205, 255])
  np.testing.assert_array_equal(out[0, 1, 0], [40, 10, 60])
  np.testing.assert_array_equal(out[0, 0, 0], [100, 50, 0])


def test_mnistm_blend_uses_real_patches_and_is_deterministic():
  rng = np.random.default_rng(2)
  photos = rng.integers(0, 256, (3, 6, 7, 3)).astype(np.uint8)
  digits_in = rng.integers(0, 256, (4, 3, 3)).astype(np.uint8)
  out = mnistm.blend_with_backgrounds(digits_in, photos, seed=[5, 0])
  np.testing.assert_array_equal(
      out, mnistm.blend_with_backgrounds(digits_in, photos, seed=[5, 0]))
  assert not np.array_equal(
      out, mnistm.blend_with_backgrounds(digits_in, photos, seed=[6, 0]))
  for image, digit in zip(out, digits_in):  # brute force over every crop
    matches = [
        np.array_equal(image, np.abs(photos[p, r:r + 3, c:c + 3].astype(int)
                                     - digit[..., None]))
        for p in range(3) for r in range(4) for c in range(5)]
    assert any(matches)


def test_conform_pads_grey_to_rgb_and_rejects_odd_channels():
  x = np.arange(28 * 28, dtype=np.uint32).reshape(1, 28, 28, 1) % 251
  out = digits.conform_images(x.astype(np.uint8), 32, 3)
  assert out.shape == (1, 32, 32, 3)
  np.testing.assert_array_equal(out[0, 2:30, 2:30, 1], x[0, ..., 0])
  assert out[0, :2].max() == 0 and out[0, 30:].max() == 0
  big = digits.conform_images(np.full((2, 64, 64, 3), 7, np.uint8), 32, 3)
  assert big.shape == (2, 32, 32, 3) and np.all(big == 7)
  with pytest.raises(DataError, match="4-channel"):
    digits.conform_images(np.zeros((1, 8, 8, 4), np.uint8), 8, 3)


def _synthetic(name, n_per_class=40, size=28, channels=1, seed=0):
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(10), n_per_class)
  x = rng.integers(0, 256, (len(y), size, size, channels)).astype(np.uint8)
  yt = np.repeat(np.arange(10), 5)
  xt = rng.integers(0, 256, (len(yt), size, size, channels)).astype(np.uint8)
  return digits.DigitDataset(name, x, y, xt, yt)


def _config(**overrides):
  config = config_lib.base_config()
  config.sources.s1 = config_lib.source("a", (5, 6, 7, 8, 9), half=0)
  config.sources.s2 = config_lib.source("b", (0, 1, 2, 3, 4))
  config.target.dataset = "b"
  config.target.classes = (5, 6, 7, 8, 9)
  config.target.half = 1
  config.target.hyperval_size = 30
  for key, value in overrides.items():
    config[key] = value
  return config


def _loader():
  datasets = {"a": _synthetic("a"), "b": _synthetic("b", channels=3)}
  return datasets.__getitem__


def test_experiment_splits():
  config = _config()
  runs = [experiment.build_experiment(config, seed=s, k=3, loader=_loader())
          for s in (0, 1)]
  data = runs[0]
  assert data.head_classes == ((5, 6, 7, 8, 9), (0, 1, 2, 3, 4))
  assert data.target_head == 0
  assert [s.head for s in data.sources] == [0, 1]
  assert len(data.sources[0].y) == 100    # half of 5 classes x 40
  assert data.sources[0].x.shape[1:] == (28, 28, 3)   # grey -> RGB
  np.testing.assert_array_equal(np.bincount(data.v.labels), [3] * 5)
  assert len(data.h.labels) == 30 and len(data.test.labels) == 25
  assert len(data.v.labels) + len(data.h.labels) + len(data.u.labels) == 100
  # H is fixed across seeds; V changes with the seed.
  np.testing.assert_array_equal(runs[0].h.images, runs[1].h.images)
  assert not np.array_equal(runs[0].v.images, runs[1].v.images)
  # V, H, U are disjoint (the images are random, so rows identify them).
  rows = [tuple(img.ravel()[:16]) for part in (data.v, data.h, data.u)
          for img in part.images]
  assert len(set(rows)) == len(rows)


def test_halves_are_disjoint_and_cover_the_classes():
  dataset = _synthetic("a")
  x0, _ = experiment.select_split(dataset, "train", (5, 6), 0, 0, "r")
  x1, _ = experiment.select_split(dataset, "train", (5, 6), 1, 0, "r")
  rows = {tuple(i.ravel()[:16]) for i in x0} | {tuple(i.ravel()[:16])
                                                 for i in x1}
  assert len(x0) + len(x1) == 80 and len(rows) == 80


def test_k_larger_than_a_class_has_is_a_data_error():
  with pytest.raises(DataError, match="k=50 is larger"):
    experiment.build_experiment(_config(), seed=0, k=50, loader=_loader())


def test_no_source_with_the_target_label_space_is_a_config_error():
  config = _config()
  config.sources.s1.classes = (5, 6)
  with pytest.raises(ConfigError, match="no source has the target"):
    experiment.build_experiment(config, seed=0, k=2, loader=_loader())


def test_real_mnist_file(shared_data):
  mnist = digits.load_mnist(shared_data)
  assert mnist.x_train.shape == (60000, 28, 28, 1)
  np.testing.assert_array_equal(
      np.bincount(mnist.y_test), [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                  974, 1009])


def test_real_digits_mnistm_experiment(shared_data, tmp_path):
  config = ml_collections.ConfigDict(_config().to_dict())
  config.data_dir = shared_data
  config.cache_dir = os.environ.get("GRADMIX_CACHE_DIR", str(tmp_path))
  config.sources.s1.dataset = "mnist"
  config.sources.s2.dataset = "mnistm"
  config.target.dataset = "mnistm"
  config.target.hyperval_size = 1000
  data = experiment.build_experiment(config, seed=0, k=2)
  # MNIST train 5-9 has 5421+5918+6265+5851+5949 = 29404 images: 14702 each.
  assert len(data.sources[0].y) == 14702
  # MNIST train 0-4: 5923+6742+5958+6131+5842 = 30596.
  assert len(data.sources[1].y) == 30596
  assert len(data.h.labels) + len(data.v.labels) + len(data.u.labels) == 14702
  assert len(data.test.labels) == 892 + 958 + 1028 + 974 + 1009
  assert data.test.images.shape[1:] == (28, 28, 3)



def test_digits_mnistm_mnist_halves_share_no_digit():
  # MNIST-M is built image by image from MNIST, so a digit is identified by
  # its index in MNIST train: written into two pixels here, and kept by a
  # stand-in for the MNIST-M recipe (another colour domain, same digits).
  from conftest import config_file  # pylint: disable=g-import-not-at-top
  mnist = _synthetic("mnist")
  ids = np.arange(len(mnist.y_train))
  x = mnist.x_train.copy()
  x[:, 0, 0, 0], x[:, 0, 1, 0] = ids // 256, ids % 256
  mnist = digits.DigitDataset("mnist", x, mnist.y_train, mnist.x_test,
                              mnist.y_test)
  mnistm = digits.DigitDataset("mnistm", 255 - np.repeat(x, 3, -1),
                               mnist.y_train, mnist.x_test, mnist.y_test)
  config = config_file("digits_mnistm_mnist")
  config.target.hyperval_size = 30
  data = experiment.build_experiment(
      config, seed=0, k=3, loader={"mnist": mnist, "mnistm": mnistm}.get)

  def digit_ids(images, inverted):
    images = 255 - images if inverted else images
    return set((images[:, 0, 0, 0].astype(int) * 256
                + images[:, 0, 1, 0]).tolist())

  s1 = data.sources[[s.name for s in data.sources].index("s1")]
  source_ids = digit_ids(s1.x, inverted=True)
  target_ids = set().union(*(digit_ids(part.images, inverted=False)
                             for part in (data.v, data.h, data.u)))
  high = set(np.flatnonzero(mnist.y_train >= 5).tolist())
  assert not source_ids & target_ids
  assert source_ids | target_ids == high
  assert abs(len(source_ids) - len(target_ids)) <= 1
  # S2 is MNIST 0-4 (the target's own domain), the test set MNIST test 5-9.
  s2 = data.sources[[s.name for s in data.sources].index("s2")]
  assert digit_ids(s2.x, inverted=False) == set(
      np.flatnonzero(mnist.y_train < 5).tolist())
  assert len(data.test.labels) == 25


def test_a_prepared_tfds_dataset_is_a_spec(tmp_path):
  from gradmix_tf.data import specs  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  train = (rng.integers(0, 256, (6, 8, 8, 1)).astype(np.uint8),
           np.array([0, 1, 2, 0, 1, 2]))
  test = (rng.integers(0, 256, (3, 8, 8, 1)).astype(np.uint8),
          np.array([2, 1, 0]))
  prepared_tfds(str(tmp_path), "tiny_digits",
                 {"train": train, "test": test})
  dataset = specs.load_dataset("tfds:tiny_digits", str(tmp_path), "")
  order = np.argsort([img.tobytes() for img in dataset.x_train])
  want = np.argsort([img.tobytes() for img in train[0]])
  np.testing.assert_array_equal(dataset.x_train[order], train[0][want])
  np.testing.assert_array_equal(dataset.y_train[order], train[1][want])
  assert dataset.y_test.dtype == np.int64 and len(dataset.y_test) == 3
  half = specs.load_dataset("tfds:tiny_digits:train[:50%]", str(tmp_path),
                            "")
  assert len(half.y_train) == 3
  with pytest.raises(DataError, match=r"tfds build mnist --data_dir=.*tfds"):
    specs.load_dataset("tfds:mnist", str(tmp_path), "")   # never downloads
  with pytest.raises(DataError, match="TFDS has no such dataset"):
    specs.load_dataset("tfds:other_digits", str(tmp_path), "")
  with pytest.raises(DataError, match="split 'validation'"):
    specs.load_dataset("tfds:tiny_digits:validation", str(tmp_path), "")


def _image_folder(root, classes, per_class, size=(8, 8), broken=None):
  """PNG images of random pixels in `<root>/<class>/`; returns them."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(len(root))
  written = {}
  for name in classes:
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      image = rng.integers(0, 256, size + (3,)).astype(np.uint8)
      with open(os.path.join(root, name, f"{i:03d}.png"), "wb") as f:
        f.write(tf.io.encode_png(image).numpy())
      written[(name, i)] = image
  if broken:
    with open(os.path.join(root, classes[0], broken), "wb") as f:
      f.write(b"not a png")
  return written


def test_an_image_folder_is_a_spec(tmp_path):
  from gradmix_tf.data import specs  # pylint: disable=g-import-not-at-top
  # Integer class folders hold their labels; train/test split folders.
  train = _image_folder(str(tmp_path / "digits" / "train"), ["5", "7"], 3)
  _image_folder(str(tmp_path / "digits" / "test"), ["7"], 2)
  dataset = specs.load_dataset(f"folder:{tmp_path / 'digits'}", "", "")
  assert dataset.y_train.tolist() == [5, 5, 5, 7, 7, 7]
  np.testing.assert_array_equal(dataset.x_train[4], train[("7", 1)])
  assert dataset.y_test.tolist() == [7, 7]
  # Named class folders: labels in sorted order; no split folders: all train.
  _image_folder(str(tmp_path / "named"), ["zebra", "apple"], 2)
  named = specs.load_dataset(f"folder:{tmp_path / 'named'}", "", "")
  assert named.y_train.tolist() == [0, 0, 1, 1]       # apple, zebra
  assert len(named.y_test) == 0
  assert specs.folder_labels(["b", "a"]) == {"a": 0, "b": 1}


@pytest.mark.parametrize("layout,message", [
    ("empty", "no class sub-folders"),
    ("no_images", "no images"),
    ("broken", "cannot read image .*broken.png"),
    ("missing", "is not a folder"),
    ("unknown_test_class", r"test class folders \['9'\] are not train")])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_image_folders_are_one_error_line(tmp_path, layout, message,
                                              stream):
  from gradmix_tf.data import specs  # pylint: disable=g-import-not-at-top
  root = tmp_path / "data"
  if layout != "missing":
    root.mkdir()
  if layout == "no_images":
    (root / "cat").mkdir()
    (root / "cat" / "notes.txt").write_text("x")
  if layout == "broken":
    _image_folder(str(root), ["cat"], 1, broken="broken.png")
  if layout == "unknown_test_class":
    _image_folder(str(root / "train"), ["5", "7"], 1)
    _image_folder(str(root / "test"), ["7", "9"], 1)
  with pytest.raises(DataError, match=message):
    specs.load_dataset(f"folder:{root}", "", "", stream=stream)


def test_an_unprepared_tfds_role_is_one_error_line_from_the_launcher(
    tmp_path):
  from conftest import assert_one_error_line, run_module  # pylint: disable=g-import-not-at-top
  result = run_module("gradmix_tf.launch", "--config=digits_mnistm",
                      "--config.sources.s1.dataset=tfds:mnist",
                      f"--config.data_dir={tmp_path}",
                      f"--workdir={tmp_path / 'run'}")
  assert_one_error_line(result, "tfds build mnist", str(tmp_path / "tfds"))
  assert not (tmp_path / "run").exists()


# -- Pixel values: non-finite, out of range, the float scale -----------------


def _float_images(rng, n=4, high=1.0):
  return rng.uniform(0.0, high, (n, 6, 6, 3)).astype(np.float32)


def test_float_images_in_zero_one_are_scaled_and_in_zero_255_kept():
  rng = np.random.default_rng(0)
  unit = _float_images(rng)
  # Independent arithmetic: round(x * 255) for [0, 1], round(x) for 0..255.
  np.testing.assert_array_equal(
      digits.pixels_as_uint8(unit, "x"),
      np.floor(unit.astype(np.float64) * 255 + 0.5).astype(np.uint8))
  wide = _float_images(rng, high=255.0)
  np.testing.assert_array_equal(
      digits.pixels_as_uint8(wide, "x"),
      np.floor(wide.astype(np.float64) + 0.5).astype(np.uint8))
  # Mostly dark 0..255 images (MNIST-like: most pixels 0) stay 0..255.
  dark = np.zeros((4, 6, 6, 1), np.float64)
  dark[:, 2:4, 2:4] = 200.0
  assert digits.pixels_as_uint8(dark, "x").max() == 200
  ints = np.array([[[[0, 17, 255]]]], np.int64)
  np.testing.assert_array_equal(digits.pixels_as_uint8(ints, "x"),
                                ints.astype(np.uint8))


@pytest.mark.parametrize("poison,fragments", [
    ("nan", ("hold 1 non-finite values (NaN or infinite) in 1 images, the "
             "first in image 2", "numpy.nan_to_num")),
    ("inf", ("hold 2 non-finite values", "in 2 images, the first in image 1")),
    ("negative", ("are floats in [-0.5, 1], neither [0, 1] nor [0, 255]",)),
    ("above_255", (", 300], neither [0, 1] nor [0, 255]",)),
    ("one_stray", ("are floats in [0, 1] but for 1 of", "non-zero values "
                   "above 1 (up to 1.5; the first in image 3)",
                   "clip them to [0, 1]")),
    ("int16", ("are int16 in [0, 4095], outside 0..255",)),
])
def test_bad_pixel_values_are_refused_in_one_line(poison, fragments):
  rng = np.random.default_rng(1)
  x = _float_images(rng, n=5)
  x[:, 0, 0, 0] = 1.0           # the [0, 1] set's maximum is exactly 1
  if poison == "nan":
    x[2, 3, 3, 1] = np.nan
  elif poison == "inf":
    x[1, 0, 1, 0], x[4, 0, 1, 0] = np.inf, -np.inf
  elif poison == "negative":
    x[0, 1, 1, 1] = -0.5
  elif poison == "above_255":
    x = x * 255.0
    x[3, 1, 1, 1] = 300.0
  elif poison == "one_stray":
    x[3, 2, 2, 2] = 1.5
  elif poison == "int16":
    x = np.zeros((2, 4, 4, 1), np.int16)
    x[1, 0, 0, 0] = 4095
  with pytest.raises(DataError) as refused:
    digits.checked_dataset("npz:x.npz", x, np.zeros(len(x), np.int64),
                           x[:1], np.zeros(1, np.int64))
  message = str(refused.value)
  assert message.startswith("npz:x.npz: train images ") and "\n" not in message
  for fragment in fragments:
    assert fragment in message, message


def test_a_nan_pixel_in_a_float_npz_source_is_refused_by_the_launcher(
    shared_data, tmp_path):
  """The case that used to train with exit 0: one NaN made `x.max() <= 1`
  False, so the whole [0, 1] set skipped its scaling and rounded to 0/1."""
  from conftest import assert_one_error_line, run_module  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (50, 28, 28, 1)).astype(np.float32)
  x[7, 5, 5, 0] = np.nan
  path = tmp_path / "float_digits.npz"
  np.savez(path, x_train=x, y_train=np.arange(50) % 5,
           x_test=x[:10], y_test=np.arange(10) % 5)
  result = run_module(
      "gradmix_tf.launch", "--config=digits_mnistm", "--config.quick=True",
      f"--config.data_dir={shared_data}", f"--workdir={tmp_path / 'run'}",
      f"--config.sources.s2.dataset=npz:{path}")
  assert_one_error_line(result, f"npz:{path}: train images hold 1 "
                        "non-finite values", "the first in image 7")
  assert not (tmp_path / "run").exists()


# -- syndigits: printed digits in SVHN's role ---------------------------------


def test_syndigits_are_deterministic_uint8_and_differ_by_seed(shared_data):
  from gradmix_tf.data import syndigits  # pylint: disable=g-import-not-at-top
  backgrounds = mnistm.load_backgrounds(shared_data)
  bank = syndigits.glyph_bank()
  assert len(bank) == len(syndigits.FONTS) == 21
  x, y = syndigits.render_split(40, bank, backgrounds, [0, 0])
  again, y_again = syndigits.render_split(40, bank, backgrounds, [0, 0])
  other, _ = syndigits.render_split(40, bank, backgrounds, [0, 1])
  assert x.shape == (40, 32, 32, 3) and x.dtype == np.uint8
  np.testing.assert_array_equal(x, again)
  np.testing.assert_array_equal(y, y_again)
  assert not np.array_equal(x, other)
  assert set(y) <= set(range(10)) and len(set(y)) > 5
  # Every image has contrast: the digit's colour is at least 60 luminance
  # levels from the background's mean (before blur and noise), so the
  # spread of an image's luminance is well above the noise's (std <= 8).
  luminance = x.astype(np.float64) @ [0.299, 0.587, 0.114]
  assert (luminance.reshape(40, -1).std(axis=1) > 8).mean() > 0.9


def test_a_syndigit_shows_its_label_in_the_middle():
  """Without photo, rotation, blur or noise, the middle of the frame holds
  the glyph of the label: its mask correlates with that digit's glyph,
  drawn alone at the same place, more than with any other digit's."""
  from gradmix_tf.data import syndigits  # pylint: disable=g-import-not-at-top
  bank = syndigits.glyph_bank(("DejaVuSans.ttf",))
  for label in range(10):
    rng = np.random.default_rng(label)
    canvas, row, col, height = syndigits._line_of_glyphs(  # pylint: disable=protected-access
        [bank[0][1], bank[0][label], bank[0][1]], gap=8)
    mask = syndigits._digit_mask(canvas, row, col, height, rng)  # pylint: disable=protected-access
    scores = []
    for digit in range(10):
      alone = np.zeros_like(canvas)
      glyph = bank[0][digit]
      top = int(row - glyph.shape[0] / 2)
      left = int(col - glyph.shape[1] / 2)
      alone[top:top + glyph.shape[0], left:left + glyph.shape[1]] = glyph
      reference = syndigits._digit_mask(alone, row, col, height,  # pylint: disable=protected-access
                                        np.random.default_rng(label))
      middle = (slice(8, 24), slice(10, 22))
      scores.append(np.corrcoef(mask[middle].ravel(),
                                reference[middle].ravel())[0, 1])
    assert int(np.argmax(scores)) == label, (label, np.round(scores, 3))


def test_syndigits_are_built_once_cached_and_refuse_a_missing_font(
    shared_data, tmp_path, monkeypatch):
  from gradmix_tf.data import specs, syndigits  # pylint: disable=g-import-not-at-top
  built = specs.load_dataset("syndigits:60,20", shared_data, str(tmp_path))
  assert built.x_train.shape == (60, 32, 32, 3)
  assert built.x_test.shape == (20, 32, 32, 3)
  (cache,) = os.listdir(tmp_path)
  assert cache.startswith("syndigits_seed0_60x20_") and cache.endswith(".npz")
  cached = specs.load_dataset("syndigits:60,20", shared_data, str(tmp_path))
  np.testing.assert_array_equal(cached.x_train, built.x_train)
  np.testing.assert_array_equal(cached.y_test, built.y_test)
  with pytest.raises(DataError, match="syndigits:<train images>,<test"):
    specs.load_dataset("syndigits:60", shared_data, str(tmp_path))
  monkeypatch.setattr(syndigits, "FONTS", ("NoSuchFont.ttf",))
  with pytest.raises(DataError, match="needs the font .*NoSuchFont.ttf"):
    specs.load_dataset("syndigits:60,20", shared_data, str(tmp_path / "b"))


def test_digits_syn_mnist_runs_quick_from_its_config(shared_data, tmp_path):
  """The far twin's config trains through the launcher's `train` (a small
  syndigits set rendered on first use into the test's cache)."""
  from gradmix_tf import launch  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config("digits_syn_mnist")
  config.quick = True
  config.data_dir = shared_data
  config.cache_dir = str(tmp_path / "cache")
  config.sources.s1.dataset = "syndigits:2000,200"
  metrics = launch.train(config, str(tmp_path / "run"))
  assert metrics["config"] == "digits_syn_mnist" and metrics["steps"] == 30
  assert metrics["num_examples"]["s1"] == 300       # quick mode's cap
  assert os.listdir(tmp_path / "cache")[0].startswith("syndigits_seed0_")
