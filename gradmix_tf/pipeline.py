"""GradMix with ensemble pseudo-labels (paper 3.5): stage 1, labels, stage 2.

`run_pseudo_label_pipeline(config, data, workdir)` for the methods
`gradmix_hard_label` and `gradmix_soft_label`:

1. **Stage 1** (`<stage1>/beta<b>_gamma<g>/`): one GradMix run per
   `(beta, gamma)` of `pseudo_label.betas x pseudo_label.gammas`
   (`pseudo_label.stage1_steps` steps, default `steps`; learning-rate
   warm-up `pseudo_label.stage1_lr_warmup_steps`, default
   `lr_warmup_steps`, so that a stage 2 with warm-up can reuse stage-1 runs
   trained without it). `<stage1>` is
   `pseudo_label.stage1_dir`, default `<workdir>/stage1`. A stage-1 run's
   config is the pipeline's with `method=gradmix`, its beta, gamma and
   steps, and no `pseudo_label` section, so pipelines that differ only in
   labelling (hard or soft, `members`, `threshold`, `v_per_class`) share
   its runs. Their hyper-validation and test accuracies are written as the
   paper's Table 2 (`<workdir>/grid.md`, `grid.json`; rows beta, columns
   gamma).
2. **Labels**: the top `R` (`pseudo_label.members`) runs by H accuracy label
   U (`gradmix_tf/pseudo_labels.py`): `pseudo_labels.npz` (hard indices and
   labels, soft labels) and `pseudo_labels.json` (members, threshold,
   counts per class, and the accuracy of the labels against U's hidden
   labels, for reporting only).
3. **Stage 2** (`<workdir>/stage2/`): GradMix from scratch on the sources,
   `S_u` as one more source on the target head (hard: the hard-labelled
   images, cross-entropy; soft: every image of U, `KL(p_model || y_soft)`),
   and V enlarged to `pseudo_label.v_per_class` (100) per class with
   hard-labelled images (the paper adds them "from S_u"; they stay in it).

On action data (`--config=ucf101`) U holds one middle frame per training
clip, so U is labelled per clip (one frame, one label); an added V image is
a V clip of one frame, drawn every step (`v.groups` grows with it). The
ensemble members predict U with the network they were trained with
(ResNet-18 in inference mode: batch norm's moving statistics).

Every stage resumes: a finished run (its `metrics.json`) is not rerun, an
interrupted one continues from its checkpoint, and the labels are made once.
`<workdir>/metrics.json` is stage 2's metrics with the grid and the labels'
provenance added.
"""

import dataclasses
import json
import os

import ml_collections
import numpy as np
import tensorflow as tf

from gradmix_tf import checkpoints
from gradmix_tf import config_lib
from gradmix_tf import distribute
from gradmix_tf import methods
from gradmix_tf import models
from gradmix_tf import pseudo_labels
from gradmix_tf import workdir as run_directory
from gradmix_tf.data import image_files
from gradmix_tf.data.experiment import KL_LABEL_MODEL, KL_MODEL_LABEL
from gradmix_tf.data.experiment import LabelledSet, SourceData
from gradmix_tf.errors import ConfigError, DataError
from gradmix_tf.evaluation import in_batches
from gradmix_tf.files import write_json_atomically, write_text_atomically

METHODS = tuple(m.name for m in methods.REGISTRY
                if m.pipeline.endswith(":run_pseudo_label_pipeline"))


# `pseudo_label.soft_loss` -> the soft-labelled source's `SourceData.loss`.
SOFT_LOSS_OF = {"model_label": KL_MODEL_LABEL, "label_model": KL_LABEL_MODEL}


def _run(config, data, workdir, strategy):
  """Runs one stage, or reads its metrics if it finished; a workdir of
  another config (a shared stage-1 directory of other data) is refused,
  and so is one another process is training in (its lock)."""
  with run_directory.RunDirectory(workdir,
                                  lock=distribute.is_chief(strategy)):
    config_lib.prepare_workdir(workdir, config)
    path = os.path.join(workdir, "metrics.json")
    if os.path.isfile(path):
      with open(path) as f:
        return json.load(f)
    from gradmix_tf import runner  # pylint: disable=g-import-not-at-top
    return runner.build_runner(config, data, workdir, strategy).run()


def _with(config, **fields):
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in fields.items():
    config[key] = value
  return config


def grid_table(results, betas, gammas):
  """Table 2's layout: H / test accuracy (%) per beta (rows), gamma."""
  lines = ["| beta \\ gamma | " + " | ".join(f"{g:g}" for g in gammas) + " |",
           "|" + "---|" * (len(gammas) + 1)]
  by_cell = {(r["beta"], r["gamma"]): r for r in results}
  for beta in betas:
    cells = []
    for gamma in gammas:
      r = by_cell[(beta, gamma)]
      cells.append(f"{100 * r['hyperval_accuracy']:.2f} / "
                   f"{100 * r['test_accuracy']:.2f}")
    lines.append(f"| {beta:g} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\n(cells: H accuracy / test accuracy, %)\n"


def _member_probabilities(config, data, member_dirs):
  """`[R, |U|, C]` target-head softmax of each member's final weights."""
  outputs = []
  for directory in member_dirs:
    model = models.build_model(config.model, tuple(config.input_shape),
                               data.num_classes_per_head)
    latest = checkpoints.restore_newest_intact(
        tf.train.Checkpoint(model=model),
        os.path.join(directory, "checkpoints"), partial=True, fallback=False)
    if latest is None:
      raise ConfigError(f"stage-1 run {directory} has no checkpoint; delete "
                        "it to retrain it")
    outputs.append(in_batches(
        lambda batch, model=model: tf.nn.softmax(model(
            tf.convert_to_tensor(batch), head=data.target_head)),
        data.u.images))
  return np.stack(outputs)


def _save_labels(workdir, hard_index, hard_label, soft, record):
  path = os.path.join(workdir, "pseudo_labels.npz")
  partial = f"{path}.{os.getpid()}.tmp.npz"
  np.savez(partial, hard_index=hard_index, hard_label=hard_label, soft=soft)
  os.replace(partial, path)
  write_json_atomically(os.path.join(workdir, "pseudo_labels.json"), record)


def stage2_data(data, hard_index, hard_label, soft, soft_loss, v_per_class,
                seed):
  """Stage 2's experiment: `S_u` added, V enlarged (module docstring).

  `soft_loss`: None for hard labels; else the `SourceData.loss` of the
  soft-labelled source (`KL_MODEL_LABEL`, `KL_LABEL_MODEL`).
  """
  num_classes = data.num_classes_per_head[data.target_head]
  add = pseudo_labels.enlarge_validation(data.v.labels, hard_label, num_classes,
                                         v_per_class, seed)
  groups = None
  if data.v.groups is not None:
    # Action data: each U image is the middle frame of a clip of its own
    # (labelled per clip); an added one is a one-frame V clip.
    first_new = int(np.max(data.v.groups)) + 1 if len(data.v) else 0
    groups = np.concatenate([data.v.groups,
                             first_new + np.arange(len(add))])
  v = LabelledSet(
      np.concatenate([data.v.images,
                      image_files.as_array(data.u.images[hard_index[add]])]),
      np.concatenate([data.v.labels, hard_label[add]]).astype(np.int64),
      groups)
  if soft_loss is not None:
    pseudo = SourceData("pseudo_labels", data.u.images, soft, data.target_head,
                        loss=soft_loss)
  else:
    if not len(hard_index):
      raise DataError(
          "no image of U got a hard pseudo-label (every member's argmax "
          "and probability >= pseudo_label.threshold); lower the threshold "
          "or use gradmix_soft_label")
    pseudo = SourceData("pseudo_labels", data.u.images[hard_index], hard_label,
                        data.target_head)
  return dataclasses.replace(data, sources=data.sources + (pseudo,), v=v)


def run_pseudo_label_pipeline(config, data, workdir, strategy=None):
  """Runs (or resumes) the three stages; returns the final metrics."""
  if config.method not in METHODS:
    raise ConfigError(f"the pseudo-label pipeline runs {METHODS}, not "
                      f"{config.method!r}")
  settings = config.pseudo_label
  betas = [float(b) for b in settings.betas]
  gammas = [float(g) for g in settings.gammas]
  members = int(settings.members)
  if not 1 <= members <= len(betas) * len(gammas):
    raise ConfigError(
        f"pseudo_label.members={members} must be between 1 and the "
        f"{len(betas) * len(gammas)} models of the (beta, gamma) grid")
  if settings.get("soft_loss", "model_label") not in (
      pseudo_labels.SOFT_LOSS_DIRECTIONS):
    raise ConfigError(
        f"pseudo_label.soft_loss={settings.soft_loss!r}: choose one of "
        f"{', '.join(pseudo_labels.SOFT_LOSS_DIRECTIONS)}")
  stage1 = settings.stage1_dir or os.path.join(workdir, "stage1")
  steps = int(settings.stage1_steps) or int(config.steps)
  warmup = int(settings.get("stage1_lr_warmup_steps", -1))
  if warmup < 0:
    warmup = int(config.get("lr_warmup_steps") or 0)
  member_config = _with(config, method="gradmix", steps=steps,
                        lr_warmup_steps=warmup)
  del member_config["pseudo_label"]
  results = []
  for beta in betas:
    for gamma in gammas:
      run_dir = os.path.join(stage1, f"beta{beta:g}_gamma{gamma:g}")
      metrics = _run(_with(member_config, beta=beta, gamma=gamma), data,
                     run_dir, strategy)
      results.append({"beta": beta, "gamma": gamma, "dir": run_dir,
                      "hyperval_accuracy": metrics["hyperval_accuracy"],
                      "test_accuracy": metrics["test_accuracy"]})
  os.makedirs(workdir, exist_ok=True)
  write_json_atomically(os.path.join(workdir, "grid.json"), results)
  write_text_atomically(os.path.join(workdir, "grid.md"),
                        grid_table(results, betas, gammas))
  ranked = sorted(results, key=lambda r: -r["hyperval_accuracy"])[:members]

  labels_path = os.path.join(workdir, "pseudo_labels.npz")
  if not os.path.isfile(labels_path):
    probs = _member_probabilities(config, data, [r["dir"] for r in ranked])
    hard_index, hard_label = pseudo_labels.hard_labels(
        probs, float(settings.threshold))
    soft = pseudo_labels.soft_labels(probs)
    record = pseudo_labels.provenance(
        hard_index, hard_label, soft, data.u.labels,
        [os.path.relpath(r["dir"], workdir) for r in ranked],
        float(settings.threshold),
        data.num_classes_per_head[data.target_head])
    _save_labels(workdir, hard_index, hard_label, soft, record)
  with np.load(labels_path) as archive:
    hard_index, hard_label, soft = (archive["hard_index"],
                                    archive["hard_label"], archive["soft"])
  with open(os.path.join(workdir, "pseudo_labels.json")) as f:
    record = json.load(f)

  soft_loss = (SOFT_LOSS_OF[settings.get("soft_loss", "model_label")]
               if config.method == "gradmix_soft_label" else None)
  data2 = stage2_data(data, hard_index, hard_label, soft, soft_loss,
                      int(settings.v_per_class), int(config.seed))
  metrics = _run(_with(config, method="gradmix"), data2,
                 os.path.join(workdir, "stage2"), strategy)
  metrics = dict(metrics, method=config.method, stage1=results,
                 pseudo_labels=record,
                 stage2_examples=metrics.get("num_examples"))
  write_json_atomically(os.path.join(workdir, "metrics.json"), metrics)
  return metrics
