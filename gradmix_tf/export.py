r"""Export a trained run for TensorFlow Serving.

    python -m gradmix_tf.export --workdir=runs/gm --export_dir=/models \
        [--name=digits_mnistm] [--version=N] [--overwrite]

writes `<export_dir>/<name>/<version>/`, a SavedModel whose signatures take
raw images and return the target head's prediction:

* ``serving_default``: `images` uint8 `[batch, height, width, channels]`;
* ``serve_float``: `images` float32 in 0..255, same layout;

both returning `probabilities` `[batch, classes]` (softmax of the target
head) and `classes` `[batch]` (the original class ids, e.g. 5..9). The
preprocessing runs in the graph exactly as in training: grey becomes RGB
(or RGB grey); digit images smaller than the input are zero-padded around
the centre, larger ones area-resized (`data.digits.conform_images`);
action frames of any size are resized by `data.actions.resize_frames`
(antialiased bilinear, rounded), the function training reads them with; the
trunk rescales by 1/255. Which of the two is in `model.json`
(`"preprocessing"`: `"digits"` or `"frames"`). Without `--version` the
next integer after the existing versions is used (TF Serving serves the
largest; `--version` must be a positive integer); an existing version
directory is refused unless `--overwrite`.

The export is written beside its destination (`.partial-<version>-<pid>`,
a name TF Serving ignores) and renamed into place, so a failed export
leaves nothing behind; `--overwrite` swaps the new version in atomically
(`files.replace_directory`), so there is never a moment without a complete
servable version. Hidden directories left by killed exports are removed by
the next export (an old version set aside and not yet replaced is put
back).

Only a finished run is exported: one with `metrics.json` whose newest
checkpoint restores, is the run's last step and holds finite weights.
`--allow_unfinished` exports the newest intact checkpoint of any run.
"""

import json
import os
import re
import shutil

from absl import app
from absl import flags
import ml_collections
import numpy as np
import tensorflow as tf

from gradmix_tf import checkpoints
from gradmix_tf import cli
from gradmix_tf import models
from gradmix_tf.data.actions import resize_frames
from gradmix_tf import workdir as run_directory
from gradmix_tf.errors import UserError
from gradmix_tf.model_description import MODEL_FILE, preprocessing_of
from gradmix_tf.files import replace_directory, space_for

PREPROCESSING = ("digits", "frames")
# Hidden work directories of an export in progress: `.partial-<v>-<pid>`
# (being written) and `.old-<v>-<pid>` (a replaced version set aside).
_WORK_DIR = re.compile(r"^\.(partial|old)-(\d+)-(\d+)$")


class ServingModule(tf.Module):
  """The target head of a trained model behind serving signatures.

  `preprocessing`: `"digits"` (pad or area-resize, as the digit data) or
  `"frames"` (`resize_frames`, as the action data).
  """

  def __init__(self, model, target_head, class_ids, input_shape,
               preprocessing="digits"):
    super().__init__()
    if preprocessing not in PREPROCESSING:
      raise ValueError(f"preprocessing must be one of {PREPROCESSING}, got "
                       f"{preprocessing!r}")
    self.preprocessing = preprocessing
    self.model = model
    self.target_head = int(target_head)
    self.class_ids = tf.constant(list(class_ids), tf.int64)
    self.size, _, self.channels = (int(d) for d in input_shape)
    self.serve_uint8 = tf.function(
        self._serve_uint8,
        input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8,
                                       name="images")])
    self.serve_float = tf.function(
        self._serve_float,
        input_signature=[tf.TensorSpec([None, None, None, None], tf.float32,
                                       name="images")])

  def _serve_uint8(self, images):
    return self._predict(tf.cast(images, tf.float32))

  def _serve_float(self, images):
    return self._predict(images)

  def _predict(self, images):
    images = self._conform(images)
    logits = self.model(images, head=self.target_head)
    probabilities = tf.nn.softmax(logits)
    classes = tf.gather(self.class_ids, tf.argmax(probabilities, -1))
    return {"probabilities": probabilities, "classes": classes}

  def _conform(self, images):
    """Training's preprocessing in the graph (float): `digits.
    conform_images` or `actions.resize_frames`."""
    channels = tf.shape(images)[-1]
    tf.debugging.assert_equal(
        tf.logical_or(tf.equal(channels, 1), tf.equal(channels, 3)), True,
        message="images must have 1 (grey) or 3 (RGB) channels")
    if self.channels == 3:
      images = tf.cond(tf.equal(channels, 1),
                       lambda: tf.tile(images, [1, 1, 1, 3]), lambda: images)
    else:
      luminance = tf.constant([[0.299], [0.587], [0.114]], tf.float32)
      images = tf.cond(tf.equal(channels, 3),
                       lambda: tf.round(tf.tensordot(images, luminance, 1)),
                       lambda: images)
    images = tf.ensure_shape(images, [None, None, None, self.channels])
    if self.preprocessing == "frames":
      return tf.ensure_shape(resize_frames(images, self.size),
                             [None, self.size, self.size, self.channels])
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    fits = tf.logical_and(height <= self.size, width <= self.size)
    images = tf.cond(
        fits,
        lambda: tf.image.pad_to_bounding_box(
            images, (self.size - height) // 2, (self.size - width) // 2,
            self.size, self.size),
        lambda: tf.round(tf.image.resize(images, (self.size, self.size),
                                         method="area")))
    return tf.ensure_shape(images, [None, self.size, self.size,
                                    self.channels])


def next_version(model_dir):
  versions = [int(name) for name in os.listdir(model_dir)
              if name.isdigit()] if os.path.isdir(model_dir) else []
  return max(versions, default=0) + 1


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale_work(model_dir):
  """Clears the hidden directories of exports whose process is gone.

  A `.old-<v>-<pid>` whose version `<v>` is missing (the process died
  between setting it aside and renaming the new one in) is put back as
  `<v>`; everything else of a dead process is deleted.
  """
  if not os.path.isdir(model_dir):
    return
  for name in os.listdir(model_dir):
    match = _WORK_DIR.match(name)
    if not match or _alive(int(match.group(3))):
      continue
    path = os.path.join(model_dir, name)
    version_path = os.path.join(model_dir, match.group(2))
    if match.group(1) == "old" and not os.path.exists(version_path):
      os.rename(path, version_path)
    else:
      shutil.rmtree(path, ignore_errors=True)


def check_finite_weights(model, what):
  """Refuses a model with a NaN or Inf weight (a diverged run).

  Raises:
    UserError: naming the first such variable.
  """
  for variable in model.weights:
    if not np.all(np.isfinite(np.asarray(variable))):
      raise UserError(
          f"{what} has non-finite weights ({variable.path}): the run "
          "diverged; lower the learning rate and train again "
          "(--allow_unfinished exports it anyway)")


def export_model(model, target_head, class_ids, input_shape, export_dir,
                 name, version=None, overwrite=False, preprocessing="digits"):
  """Writes `<export_dir>/<name>/<version>/`; returns that path.

  Raises:
    UserError: the version is not a positive integer, or its directory
      exists and `overwrite` is False.
  """
  model_dir = os.path.join(export_dir, name)
  if version is not None and (isinstance(version, bool) or
                              not str(version).isdigit() or int(version) < 1):
    raise UserError(f"--version must be a positive integer, got {version!r} "
                    "(leave it out for the next version)")
  run_directory.check_directory(model_dir, "--export_dir")
  remove_stale_work(model_dir)
  version = int(version) if version is not None else next_version(model_dir)
  path = os.path.join(model_dir, str(version))
  if os.path.exists(path) and not overwrite:
    raise UserError(f"{path} already exists: pass --overwrite to replace it "
                    "or --version=N for another version")
  module = ServingModule(model, target_head, class_ids, input_shape,
                         preprocessing)
  signatures = {"serving_default": module.serve_uint8.get_concrete_function(),
                "serve_float": module.serve_float.get_concrete_function()}
  # The TF1-style loader of TF Serving restores only variables the object
  # graph reaches as tf.Variables; Keras variables wrap theirs, so the
  # captured ones are tracked explicitly (as keras.export.ExportArchive does).
  captured = {}
  for function in signatures.values():
    for variable in function.variables:
      captured[id(variable)] = variable
  module.served_variables = list(captured.values())
  os.makedirs(model_dir, exist_ok=True)
  partial = os.path.join(model_dir, f".partial-{version}-{os.getpid()}")
  aside = os.path.join(model_dir, f".old-{version}-{os.getpid()}")
  # A SavedModel holds the variables once and the serving graph (a few
  # hundred KiB): the estimate of what a full disk refuses.
  needed = checkpoints.variable_bytes(module.served_variables) + 512 * 1024
  try:
    with space_for(model_dir, f"export version {version}", needed):
      tf.saved_model.save(module, partial, signatures=signatures)
      replace_directory(partial, path, aside)
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  return path


def export_runner(runner, export_dir, name, version=None, overwrite=False):
  """Exports a runner's model after its run (the launcher's export_dir)."""
  check_finite_weights(runner.model, f"the model of {runner.workdir}")
  data = runner.data
  return export_model(runner.model, data.target_head,
                      data.head_classes[data.target_head],
                      runner.config.input_shape, export_dir, name, version,
                      overwrite, preprocessing_of(runner.config))


def export_workdir(workdir, export_dir, name=None, version=None,
                   overwrite=False, allow_unfinished=False):
  """Rebuilds the model of a finished run and exports it.

  Raises:
    UserError: not a run, an unfinished run, or non-finite weights (the
      last two unless `allow_unfinished`).
  """
  path = os.path.join(workdir, MODEL_FILE)
  if not os.path.isfile(path):
    raise UserError(f"{path} not found: --workdir must be a run written by "
                    "python -m gradmix_tf.launch")
  try:
    with open(path) as f:
      description = json.load(f)
  except (OSError, ValueError) as err:
    raise UserError(f"{path} is damaged ({err}): rerun the training command "
                    "to write it again") from None
  metrics = _finished_metrics(workdir)
  if metrics is None and not allow_unfinished:
    raise UserError(
        f"{workdir} has no metrics.json: the run did not finish; rerun its "
        "training command to finish it (or pass --allow_unfinished)")
  name = name or description.get("name") or "model"
  model = models.build_model(
      ml_collections.ConfigDict(description["model"]),
      tuple(description["input_shape"]),
      [len(c) for c in description["head_classes"]])
  step = tf.Variable(0, dtype=tf.int64, trainable=False)
  latest = checkpoints.restore_newest_intact(
      tf.train.Checkpoint(model=model, step=step),
      os.path.join(workdir, "checkpoints"), partial=True,
      fallback=allow_unfinished)
  if latest is None:
    raise UserError(f"no checkpoint in {workdir}/checkpoints: train first")
  if not allow_unfinished:
    if int(step.numpy()) != int(metrics["steps"]):
      raise UserError(
          f"the newest checkpoint of {workdir} is step {int(step.numpy())}, "
          f"not the run's last step {metrics['steps']}: rerun its training "
          "command to finish it (or pass --allow_unfinished)")
    check_finite_weights(model, f"the run in {workdir}")
  head = description["target_head"]
  return export_model(model, head, description["head_classes"][head],
                      description["input_shape"], export_dir, name, version,
                      overwrite, description.get("preprocessing") or (
                          "frames" if description["model"].get("name") ==
                          "resnet18" else "digits"))


def _finished_metrics(workdir):
  """The run's metrics.json, or None when it has none (or it is damaged)."""
  path = os.path.join(workdir, "metrics.json")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _define_flags():
  """Flags of the command line only (the launcher imports this module)."""
  flags.DEFINE_string("workdir", None, "A finished training run.")
  flags.DEFINE_string("export_dir", None, "Export base directory.")
  flags.DEFINE_string("name", None, "Model name (default: the config's).")
  flags.DEFINE_integer("version", None, "Version, a positive integer "
                       "(default: the next one).", lower_bound=1)
  flags.DEFINE_bool("overwrite", False, "Replace an existing version.")
  flags.DEFINE_bool("allow_unfinished", False,
                    "Export a run without metrics.json, an older intact "
                    "checkpoint, or non-finite weights.")


def main(argv):
  cli.no_positional_arguments(argv)
  cli.quiet_tensorflow(flags.FLAGS.verbosity)
  values = flags.FLAGS
  if not values.workdir or not values.export_dir:
    cli.fail("--workdir and --export_dir are required")
  try:
    path = export_workdir(values.workdir, values.export_dir, values.name,
                          values.version, values.overwrite,
                          values.allow_unfinished)
  except UserError as err:
    cli.fail(err)
  print(path)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
