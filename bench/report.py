"""Writing measured results into the docs without losing hand-written text."""

import os


def per_config(name, config, home="digits_mnistm"):
  """`name` for a bench's home config, `name_<config>` for another: the
  docs block and the file names of one bench run on several twins."""
  return name if config == home else f"{name}_{config}"


def replace_block(path, name, text):
  """Writes `text` between `<!-- name:start -->` and `<!-- name:end -->`.

  Other sections of the file (other experiments, hand-written discussion)
  are kept; a file without the markers gets the block appended.
  """
  start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
  block = f"{start}\n{text.rstrip()}\n{end}\n"
  existing = ""
  if os.path.isfile(path):
    with open(path) as f:
      existing = f.read()
  if start in existing and end in existing:
    head, rest = existing.split(start, 1)
    _, tail = rest.split(end, 1)
    updated = head + block + tail.lstrip("\n")
  elif existing:
    updated = existing.rstrip() + "\n\n" + block
  else:
    updated = block
  partial = path + ".tmp"
  with open(partial, "w") as f:
    f.write(updated)
  os.replace(partial, path)
