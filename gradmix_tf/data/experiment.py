"""The data of one MS-DTT experiment: sources, V, H, U and the test split.

A *label space* is the tuple of original class ids a dataset is restricted
to; labels are re-indexed `0..len(classes)-1` in that order. Each distinct
label space gets one head; the target head is the head of the source(s)
whose label space equals the target's.

Splits of the target (all from its dataset's train split, after the class
filter and the optional half):

* `H`, the hyper-validation set: the first `hyperval_size` images of a
  permutation drawn with `split_seed`, so it is fixed across run seeds;
* `V`, `k` labelled images per class drawn with the run `seed` from the rest;
* `U`, everything else (its labels are kept only to report, never to train);
* test: the dataset's test split with the same class filter.

With `config.input_pipeline = "stream"`, a file-backed dataset (`folder:`)
is only listed: its sources, U and test split stay `ImageFiles`
(`gradmix_tf.data.image_files`), decoded batch by batch while the run
trains and evaluates; V and H (a few images per class) are decoded here.

`half` (0 or 1) keeps one half of a class-filtered train split, chosen by a
permutation with `split_seed`; two roles built from the same underlying
images (MNIST and MNIST-M made from it) with halves 0 and 1 are disjoint.
"""

import dataclasses

import numpy as np

from gradmix_tf.data import digits
from gradmix_tf.data import image_files
from gradmix_tf.data import specs
from gradmix_tf.errors import ConfigError, DataError


# The losses a source can take (`SourceData.loss`): cross-entropy of
# integer labels `[N]`, or for label distributions `[N, C]` (soft
# pseudo-labels, paper section 3.5) KL(p_model || y), the paper's, or
# KL(y || p_model) (`pseudo_labels.soft_label_loss`).
CROSS_ENTROPY = "cross_entropy"
KL_MODEL_LABEL = "kl_model_label"
KL_LABEL_MODEL = "kl_label_model"
SOURCE_LOSSES = (CROSS_ENTROPY, KL_MODEL_LABEL, KL_LABEL_MODEL)


@dataclasses.dataclass(frozen=True)
class SourceData:
  """One labelled source: images (an array, or `ImageFiles` streamed),
  labels, the head it trains, its loss (one of `SOURCE_LOSSES`)."""
  name: str
  x: np.ndarray
  y: np.ndarray
  head: int
  loss: str = CROSS_ENTROPY


@dataclasses.dataclass(frozen=True)
class LabelledSet:
  """Images (an array, or `ImageFiles` streamed) with their labels (U's are
  hidden: kept to report, never to train), and for video frames the clip of each frame (`groups`, frames of
  a clip adjacent; None for still images)."""
  images: np.ndarray
  labels: np.ndarray
  groups: np.ndarray = None

  def __len__(self):
    return int(len(self.labels))


def labelled_set(split):
  """`split` as a `LabelledSet` (it may be an `(images, labels)` pair)."""
  if isinstance(split, LabelledSet):
    return split
  images, labels = split
  return LabelledSet(images, labels)


@dataclasses.dataclass(frozen=True)
class ExperimentData:
  """Everything a run trains and evaluates on (uint8 images, int64 labels).

  `v`, `h`, `u` and `test` are `LabelledSet`s (an `(images, labels)` pair
  given here is turned into one).
  """
  sources: tuple
  head_classes: tuple     # per head: the original class ids, in label order
  target_head: int
  v: LabelledSet
  h: LabelledSet
  u: LabelledSet          # labels hidden
  test: LabelledSet
  # With V of video clips (`v.groups`): how many frames of each clip a step
  # draws (0: all of V every step).
  v_frames_per_step: int = 0
  # `{spec: {class folder name: label}}` of `folder:` datasets with named
  # class folders (written to the run's model.json).
  folder_labels: dict = None

  def __post_init__(self):
    for name in ("v", "h", "u", "test"):
      object.__setattr__(self, name, labelled_set(getattr(self, name)))

  @property
  def num_classes_per_head(self):
    return tuple(len(classes) for classes in self.head_classes)


def build_experiment(config, seed, k, loader=None):
  """Builds the experiment's splits from a config (see module docstring).

  Args:
    config: ConfigDict with `sources` (named roles with `dataset`, `classes`,
      `half`), `target` (`dataset`, `classes`, `half`, `hyperval_size`),
      `input_shape`, `split_seed`, and the optional caps `max_source_examples`,
      `max_unlabelled`, `max_test` (0 = no cap).
    seed: the run seed (draws V).
    k: labelled target images per class in V.
    loader: `spec -> DigitDataset`, for tests; defaults to `load_dataset`.

  Raises:
    ConfigError: no source shares the target's label space; bad classes.
    DataError: too few images for `k` and `H`, unreadable files.
  """
  if loader is None:
    cache = {}

    def loader(spec):
      if spec not in cache:
        cache[spec] = specs.load_dataset(
            spec, config.data_dir, config.cache_dir, config.mnistm_seed,
            stream=streams(config))
      return cache[spec]

  size, _, channels = tuple(config.input_shape)
  target_classes = class_ids(config.target.classes, "target")
  head_classes = []
  sources = []
  for name in sorted(config.sources):
    role = config.sources[name]
    classes = class_ids(role.classes, f"sources.{name}")
    if classes not in head_classes:
      head_classes.append(classes)
    x, y = select_split(loader(role.dataset), "train", classes, role.half,
                   config.split_seed, f"sources.{name}")
    x, y = cap_examples(x, y, config.get("max_source_examples", 0), config.split_seed)
    sources.append(SourceData(
        name, conform(x, size, channels, name), y,
        head_classes.index(classes)))
  if not sources:
    raise ConfigError("the config has no sources: add at least one under "
                      "config.sources")
  if target_classes not in head_classes:
    raise ConfigError(
        f"no source has the target's label space {list(target_classes)}: "
        "at least one source must have exactly the target classes, or "
        "nothing would train the target head")
  target_head = head_classes.index(target_classes)

  target = config.target
  dataset = loader(target.dataset)
  x, y = select_split(dataset, "train", target_classes, target.half,
                 config.split_seed, "target")
  x = conform(x, size, channels, "target")
  order = np.random.default_rng([config.split_seed, 7]).permutation(len(y))
  hyperval_size = int(target.hyperval_size)
  h_index, pool = order[:hyperval_size], order[hyperval_size:]
  v_index = _k_shot(y, pool, k, seed, len(target_classes))
  u_index = np.setdiff1d(pool, v_index)
  u_cap = config.get("max_unlabelled", 0)
  if u_cap:
    u_index = u_index[:u_cap]
  x_test, y_test = select_split(dataset, "test", target_classes, -1,
                           config.split_seed, "target test")
  x_test, y_test = cap_examples(x_test, y_test, config.get("max_test", 0),
                        config.split_seed)
  specs_used = sorted({role.dataset for role in config.sources.values()}
                      | {target.dataset})
  named = {spec: loader(spec).folder_labels for spec in specs_used
           if getattr(loader(spec), "folder_labels", None)}
  return ExperimentData(
      sources=tuple(sources),
      head_classes=tuple(head_classes),
      target_head=target_head,
      folder_labels=named or None,
      v=(image_files.as_array(x[v_index]), y[v_index]),
      h=(image_files.as_array(x[h_index]), y[h_index]),
      u=(x[u_index], y[u_index]),
      test=(conform(x_test, size, channels, "target test"), y_test))


def streams(config):
  """Whether file-backed data are streamed (`config.input_pipeline`)."""
  return config.get("input_pipeline", "memory") == "stream"


def conform(images, size, channels, name):
  """`digits.conform_images` of an array; the same conversion appended to
  the decoder of `ImageFiles`."""
  if image_files.is_streamed(images):
    if channels not in (1, 3):
      raise DataError(f"{name}: cannot convert images to {channels} "
                      "channels; only grey (1) and RGB (3) are supported")
    return image_files.conformed(images, size, channels)
  return digits.conform_images(images, size, channels, name)


def class_ids(classes, role):
  """`classes` as a tuple of distinct ints (ConfigError naming `role`)."""
  classes = tuple(int(c) for c in classes)
  if not classes or len(set(classes)) != len(classes):
    raise ConfigError(f"{role}.classes must be distinct class ids, got "
                      f"{list(classes)}")
  return classes


def select_split(dataset, split, classes, half, split_seed, role):
  """Images of `classes` (labels re-indexed), optionally one half of them."""
  x, y = dataset.split(split)
  keep = np.flatnonzero(np.isin(y, classes))
  missing = sorted(set(classes) - set(np.unique(y[keep]).tolist()))
  if missing:
    raise DataError(f"{role}: dataset {dataset.name} has no {split} images "
                    f"of classes {missing}; check {role}.classes")
  if half in (0, 1):
    order = np.random.default_rng([split_seed, 3]).permutation(len(keep))
    middle = len(keep) // 2
    keep = np.sort(keep[order[:middle] if half == 0 else order[middle:]])
  elif half != -1:
    raise ConfigError(f"{role}.half must be 0, 1 or -1 (all), got {half}")
  label_of = {c: i for i, c in enumerate(classes)}
  labels = np.array([label_of[int(c)] for c in y[keep]], np.int64)
  return x[keep], labels


def cap_examples(x, y, cap, split_seed):
  """At most `cap` examples (0: all), a fixed random subset by `split_seed`."""
  if not cap or len(y) <= cap:
    return x, y
  index = np.sort(np.random.default_rng([split_seed, 5]).permutation(
      len(y))[:cap])
  return x[index], y[index]


def draw_per_class(y, pool, labels, count, rng, shortage):
  """`count` indices of each label in `labels` from `pool` (sorted per
  class, classes in order), drawn without replacement with `rng`.

  Raises:
    DataError: `shortage(label, available)`, when a class has fewer than
      `count` images in `pool`.
  """
  chosen = []
  for label in labels:
    members = pool[y[pool] == label]
    if len(members) < count:
      raise DataError(shortage(label, len(members)))
    chosen.append(np.sort(rng.choice(members, size=count, replace=False)))
  return np.concatenate(chosen)


def _k_shot(y, pool, k, seed, num_classes):
  """`k` indices per class from `pool`, drawn with `seed`."""
  if k < 1:
    raise ConfigError(f"k must be at least 1, got {k}")
  return draw_per_class(
      y, pool, range(num_classes), k, np.random.default_rng([seed, 11]),
      lambda label, available: (
          f"k={k} is larger than the {available} target images of class "
          f"index {label} left after the hyper-validation set; lower k"))
