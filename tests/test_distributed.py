"""Distributed GradMix equals one device on the same global batch.

Each run is a fresh process (`distributed_worker.py`): logical CPU devices
must be configured before TensorFlow starts, and multi-worker training
needs one process per worker.
"""

import os
import signal
import socket
import subprocess
import sys
import json

import numpy as np
import pytest

from conftest import REPO

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


def test_local_workers_launcher_trains_digits_mnistm(shared_data, tmp_path):
  result = subprocess.run(
      [sys.executable, "launch/local_workers.py", "--workers=2",
       "--timeout=400", "--", "--config=digits_mnistm",
       "--config.quick=True", f"--config.data_dir={shared_data}",
       f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=450,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  logs = "".join(open(tmp_path / f"worker_{i}.log").read()[-1500:]
                 for i in range(2) if (tmp_path / f"worker_{i}.log").exists())
  assert result.returncode == 0, result.stderr + logs
  with open(tmp_path / "metrics.json") as f:
    metrics = json.load(f)
  assert metrics["replicas"] == 2 and metrics["steps"] == 30


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
