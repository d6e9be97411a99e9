"""Writing files and directories so that a reader never sees half of one."""

import ctypes
import errno
import json
import os
import shutil
import tempfile


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


def probe_writable(path):
  """Checks that a directory exists or can be made, and takes a file.

  The nearest existing ancestor of `path` must be a directory, and a file
  can be created (and is removed at once) in it: a permission check alone
  says yes to root on a read-only mount.

  Returns:
    The nearest existing ancestor (`path` itself when it exists).

  Raises:
    NotADirectoryError: that ancestor is a file.
    OSError: it cannot be written.
  """
  path = os.path.abspath(path)
  existing = path
  while not os.path.exists(existing):
    parent = os.path.dirname(existing)
    if parent == existing:
      break
    existing = parent
  if not os.path.isdir(existing):
    raise NotADirectoryError(errno.ENOTDIR, "not a directory", existing)
  handle, probe = tempfile.mkstemp(prefix=".gradmix-write-probe-",
                                   dir=existing)
  os.close(handle)
  os.remove(probe)
  return existing


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
