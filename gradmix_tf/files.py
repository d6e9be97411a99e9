"""Writing files so that a reader never sees half of one."""

import json
import os


def write_json_atomically(path, payload, sort_keys=False):
  """Writes JSON to a per-process temporary file, then renames it to `path`.

  The temporary name carries the process id, so concurrent writers (workers
  of one multi-worker run sharing a workdir) never rename each other's
  half-written file.
  """
  partial = f"{path}.tmp{os.getpid()}"
  with open(partial, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=sort_keys)
  os.replace(partial, path)


def write_text_atomically(path, text):
  """Writes `text` like `write_json_atomically`: all of it or nothing."""
  partial = f"{path}.tmp{os.getpid()}"
  with open(partial, "w") as f:
    f.write(text)
  os.replace(partial, path)
