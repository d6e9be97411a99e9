"""Data of a holistic-transfer experiment: a full source, a partial target.

The source (e.g. MNIST train, all ten digits) trains the source model. The
target (e.g. MNIST-M) gives labelled images of the *seen* classes only:

* `V` (training): `per_class` images of each seen class, drawn with the run
  seed;
* `H` (held out): `heldout_per_class` further images of each seen class,
  fixed by `split_seed` (post-hoc calibration and monitoring; it holds no
  unseen class, as a real user would not have one);
* test: the target's test split with *all* classes.

Labels are the original class ids (one head over all classes). Source and
target are given halves 0 and 1 of the underlying train images (as in
`digits_mnistm`) so a target image is never the source image it was built
from.
"""

import numpy as np

from gradmix_tf.data import digits
from gradmix_tf.data import specs
from gradmix_tf.data.experiment import ExperimentData, SourceData
from gradmix_tf.data.experiment import cap_examples, class_ids
from gradmix_tf.data.experiment import draw_per_class, select_split
from gradmix_tf.errors import ConfigError


def build_partial_experiment(config, seed, loader=None):
  """`ExperimentData` with `v` = seen-class labelled target, `h` held out.

  `u` is empty: the partial target has no unlabelled images here.

  Raises:
    ConfigError: seen classes outside the label space, or none unseen.
    DataError: too few target images of a seen class.
  """
  if loader is None:
    def loader(spec):
      return specs.load_dataset(spec, config.data_dir, config.cache_dir,
                                 config.mnistm_seed)
  size, _, channels = tuple(config.input_shape)
  classes = class_ids(config.target.classes, "target")
  seen = class_ids(config.holistic.seen_classes, "holistic.seen_classes")
  if not set(seen) < set(classes):
    raise ConfigError(
        f"holistic.seen_classes {list(seen)} must be a proper subset of the "
        f"target classes {list(classes)} (some classes must stay unseen)")
  if len(config.sources) != 1:
    raise ConfigError("holistic transfer has exactly one source (the "
                      "pre-training data); config.sources has "
                      f"{len(config.sources)}")
  (name, role), = config.sources.items()
  if class_ids(role.classes, f"sources.{name}") != classes:
    raise ConfigError(f"sources.{name}.classes must equal the target "
                      f"classes {list(classes)}")
  x, y = select_split(loader(role.dataset), "train", classes, role.half,
                 config.split_seed, f"sources.{name}")
  x, y = cap_examples(x, y, config.get("max_source_examples", 0), config.split_seed)
  source = SourceData(name, digits.conform_images(x, size, channels, name),
                      y, 0)

  dataset = loader(config.target.dataset)
  x, y = select_split(dataset, "train", classes, config.target.half,
                 config.split_seed, "target")
  x = digits.conform_images(x, size, channels, "target")
  seen_labels = [classes.index(c) for c in seen]
  h_index = _per_class(y, seen_labels, int(config.holistic.heldout_per_class),
                       np.random.default_rng([config.split_seed, 13]),
                       np.arange(len(y)), "holistic.heldout_per_class")
  pool = np.setdiff1d(np.arange(len(y)), h_index)
  v_index = _per_class(y, seen_labels, int(config.holistic.per_class),
                       np.random.default_rng([seed, 17]), pool,
                       "holistic.per_class")
  x_test, y_test = select_split(dataset, "test", classes, -1, config.split_seed,
                           "target test")
  x_test, y_test = cap_examples(x_test, y_test, config.get("max_test", 0),
                        config.split_seed)
  empty = (x[:0], y[:0])
  return ExperimentData(
      sources=(source,), head_classes=(classes,), target_head=0,
      v=(x[v_index], y[v_index]), h=(x[h_index], y[h_index]), u=empty,
      test=(digits.conform_images(x_test, size, channels, "target test"),
            y_test))


def _per_class(y, labels, count, rng, pool, field):
  return draw_per_class(
      y, pool, labels, count, rng, lambda label, available: (
          f"{field}={count} is more than the {available} target images of "
          f"class index {label} available; lower {field}"))
