"""The launcher end to end (quick mode) and its one-line errors."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, assert_one_error_line, run_module
from conftest import config_file as _config


def _launch(*args, env=None):
  return run_module("gradmix_tf.launch", *args, env=env)


_assert_one_line_error = assert_one_error_line


def test_quick_gradmix_run_end_to_end_and_resume(shared_data, tmp_path):
  workdir = str(tmp_path / "run")
  args = ["--config=digits_mnistm", "--config.quick=True",
          f"--config.data_dir={shared_data}", f"--workdir={workdir}"]
  result = _launch(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["method"] == "gradmix" and metrics["steps"] == 30
  assert metrics["config"] == "digits_mnistm"
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["quick"] is True
  assert os.listdir(os.path.join(workdir, "tb"))
  assert "step 30/30" in result.stderr   # the progress display
  # TensorFlow's own INFO lines stay out (--verbosity=1 brings them back).
  assert "Sharding callback duration" not in result.stderr
  # The same command again finds the finished checkpoint and trains no more.
  again = _launch(*args)
  assert again.returncode == 0, again.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f)["resumed_from_step"] == 30
  # The same workdir with another config is refused.
  other = _launch(*args, "--config.method=source_only")
  _assert_one_line_error(other, "different config", "method")


def test_quick_fine_tune_run(shared_data, tmp_path):
  result = _launch("--config=digits_mnistm", "--config.quick=True",
                   "--config.method=fine_tune", "--config.k=5",
                   f"--config.data_dir={shared_data}",
                   f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / "metrics.json") as f:
    metrics = json.load(f)
  assert metrics["steps"] == 40 and metrics["k"] == 5


def test_unknown_config():
  _assert_one_line_error(_launch("--config=digitz"), "unknown config",
                         "digits_mnistm")


def test_unknown_config_field():
  _assert_one_line_error(
      _launch("--config=digits_mnistm", "--config.learning_rat=0.1"),
      "no field", "learning_rat")


def test_digits_without_svhn_names_the_files(shared_data, tmp_path):
  os.symlink(os.path.join(shared_data, "mnist.npz"), tmp_path / "mnist.npz")
  _assert_one_line_error(
      _launch("--config=digits", "--config.quick=True",
              f"--config.data_dir={tmp_path}", f"--workdir={tmp_path}/run"),
      "train_32x32.mat")


@pytest.mark.parametrize("override,fragment", [
    ("--config.k=100000", "k=100000 is larger"),
    ("--config.sources.s1.dataset=npz:/nonexistent/x.npz", "does not exist"),
    ("--config.sources.s1.classes=(5,6)", "no source has the target"),
    ("--config.method=gradnix", "unknown method"),
    ("--config.steps=0", "config.steps must be at least 1"),
])
def test_bad_input_is_one_line(shared_data, tmp_path, override, fragment):
  _assert_one_line_error(
      _launch("--config=digits_mnistm", "--config.quick=True", override,
              f"--config.data_dir={shared_data}", f"--workdir={tmp_path}"),
      fragment)
  assert not os.path.exists(tmp_path / "metrics.json")
  # Nothing pins the rejected config: the corrected command may use the
  # workdir.
  assert not os.path.exists(tmp_path / "config.json")


def test_corrupt_npz_source(shared_data, tmp_path):
  bad = tmp_path / "bad.npz"
  bad.write_bytes(np.random.default_rng(0).bytes(256))
  _assert_one_line_error(
      _launch("--config=digits_mnistm", "--config.quick=True",
              f"--config.sources.s1.dataset=npz:{bad}",
              f"--config.data_dir={shared_data}",
              f"--workdir={tmp_path}/run"),
      "is not a .npz file")


def test_sweep_script_runs_each_seed(shared_data, tmp_path):
  result = subprocess.run(
      ["bash", "launch/sweep.sh", "--jobs=1", "--seeds=0 1",
       f"--root={tmp_path}", "--", "--config=digits_mnistm",
       "--config.quick=True", "--config.method=target_only",
       f"--config.data_dir={shared_data}"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr + result.stdout
  for seed in (0, 1):
    with open(tmp_path / f"seed{seed}" / "metrics.json") as f:
      assert json.load(f)["seed"] == seed


def test_sweep_script_stops_on_failure(tmp_path):
  result = subprocess.run(
      ["bash", "launch/sweep.sh", "--seeds=0", f"--root={tmp_path}", "--",
       "--config=nonexistent"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, PYTHON=sys.executable))
  assert result.returncode == 1 and "a run failed" in result.stderr


@pytest.mark.parametrize("name,method", [
    ("digits_mnistm", "gradmf"), ("digits_mnistm", "mme"),
    ("digits_mnistm", "mdda"), ("digits_mnistm", "dctn"),
    ("holistic_digits", "calibrated")])
def test_other_methods_run_from_the_launcher(shared_data, tmp_path, name,
                                             method):
  # In process (the launcher's train(), after flag parsing) to save the
  # start-up of a subprocess per method; quick mode, 6 steps.
  from gradmix_tf import launch  # pylint: disable=g-import-not-at-top
  config = _config(name, method=method, quick=True, steps=6,
                   data_dir=shared_data)
  metrics = launch.train(config, str(tmp_path))
  assert metrics["method"] == method
  assert 0.0 <= metrics["test_accuracy"] <= 1.0
  if name == "holistic_digits":
    assert set(metrics["holistic"]) >= {"overall", "seen", "unseen"}


def test_workdir_from_an_older_version_resumes_and_records_new_fields(
    tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gradmix_tf.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from gradmix_tf.config_lib import prepare_workdir  # pylint: disable=g-import-not-at-top
  # A run started before the `vat` section existed.
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"method": "gradmix_vat", "k": 2}, f)
  config = ml_collections.ConfigDict(
      {"method": "gradmix_vat", "k": 2, "vat": {"xi": 1e-3}})
  prepare_workdir(str(tmp_path), config)
  with open(tmp_path / "config.json") as f:
    assert json.load(f) == {"method": "gradmix_vat", "k": 2,
                            "vat": {"xi": 1e-3}}
  # From now on the new field is part of the run: changing it is refused,
  # as is changing or dropping a field the run always had.
  for fields in ({"method": "gradmix_vat", "k": 2, "vat": {"xi": 1e-6}},
                 {"method": "gradmix_vat", "k": 5, "vat": {"xi": 1e-3}},
                 {"method": "gradmix_vat", "vat": {"xi": 1e-3}}):
    with pytest.raises(ConfigError, match="different config"):
      prepare_workdir(str(tmp_path), ml_collections.ConfigDict(fields))


def test_a_field_newer_than_the_run_must_keep_its_default(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gradmix_tf.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from gradmix_tf.config_lib import prepare_workdir  # pylint: disable=g-import-not-at-top
  # Runs started before `lr_warmup_steps` (default 0) and the section field
  # `vat.train_head` (default True) existed trained without warm-up and
  # with VAT on the head: other values would misrecord their first steps.
  stored = {"method": "gradmix_vat", "k": 2, "vat": {"xi": 1e-3}}
  for fields, culprit in (({"lr_warmup_steps": 200}, "lr_warmup_steps"),
                          ({"vat": {"xi": 1e-3, "train_head": False}},
                           "vat.train_head")):
    run = tmp_path / culprit
    run.mkdir()
    (run / "config.json").write_text(json.dumps(stored))
    config = ml_collections.ConfigDict(dict(stored, **fields))
    with pytest.raises(ConfigError, match=culprit + r" \(the run predates it "
                       r"and used the default (0|True)\)"):
      prepare_workdir(str(run), config)
    assert json.loads((run / "config.json").read_text()) == stored
  # At their defaults they resume and are recorded.
  config = ml_collections.ConfigDict(dict(
      stored, lr_warmup_steps=0, vat={"xi": 1e-3, "train_head": True}))
  assert not prepare_workdir(str(tmp_path / "lr_warmup_steps"), config)
  assert json.loads((tmp_path / "lr_warmup_steps" / "config.json")
                    .read_text())["lr_warmup_steps"] == 0


def test_a_run_records_and_compares_only_its_own_methods_sections(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gradmix_tf.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from gradmix_tf.config_lib import prepare_workdir  # pylint: disable=g-import-not-at-top

  def config(method, epsilon, lambda_u):
    return ml_collections.ConfigDict(
        {"method": method, "k": 2, "vat": {"epsilon": epsilon},
         "mixmatch": {"lambda_u": lambda_u}})

  vat_run, plain_run = str(tmp_path / "vat"), str(tmp_path / "plain")
  assert prepare_workdir(vat_run, config("gradmix_vat", 1.0, 100.0))
  with open(os.path.join(vat_run, "config.json")) as f:
    assert json.load(f) == {"method": "gradmix_vat", "k": 2,
                            "vat": {"epsilon": 1.0}}
  # MixMatch's weight is no part of a VAT run; VAT's epsilon is.
  assert not prepare_workdir(vat_run, config("gradmix_vat", 1.0, 10.0))
  with pytest.raises(ConfigError, match="fields vat"):
    prepare_workdir(vat_run, config("gradmix_vat", 2.0, 10.0))
  # A run stored before the rule, with every section, still resumes when
  # only another method's section changed.
  os.makedirs(plain_run)
  with open(os.path.join(plain_run, "config.json"), "w") as f:
    json.dump({"method": "gradmix", "k": 2, "vat": {"epsilon": 2.0},
               "mixmatch": {"lambda_u": 100.0}}, f)
  assert not prepare_workdir(plain_run, config("gradmix", 1.0, 10.0))
  with pytest.raises(ConfigError, match="fields k"):
    prepare_workdir(plain_run, ml_collections.ConfigDict(
        {"method": "gradmix", "k": 5}))


def test_a_field_new_in_a_section_resumes_and_a_changed_one_is_named(
    tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gradmix_tf.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from gradmix_tf.config_lib import prepare_workdir  # pylint: disable=g-import-not-at-top
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"method": "gradmix_vat", "vat": {"epsilon": 1.0}}, f)
  current = {"method": "gradmix_vat",
             "vat": {"epsilon": 1.0, "train_head": True}}
  assert not prepare_workdir(str(tmp_path), ml_collections.ConfigDict(current))
  with open(tmp_path / "config.json") as f:
    assert json.load(f) == current
  current["vat"]["train_head"] = False
  with pytest.raises(ConfigError, match=r"fields vat\.train_head\)"):
    prepare_workdir(str(tmp_path), ml_collections.ConfigDict(current))


def test_help_lists_configs_methods_and_fields_without_tensorflow():
  started = time.perf_counter()
  result = _launch("--config=holistic_digits", "--help")
  elapsed = time.perf_counter() - started
  assert result.returncode == 0, result.stderr[-2000:]
  text = result.stdout
  assert "digits_mnistm_mnist" in text            # the configs
  assert ("--config.method='fine_tune'  (one of source_only, fine_tune, "
          "frozen_classifier") in text             # this experiment's methods
  assert "--config.solver='exact'  (one of exact, slsqp, meta_sgd)" in text
  assert "--config.holistic.pretrain_steps=1500" in text
  assert "tensorflow" not in result.stderr.lower()
  assert elapsed < 10, elapsed                      # about 0.2 s here


def test_the_protocol_fills_only_the_fields_left_unset():
  from gradmix_tf import config_lib  # pylint: disable=g-import-not-at-top
  from gradmix_tf.errors import ConfigError  # pylint: disable=g-import-not-at-top
  paper_flag = config_lib.load_config("digits_mnistm")
  paper_flag.protocol = "paper"
  paper = config_lib.resolve(paper_flag)
  assert (paper.model.norm, paper.lr_warmup_steps, paper.lr_decay_steps) == (
      "none", 0, 0)
  config = config_lib.load_config("digits_mnistm")
  config.protocol = "stable"
  config.lr_warmup_steps = 50                 # set: the protocol keeps it
  stable = config_lib.resolve(config)
  assert (stable.model.norm, stable.lr_warmup_steps,
          stable.lr_decay_steps) == ("batch", 50, 500)     # 25 % of 2000
  config.lr_warmup_steps, config.steps = None, 4000   # fractions of steps
  longer = config_lib.resolve(config)
  assert (longer.lr_warmup_steps, longer.lr_decay_steps) == (400, 1000)
  config.quick = True                                  # 30 steps
  quick = config_lib.resolve(config)
  assert (quick.steps, quick.lr_warmup_steps, quick.lr_decay_steps) == (
      30, 3, 8)
  config.quick, config.steps = False, 2000
  # ResNet-18's model section has no norm: the rest still applies.
  actions = config_lib.load_config("ucf101")
  actions.protocol, actions.model.weights = "stable", "random"
  resolved = config_lib.resolve(actions)
  assert "norm" not in resolved.model
  assert resolved.lr_decay_steps == 750      # 25 % of its 3000 steps
  config.protocol = "fast"
  with pytest.raises(ConfigError, match="config.protocol is 'fast'"):
    config_lib.resolve(config)
