"""Atomic JSON writes."""

import json
import os

from gradmix_tf.files import write_json_atomically


def test_write_json_atomically_replaces_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / "metrics.json")
  write_json_atomically(path, {"b": 1, "a": 2}, sort_keys=True)
  write_json_atomically(path, {"b": 3, "a": 4}, sort_keys=True)
  with open(path) as f:
    text = f.read()
  assert json.loads(text) == {"a": 4, "b": 3}
  assert text.index('"a"') < text.index('"b"')
  assert os.listdir(tmp_path) == ["metrics.json"]
