"""The method registry: one entry per method, names only, so no TensorFlow.

Everything that needs to know the methods reads them from `REGISTRY`:
`config_lib.base_config` adds each entry's config section with its
defaults, `config_lib.validate` refuses a method its experiment does not
run, `config_lib.prepare_workdir` leaves other methods' sections out of a
run's `config.json`, the launcher's `--help` lists them, and
`gradmix_tf.runner.run_method` builds and runs the entry's task (or its
pipeline). A mistyped method is refused in a second, before TensorFlow
starts.

Adding a method is one module (a `gradmix_tf.task.Task` subclass) and one
`Method(...)` line below.

=================  ==========================================================
experiment         what it is (`config.experiment`)
=================  ==========================================================
``digits``         digit transfer (`gradmix_tf/data/experiment.py`)
``actions``        UCF101 from web images (`gradmix_tf/data/actions.py`)
``holistic``       partial-label adaptation (`gradmix_tf/tasks/holistic.py`)
=================  ==========================================================
"""

import dataclasses
import importlib

EXPERIMENTS = ("digits", "actions", "holistic")
_STILL_AND_VIDEO = ("digits", "actions")
_MULTI_SOURCE = "gradmix_tf.tasks.multi_source:MultiSourceTask"
_HOLISTIC = "gradmix_tf.tasks.holistic:HolisticTask"
_PSEUDO_LABELS = "gradmix_tf.pipeline:run_pseudo_label_pipeline"


@dataclasses.dataclass(frozen=True)
class Method:
  """One method of one or more experiments.

  Attributes:
    name: `config.method`.
    experiments: the experiments that run it.
    task: `"module:Class"` of its `gradmix_tf.task.Task` (built with
      `(config, data)`), or "" when `pipeline` runs it.
    pipeline: `"module:function"` called with `(config, data, workdir,
      strategy)` for a method that runs several tasks in turn (the
      pseudo-label pipeline); "" otherwise.
    section: the config section only this method (and others naming the
      same section) reads; "" for none.
    section_defaults: that section's fields and defaults, which
      `config_lib.base_config` adds (None: the experiment's config file
      defines the section).
    needs_unlabelled: it trains on U (refused when U is empty).
    multi_replica: its steps run on several replicas (`tf.distribute`).
  """
  name: str
  experiments: tuple
  task: str = ""
  pipeline: str = ""
  section: str = ""
  section_defaults: dict = None
  needs_unlabelled: bool = False
  multi_replica: bool = True

  def load(self):
    """The task class or the pipeline function (imports TensorFlow)."""
    module, attribute = (self.task or self.pipeline).split(":")
    return getattr(importlib.import_module(module), attribute)


# Defaults of the method sections (`config_lib.base_config` adds them).
#
# Ensemble pseudo-labels (gradmix_hard_label, gradmix_soft_label;
# gradmix_tf/pipeline.py). The paper's grid is beta 5..10 x gamma 0..0.8 by
# 0.1; a 2 x 2 grid keeps a run within an hour on 2 CPU cores.
# `soft_loss`: "model_label" = KL(p_model || y), the paper's; "label_model"
# = KL(y || p_model) (gradmix_tf/pseudo_labels.py). `stage1_dir`: "" =
# <workdir>/stage1; a shared directory lets pipelines on the same data, k
# and seed (hard and soft labels, an R ablation) train the grid once; run
# them one after another (a stage-1 run that another process is training is
# refused, naming its pid). `stage1_steps` 0: config.steps;
# `stage1_lr_warmup_steps` -1: config.lr_warmup_steps.
PSEUDO_LABEL_DEFAULTS = dict(
    betas=(5.0, 10.0), gammas=(0.3, 0.6), members=3, threshold=0.8,
    v_per_class=100, stage1_steps=0, stage1_lr_warmup_steps=-1,
    soft_loss="model_label", stage1_dir="")
# Unlabelled losses as one more GradMix source (gradmix_vat,
# gradmix_mixmatch; gradmix_tf/semi_supervised.py). Perturbations are in
# units of [0, 1] pixels; epsilon 2.0 is VAT's MNIST setting. xi is 1e-3, not
# VAT's 1e-6: on 0..255 float32 pixels a 1e-6 step is rounded away for some
# images (zero direction; `python bench/vat_xi.py`). `train_head`: the
# unlabelled loss's gradient also trains the target head. Heads are not
# mixed (SPEC section 2), so it does so at full weight whatever weight the
# mix gives it in the trunk; False keeps the unlabelled source to the trunk,
# where the mix weighs it.
VAT_DEFAULTS = dict(xi=1e-3, epsilon=2.0, power_iterations=1,
                    train_head=True)
# MixMatch: K, T, Beta(alpha), lambda_u as in its paper; its 16k-step
# ramp-up scaled to our 2000-step runs. Both papers set epsilon and lambda_u
# per dataset; configs/digits_mnistm.py sets its own.
MIXMATCH_DEFAULTS = dict(augmentations=2, temperature=0.5, alpha=0.75,
                         lambda_u=100.0, rampup_steps=1000, max_shift=2,
                         train_head=True)
MME_DEFAULTS = dict(temperature=0.05, entropy_weight=0.1, lr=0.01)
MDDA_DEFAULTS = dict(latent_domains=2, target_entropy_weight=0.1,
                     domain_weight=0.1)
DCTN_DEFAULTS = dict(adversarial_weight=0.1, confidence=0.9,
                     pseudo_label_start=500)
# GradMF: K progressive steps; stop turning once within angle_threshold
# degrees; mode global | layer; update_rule projection | turned.
GRADMF_DEFAULTS = dict(steps=1, angle_threshold=0.0, mode="global",
                       update_rule="projection")

REGISTRY = (
    # gradmix_tf/tasks/multi_source.py
    Method("target_only", _STILL_AND_VIDEO, _MULTI_SOURCE),
    Method("source_only", _STILL_AND_VIDEO, _MULTI_SOURCE),
    Method("fine_tune", _STILL_AND_VIDEO, _MULTI_SOURCE),
    Method("joint", _STILL_AND_VIDEO, _MULTI_SOURCE),
    Method("gradmix", _STILL_AND_VIDEO, _MULTI_SOURCE),
    Method("gradmix_no_adalr", _STILL_AND_VIDEO, _MULTI_SOURCE),
    Method("gradmix_sgd", _STILL_AND_VIDEO, _MULTI_SOURCE),
    # Ours, not the paper's: GradMix, then fine-tuning on V.
    Method("gradmix_finetune", _STILL_AND_VIDEO, _MULTI_SOURCE),
    Method("gradmf", _STILL_AND_VIDEO, _MULTI_SOURCE, section="gradmf",
           section_defaults=GRADMF_DEFAULTS),
    Method("gradmix_vat", _STILL_AND_VIDEO, _MULTI_SOURCE, section="vat",
           section_defaults=VAT_DEFAULTS, needs_unlabelled=True),
    Method("gradmix_mixmatch", _STILL_AND_VIDEO, _MULTI_SOURCE,
           section="mixmatch", section_defaults=MIXMATCH_DEFAULTS,
           needs_unlabelled=True),
    # gradmix_tf/tasks/mme.py, mdda.py, dctn.py
    Method("mme", ("digits",), "gradmix_tf.tasks.mme:MMETask",
           section="mme",
           section_defaults=MME_DEFAULTS, needs_unlabelled=True,
           multi_replica=False),
    Method("mdda", _STILL_AND_VIDEO, "gradmix_tf.tasks.mdda:MDDATask",
           section="mdda",
           section_defaults=MDDA_DEFAULTS, needs_unlabelled=True,
           multi_replica=False),
    Method("dctn", _STILL_AND_VIDEO, "gradmix_tf.tasks.dctn:DCTNTask",
           section="dctn",
           section_defaults=DCTN_DEFAULTS, needs_unlabelled=True,
           multi_replica=False),
    # gradmix_tf/pipeline.py
    Method("gradmix_hard_label", _STILL_AND_VIDEO, pipeline=_PSEUDO_LABELS,
           section="pseudo_label", section_defaults=PSEUDO_LABEL_DEFAULTS,
           needs_unlabelled=True),
    Method("gradmix_soft_label", _STILL_AND_VIDEO, pipeline=_PSEUDO_LABELS,
           section="pseudo_label", section_defaults=PSEUDO_LABEL_DEFAULTS,
           needs_unlabelled=True),
    # gradmix_tf/tasks/holistic.py (configs/holistic_digits.py has its section)
    *(Method(name, ("holistic",), _HOLISTIC, section="holistic",
             multi_replica=False)
      for name in ("source_only", "fine_tune", "frozen_classifier", "lolsgd",
                   "distill", "gradmix_distill", "calibrated")),
)


def experiment_of(config):
  """`config.experiment` (`digits` when a config predates the field)."""
  return config.get("experiment", "digits")


def methods_for(experiment):
  """The method names an experiment runs, in registry order."""
  return tuple(m.name for m in REGISTRY if experiment in m.experiments)


def lookup(experiment, name):
  """The registry entry of `name` in `experiment`, else None."""
  for method in REGISTRY:
    if method.name == name and experiment in method.experiments:
      return method
  return None


def section_defaults():
  """`{section: defaults}` of every section `base_config` adds."""
  sections = {}
  for method in REGISTRY:
    if method.section and method.section_defaults is not None:
      sections[method.section] = method.section_defaults
  return sections


def method_sections():
  """`{section: names of the methods that read it}`."""
  sections = {}
  for method in REGISTRY:
    if method.section:
      names = sections.setdefault(method.section, ())
      if method.name not in names:
        sections[method.section] = names + (method.name,)
  return sections
