"""Running one cell of a result table through the launcher, resumably."""

import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The launcher's exit status when training cannot go on (non-finite
# gradients step after step): a result of the run, not a mistake in the
# command (`gradmix_tf.launch.EXIT_TRAINING_STOPPED`).
EXIT_TRAINING_STOPPED = 3
# The launcher's statuses after SIGTERM / SIGINT (gradmix_tf.preemption).
SIGNAL_STOPPED = (143, 130)
STOPPED_FILE = "stopped.json"


# `stopped.json` reasons of runs that the same command resumes: a signal
# (SIGTERM / SIGINT, `gradmix_tf.preemption`) or a full disk.
RESUMABLE = ("SIGTERM", "SIGINT", "preempted", "no_space")


def stopped_record(workdir):
  """The `stopped.json` of a run that training stopped for good (it
  diverged), else None: a run stopped by a signal or a full disk is not
  a result, and is resumed."""
  path = os.path.join(workdir, STOPPED_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    record = json.load(f)
  return None if record.get("reason") in RESUMABLE else record


def finished_metrics(workdir):
  """The `metrics.json` of a finished run, else None."""
  path = os.path.join(workdir, "metrics.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _last_error_line(log_path):
  with open(log_path) as f:
    errors = [line.strip() for line in f if line.startswith("error: ")]
  return errors[-1] if errors else "(no error line in the log)"


def launch(workdir, flags, command_prefix=None):
  """`python -m gradmix_tf.launch <flags> --workdir=<workdir>`, logged to
  `<workdir>/log.txt`, unless the run's `metrics.json` exists (a killed
  run resumes from its own checkpoint). Returns "done" or the wall time.

  A run that training stopped (exit status 3: it diverged) is a result:
  the launcher's `<workdir>/stopped.json` (its error line, step, reason
  and source) gains the command, the call returns
  "stopped: <error>" and later calls do not rerun it (the same seed would
  diverge again; delete the file to retry). Any other failure ends the
  script with the run's log named. `command_prefix` replaces
  `[python, -m, gradmix_tf.launch]` (for tests).
  """
  if os.path.isfile(os.path.join(workdir, "metrics.json")):
    return "done"
  stopped = stopped_record(workdir)
  if stopped:
    return f"stopped earlier: {stopped['error']}"
  command = [*(command_prefix or [sys.executable, "-m", "gradmix_tf.launch"]),
             *flags, f"--workdir={workdir}"]
  os.makedirs(workdir, exist_ok=True)
  started = time.time()
  log_path = os.path.join(workdir, "log.txt")
  with open(log_path, "a") as log:
    code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT,
                           cwd=REPO)
  if code == EXIT_TRAINING_STOPPED:
    # The launcher records the stop (step, reason, source); the command
    # that made it is added. Older launchers left no record.
    record = stopped_record(workdir) or {"error": _last_error_line(log_path)}
    record["command"] = command
    with open(os.path.join(workdir, STOPPED_FILE), "w") as f:
      json.dump(record, f, indent=2)
    return f"stopped: {record['error']}"
  if code in SIGNAL_STOPPED:
    # SIGTERM / SIGINT: the run saved its step; the grid stops between
    # runs, and the same bench command resumes that run, then the rest.
    print(f"stopped by a signal in {workdir} (it saved its step); run the "
          "same command again to resume", file=sys.stderr)
    raise SystemExit(code)
  if code:
    raise SystemExit(f"run failed ({code}): {' '.join(command)}; see "
                     f"{log_path}")
  return f"{time.time() - started:.0f} s"
