"""Which methods each experiment runs: names only, so no TensorFlow.

The launcher checks `config.method` against these lists before it imports
the trainer, so a mistyped method is refused in a second, with nothing
written. The modules that implement the methods take their names from here.

=================  ==========================================================
experiment         methods
=================  ==========================================================
``digits``         `TRAINER_METHODS`, `BASELINE_METHODS` (mme, mdda, dctn),
                   `PSEUDO_LABEL_METHODS` (the two-stage pipeline)
``actions``        `TRAINER_METHODS` (configs with an `actions` section)
``holistic``       `HOLISTIC_METHODS` (configs with a `holistic` section)
=================  ==========================================================
"""

# gradmix_tf/trainer.py: the multi-source trainer's own methods.
TRAINER_METHODS = ("target_only", "source_only", "fine_tune", "joint",
                   "gradmix", "gradmix_no_adalr", "gradmix_sgd", "gradmf",
                   "gradmix_vat", "gradmix_mixmatch")
# gradmix_tf/mme.py, mdda.py, dctn.py.
BASELINE_METHODS = ("mme", "mdda", "dctn")
# gradmix_tf/pipeline.py.
PSEUDO_LABEL_METHODS = ("gradmix_hard_label", "gradmix_soft_label")
# gradmix_tf/holistic.py.
HOLISTIC_METHODS = ("source_only", "fine_tune", "frozen_classifier",
                    "lolsgd", "distill", "gradmix_distill", "calibrated")


def experiment_of(config):
  """`"actions"`, `"holistic"` or `"digits"`, by the config's sections."""
  if "actions" in config:
    return "actions"
  if "holistic" in config:
    return "holistic"
  return "digits"


def methods_for(experiment):
  """The method names an experiment runs."""
  if experiment == "actions":
    return TRAINER_METHODS
  if experiment == "holistic":
    return HOLISTIC_METHODS
  return TRAINER_METHODS + BASELINE_METHODS + PSEUDO_LABEL_METHODS
