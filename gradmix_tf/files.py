"""Writing files and directories so that a reader never sees half of one."""

import ctypes
import errno
import json
import os
import shutil


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


_RENAME_EXCHANGE = 2    # linux/fs.h
_AT_FDCWD = -100


def _exchange(first, second):
  """Swaps two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`).

  Raises:
    OSError: the system or filesystem cannot (callers fall back).
  """
  libc = ctypes.CDLL(None, use_errno=True)
  renameat2 = getattr(libc, "renameat2", None)
  if renameat2 is None:
    raise OSError(errno.ENOSYS, "renameat2 is not available")
  if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
               _RENAME_EXCHANGE) != 0:
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code))


def replace_directory(new, path, aside):
  """Moves the complete directory `new` to `path`, replacing what is there.

  A reader of `path` sees the old directory or the new one, whole: an
  existing `path` is swapped with `new` in one atomic exchange, then the
  old one (now at `new`) is deleted. Where the exchange is not supported,
  the old directory is renamed to `aside` (a name readers ignore) and the
  new one renamed in, which leaves `path` missing for the instant between
  two renames; a process killed there leaves the old one at `aside`.
  """
  if not os.path.exists(path):
    os.rename(new, path)
    return
  try:
    _exchange(new, path)
    old = new
  except OSError:
    os.rename(path, aside)
    os.rename(new, path)
    old = aside
  shutil.rmtree(old, ignore_errors=True)
