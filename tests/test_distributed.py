"""Distributed GradMix equals one device on the same global batch.

Each run is a fresh process (`distributed_worker.py`): logical CPU devices
must be configured before TensorFlow starts, and multi-worker training
needs one process per worker.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.multiprocess

WORKER = os.path.join(REPO, "tests", "distributed_worker.py")
WORKER_TIMEOUT = 240


def _run(mode, out, method="gradmix", env=None):
  result = subprocess.run(
      [sys.executable, WORKER, mode, str(out), method], cwd=REPO,
      capture_output=True, text=True, timeout=WORKER_TIMEOUT,
      env=dict(os.environ, **(env or {})))
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(np.load(out))


def _assert_same(reference, other):
  assert set(reference) == set(other)
  for key in reference:
    np.testing.assert_allclose(other[key], reference[key], rtol=1e-5,
                               atol=1e-5, err_msg=key)


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
  out = tmp_path_factory.mktemp("single") / "out.npz"
  return _run("single", out)


def test_mirrored_two_cpus_equals_one_device(single_device, tmp_path):
  mirrored = _run("mirrored", tmp_path / "out.npz")
  _assert_same(single_device, mirrored)
  # Not vacuous: the step moved the parameters and mixed two sources.
  assert not np.allclose(mirrored["weights_0"], mirrored["weights_1"])


def test_mirrored_fit_equals_the_single_device_runner(single_device,
                                                      tmp_path):
  # MultiSourceModel.fit on 2 logical CPUs, the runner's global batches:
  # the same parameters as the runner's step on one device.
  fit = _run("mirrored", tmp_path / "out.npz", "fit")
  params = [key for key in single_device if key.startswith("param_")]
  assert params and set(fit) == set(params)
  for key in params:
    np.testing.assert_allclose(fit[key], single_device[key], rtol=1e-5,
                               atol=1e-6, err_msg=key)


def test_mirrored_streamed_input_equals_one_device_in_memory(single_device,
                                                            tmp_path):
  # Each replica decodes its own rows of the global batch from files.
  _assert_same(single_device, _run("mirrored", tmp_path / "out.npz",
                                   "stream"))


@pytest.mark.parametrize("method", ["joint", "target_only"])
def test_mirrored_plain_steps_count_v_once(tmp_path, method):
  single = _run("single", tmp_path / "single.npz", method)
  mirrored = _run("mirrored", tmp_path / "mirrored.npz", method)
  _assert_same(single, mirrored)


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.mark.parametrize("method", ["gradmix", "stream"])
def test_two_local_workers_equal_one_device(single_device, tmp_path, method):
  # stream: each worker's input pipeline decodes its own replica's rows.
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  processes = []
  for index in range(2):
    tf_config = json.dumps({"cluster": cluster,
                            "task": {"type": "worker", "index": index}})
    processes.append(subprocess.Popen(
        [sys.executable, WORKER, "multi_worker",
         str(tmp_path / f"out{index}.npz"), method],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, TF_CONFIG=tf_config)))
  outputs = []
  try:
    for process in processes:
      # A worker whose peer never comes blocks and ignores SIGTERM.
      output, _ = process.communicate(timeout=WORKER_TIMEOUT)
      outputs.append(output)
  except subprocess.TimeoutExpired:
    for process in processes:
      process.send_signal(signal.SIGKILL)
    pytest.fail(f"multi-worker run did not finish in {WORKER_TIMEOUT} s")
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  # Only the chief (worker 0) writes its result.
  assert not (tmp_path / "out1.npz").exists()
  _assert_same(single_device, dict(np.load(tmp_path / "out0.npz")))


# TensorFlow's preemption handler asks the Google Cloud metadata server
# whether it runs there: a closed local port answers no at once.
LOCAL_ONLY = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                  GCE_METADATA_IP="127.0.0.1:9")


def _local_workers(shared_data, workdir, timeout=400):
  """`launch/local_workers.py` on a quick digits_mnistm run (a Popen)."""
  return subprocess.Popen(
      [sys.executable, "launch/local_workers.py", "--workers=2",
       f"--timeout={timeout}", "--", "--config=digits_mnistm",
       "--config.quick=True", f"--config.data_dir={shared_data}",
       f"--workdir={workdir}"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=LOCAL_ONLY)


def _worker_logs(workdir):
  return "".join(open(workdir / f"worker_{i}.log").read()[-1500:]
                 for i in range(2) if (workdir / f"worker_{i}.log").exists())


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory):
  """An uninterrupted quick run on two local workers: its workdir."""
  if not os.path.isfile(os.path.join(SHARED_DATA, "mnist.npz")):
    pytest.skip("../shared/data/mnist.npz is not present")
  workdir = tmp_path_factory.mktemp("two_workers")
  process = _local_workers(SHARED_DATA, workdir)
  _, stderr = process.communicate(timeout=450)
  assert process.returncode == 0, stderr + _worker_logs(workdir)
  return workdir


def test_local_workers_launcher_trains_digits_mnistm(two_worker_run):
  with open(two_worker_run / "metrics.json") as f:
    metrics = json.load(f)
  assert metrics["replicas"] == 2 and metrics["steps"] == 30


def test_one_preempted_worker_stops_all_at_one_step_and_the_rerun_matches(
    shared_data, two_worker_run, tmp_path):
  """SIGTERM to worker 1 alone (as a preempted machine gets it): through
  TensorFlow's PreemptionCheckpointHandler both workers save the same
  step and exit 143; the same command resumes both there and ends with
  every array of both workers' checkpoints equal to the uninterrupted
  run's."""
  from test_preemption import assert_same_arrays, final_arrays  # pylint: disable=g-import-not-at-top
  process = _local_workers(shared_data, tmp_path)
  pids = []
  for line in process.stdout:
    pids.append(int(line.split("pid ")[1].split(",")[0]))
    if len(pids) == 2:
      break
  deadline = time.time() + 300
  while "step 10/30" not in (tmp_path / "worker_0.log").read_text():
    assert process.poll() is None and time.time() < deadline, (
        _worker_logs(tmp_path))
    time.sleep(0.2)
  os.kill(pids[1], signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  logs = [(tmp_path / f"worker_{i}.log").read_text() for i in range(2)]
  assert process.returncode == 143, stderr + _worker_logs(tmp_path)
  assert "run the same command again to resume" in stderr
  steps = [re.search(r"^stopped (by SIGTERM|because another worker of the "
                     r"cluster was stopped) at step (\d+);", log, re.M)
           for log in logs]
  assert all(steps), _worker_logs(tmp_path)
  assert steps[1].group(1) == "by SIGTERM"
  assert steps[0].group(1).startswith("because another worker")
  step = int(steps[0].group(2))
  assert int(steps[1].group(2)) == step and 10 <= step < 30
  checkpoint_dirs = ("checkpoints", "workers/worker_1/checkpoints")
  for directory in checkpoint_dirs:
    assert (tmp_path / directory / f"ckpt-{step}.index").exists(), directory
  assert json.loads((tmp_path / "stopped.json").read_text())["step"] == step

  process = _local_workers(shared_data, tmp_path)
  _, stderr = process.communicate(timeout=450)
  assert process.returncode == 0, stderr + _worker_logs(tmp_path)
  assert f"at step {step}." in (tmp_path / "worker_0.log").read_text()
  for directory in checkpoint_dirs:
    assert_same_arrays(final_arrays(two_worker_run / directory),
                       final_arrays(tmp_path / directory))


def test_local_workers_launcher_stops_all_when_one_fails(tmp_path):
  result = subprocess.run(
      [sys.executable, "launch/local_workers.py", "--workers=2",
       "--timeout=200", "--", "--config=no_such_config",
       f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=250)
  assert result.returncode == 1 and "error: " in result.stderr


def test_local_workers_launcher_kills_workers_on_timeout(shared_data,
                                                         tmp_path):
  result = subprocess.run(
      [sys.executable, "launch/local_workers.py", "--workers=2",
       "--timeout=2", "--", "--config=digits_mnistm", "--config.quick=True",
       f"--config.data_dir={shared_data}", f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert "timeout after 2 s; stopping all workers" in result.stderr
  assert not (tmp_path / "metrics.json").exists()
