"""`<workdir>/model.json`: what export needs to rebuild a run's network.

Written by the runner when a run starts (no TensorFlow needed to read it);
`gradmix_tf.export.export_workdir` rebuilds the network from it and the
run's checkpoint.
"""

import os

from gradmix_tf import methods
from gradmix_tf.files import write_json_atomically

MODEL_FILE = "model.json"


def preprocessing_of(config):
  """`"frames"` for action experiments, else `"digits"`: how the served
  graph prepares its input (`gradmix_tf.export`)."""
  return "frames" if methods.experiment_of(config) == "actions" else "digits"


def write_model_description(workdir, config, data):
  """Writes the network's config, input shape, heads and preprocessing."""
  description = {
      "name": config.name,
      "model": config.model.to_dict(),
      "input_shape": list(config.input_shape),
      "head_classes": [list(c) for c in data.head_classes],
      "target_head": data.target_head,
      "preprocessing": preprocessing_of(config),
  }
  if getattr(data, "folder_labels", None):
    description["folder_labels"] = data.folder_labels
  write_json_atomically(os.path.join(workdir, MODEL_FILE), description)
