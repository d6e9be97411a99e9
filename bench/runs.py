"""Running one cell of a result table through the launcher, resumably."""

import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(workdir, flags):
  """`python -m gradmix_tf.launch <flags> --workdir=<workdir>`, logged to
  `<workdir>/log.txt`, unless the run's `metrics.json` exists (a killed
  run resumes from its own checkpoint). Returns "done" or the wall time.
  """
  if os.path.isfile(os.path.join(workdir, "metrics.json")):
    return "done"
  command = [sys.executable, "-m", "gradmix_tf.launch", *flags,
             f"--workdir={workdir}"]
  os.makedirs(workdir, exist_ok=True)
  started = time.time()
  with open(os.path.join(workdir, "log.txt"), "a") as log:
    code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT,
                           cwd=REPO)
  if code:
    raise SystemExit(f"run failed ({code}): {' '.join(command)}; see "
                     f"{workdir}/log.txt")
  return f"{time.time() - started:.0f} s"
