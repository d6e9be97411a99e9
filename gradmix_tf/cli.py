"""Command-line plumbing shared by the launcher and the exporter.

Every mistake on the command line ends the same way: one line
`error: <what is wrong>; <how to fix it>` on stderr and exit status 2
(`EXIT_USER_ERROR`), never absl's `FATAL Flags parsing error` (status 1) or
a traceback.
"""

import logging
import re
import sys

from absl import flags

EXIT_USER_ERROR = 2
EXIT_TRAINING_STOPPED = 3

_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)"')


def fail(message, status=EXIT_USER_ERROR):
  """Prints `error: <message>` (one line) and exits with `status`."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(status)


def stop(message, status):
  """Prints `message` (one line, not an error) and exits with `status`."""
  print(' '.join(str(message).split()), file=sys.stderr)
  sys.exit(status)


def unknown_field_message(err):
  """The line for ml_collections' error on a `--config.<field>` it lacks.

  ml_collections raises a `KeyError` / `AttributeError` whose text is the
  quoted field and, on a second line, `Did you mean "x" instead of "y"?`
  (an `AttributeError` wraps the `KeyError` when a section is reached
  through attribute access).
  """
  # An AttributeError may wrap the KeyError whose first argument is the text.
  while err.args and isinstance(err.args[0], Exception):
    err = err.args[0]
  text = str(err.args[0]) if err.args else str(err)
  lines = text.splitlines() or [""]
  field = lines[0].strip().strip("\\'\"")
  match = _DID_YOU_MEAN.search(text)
  hint = f" (did you mean {match.group(1)!r}?)" if match else ""
  return (f"the config has no field {field!r}{hint}; check the spelling of "
          "the --config.<field> override")


def parse_flags(argv):
  """absl's flag parsing with every error as one `error:` line, status 2.

  Use as `app.run(main, flags_parser=parse_flags)`.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as err:
    fail(f"{err}; see --help for the flags and their types")
  except (AttributeError, KeyError) as err:
    fail(unknown_field_message(err))
  return None  # Not reached: fail() exits.


class _LibraryInfoFilter(logging.Filter):
  """Drops INFO and DEBUG records logged from inside TensorFlow or Keras."""

  def filter(self, record):
    if record.levelno >= logging.WARNING:
      return True
    path = record.pathname.replace("\\", "/")
    return not any(f"/{package}/" in path for package in _QUIET_PACKAGES)


_QUIET_PACKAGES = ("tensorflow", "keras")
_LIBRARY_INFO_FILTER = _LibraryInfoFilter()


def quiet_tensorflow(verbosity):
  """Keeps TensorFlow's own INFO lines (checkpoint sharding durations,
  device placement) out of a run's output, unless `--verbosity=1` or more.

  TensorFlow logs them through its `tensorflow` logger and through absl's
  (`functional_saver.py`); both are filtered by where the record comes
  from, so the run's own progress lines stay.
  """
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  targets = [logging.getLogger("tensorflow"), absl_logging.get_absl_handler()]
  for target in targets:
    target.removeFilter(_LIBRARY_INFO_FILTER)
    if verbosity < 1:
      target.addFilter(_LIBRARY_INFO_FILTER)


def no_positional_arguments(argv):
  """Refuses words on the command line that are not flags."""
  if len(argv) > 1:
    fail(f"unexpected arguments {' '.join(argv[1:])}: every setting is a "
         "flag (--name=value); see --help")
