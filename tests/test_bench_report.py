"""The results writer keeps what other sections of RESULTS.md hold."""

import importlib.util
import os
import sys

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
