"""Bad input, faults and kills (docs/RELIABILITY.md lists every case here).

Bad input through the launcher and the exporter, each in a subprocess as a
user runs it: exit status 2, one `error:` line, no traceback, and no file
written anywhere under the test's directory. Faults: damaged checkpoints
fall back to the newest intact one, exports replace versions atomically and
refuse unfinished or non-finite runs, real SIGKILLs at random times leave a
run that resumes to the same result and an export directory that serves.
"""

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, SHARED_DATA, assert_one_error_line, config_file
from conftest import run_module, tiny_config, tiny_data
from conftest import tiny_holistic_config, tiny_holistic_data
from conftest import workdir_locked_by_another_process
from gradmix_tf import config_lib
from gradmix_tf import methods
from gradmix_tf import sgd
from gradmix_tf.tasks.multi_source import MultiSourceTask
from gradmix_tf import workdir as run_directory

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


_run = run_module
_assert_refused = assert_one_error_line


def _tree(root):
  """Every path under `root` with its size (a snapshot to compare)."""
  out = {}
  for directory, dirs, files in os.walk(root):
    for name in dirs:
      out[os.path.relpath(os.path.join(directory, name), root)] = "dir"
    for name in files:
      path = os.path.join(directory, name)
      out[os.path.relpath(path, root)] = os.lstat(path).st_size
  return out


class _Context:
  """What a case's setup may use: a scratch directory, the shared data, a
  read-only directory, processes to stop afterwards."""

  def __init__(self, tmp_path, request):
    self.tmp = tmp_path
    self.data = SHARED_DATA
    self._request = request
    self.cleanup = contextlib.ExitStack()

  def read_only(self):
    return self._request.getfixturevalue("read_only_dir")

  def hold_lock(self, workdir):
    """A live process holding `workdir`'s lock; returns its pid."""
    return self.cleanup.enter_context(
        workdir_locked_by_another_process(workdir))


@pytest.fixture
def read_only_dir(tmp_path):
  """A directory nobody can write in, root included (a read-only mount
  when running as root, where permission bits do not bind)."""
  path = tmp_path / "read_only"
  path.mkdir()
  if os.geteuid() != 0:
    path.chmod(0o555)
    yield path
    path.chmod(0o755)
    return
  mounted = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
      capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip("no read-only directory: running as root and mount is "
                f"refused ({mounted.stderr.strip()})")
  try:
    yield path
  finally:
    subprocess.run(["umount", str(path)], check=False)


def _quick(ctx, *overrides, workdir=None, own_cache=True):
  """A quick digits_mnistm run; `own_cache` puts the MNIST-M cache under
  the test's directory (where nothing may be written), else the suite's."""
  cache = [f"--config.cache_dir={ctx.tmp / 'cache'}"] if own_cache else []
  return ["--config=digits_mnistm", "--config.quick=True",
          f"--config.data_dir={ctx.data}", *cache,
          f"--workdir={workdir or ctx.tmp / 'run'}", *overrides]


def _corrupt_mnist(ctx):
  """A full-size mnist.npz with 4 KiB zeroed in the middle."""
  data = ctx.tmp / "data"
  data.mkdir()
  shutil.copy(os.path.join(ctx.data, "mnist.npz"), data / "mnist.npz")
  os.symlink(os.path.join(ctx.data, "bsds500_train.npz"),
             data / "bsds500_train.npz")
  size = os.path.getsize(data / "mnist.npz")
  with open(data / "mnist.npz", "r+b") as f:
    f.seek(size // 2)
    f.write(bytes(4096))
  return ["--config=digits_mnistm", "--config.quick=True",
          f"--config.data_dir={data}",
          f"--config.cache_dir={ctx.tmp / 'cache'}",
          f"--workdir={ctx.tmp / 'run'}"]


def _text_npz(ctx):
  path = ctx.tmp / "digits.npz"
  path.write_text("x_train,y_train\n1,2\n")
  return _quick(ctx, f"--config.sources.s1.dataset=npz:{path}")


def _file_workdir(ctx):
  (ctx.tmp / "run").write_text("not a directory")
  return _quick(ctx)


def _file_export_dir(ctx):
  (ctx.tmp / "models").write_text("not a directory")
  return _quick(ctx, f"--config.export_dir={ctx.tmp / 'models'}")


def _workdir_under_file(ctx):
  (ctx.tmp / "file").write_text("not a directory")
  return _quick(ctx, workdir=ctx.tmp / "file" / "run")


def _damaged_config_of_a_trained_run(ctx):
  run = ctx.tmp / "run"
  (run / "checkpoints").mkdir(parents=True)
  (run / "checkpoints" / "checkpoint").write_text(
      'model_checkpoint_path: "ckpt-20"\n')
  (run / "config.json").write_text('{"name": "digits_mn')
  return _quick(ctx)


def _locked_workdir(ctx):
  pid = ctx.hold_lock(ctx.tmp / "run")
  return _quick(ctx), f"in use by another run (pid {pid})"


Case = collections.namedtuple("Case", "name setup fragment")

LAUNCHER_CASES = [
    # Flags and the config: refused before TensorFlow starts.
    Case("flag type int", lambda c: _quick(c, "--config.k=abc"),
         "--config.k=abc: invalid literal for int()"),
    Case("flag type float", lambda c: _quick(c, "--config.lr=abc"),
         "--config.lr=abc: could not convert string to float"),
    Case("flag type bool", lambda c: _quick(c, "--config.quick=maybe"),
         "Non-boolean argument to boolean flag"),
    Case("unknown flag", lambda c: _quick(c, "--foo=1"),
         "Unknown command line flag 'foo'"),
    Case("no --config", lambda c: [f"--workdir={c.tmp / 'run'}"],
         "--config is required: name one of digits, digits_mnistm"),
    Case("unknown config", lambda c: ["--config=digitz"], "unknown config"),
    Case("mistyped field", lambda c: _quick(c, "--config.qiuck=True"),
         "the config has no field 'qiuck' (did you mean 'quick'?)"),
    Case("positional argument", lambda c: _quick(c, "extra"),
         "unexpected arguments extra"),
    Case("unknown method", lambda c: _quick(c, "--config.method=gradnix"),
         "unknown method 'gradnix' for the digits experiment"),
    Case("unknown solver", lambda c: _quick(c, "--config.solver=nosuch"),
         "config.solver is 'nosuch': choose one of exact, slsqp, meta_sgd"),
    Case("unknown rho reduction",
         lambda c: _quick(c, "--config.rho_reduction=avg"),
         "config.rho_reduction is 'avg': choose one of sum, mean"),
    Case("unknown distribution",
         lambda c: _quick(c, "--config.distribution=tpu"),
         "config.distribution is 'tpu'"),
    Case("unknown GradMF mode", lambda c: _quick(c, "--config.gradmf.mode=x"),
         "config.gradmf.mode is 'x': choose one of global, layer"),
    Case("lr nan", lambda c: _quick(c, "--config.lr=nan"),
         "config.lr must be finite, got nan"),
    Case("lr inf", lambda c: _quick(c, "--config.lr=inf"),
         "config.lr must be finite, got inf"),
    Case("lr negative", lambda c: _quick(c, "--config.lr=-1"),
         "config.lr is a learning rate and must be positive"),
    Case("fine-tune lr zero", lambda c: _quick(c, "--config.finetune_lr=0"),
         "config.finetune_lr is a learning rate and must be positive"),
    Case("momentum one", lambda c: _quick(c, "--config.momentum=1.0"),
         "config.momentum must be below 1"),
    Case("k zero", lambda c: _quick(c, "--config.k=0"),
         "config.k must be at least 1, got 0"),
    Case("negative seed", lambda c: _quick(c, "--config.seed=-1"),
         "config.seed must be at least 0"),
    Case("skip limit zero",
         lambda c: _quick(c, "--config.max_consecutive_skips=0"),
         "config.max_consecutive_skips must be at least 1"),
    Case("threshold above one",
         lambda c: _quick(c, "--config.pseudo_label.threshold=1.5"),
         "config.pseudo_label.threshold must be between 0.0 and 1.0"),
    Case("classes not numbers",
         lambda c: _quick(c, "--config.sources.s1.classes=abc"),
         "config.sources.s1.classes must be distinct class ids"),
    Case("half out of range", lambda c: _quick(c, "--config.target.half=3"),
         "config.target.half must be 0, 1 or -1"),
    # Paths: refused before TensorFlow starts.
    Case("workdir is a file", _file_workdir, "is a file, not a directory"),
    Case("workdir under a file", _workdir_under_file, "is under a file"),
    Case("read-only workdir",
         lambda c: _quick(c, workdir=c.read_only() / "run"),
         "cannot write there"),
    Case("export_dir is a file", _file_export_dir,
         "--config.export_dir"),
    Case("read-only export_dir",
         lambda c: _quick(c, f"--config.export_dir={c.read_only()}"),
         "--config.export_dir"),
    # The workdir's state and the data: refused before the first step.
    Case("damaged config.json of a trained run",
         _damaged_config_of_a_trained_run, "config.json is damaged"),
    Case("workdir locked by another run", _locked_workdir, None),
    Case("data file corrupted in the middle", _corrupt_mnist,
         "mnist.npz is not a readable .npz file"),
    Case("text file named .npz", _text_npz,
         "is not a .npz file (it is not a zip archive)"),
    Case("read-only cache directory",
         lambda c: _quick(c, f"--config.cache_dir={c.read_only()}"),
         "cannot write the MNIST-M cache"),
]


@pytest.mark.parametrize("case", LAUNCHER_CASES, ids=lambda c: c.name)
def test_bad_launcher_input_is_one_line_and_writes_nothing(case, tmp_path,
                                                           request,
                                                           shared_data):
  del shared_data  # Skips where ../shared/data is missing.
  ctx = _Context(tmp_path, request)
  with ctx.cleanup:
    args, fragment = case.setup(ctx), case.fragment
    if isinstance(args, tuple):
      args, fragment = args
    before = _tree(tmp_path)
    _assert_refused(_run("gradmix_tf.launch", *args), fragment)
    assert _tree(tmp_path) == before


def test_the_corrected_command_runs_after_a_refusal(shared_data, tmp_path):
  ctx = _Context(tmp_path, None)
  ctx.data = shared_data
  refused = _run("gradmix_tf.launch", *_quick(
      ctx, "--config.method=gradnix", "--config.steps=4", own_cache=False))
  _assert_refused(refused, "unknown method")
  assert not (tmp_path / "run").exists()
  # The corrected command (in this process, to spare TensorFlow's start-up).
  from gradmix_tf import launch  # pylint: disable=g-import-not-at-top
  config = _digits_config(data_dir=shared_data, quick=True, steps=4)
  launch.train(config, str(tmp_path / "run"))
  assert (tmp_path / "run" / "metrics.json").is_file()


def _digits_config(**overrides):
  return config_file("digits_mnistm", **overrides)


def test_a_damaged_config_of_a_run_that_never_trained_is_written_anew(
    tmp_path):
  (tmp_path / "config.json").write_text('{"name": "dig')
  config = config_lib.base_config()
  assert config_lib.prepare_workdir(str(tmp_path), config)
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["method"] == "gradmix"


def test_choice_lists_agree_with_the_modules_that_read_them():
  from gradmix_tf import distribute, gradmf, pseudo_labels, solvers  # pylint: disable=g-import-not-at-top
  assert config_lib.CHOICES["solver"] == solvers.SOLVERS
  assert config_lib.CHOICES["distribution"] == distribute.DISTRIBUTIONS
  assert config_lib.CHOICES["gradmf.mode"] == gradmf.MODES
  assert config_lib.CHOICES["gradmf.update_rule"] == gradmf.UPDATES
  assert (config_lib.CHOICES["pseudo_label.soft_loss"]
          == pseudo_labels.SOFT_LOSS_DIRECTIONS)


def test_importing_the_config_layer_loads_no_tensorflow():
  code = ("import sys\n"
          "import gradmix_tf, gradmix_tf.config_lib, gradmix_tf.launch\n"
          "import gradmix_tf.methods\n"
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True, env=ENV,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  # The public names are still there, imported on first use.
  import gradmix_tf  # pylint: disable=g-import-not-at-top
  from gradmix_tf.optimizer import GradMix  # pylint: disable=g-import-not-at-top
  assert gradmix_tf.GradMix is GradMix
  assert callable(gradmix_tf.solve_mix_weights)
  with pytest.raises(AttributeError, match="no attribute 'Nope'"):
    gradmix_tf.Nope  # pylint: disable=pointless-statement


# -- Training that stops: exit 3 and stopped.json -----------------------------


def test_a_stopped_run_exits_3_and_records_why(shared_data, tmp_path):
  ctx = _Context(tmp_path, None)
  ctx.data = shared_data
  # lr 1e30 at the paper's constant rate, no batch norm: the first update
  # is finite but huge; the next losses overflow.
  result = _run("gradmix_tf.launch", *_quick(
      ctx, "--config.method=source_only", "--config.lr=1e30",
      "--config.protocol=paper",
      "--config.max_consecutive_skips=3", own_cache=False))
  assert result.returncode == 3, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1
  with open(tmp_path / "run" / run_directory.STOPPED_FILE) as f:
    record = json.load(f)
  assert record["error"] == lines[0]
  assert record["reason"] == "non_finite"
  assert record["source"] == "loss/s1"
  assert record["step"] == 4     # step 1 applied, steps 2-4 skipped
  assert "up to step 4" in lines[0] and "loss/s1" in lines[0]
  assert not (tmp_path / "run" / "metrics.json").exists()


# -- Damaged checkpoints ------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A finished tiny run with checkpoints at steps 3 and 6."""
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("trained")
  config = tiny_config(steps=6, checkpoint_every=3)
  trainer = build_runner(config, tiny_data(), str(root / "run"))
  metrics = trainer.run()
  weights = [w.numpy() for w in trainer.model.weights]
  return root / "run", config, metrics, weights


def _damage(prefix, suffix, how):
  (path,) = [p for p in prefix.parent.iterdir()
             if p.name.startswith(prefix.name + suffix)]
  if how == "delete":
    path.unlink()
  elif how == "empty":
    path.write_bytes(b"")
  else:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("suffix", [".index", ".data"])
@pytest.mark.parametrize("how", ["truncate", "empty", "delete"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(
    trained_run, tmp_path, suffix, how, caplog):
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  run, config, metrics, weights = trained_run
  copy = tmp_path / "run"
  shutil.copytree(run, copy)
  (copy / "metrics.json").unlink()
  _damage(copy / "checkpoints" / "ckpt-6", suffix, how)
  trainer = build_runner(config, tiny_data(), str(copy))
  with caplog.at_level("WARNING"):
    resumed = trainer.run()
  assert resumed["resumed_from_step"] == 3
  assert any("ckpt-6 does not restore" in r.getMessage()
             for r in caplog.records)
  assert any("Restored" in r.getMessage() and "ckpt-3" in r.getMessage()
             for r in caplog.records)
  # Steps 4-6 again from step 3: the same weights as the first time.
  for got, want in zip(trainer.model.weights, weights):
    np.testing.assert_array_equal(got.numpy(), want)
  assert resumed["test_accuracy"] == metrics["test_accuracy"]


def test_no_intact_checkpoint_is_refused_in_one_line(trained_run, tmp_path):
  from gradmix_tf.errors import DataError  # pylint: disable=g-import-not-at-top
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  run, config, _, _ = trained_run
  copy = tmp_path / "run"
  shutil.copytree(run, copy)
  (copy / "metrics.json").unlink()
  for step in (3, 6):
    _damage(copy / "checkpoints" / f"ckpt-{step}", ".data", "empty")
  # A DataError is a UserError: the launcher prints it as one line, exit 2.
  with pytest.raises(DataError, match=r"no checkpoint in .* restores \(2 "
                     r"tried; the newest, ckpt-6: .*\); delete"):
    build_runner(config, tiny_data(), str(copy)).run()


# -- Export -------------------------------------------------------------------


def test_export_refuses_an_unfinished_run(trained_run, tmp_path):
  from gradmix_tf.errors import UserError  # pylint: disable=g-import-not-at-top
  run, _, _, _ = trained_run
  copy = tmp_path / "run"
  shutil.copytree(run, copy)
  (copy / "metrics.json").unlink()
  # A UserError: the exporter prints it as one line with exit 2 (the CLI
  # path: test_export_flag_errors_are_one_line, tests/test_export.py).
  with pytest.raises(UserError, match="has no metrics.json: the run did not "
                     "finish"):
    _export(copy, tmp_path / "models")
  assert not (tmp_path / "models").exists()
  assert os.path.isfile(os.path.join(
      _export(copy, tmp_path / "models", allow_unfinished=True),
      "saved_model.pb"))


@pytest.mark.parametrize("flag,fragment", [
    ("--version=0", "flag --version=0"),
])
def test_export_flag_errors_are_one_line(trained_run, tmp_path, flag,
                                         fragment):
  run, _, _, _ = trained_run
  _assert_refused(_run("gradmix_tf.export", f"--workdir={run}",
                       f"--export_dir={tmp_path / 'models'}", flag), fragment)
  assert not (tmp_path / "models").exists()


def _export(run, export_dir, **kwargs):
  from gradmix_tf import export  # pylint: disable=g-import-not-at-top
  return export.export_workdir(str(run), str(export_dir), **kwargs)


def test_export_refuses_non_finite_weights_and_an_older_checkpoint(
    trained_run, tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from gradmix_tf.errors import UserError  # pylint: disable=g-import-not-at-top
  run, _, _, _ = trained_run
  # The newest checkpoint damaged: the finished weights are gone.
  damaged = tmp_path / "damaged"
  shutil.copytree(run, damaged)
  _damage(damaged / "checkpoints" / "ckpt-6", ".data", "truncate")
  with pytest.raises(UserError, match="ckpt-6 does not restore"):
    _export(damaged, tmp_path / "models")
  assert _export(damaged, tmp_path / "models", allow_unfinished=True)
  # metrics.json says 6 steps, the newest checkpoint is step 3.
  older = tmp_path / "older"
  shutil.copytree(run, older)
  for path in (older / "checkpoints").glob("ckpt-6*"):
    path.unlink()
  (older / "checkpoints" / "checkpoint").write_text(
      'model_checkpoint_path: "ckpt-3"\n'
      'all_model_checkpoint_paths: "ckpt-3"\n')
  with pytest.raises(UserError, match="is step 3, not the run's last step 6"):
    _export(older, tmp_path / "models")
  # A NaN weight in the newest checkpoint.
  nan_run = tmp_path / "nan"
  shutil.copytree(run, nan_run)
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  trainer = build_runner(trained_run[1], tiny_data(), str(nan_run))
  checkpoint = trainer.checkpoint
  checkpoint.restore(str(nan_run / "checkpoints" / "ckpt-6"))
  kernel = trainer.model.trunk.trainable_variables[0]
  kernel.assign(tf.fill(kernel.shape, float("nan")))
  trainer.manager.save(checkpoint_number=6)
  with pytest.raises(UserError, match="non-finite weights"):
    _export(nan_run, tmp_path / "models")
  # The launcher's export after training checks the same.
  from gradmix_tf import export  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="non-finite weights"):
    export.export_runner(trainer, str(tmp_path / "models"), "tiny")


def test_export_versions_and_paths_are_checked(trained_run, tmp_path):
  from gradmix_tf.errors import UserError  # pylint: disable=g-import-not-at-top
  run, _, _, _ = trained_run
  for version in (0, -3, "abc"):
    with pytest.raises(UserError, match="--version must be a positive"):
      _export(run, tmp_path / "models", version=version)
  (tmp_path / "file").write_text("x")
  with pytest.raises(UserError, match=r"is under a file .*, not a directory"):
    _export(run, tmp_path / "file")
  assert not (tmp_path / "models").exists()


def _dead_pid():
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def test_stale_export_work_of_dead_processes_is_cleared(tmp_path):
  from gradmix_tf import export  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path / "tiny"
  dead, live = _dead_pid(), os.getpid()
  for name in (f".partial-2-{dead}", f".old-1-{dead}", f".old-3-{dead}",
               f".partial-4-{live}", "3"):
    (model_dir / name).mkdir(parents=True)
  (model_dir / f".old-1-{dead}" / "saved_model.pb").write_text("v1")
  export.remove_stale_work(str(model_dir))
  # Version 1 was set aside and never replaced: it is put back. Version 3
  # exists, so its set-aside copy goes; the live process keeps its work.
  assert sorted(os.listdir(model_dir)) == [f".partial-4-{live}", "1", "3"]
  assert (model_dir / "1" / "saved_model.pb").read_text() == "v1"


def _exchange_supported(tmp_path):
  """Whether this kernel and filesystem swap two directories atomically."""
  from gradmix_tf import files  # pylint: disable=g-import-not-at-top
  first, second = tmp_path / "swap_a", tmp_path / "swap_b"
  first.mkdir()
  second.mkdir()
  try:
    files._exchange(str(first), str(second))  # pylint: disable=protected-access
    return True
  except OSError:
    return False
  finally:
    first.rmdir()
    second.rmdir()


@pytest.mark.parametrize("exchange", [True, False])
def test_overwrite_never_leaves_the_version_incomplete(trained_run, tmp_path,
                                                       monkeypatch, exchange):
  from gradmix_tf import files  # pylint: disable=g-import-not-at-top
  run, _, _, _ = trained_run
  version = tmp_path / "models" / "tiny" / "1"
  _export(run, tmp_path / "models", version=1)
  (version / "marker").write_text("old")
  if not exchange:
    def unsupported(first, second):
      raise OSError(38, "renameat2 is not available")
    monkeypatch.setattr(files, "_exchange", unsupported)
  missing = []
  done = threading.Event()

  def watch():
    while not done.is_set():
      if not (version / "saved_model.pb").is_file():
        missing.append(time.perf_counter())
      time.sleep(0.0002)   # leave the exporting thread the interpreter

  watcher = threading.Thread(target=watch)
  watcher.start()
  try:
    _export(run, tmp_path / "models", version=1, overwrite=True)
  finally:
    done.set()
    watcher.join()
  assert not (version / "marker").exists()      # the new version is in
  assert (version / "saved_model.pb").is_file()
  assert sorted(os.listdir(version.parent)) == ["1"]   # nothing hidden left
  if exchange and _exchange_supported(tmp_path):
    assert not missing       # an atomic swap: never a moment without it


def test_a_killed_overwrite_leaves_a_servable_version(trained_run, tmp_path):
  run, _, _, _ = trained_run
  models = tmp_path / "models"
  _export(run, models, version=1)
  version = models / "tiny" / "1"
  rng = np.random.default_rng(7)
  process = subprocess.Popen(
      [sys.executable, "-m", "gradmix_tf.export", f"--workdir={run}",
       f"--export_dir={models}", "--version=1", "--overwrite"],
      cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True)
  # Killed while the new version is being written (TensorFlow's start-up
  # takes seconds; the save starts after it).
  deadline = time.time() + 120
  while time.time() < deadline and process.poll() is None and not any(
      n.startswith(".partial-") for n in os.listdir(version.parent)):
    assert (version / "saved_model.pb").is_file()
    time.sleep(0.005)
  time.sleep(rng.uniform(0.0, 0.3))
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert (version / "saved_model.pb").is_file()
  # The next export clears what the killed one left.
  _export(run, models, version=2)
  assert sorted(os.listdir(version.parent)) == ["1", "2"]


# -- Real kills during training -----------------------------------------------


def _final_arrays(workdir):
  """Every array of the final checkpoint (weights, optimizer state, step)
  but the wall-clock training time and the count of saves (a resumed run
  saves more often)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(str(workdir / "checkpoints"))
  skip = ("train_seconds", "save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH")
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if not any(part in name for part in skip)}


@pytest.fixture(scope="module")
def whole_quick_run(tmp_path_factory):
  """An uninterrupted quick digits_mnistm run, in this process: the
  reference of the kill and stop tests."""
  if not os.path.isfile(os.path.join(SHARED_DATA, "mnist.npz")):
    pytest.skip("../shared/data/mnist.npz is not present")
  from gradmix_tf import launch  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("whole")
  launch.train(_digits_config(data_dir=SHARED_DATA, quick=True), str(workdir))
  return workdir


def _assert_resumed_to_the_same_result(whole, resumed):
  whole_arrays, resumed_arrays = _final_arrays(whole), _final_arrays(resumed)
  assert whole_arrays.keys() == resumed_arrays.keys()
  for name in whole_arrays:
    np.testing.assert_array_equal(resumed_arrays[name], whole_arrays[name],
                                  err_msg=name)
  metrics = [json.loads((path / "metrics.json").read_text())
             for path in (whole, resumed)]
  for field in ("test_accuracy", "test_loss", "hyperval_curve",
                "test_accuracy_at_best_hyperval"):
    assert metrics[0][field] == metrics[1][field], field
  return metrics[1]


@pytest.mark.multiprocess
def test_runs_killed_at_random_times_resume_to_the_same_result(
    shared_data, whole_quick_run, tmp_path):
  ctx = _Context(tmp_path, None)
  ctx.data = shared_data
  rng = np.random.default_rng(0)
  killed = tmp_path / "killed"
  command = [sys.executable, "-m", "gradmix_tf.launch",
             *_quick(ctx, workdir=killed, own_cache=False)]
  process = subprocess.Popen(command, cwd=REPO, env=ENV,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  for line in process.stderr:      # wait until training runs
    if "] [gradmix] step" in line:
      break
  # Killed at a random moment of the remaining steps (a checkpoint is
  # written at step 20 and at the end).
  time.sleep(rng.uniform(0.0, 1.5))
  process.send_signal(signal.SIGKILL)
  process.wait()
  finished = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True,
                            text=True, timeout=300)
  assert finished.returncode == 0, finished.stderr[-3000:]
  _assert_resumed_to_the_same_result(whole_quick_run, killed)


_STOPPED_LINE = re.compile(r"^stopped by SIGTERM at step (\d+); rerun the "
                           r"same command to resume$", re.MULTILINE)


@pytest.mark.multiprocess
def test_sigterm_stops_at_a_checkpoint_and_the_rerun_is_bit_identical(
    shared_data, whole_quick_run, tmp_path):
  """SIGTERM after step 10 of 30 (quick mode checkpoints at 20 and 30
  only): exit 143, one line, `stopped.json`, a checkpoint at the step the
  run was on; the same command (here `launch.train`, in this process)
  resumes there and ends with every array and metric of the uninterrupted
  run (`gradmix_tf.preemption`)."""
  ctx = _Context(tmp_path, None)
  ctx.data = shared_data
  run = tmp_path / "stopped"
  process = subprocess.Popen(
      [sys.executable, "-m", "gradmix_tf.launch",
       *_quick(ctx, workdir=run, own_cache=False)],
      cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True)
  for line in process.stderr:
    if "] [gradmix] step 10/30" in line:
      break
  process.send_signal(signal.SIGTERM)
  stderr = process.stderr.read()
  process.wait(timeout=120)
  assert process.returncode == 143, stderr[-3000:]
  assert "Traceback" not in stderr and "error:" not in stderr, stderr[-3000:]
  match = _STOPPED_LINE.search(stderr)
  assert match, stderr[-3000:]
  step = int(match.group(1))
  assert 10 <= step < 30
  record = json.loads((run / "stopped.json").read_text())
  assert record["reason"] == "SIGTERM" and record["step"] == step
  assert int(tf.train.load_checkpoint(str(run / "checkpoints")).get_tensor(
      "step/.ATTRIBUTES/VARIABLE_VALUE")) == step
  assert not (run / "metrics.json").exists()
  from gradmix_tf import launch  # pylint: disable=g-import-not-at-top
  launch.train(_digits_config(data_dir=shared_data, quick=True), str(run))
  assert not (run / "stopped.json").exists()
  metrics = _assert_resumed_to_the_same_result(whole_quick_run, run)
  assert metrics["resumed_from_step"] == step


# -- Non-finite steps in every phase of every method --------------------------


def _poison(model, head):
  """A NaN in the kernel of `head`: its loss is NaN from step 1 (a NaN in
  the trunk would not do: ReLU maps it to 0)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  kernel = model.heads[head].trainable_variables[0]
  kernel.assign(tf.tensor_scatter_nd_update(
      kernel, [[0] * len(kernel.shape)], [float("nan")]))
  return kernel


def _holistic_trainer(method, config_overrides, tmp_path, local_lr=0.05):
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  config = tiny_holistic_config(method=method, **config_overrides)
  config.holistic.local_lr = local_lr
  return build_runner(config, tiny_holistic_data(), str(tmp_path))


# (method, how the run goes non-finite, the step it stops at, the culprit).
# "poison": a NaN weight from the start, so steps 1-3 are all skipped and
# nothing may move. Otherwise a rate of 1e30 or inf in a later phase: its
# first step applies the update its finite gradient gives, its next three
# are skipped. At 1e30 GradMix's step names its source; the holistic steps
# take inf, whose update (inf x g, NaN where g = 0) makes the next loss NaN
# on any machine (at 1e30 whether the loss or only its gradient overflows
# depends on the CPU's float arithmetic: CI's and ours differed).
NON_FINITE_CASES = [
    ("target_only", "poison", 3, "loss/validation"),
    ("source_only", "poison", 3, "loss/s1"),
    ("joint", "poison", 3, "loss/s1"),
    ("fine_tune", {"finetune_lr": 1e30, "finetune_steps": 6}, 6 + 1 + 3,
     "loss/validation"),
    ("gradmix_sgd", "poison", 3, "source s1"),
    ("mme", "poison", 3, "loss/s1"),
    ("mdda", "poison", 3, "loss/s1"),
    ("dctn", "poison", 3, "loss/s1"),
    ("holistic source_only", "poison", 3, "loss/src"),
    ("holistic fine_tune", {"finetune_lr": float("inf")}, 4 + 1 + 3,
     "loss/target"),
    ("holistic distill", {"finetune_lr": float("inf")}, 4 + 1 + 3,
     "loss/target"),
    # LoLSGD's local step at rate inf makes the same step's loss NaN.
    ("holistic lolsgd", "lolsgd", 4 + 3, "loss/target"),
    ("holistic gradmix_distill", {"finetune_lr": 1e30}, 4 + 1 + 3,
     "source cross_entropy"),
]


class FiniteLossNanGradient(MultiSourceTask):
  """The source losses plus sqrt(|w - w|^2) of the first variable: the loss
  stays finite (the term is 0) while its gradient is NaN everywhere (the
  derivative of sqrt at 0, inf, times 0), on any machine."""

  def make_phases(self):
    optimizer = sgd.make_main_sgd(self.config)
    return [self.phase("nan_gradient", self.config.steps, optimizer,
                       self.nan_gradient_step(optimizer))]

  def nan_gradient_step(self, optimizer):
    def step(indices):
      with tf.GradientTape() as tape:
        source_losses = self.source_losses(indices)
        first = self.variables[0]
        total = tf.add_n(source_losses) + tf.sqrt(tf.reduce_sum(
            tf.square(first - tf.stop_gradient(first))))
      applied = self.apply_finite(optimizer,
                                  tape.gradient(total, self.variables),
                                  self.variables, [total])
      return {**self.loss_outputs(source_losses), "applied": applied}
    return step


def test_a_finite_loss_with_a_non_finite_gradient_is_named_as_such(
    tmp_path, monkeypatch):
  from gradmix_tf.errors import TrainingError  # pylint: disable=g-import-not-at-top
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  entry = methods.Method("nan_gradient", ("digits",),
                         "test_reliability:FiniteLossNanGradient")
  monkeypatch.setattr(methods, "REGISTRY", methods.REGISTRY + (entry,))
  runner = build_runner(
      tiny_config(method="nan_gradient", steps=6, max_consecutive_skips=3),
      tiny_data(), str(tmp_path))
  before = [w.numpy().copy() for w in runner.model.trainable_weights]
  with pytest.raises(TrainingError) as raised:
    runner.run()
  assert raised.value.step == 3
  assert raised.value.source == "the gradients of finite losses"
  assert "last from the gradients of finite losses" in str(raised.value)
  for a, b in zip(before, runner.model.trainable_weights):
    np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize("method,how,stop_step,culprit", NON_FINITE_CASES,
                         ids=[c[0] for c in NON_FINITE_CASES])
def test_non_finite_steps_are_skipped_counted_and_stop_the_run(
    tmp_path, method, how, stop_step, culprit):
  from gradmix_tf.errors import TrainingError  # pylint: disable=g-import-not-at-top
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  overrides = dict(max_consecutive_skips=3, steps=6)
  if isinstance(how, dict):
    overrides.update(how)
  if method.startswith("holistic "):
    trainer = _holistic_trainer(method.split()[1], overrides, tmp_path,
                                local_lr=(float("inf") if how == "lolsgd"
                                          else 0.05))
  else:
    trainer = build_runner(tiny_config(method=method, **overrides),
                           tiny_data(), str(tmp_path))
  if how == "poison":
    kernel = _poison(trainer.model, trainer.data.target_head)
    before = [w.numpy().copy() for w in trainer.model.trainable_weights
              if w is not kernel]
  with pytest.raises(TrainingError) as raised:
    trainer.run()
  error = raised.value
  assert error.step == stop_step, str(error)
  assert error.source == culprit and culprit in str(error)
  assert f"up to step {stop_step}" in str(error)
  assert not (tmp_path / "metrics.json").exists()
  if how == "poison":
    # Three skipped steps: no weight moved, no optimizer step was taken.
    # (Moving statistics, as MDDA's batch norm keeps, are updated by the
    # forward pass, as under Keras' LossScaleOptimizer.)
    after = [w.numpy() for w in trainer.model.trainable_weights
             if w is not kernel]
    for a, b in zip(before, after):
      np.testing.assert_array_equal(a, b)
    assert all(int(p.optimizer.iterations.numpy()) == 0
               for p in trainer.phases)
    assert trainer._skipped_steps() == 3  # pylint: disable=protected-access
