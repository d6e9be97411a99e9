"""Writing files and directories so that a reader never sees half of one,
and a write that fails for lack of space as one line that leaves no part of
itself behind (`space_for`)."""

import contextlib
import ctypes
import errno
import glob
import json
import os
import shutil
import tempfile

from gradmix_tf.errors import NoSpaceError

_NO_SPACE_TEXTS = ("No space left on device", "Disk quota exceeded")


def is_out_of_space(err):
  """Whether `err` is a write refused for lack of space: an `OSError` with
  `ENOSPC` / `EDQUOT`, or TensorFlow's `ResourceExhaustedError` (or any
  error of its file system layer) whose message says so."""
  if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
    return True
  text = getattr(err, "message", None) or str(err)
  return any(phrase in text for phrase in _NO_SPACE_TEXTS)


def human_bytes(count):
  """`100` -> `"100 bytes"`, `1536` -> `"1.5 KiB"` (up to GiB)."""
  if count < 1024:
    return f"{count:.0f} bytes"
  for power, unit in enumerate(("KiB", "MiB", "GiB"), start=1):
    if count < 1024 ** (power + 1) or unit == "GiB":
      return f"{count / 1024 ** power:.1f} {unit}"
  return None  # Not reached: GiB takes every larger count.


def free_bytes(path):
  """Free bytes on the file system of `path` (or of its nearest existing
  ancestor)."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def remove_paths(patterns):
  """Removes every file or directory matching the glob `patterns`."""
  for pattern in patterns:
    for path in glob.glob(pattern):
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
      elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def space_for(directory, what, needed, partial=(), step=None):
  """Turns a write in the block that fails for lack of space into one line.

  Args:
    directory: where the write goes (named in the message).
    what: what is written (`"checkpoint ckpt-20"`).
    needed: about how many bytes the write needs.
    partial: glob patterns of what a failed write leaves behind; removed
      before the error is raised, so the newest complete file stays the
      newest and a rerun finds nothing half-written.
    step: the training step, when the write happens mid-training.

  Raises:
    NoSpaceError: the write failed for lack of space (other errors pass).
  """
  try:
    yield
  except Exception as err:  # pylint: disable=broad-except
    if isinstance(err, NoSpaceError) or not is_out_of_space(err):
      raise
    remove_paths(partial)
    raise NoSpaceError(
        f"no space left in {directory} to write {what} (it needs about "
        f"{human_bytes(needed)}; {human_bytes(free_bytes(directory))} "
        "free): free some space there and run the same command again",
        step=step) from None


def write_json_atomically(path, payload, sort_keys=False):
  """Writes JSON to a per-process temporary file, then renames it to `path`.

  The temporary name carries the process id, so concurrent writers (workers
  of one multi-worker run sharing a workdir) never rename each other's
  half-written file.
  """
  write_text_atomically(
      path, json.dumps(payload, indent=2, sort_keys=sort_keys))


def write_text_atomically(path, text):
  """Writes `text` to a per-process temporary file, then renames it to
  `path`: all of it or nothing. A write that fails leaves no temporary
  file; one that fails for lack of space raises `NoSpaceError`."""
  partial = f"{path}.tmp{os.getpid()}"
  with space_for(os.path.dirname(os.path.abspath(path)),
                 os.path.basename(path), len(text.encode())):
    try:
      with open(partial, "w") as f:
        f.write(text)
      os.replace(partial, path)
    except BaseException:
      if os.path.exists(partial):
        os.remove(partial)
      raise


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
