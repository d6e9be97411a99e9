"""The run directory: checked before use, locked while in use, tidy on refusal.

* `check_directory(path, flag)`: a directory that exists or can be made,
  and that this process can write in (probed with a file that is removed at
  once; a permission check alone says yes to root on a read-only mount);
  run before anything is written, so a bad `--workdir` or export directory
  is refused in one line before training.
* `RunDirectory`: creates the workdir and holds an advisory lock on
  `<workdir>/.lock` (`fcntl.flock`, released by the kernel when the process
  ends, SIGKILL included) for as long as a run trains there; a second
  process gets one line naming the pid of the first. When the run is
  refused before it trained (`discard_unstarted`), what it made goes again:
  the directories this process created (parents included), else its
  `config.json` and lock file.
* `record_stop` / `clear_stop`: `stopped.json` (step, reason, source) for a
  run that training stopped (exit status 3), or a signal (143, 130).
"""

import errno
import fcntl
import os
import shutil

from gradmix_tf.errors import ConfigError, NoSpaceError, RunStopped
from gradmix_tf.files import probe_writable, write_json_atomically

LOCK_FILE = ".lock"
STOPPED_FILE = "stopped.json"


def check_directory(path, flag):
  """Refuses a `path` that is a file or that this process cannot write in.

  Args:
    path: a directory, existing or to be created.
    flag: how the user gave it (`--workdir`, `--config.export_dir`), for
      the message.

  Raises:
    ConfigError: what is wrong and how to fix it.
  """
  path = os.path.abspath(path)
  try:
    probe_writable(path)
  except NotADirectoryError as err:
    what = ("is a file" if err.filename == path
            else f"is under a file ({err.filename})")
    raise ConfigError(f"{flag} {path} {what}, not a directory: pass a "
                      "directory path") from None
  except OSError as err:
    raise ConfigError(
        f"{flag} {path}: cannot write there ({err.strerror or err}); "
        "choose a writable directory") from None


def started(workdir):
  """Whether a run in `workdir` has trained (a checkpoint or metrics)."""
  for _, _, files in os.walk(workdir):
    if "checkpoint" in files or "metrics.json" in files:
      return True
  return False


class RunDirectory:
  """The workdir of one training process, locked while it is open.

  Use as a context manager. `lock=False` (a multi-worker run's non-chief
  workers, which share the chief's workdir) creates the directory without
  taking the lock.

  Raises (on enter):
    ConfigError: another live process holds the lock, or the directory
      cannot be created.
  """

  def __init__(self, workdir, lock=True):
    self.workdir = workdir
    self._lock = lock
    self._handle = None
    # The outermost directory this call creates (`runs/` of
    # `runs/<config>/<run>`, say), or None when the workdir exists.
    self._created_root = None
    self._lock_created = False

  @property
  def created(self):
    return self._created_root is not None

  def __enter__(self):
    missing = os.path.abspath(self.workdir)
    while not os.path.exists(missing):
      self._created_root = missing
      missing = os.path.dirname(missing)
    try:
      os.makedirs(self.workdir, exist_ok=True)
    except OSError as err:
      raise ConfigError(f"cannot create --workdir {self.workdir} "
                        f"({err.strerror or err})") from None
    if self._lock:
      self._acquire()
    return self

  def _acquire(self):
    path = os.path.join(self.workdir, LOCK_FILE)
    self._lock_created = not os.path.exists(path)
    handle = open(path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
      handle.seek(0)
      owner = handle.read().strip() or "unknown"
      handle.close()
      if err.errno not in (errno.EAGAIN, errno.EACCES):
        raise ConfigError(f"cannot lock {path} ({err.strerror})") from None
      raise ConfigError(
          f"{self.workdir} is in use by another run (pid {owner}); wait for "
          "it to end or use another --workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    self._handle = handle

  def __exit__(self, *exc_info):
    if self._handle is not None:
      fcntl.flock(self._handle, fcntl.LOCK_UN)
      self._handle.close()
      self._handle = None
    return False

  def discard_unstarted(self, fresh_config):
    """Removes what a refused run made, unless it had trained.

    A workdir opened without the lock (a non-chief worker's view of the
    chief's) is the chief's to tidy, and is left alone. A run that had
    trained keeps everything but the lock file this call made.

    Args:
      fresh_config: whether this run wrote `config.json` (a new run).
    """
    if not self._lock:
      return
    if started(self.workdir):
      names = [LOCK_FILE] if self._lock_created else []
    elif self.created:
      shutil.rmtree(self._created_root, ignore_errors=True)
      return
    else:
      names = ([LOCK_FILE] if self._lock_created else []) + (
          ["config.json"] if fresh_config else [])
    for name in names:
      path = os.path.join(self.workdir, name)
      if os.path.isfile(path):
        os.remove(path)


def record_stop(workdir, error, reason=None):
  """Writes `<workdir>/stopped.json` for a run that stopped: a
  `TrainingError` or `NoSpaceError` (`error` is its line), or a
  `RunStopped` (`reason` its signal, `SIGTERM` / `SIGINT`).

  On a full disk the record may not fit either: then it is left out (the
  error line says what happened) and nothing half-written stays.
  """
  record = {
      "error": f"error: {error}",
      "step": getattr(error, "step", None),
      "reason": getattr(error, "reason", None),
      "source": getattr(error, "source", None),
  }
  if isinstance(error, RunStopped):
    record.update(error=None, message=str(error),
                  reason=reason or "preempted")
  try:
    write_json_atomically(os.path.join(workdir, STOPPED_FILE), record)
  except NoSpaceError:
    pass


def clear_stop(workdir):
  """Removes a `stopped.json` left by an earlier invocation that stopped."""
  path = os.path.join(workdir, STOPPED_FILE)
  if os.path.isfile(path):
    os.remove(path)
