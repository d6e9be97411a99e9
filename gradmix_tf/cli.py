"""Command-line plumbing shared by the launcher and the exporter.

Every mistake on the command line ends the same way: one line
`error: <what is wrong>; <how to fix it>` on stderr and exit status 2
(`EXIT_USER_ERROR`), never absl's `FATAL Flags parsing error` (status 1) or
a traceback.
"""

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


def no_positional_arguments(argv):
  """Refuses words on the command line that are not flags."""
  if len(argv) > 1:
    fail(f"unexpected arguments {' '.join(argv[1:])}: every setting is a "
         "flag (--name=value); see --help")
