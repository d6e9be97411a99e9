"""SIGTERM and SIGINT stop a run after the current step, with a checkpoint
there, and the same command resumes it to the result of an uninterrupted
run, bit for bit (`gradmix_tf.preemption`; docs/RELIABILITY.md). The
launcher's SIGTERM is tested beside its SIGKILL in test_reliability.py,
the multi-worker stop in test_distributed.py.
"""

import os
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config, tiny_data
from gradmix_tf import preemption
from gradmix_tf.errors import RunStopped
from gradmix_tf.runner import build_runner

def final_arrays(checkpoint_dir):
  """Every array of the newest checkpoint in `checkpoint_dir` (weights,
  optimizer state, step) but the wall-clock training time, the count of
  saves and the preemption handler's own counter of calls."""
  reader = tf.train.load_checkpoint(str(checkpoint_dir))
  skip = ("train_seconds", "save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH",
          "checkpointed_runs")
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if not any(part in name for part in skip)}


def assert_same_arrays(reference, other):
  assert reference.keys() == other.keys()
  for name in reference:
    np.testing.assert_array_equal(other[name], reference[name], err_msg=name)


def test_sigint_stops_after_the_step_it_came_in_and_ignores_a_second_signal(
    tmp_path):
  """In-process: SIGINT arrives during step 3 and SIGTERM during the save
  that follows; the run stops at step 3 (status 130) with an intact
  checkpoint there, and resuming it ends where an uninterrupted run ends."""
  config = tiny_config(steps=8, checkpoint_every=5, eval_every=4)
  data = tiny_data()
  whole = build_runner(config, data, str(tmp_path / "whole"))
  whole.run()
  stopped = build_runner(config, data, str(tmp_path / "stopped"))
  check_health, save = stopped._check_health, stopped._save  # pylint: disable=protected-access

  def signal_in_step_3(phase, stats, step):
    if step == 3:
      os.kill(os.getpid(), signal.SIGINT)
    return check_health(phase, stats, step)

  def signal_during_save(step):
    os.kill(os.getpid(), signal.SIGTERM)      # a second signal, mid-save
    time.sleep(0.05)
    return save(step)

  stopped._check_health = signal_in_step_3  # pylint: disable=protected-access
  stopped._save = signal_during_save  # pylint: disable=protected-access
  with preemption.stop_on_signals(), pytest.raises(RunStopped) as stop:
    stopped.run()
  assert (stop.value.step, stop.value.signal_name,
          stop.value.exit_status) == (3, "SIGINT", 130)
  assert str(stop.value) == ("stopped by SIGINT at step 3; rerun the same "
                             "command to resume")
  # The handlers are back: SIGINT is Python's KeyboardInterrupt again.
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  assert not preemption.REQUEST.is_set()
  assert sorted(os.listdir(tmp_path / "stopped" / "checkpoints")) == [
      "checkpoint", "ckpt-3.data-00000-of-00001", "ckpt-3.index"]

  resumed = build_runner(config, data, str(tmp_path / "stopped"))
  metrics = resumed.run()
  assert metrics["resumed_from_step"] == 3
  for mine, reference in zip(resumed.model.weights, whole.model.weights):
    np.testing.assert_array_equal(mine.numpy(), reference.numpy())


def test_a_stop_asked_for_before_training_saves_the_start(tmp_path):
  """A signal while the data are built: the run stops before its first
  step, at the step it would start from."""
  runner = build_runner(tiny_config(), tiny_data(), str(tmp_path / "run"))
  with preemption.stop_on_signals() as request, pytest.raises(RunStopped) as stop:
    request.set(signal.SIGTERM)
    runner.run()
  assert stop.value.step == 0 and stop.value.exit_status == 143
  assert (tmp_path / "run" / "checkpoints" / "ckpt-0.index").exists()


def test_outside_the_main_thread_the_handlers_are_left_alone():
  import threading  # pylint: disable=g-import-not-at-top
  seen = []

  def body():
    with preemption.stop_on_signals():
      seen.append(signal.getsignal(signal.SIGTERM))

  thread = threading.Thread(target=body)
  thread.start()
  thread.join()
  assert seen == [signal.getsignal(signal.SIGTERM)]
