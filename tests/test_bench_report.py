"""The results writer keeps what other sections of RESULTS.md hold."""

import importlib.util
import os
import sys

import pytest

from conftest import REPO


def _load(name):
  sys.path.insert(0, os.path.join(REPO, "bench"))
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(REPO, "bench", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_replace_block_keeps_other_sections(tmp_path):
  report = _load("report")
  path = str(tmp_path / "RESULTS.md")
  with open(path, "w") as f:
    f.write("# Results\n")
  report.replace_block(path, "table1", "first")
  with open(path, "a") as f:
    f.write("\n## Discussion\nhand-written\n")
  report.replace_block(path, "other", "another experiment")
  report.replace_block(path, "table1", "second")
  text = open(path).read()
  assert text.startswith("# Results")
  assert "second" in text and "first" not in text
  assert "hand-written" in text and "another experiment" in text
  assert text.count("<!-- table1:start -->") == 1


def test_mean_and_standard_error():
  table1 = _load("table1")
  # values 0.90, 0.92, 0.94 -> mean 92.00, sd 2.00, se 2/sqrt(3) = 1.15
  assert table1.mean_se([0.90, 0.92, 0.94]) == "92.00 ± 1.15"
  assert table1.mean_se([0.5]) == "50.00"


def _fake_launcher(tmp_path, exit_status, error):
  """A stand-in for `python -m gradmix_tf.launch`: counts its calls, prints
  `error`, exits with `exit_status`."""
  script = tmp_path / "fake_launch.py"
  script.write_text(
      "import pathlib, sys\n"
      f"calls = pathlib.Path({str(tmp_path / 'calls')!r})\n"
      "calls.write_text(str(int(calls.read_text() or 0) + 1)"
      " if calls.exists() else '1')\n"
      f"print({error!r}, file=sys.stderr)\n"
      f"sys.exit({exit_status})\n")
  return [sys.executable, str(script)]


def test_a_diverged_run_is_recorded_once_and_counted(tmp_path):
  runs = _load("runs")
  table1 = _load("table1")
  runs_dir = str(tmp_path / "runs")
  workdir = table1.run_dir(runs_dir, "gradmix_vat", 5, 1)
  prefix = _fake_launcher(tmp_path, 3, "error: 10 consecutive steps up to "
                          "step 356 had non-finite gradients")
  status = runs.launch(workdir, ["--config=digits_mnistm"], prefix)
  assert status.startswith("stopped: error: 10 consecutive steps")
  assert runs.stopped_record(workdir)["error"].endswith("non-finite "
                                                        "gradients")
  # Rerunning the table does not start the diverged run again.
  assert runs.launch(workdir, [], prefix).startswith("stopped earlier")
  assert (tmp_path / "calls").read_text() == "1"
  assert table1.stopped(runs_dir, "gradmix_vat", 5, [0, 1, 2]) == [1]
  assert table1.load(runs_dir, "gradmix_vat", 5, [0, 1, 2]) == []


def test_any_other_failed_run_ends_the_script(tmp_path):
  runs = _load("runs")
  prefix = _fake_launcher(tmp_path, 2, "error: unknown method 'x'")
  with pytest.raises(SystemExit, match=r"run failed \(2\)"):
    runs.launch(str(tmp_path / "run"), [], prefix)
  assert runs.stopped_record(str(tmp_path / "run")) is None
