r"""Launcher: `python -m gradmix_tf.launch --config=<name> [--workdir=<dir>]`.

`<name>` is a file in `configs/` (`digits_mnistm`, `digits`, `ucf101`,
`holistic_digits`) or a path to a config file. Any field can be overridden, e.g.

    python -m gradmix_tf.launch --config=digits_mnistm \
        --config.method=fine_tune --config.k=5 --config.seed=3 \
        --config.sources.s1.dataset=npz:/data/my_digits.npz

The workdir (default `runs/<config>/<method>_k<k>_seed<seed>`) receives the
resolved `config.json`, checkpoints (a rerun resumes from the last one),
TensorBoard logs under `tb/`, and `metrics.json` at the end; `.lock` keeps
a second process out while a run trains. Bad input ends with one `error:`
line and exit status 2 and writes nothing; training that cannot go on
(non-finite gradients step after step) ends with one `error:` line, exit
status 3 and `<workdir>/stopped.json`, so a script can tell a diverged run
from a mistyped command; so does a write that fails for lack of space
mid-training (before training it is bad input, status 2). SIGTERM or
SIGINT stops the run after the current step with a checkpoint there, one
line, `stopped.json` and status 143 or 130 (`gradmix_tf.preemption`): the
same command resumes. docs/RELIABILITY.md lists every case.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from gradmix_tf import cli
from gradmix_tf import config_lib
from gradmix_tf import workdir as run_directory
from gradmix_tf.errors import NoSpaceError, RunStopped, TrainingError
from gradmix_tf.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config name in configs/ or path to a config file.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (default runs/<config>/<run name>).")

EXIT_USER_ERROR = cli.EXIT_USER_ERROR
EXIT_TRAINING_STOPPED = cli.EXIT_TRAINING_STOPPED


def default_workdir(config):
  return os.path.join("runs", config.name or "run",
                      f"{config.method}_k{config.k}_seed{config.seed}")


def train(config, workdir):
  """Checks everything, builds the data, trains; returns the metrics dict.

  The config (`config_lib.validate`), the workdir and the export directory
  are checked first, then the workdir is locked
  (`gradmix_tf.workdir.RunDirectory`) and its state checked, then the
  digit data are built (NumPy only): all before TensorFlow starts, so that
  bad input costs a second. Bad input found before training removes what
  this call made: the workdir if it created it, else its `config.json`. A
  run that training stopped records `stopped.json` and raises
  `TrainingError`; so does one stopped by a full disk mid-training
  (`NoSpaceError` with its step). SIGTERM and SIGINT stop training after
  the current step (`gradmix_tf.preemption`): the run saves a checkpoint
  there, records `stopped.json` and raises `RunStopped`.
  """
  from gradmix_tf import preemption  # pylint: disable=g-import-not-at-top
  with preemption.stop_on_signals():
    return _train(config, workdir)


def _train(config, workdir):
  from gradmix_tf import distribute  # pylint: disable=g-import-not-at-top
  from gradmix_tf import methods  # pylint: disable=g-import-not-at-top
  config = config_lib.resolve(config)
  workdir = workdir or default_workdir(config)
  run_directory.check_directory(workdir, "--workdir")
  if config.export_dir:
    run_directory.check_directory(config.export_dir, "--config.export_dir")
  chief = distribute.is_chief_process(config)
  with run_directory.RunDirectory(workdir, lock=chief) as run:
    fresh = False
    try:
      fresh = config_lib.prepare_workdir(workdir, config)
      experiment = methods.experiment_of(config)
      # Action data and image folders / TFDS are read with TensorFlow:
      # built after the strategy (logical devices are set before TensorFlow
      # starts).
      data = None if _reads_with_tensorflow(config) else _build_data(config)
      strategy = distribute.make_strategy(config)
      metrics = _train_in(config, workdir, strategy, data)
    except RunStopped as err:
      if chief:
        run_directory.record_stop(workdir, err, reason=err.signal_name)
      raise
    except (TrainingError, NoSpaceError) as err:
      if not stopped_training(err):    # a full disk before training
        run.discard_unstarted(fresh)
      elif chief:
        run_directory.record_stop(workdir, err)
      raise
    except Exception:  # pylint: disable=broad-except
      # Bad input (a UserError) or a bug (which keeps its traceback): a run
      # that never trained leaves nothing that would refuse the corrected
      # command.
      run.discard_unstarted(fresh)
      raise
    if chief:
      run_directory.clear_stop(workdir)
    return metrics


def stopped_training(error):
  """Whether `error` stopped a run that was training (exit status 3,
  `stopped.json`): non-finite steps, or a full disk mid-training; a full
  disk before training is bad input (status 2)."""
  return isinstance(error, TrainingError) or (
      isinstance(error, NoSpaceError) and error.step is not None)


def _reads_with_tensorflow(config):
  """Whether building the data runs TensorFlow (action data, `folder:`,
  `tfds:`)."""
  from gradmix_tf import methods  # pylint: disable=g-import-not-at-top
  if methods.experiment_of(config) == "actions":
    return True
  roles = list(config.get("sources", {}).values()) + [config.target]
  return any(str(role.get("dataset", "")).startswith(("folder:", "tfds:"))
             for role in roles)


def _build_data(config):
  """The splits of a digit or holistic experiment (NumPy only)."""
  from gradmix_tf import methods  # pylint: disable=g-import-not-at-top
  if methods.experiment_of(config) == "holistic":
    from gradmix_tf.data.partial import build_partial_experiment  # pylint: disable=g-import-not-at-top
    return build_partial_experiment(config, seed=int(config.seed))
  from gradmix_tf.data import build_experiment  # pylint: disable=g-import-not-at-top
  return build_experiment(config, seed=int(config.seed), k=int(config.k))


def _train_in(config, workdir, strategy, data):
  """Runs the config's method (`runner.run_method`), exports."""
  from gradmix_tf import methods  # pylint: disable=g-import-not-at-top
  from gradmix_tf import runner as runners  # pylint: disable=g-import-not-at-top
  logging.info("Config %s, method %s, k=%d, seed %d, %d replica(s) -> %s",
               config.name, config.method, config.k, config.seed,
               strategy.num_replicas_in_sync, workdir)
  if methods.experiment_of(config) == "actions":
    from gradmix_tf.data.actions import build_action_experiment  # pylint: disable=g-import-not-at-top
    data = build_action_experiment(config, seed=int(config.seed),
                                   k=int(config.k))
  elif data is None:
    data = _build_data(config)
  metrics, runner = runners.run_method(config, data, workdir, strategy)
  if config.export_dir and runner is not None and runner.is_chief:
    from gradmix_tf import export  # pylint: disable=g-import-not-at-top
    path = export.export_runner(runner, config.export_dir, config.name)
    logging.info("Exported for TF Serving: %s", path)
  return metrics


def main(argv):
  cli.no_positional_arguments(argv)
  cli.quiet_tensorflow(flags.FLAGS.verbosity)
  if _CONFIG.value is None:
    cli.fail("--config is required: name one of "
             f"{', '.join(config_lib.available_configs())} or a config file "
             "(e.g. --config=digits_mnistm)")
  try:
    train(_CONFIG.value, _WORKDIR.value)
  except RunStopped as err:
    cli.stop(err, err.exit_status)
  except (TrainingError, NoSpaceError) as err:
    cli.fail(err, EXIT_TRAINING_STOPPED if stopped_training(err)
             else EXIT_USER_ERROR)
  except UserError as err:
    cli.fail(err)


_HELP_FLAGS = ("--help", "-h", "-?", "--helpshort")


def help_text(argv):
  """The launcher's `--help`: configs, methods per experiment, and every
  field of the named config (default `digits_mnistm`) with its default."""
  from gradmix_tf import methods  # pylint: disable=g-import-not-at-top
  name = "digits_mnistm"
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      name = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(argv):
      name = argv[i + 1]
  config = config_lib.load_config(name)
  lines = [
      "Usage: python -m gradmix_tf.launch --config=<name> "
      "[--config.<field>=<value> ...] [--workdir=<dir>] [--verbosity=1]",
      "",
      f"Configs ({config_lib.configs_dir()}): "
      f"{', '.join(config_lib.available_configs())}",
      "Methods (--config.method):"]
  for experiment in ("digits", "holistic", "actions"):
    lines.append(f"  {experiment}: "
                 f"{', '.join(methods.methods_for(experiment))}")
  lines += ["", f"Fields of --config={name} and their defaults (quick mode "
            "and the machine's paths are applied when a run starts):"]
  lines += config_lib.field_listing(config)
  lines += ["", "Exit status: 0 done, 2 bad input (one error: line), 3 "
            "training stopped (stopped.json), 143 / 130 stopped by SIGTERM / "
            "SIGINT after a checkpoint (rerun to resume). --helpfull lists "
            "absl's flags."]
  return "\n".join(lines)


def _resolve_config_argument(argv):
  """Turns `--config=<name>` into `--config=configs/<name>.py`."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = "--config=" + config_lib.config_path(arg[len("--config="):])
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = config_lib.config_path(out[i + 1])
  return out


def run():
  try:
    if any(arg in _HELP_FLAGS for arg in sys.argv[1:]):
      print(help_text(sys.argv[1:]))
      sys.exit(0)
    argv = _resolve_config_argument(sys.argv)
  except UserError as err:
    cli.fail(err)
  app.run(main, argv=argv, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
