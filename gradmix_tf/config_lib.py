"""Shared config fields, quick mode, and resolving a config by name.

Experiment configs live in the top-level `configs/` folder as Python files
with `get_config()` returning an `ml_collections.ConfigDict`; they start
from `base_config()` here.
"""

import json
import math
import os

from absl import logging
import ml_collections
from ml_collections.config_dict import placeholder

from gradmix_tf import methods
from gradmix_tf import workdir as run_directory
from gradmix_tf.errors import ConfigError
from gradmix_tf.files import write_json_atomically

DATA_DIR_ENV = "GRADMIX_DATA_DIR"
CACHE_DIR_ENV = "GRADMIX_CACHE_DIR"
CONFIGS_DIR_ENV = "GRADMIX_CONFIGS_DIR"
ACTIONS_DIR_ENV = "GRADMIX_ACTIONS_DIR"

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def base_config():
  """Fields every digit experiment has; see `configs/digits_mnistm.py`."""
  config = ml_collections.ConfigDict()
  config.name = ""
  # digits | actions | holistic (gradmix_tf/methods.py): what the run's
  # data are and which methods it may run.
  config.experiment = "digits"
  config.method = "gradmix"
  config.seed = 0
  config.k = 2
  config.quick = False
  # Data.
  config.data_dir = ""         # '' -> $GRADMIX_DATA_DIR or ../shared/data
  config.cache_dir = ""        # '' -> $GRADMIX_CACHE_DIR or ~/.cache/gradmix_tf
  config.mnistm_seed = 0
  config.split_seed = 0
  config.input_shape = (28, 28, 3)
  config.max_source_examples = 0   # 0 = no cap
  config.max_unlabelled = 0
  config.max_test = 0
  # How file-backed data (folder:, the action data) reach the steps:
  # "memory" decodes everything up front into device constants; "stream"
  # lists the files and decodes each step's batch in a tf.data pipeline
  # (gradmix_tf/data/image_files.py), prefetch_batches steps ahead. Both
  # give the same batches for the same seed; arrays (mnist, npz:, ...)
  # stay in memory either way.
  config.input_pipeline = "memory"
  config.prefetch_batches = 2
  config.sources = ml_collections.ConfigDict()
  config.target = ml_collections.ConfigDict(dict(
      dataset="", classes=(), half=-1, hyperval_size=1000))
  # Model.
  # norm: "none" | "batch" (BN without affine before each ReLU; None: the
  # protocol's); kernel_initializer: "glorot_uniform" (Keras' default) |
  # "he_normal". See models.digit_convnet_trunk.
  config.model = ml_collections.ConfigDict(dict(
      name="digit_convnet", widths=(32, 32, 64, 64), units=128,
      norm=placeholder(str), kernel_initializer="glorot_uniform"))
  # The training protocol (PROTOCOLS): fills model.norm, lr_warmup_steps
  # and lr_decay_steps where they are not set. "paper": the paper's
  # network and constant rate; the digit configs choose their own.
  config.protocol = "paper"
  # Optimisation (paper section 4.1).
  config.steps = 2000
  config.batch_size = 32           # per source
  config.lr = 0.05
  # Linear warm-up of config.lr over this many optimizer steps (0 to lr,
  # then constant; sgd.main_learning_rate) for every optimizer that
  # trains at config.lr (not finetune_lr, target_lr or mme.lr). 0: the
  # paper's constant rate. None: the protocol's.
  config.lr_warmup_steps = placeholder(int)
  # Cosine decay of config.lr to 0 over the last this-many of config.steps
  # (sgd.main_learning_rate; same optimizers as the warm-up). 0: none.
  # None: the protocol's.
  config.lr_decay_steps = placeholder(int)
  # Clip the global norm of every update of config.lr's optimizers (the
  # mixed gradient for GradMix) to this value (Keras `global_clipnorm`).
  # 0: no clipping (the paper).
  config.global_clipnorm = 0.0
  config.momentum = 0.9
  config.finetune_lr = 0.005
  # Target only trains on V alone. At lr 0.05 (momentum 0.9) full-batch
  # training on 10 MNIST-M images diverges (seed 1, k=2: NaN by step 50), so
  # it uses the rate the paper uses for V in fine-tuning.
  config.target_lr = 0.005
  config.finetune_steps = 300
  # GradMix.
  config.solver = "exact"
  config.beta = 10.0
  config.gamma = 0.6
  config.rho_reduction = "sum"
  config.max_consecutive_skips = 10
  # The sections only some methods read, with their defaults (the method
  # registry, gradmix_tf/methods.py, documents each field).
  for section, defaults in methods.section_defaults().items():
    config[section] = ml_collections.ConfigDict(dict(defaults))
  # Scale-out (gradmix_tf/distribute.py) and export.
  config.distribution = "default"  # default | mirrored | multi_worker
  config.logical_cpus = 0          # >= 2: mirrored over logical CPU devices
  config.export_dir = ""           # export for TF Serving after training
  # Loop.
  config.jit_compile = False       # XLA for the train steps
  config.log_every = 50
  config.eval_every = 100          # the paper's "epoch" of 100 steps
  config.checkpoint_every = 500
  return config


# Training protocols (`apply_protocol`): the batch norm of the digit trunk
# and the warm-up and decay of the main rate, as fractions of
# `config.steps` (for Table 1's 2000 steps: 200 warm-up and 500 decay
# steps; quick mode's 30 steps: 3 and 8). "paper": the paper's network and
# constant rate (section 4.1) as we read it. "stable", the digit configs'
# default, departs from the paper in three places, chosen on H and on
# training health (docs/RESULTS.md, "A protocol that does not die"):
# batch norm without affine before every ReLU of the digit trunk
# (unnormalised, runs died at lr 0.05: single steps of 10-16 % of a layer's
# norm switched ReLU units off for good), a linear warm-up over the first
# 10 % of the steps and a cosine decay to 0 over the last 25 % (the paper:
# a constant rate; the final step landed wherever a swing of H ended). The
# rate 0.05, momentum 0.9 and fine-tune rate 0.005 stay the paper's.
PROTOCOLS = {
    "paper": {"norm": "none", "warmup": 0.0, "decay": 0.0},
    "stable": {"norm": "batch", "warmup": 0.10, "decay": 0.25},
}


def apply_protocol(config):
  """Fills the unset (None) protocol fields of `config`, in place.

  `model.norm` (when the model has the field; ResNet-18's has not),
  `lr_warmup_steps` and `lr_decay_steps` (`round(fraction * steps)`) take
  `PROTOCOLS[config.protocol]`; a field the config or the command line set
  keeps its value.

  Raises:
    ConfigError: an unknown protocol.
  """
  name = config.get("protocol", "paper")
  if name not in PROTOCOLS:
    raise ConfigError(f"config.protocol is {name!r}: choose one of "
                      f"{', '.join(PROTOCOLS)}")
  protocol = PROTOCOLS[name]
  model = config.get("model")
  if model is not None and "norm" in model and model.norm is None:
    model.norm = protocol["norm"]
  steps = int(config.get("steps", 0) or 0)
  for field, fraction in (("lr_warmup_steps", protocol["warmup"]),
                          ("lr_decay_steps", protocol["decay"])):
    if field in config and config[field] is None:
      config[field] = int(round(fraction * steps))
  return config


def source(dataset, classes, half=-1):
  """One source role: a dataset spec, its classes, optionally one half."""
  return ml_collections.ConfigDict(dict(dataset=dataset,
                                        classes=tuple(classes), half=half))


def resolve(config):
  """Fills defaults that depend on the machine, applies quick mode and the
  training protocol, and validates."""
  config = ml_collections.ConfigDict(config.to_dict())
  if not config.data_dir:
    config.data_dir = os.environ.get(DATA_DIR_ENV) or _default_data_dir()
  if not config.cache_dir:
    config.cache_dir = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "gradmix_tf")
  if config.quick:
    config.steps = min(config.steps, 30)
    config.finetune_steps = min(config.finetune_steps, 10)
    config.log_every = 10
    config.eval_every = 10
    config.checkpoint_every = 20
    config.max_source_examples = 300
    config.max_unlabelled = 300
    config.max_test = 300
    config.target.hyperval_size = min(config.target.hyperval_size, 100)
    if "actions" in config:
      actions = config.actions
      if not (actions.root or os.environ.get(ACTIONS_DIR_ENV) or (
          actions.ucf101_dir and actions.mpii_dir and actions.bu101_dir)):
        actions.fixture = True
      config.input_shape = (32, 32, 3)
      config.batch_size = min(config.batch_size, 8)
      actions.train_frames_per_clip = min(actions.train_frames_per_clip, 2)
      actions.test_frames_per_clip = min(actions.test_frames_per_clip, 2)
    if "holistic" in config:
      holistic = config.holistic
      holistic.pretrain_steps = min(holistic.pretrain_steps, 30)
      holistic.per_class = min(holistic.per_class, 10)
      holistic.heldout_per_class = min(holistic.heldout_per_class, 10)
      holistic.local_steps = min(holistic.local_steps, 2)
  if "actions" in config and not config.actions.root:
    config.actions.root = os.environ.get(ACTIONS_DIR_ENV, "")
  apply_protocol(config)
  validate(config)
  return config


# Fields that name one of a few choices. The modules that read them hold the
# same names (solvers.SOLVERS, distribute.DISTRIBUTIONS, gradmf.MODES, ...;
# tests/test_reliability.py checks that they agree); they are repeated here
# so that a config is checked without importing TensorFlow.
CHOICES = {
    "solver": ("exact", "slsqp", "meta_sgd"),
    "rho_reduction": ("sum", "mean"),
    "distribution": ("default", "mirrored", "multi_worker"),
    "model.name": ("digit_convnet", "resnet18"),
    "model.norm": ("none", "batch"),
    "model.kernel_initializer": ("glorot_uniform", "he_normal"),
    "protocol": tuple(PROTOCOLS),
    "gradmf.mode": ("global", "layer"),
    "gradmf.update_rule": ("projection", "turned"),
    "pseudo_label.soft_loss": ("model_label", "label_model"),
    "input_pipeline": ("memory", "stream"),
}
# Learning rates: finite and positive.
RATES = ("lr", "finetune_lr", "target_lr", "mme.lr", "holistic.local_lr")
# (field, smallest allowed, largest allowed or None): numbers in a closed
# range. Counts of steps and examples are whole numbers.
RANGES = (
    ("steps", 1, None), ("batch_size", 1, None), ("log_every", 1, None),
    ("eval_every", 1, None), ("checkpoint_every", 1, None),
    ("k", 1, None), ("seed", 0, None), ("finetune_steps", 0, None),
    ("lr_warmup_steps", 0, None), ("lr_decay_steps", 0, None),
    ("prefetch_batches", 1, None),
    ("global_clipnorm", 0.0, None), ("max_consecutive_skips", 1, None),
    ("max_source_examples", 0, None), ("max_unlabelled", 0, None),
    ("max_test", 0, None), ("logical_cpus", 0, None),
    ("mnistm_seed", 0, None), ("split_seed", 0, None),
    ("target.hyperval_size", 0, None), ("momentum", 0.0, 1.0),
    ("pseudo_label.members", 1, None), ("pseudo_label.threshold", 0.0, 1.0),
    ("pseudo_label.v_per_class", 1, None),
    ("pseudo_label.stage1_steps", 0, None),
    ("pseudo_label.stage1_lr_warmup_steps", -1, None),
    ("vat.epsilon", 0.0, None), ("vat.xi", 1e-12, None),
    ("vat.power_iterations", 1, None),
    ("mixmatch.augmentations", 1, None), ("mixmatch.temperature", 1e-6, None),
    ("mixmatch.alpha", 1e-6, None), ("mixmatch.lambda_u", 0.0, None),
    ("mixmatch.rampup_steps", 0, None), ("mixmatch.max_shift", 0, None),
    ("mme.temperature", 1e-6, None), ("mme.entropy_weight", 0.0, None),
    ("mdda.latent_domains", 1, None),
    ("mdda.target_entropy_weight", 0.0, None),
    ("mdda.domain_weight", 0.0, None),
    ("dctn.adversarial_weight", 0.0, None), ("dctn.confidence", 0.0, 1.0),
    ("dctn.pseudo_label_start", 0, None),
    ("gradmf.steps", 0, None), ("gradmf.angle_threshold", 0.0, 180.0),
)
# Numbers that may take any finite value.
FINITE = ("beta", "gamma")


def _field(config, dotted):
  """The value of a dotted field, or None when the config has no such field
  (a section of another experiment)."""
  value = config
  for part in dotted.split("."):
    if not isinstance(value, ml_collections.ConfigDict) or part not in value:
      return None
    value = value[part]
  return value


def _number(dotted, value):
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ConfigError(f"config.{dotted} must be a number, got {value!r}"
                      ) from None
  if not math.isfinite(number):
    raise ConfigError(f"config.{dotted} must be finite, got {value!r}")
  return number


def validate(config):
  """Checks every field a run reads before anything is written.

  The method must be one its experiment runs (`gradmix_tf.methods`), choice
  fields one of their names, learning rates finite and positive, counts and
  weights in their ranges.

  Raises:
    ConfigError: naming the field, the value and what it may be.
  """
  experiment = methods.experiment_of(config)
  if experiment not in methods.EXPERIMENTS:
    raise ConfigError(
        f"config.experiment is {experiment!r}: choose one of "
        f"{', '.join(methods.EXPERIMENTS)}")
  known = methods.methods_for(experiment)
  if config.method not in known:
    raise ConfigError(
        f"unknown method {config.method!r} for the {experiment} experiment: "
        f"choose one of {', '.join(known)} (--config.method=...)")
  for dotted, choices in CHOICES.items():
    value = _field(config, dotted)
    if value is not None and value not in choices:
      raise ConfigError(f"config.{dotted} is {value!r}: choose one of "
                        f"{', '.join(choices)}")
  for dotted in RATES:
    value = _field(config, dotted)
    if value is not None and not _number(dotted, value) > 0:
      raise ConfigError(f"config.{dotted} is a learning rate and must be "
                        f"positive, got {value!r}")
  for dotted, low, high in RANGES:
    value = _field(config, dotted)
    if value is None:
      continue
    number = _number(dotted, value)
    whole = isinstance(low, int) and not isinstance(low, bool)
    if whole and number != int(number):
      raise ConfigError(f"config.{dotted} must be a whole number, got "
                        f"{value!r}")
    if number < low or (high is not None and number > high):
      bound = (f"at least {low}" if high is None
               else f"between {low} and {high}")
      raise ConfigError(f"config.{dotted} must be {bound}, got {value!r}")
  if int(config.get("lr_decay_steps") or 0) > int(config.get("steps", 0)):
    raise ConfigError(
        f"config.lr_decay_steps ({config.lr_decay_steps}) must not exceed "
        f"config.steps ({config.steps}): the decay covers the last "
        "lr_decay_steps of training")
  if float(config.get("momentum", 0.0)) == 1.0:
    raise ConfigError("config.momentum must be below 1 (the paper: 0.9), "
                      "got 1.0")
  for dotted in FINITE:
    value = _field(config, dotted)
    if value is not None:
      _number(dotted, value)
  for name, role in _roles(config):
    _check_role(name, role)
  _check_model_weights(config)


def _check_model_weights(config):
  """ResNet-18 needs its ImageNet weights, or `random` said explicitly.

  The paper: ImageNet initialisation "is important for all baseline
  methods to perform well". Quick mode (generated fixtures) may leave the
  field empty and starts from random weights with a warning.
  """
  if _field(config, "model.name") != "resnet18":
    return
  weights = config.model.get("weights", "")
  if weights == "random":
    return
  if not weights:
    if config.get("quick", False):
      return
    raise ConfigError(
        "config.model.weights is empty: ResNet-18 starts from ImageNet "
        "weights; convert torchvision's resnet18 IMAGENET1K_V1 weights once "
        "(python -m gradmix_tf.resnet --help) and pass "
        "--config.model.weights=<file>.weights.h5, or "
        "--config.model.weights=random to train from random weights")
  if not os.path.isfile(weights):
    raise ConfigError(
        f"config.model.weights {weights!r} does not exist: give a Keras "
        ".weights.h5 or torchvision .npz file (python -m gradmix_tf.resnet "
        "--help), or random")


def _roles(config):
  """(dotted name, section) of every source and of the target, for the
  experiments that have them (the action experiment names its datasets
  under `actions`)."""
  if methods.experiment_of(config) == "actions":
    return []
  roles = [(f"sources.{name}", config.sources[name])
           for name in sorted(config.get("sources", {}))]
  if "target" in config:
    roles.append(("target", config.target))
  return roles


def _check_role(name, role):
  """A role's dataset is a name, its classes distinct whole numbers >= 0,
  its half 0, 1 or -1 (all)."""
  dataset = role.get("dataset")
  if not isinstance(dataset, str) or not dataset:
    raise ConfigError(f"config.{name}.dataset must name a dataset (mnist, "
                      "mnistm, svhn, npz:<path>, folder:<path>, "
                      "tfds:<name>), got "
                      f"{dataset!r}")
  classes = role.get("classes")
  if (not isinstance(classes, (tuple, list)) or not classes or
      any(isinstance(c, bool) or not isinstance(c, int) or c < 0
          for c in classes) or len(set(classes)) != len(classes)):
    raise ConfigError(
        f"config.{name}.classes must be distinct class ids >= 0, e.g. "
        f'--config.{name}.classes="(5,6,7,8,9)", got {classes!r}')
  if role.get("half", -1) not in (-1, 0, 1):
    raise ConfigError(f"config.{name}.half must be 0, 1 or -1 (all), got "
                      f"{role.get('half')!r}")


def _default_data_dir():
  for candidate in (os.path.join(_REPO_ROOT, "..", "shared", "data"),
                    os.path.join(os.getcwd(), "..", "shared", "data")):
    if os.path.isdir(candidate):
      return os.path.normpath(candidate)
  return os.path.join(_REPO_ROOT, "data")


def configs_dir():
  return os.environ.get(CONFIGS_DIR_ENV) or os.path.join(_REPO_ROOT,
                                                         "configs")


def available_configs():
  directory = configs_dir()
  if not os.path.isdir(directory):
    return []
  return sorted(name[:-3] for name in os.listdir(directory)
                if name.endswith(".py") and not name.startswith("_"))


def config_path(name):
  """`configs/<name>.py` for a bare name; a path ending in .py as given."""
  if name.endswith(".py") or os.sep in name:
    path = name.split(":", 1)[0]
    if not os.path.isfile(path):
      raise ConfigError(f"config file {path} does not exist")
    return name
  path = os.path.join(configs_dir(), name + ".py")
  if not os.path.isfile(path):
    raise ConfigError(
        f"unknown config {name!r}: choose one of "
        f"{', '.join(available_configs()) or '(none found)'} "
        f"(files in {configs_dir()})")
  return path


def load_config(name):
  """`get_config()` of `configs/<name>.py` (or of a config file's path)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = config_path(name).split(":", 1)[0]
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def field_listing(config):
  """One line per field, `--config.<field>=<value>`, in the config's order,
  with the choices of choice fields and the methods of `method`."""
  lines = []

  def walk(section, prefix):
    for key, value in section.items():
      dotted = prefix + key
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, dotted + ".")
        continue
      choices = CHOICES.get(dotted)
      if dotted == "method":
        choices = methods.methods_for(methods.experiment_of(config))
      hint = f"  (one of {', '.join(choices)})" if choices else ""
      lines.append(f"  --config.{dotted}={value!r}{hint}")

  walk(config, "")
  return lines


# Config sections that only some methods read. A run records and compares
# only the sections of its own method, so that changing, say, MixMatch's
# lambda_u does not orphan finished VAT runs or the shared stage-1 grids.
METHOD_SECTIONS = methods.method_sections()


def unused_sections(method):
  """The sections of `METHOD_SECTIONS` that `method` does not read."""
  return {section for section, methods in METHOD_SECTIONS.items()
          if method not in methods}


def prepare_workdir(workdir, config):
  """Creates the workdir; refuses one that holds a run of another config.

  `config.json` holds the resolved config without the sections of other
  methods (`METHOD_SECTIONS`); such sections in a stored run (runs from
  before this rule) are not compared. A field present in this version's
  config but absent from the stored one, at the top or inside a section (a
  run started before the field existed, and so with the field's default in
  `base_config()`, protocol fields at the "paper" protocol's values), is not
  a conflict when its value is that default: the
  run resumes, the field's value is logged and added to `config.json`. Any
  other value is refused, as the run's steps so far did not use it. Every
  field the stored run has must match exactly.

  Returns True when this call wrote a new `config.json` (a fresh run).
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  unused = unused_sections(config.get("method"))
  resolved = {key: value
              for key, value in json.loads(config.to_json_best_effort()).items()
              if key not in unused}
  previous = _stored_config(workdir, path)
  if previous is not None:
    previous = {key: value for key, value in previous.items()
                if key not in unused}
    # Fields the protocol fills take the paper protocol's values: a run
    # from before them trained with those.
    defaults = json.loads(apply_protocol(base_config()).to_json_best_effort())
    changed, added = _compare_fields(previous, resolved, defaults)
    if changed:
      raise ConfigError(
          f"{workdir} holds a run with a different config (fields "
          f"{', '.join(changed)}); use a new --workdir or delete it")
    if added:
      logging.info("%s was started before fields %s existed; resuming with "
                   "their current values", workdir, ", ".join(added))
      write_json_atomically(path, resolved, sort_keys=True)
    return False
  write_json_atomically(path, resolved, sort_keys=True)
  return True


def _stored_config(workdir, path):
  """The stored `config.json` of `workdir`, or None for a fresh run.

  A damaged file (cut short by a full disk, say) of a run that never
  trained is replaced (logged); one of a run with checkpoints or metrics is
  refused, as nothing then says which config those steps used.
  """
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      stored = json.load(f)
    if not isinstance(stored, dict):
      raise ValueError("not a JSON object")
  except (OSError, ValueError) as err:
    if not run_directory.started(workdir):
      logging.warning("%s is damaged (%s) and the run never trained; "
                      "writing it anew", path, err)
      return None
    raise ConfigError(
        f"{path} is damaged ({err}) and {workdir} holds a trained run: "
        "restore the file from a backup, or use a new --workdir") from None
  return stored


def _compare_fields(stored, current, defaults, prefix=""):
  """(changed, added) dotted field names of `current` against `stored`.

  A field `stored` has is changed when `current` lacks it or differs;
  sections are compared field by field, so a field new in a section is
  added, not changed, unless `defaults` (the same nesting) has the field
  with another value: the stored run ran with that default.
  """
  changed, added = [], []
  for key in sorted(set(stored) | set(current)):
    name = prefix + key
    default = defaults.get(key) if isinstance(defaults, dict) else None
    if key not in stored and isinstance(current[key], dict):
      inner_changed, inner_added = _compare_fields(
          {}, current[key], default, name + ".")
      changed += inner_changed
      added += inner_added or [name]
    elif key not in stored:
      if isinstance(defaults, dict) and key in defaults and (
          default != current[key]):
        changed.append(f"{name} (the run predates it and used the default "
                       f"{default!r})")
      else:
        added.append(name)
    elif (isinstance(stored[key], dict) and
          isinstance(current.get(key), dict)):
      inner_changed, inner_added = _compare_fields(
          stored[key], current[key], default, name + ".")
      changed += inner_changed
      added += inner_added
    elif stored[key] != current.get(key):
      changed.append(name)
  return changed, added
