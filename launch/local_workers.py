r"""Starts N local workers of `python -m gradmix_tf.launch` with TF_CONFIG.

    python launch/local_workers.py --workers=2 -- \
        --config=digits_mnistm --config.quick=True --workdir=runs/mw

Each worker gets `TF_CONFIG` for a cluster of `--workers` tasks on free
ports of 127.0.0.1 and `--config.distribution=multi_worker`; its output goes
to `<workdir>/worker_<i>.log`. When one worker fails or `--timeout` passes,
all are killed with SIGKILL (a collective whose peer is gone blocks and
ignores SIGTERM) and the exit status is 1. Worker 0 is the chief: it writes
the checkpoints, TensorBoard logs and metrics.json.

SIGTERM or SIGINT to this script is passed on to every worker; a worker
that gets one (from here or from elsewhere, as a preempted machine's does)
makes all of them stop at one step with a checkpoint there
(`gradmix_tf.preemption`). A worker that exits so (status 143 or 130) is
not a failure: the others are waited for, and this script exits with that
status; the same command resumes the run.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

# Exit statuses of a worker stopped by SIGTERM / SIGINT after a checkpoint.
STOPPED = (128 + signal.SIGTERM, 128 + signal.SIGINT)


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def workdir_of(launcher_args):
  for arg in launcher_args:
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
  return None


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--timeout", type=float, default=3600.0,
                      help="seconds before every worker is killed")
  parser.add_argument("launcher_args", nargs=argparse.REMAINDER)
  args = parser.parse_args()
  launcher_args = [a for a in args.launcher_args if a != "--"]
  workdir = workdir_of(launcher_args)
  if args.workers < 1 or workdir is None:
    print("error: give --workers >= 1 and, after --, the launcher flags "
          "including --workdir=<dir>", file=sys.stderr)
    return 2
  os.makedirs(workdir, exist_ok=True)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(args.workers)]}
  processes = []
  for index in range(args.workers):
    env = dict(os.environ, TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    log = open(os.path.join(workdir, f"worker_{index}.log"), "w")
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "gradmix_tf.launch", *launcher_args,
         "--config.distribution=multi_worker"],
        stdout=log, stderr=subprocess.STDOUT, env=env))
    print(f"worker {index}: pid {processes[-1].pid}, log "
          f"{workdir}/worker_{index}.log", flush=True)

  def pass_on(signum, frame):
    del frame
    for p in processes:
      if p.poll() is None:
        p.send_signal(signum)

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, pass_on)
  deadline = time.time() + args.timeout
  status = 0
  while any(p.poll() is None for p in processes):
    failed = [i for i, p in enumerate(processes)
              if p.poll() not in (None, 0, *STOPPED)]
    if failed or time.time() > deadline:
      status = 1
      reason = (f"worker {failed[0]} exited with {processes[failed[0]].returncode}"
                if failed else f"timeout after {args.timeout:.0f} s")
      print(f"error: {reason}; stopping all workers (see {workdir}/worker_*.log)",
            file=sys.stderr)
      for p in processes:
        if p.poll() is None:
          p.send_signal(signal.SIGKILL)
      break
    time.sleep(0.5)
  for p in processes:
    p.wait()
  stopped = [p.returncode for p in processes if p.returncode in STOPPED]
  if status == 0 and stopped and all(
      p.returncode in (0, *STOPPED) for p in processes):
    print(f"workers stopped by a signal after a checkpoint; run the same "
          f"command again to resume (see {workdir}/worker_*.log)",
          file=sys.stderr)
    return stopped[0]
  if any(p.returncode != 0 for p in processes) and status == 0:
    status = 1
    print(f"error: a worker failed (see {workdir}/worker_*.log)",
          file=sys.stderr)
  return status


if __name__ == "__main__":
  sys.exit(main())
