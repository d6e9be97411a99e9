"""Stopping a run cleanly on SIGTERM or SIGINT, at a step every worker saves.

SIGTERM (with a grace period) is how Kubernetes, preemptible VMs and batch
schedulers stop a job; SIGINT (Ctrl-C) is how a person does. Inside
`stop_on_signals()` neither kills the process: the handler only records
which signal came (`StopRequest`), and the runner, after finishing the
step it is on, asks its `StepStopper`:

* one process (any strategy but multi-worker): the stopper writes a
  checkpoint at that step and raises `errors.RunStopped`;
* `MultiWorkerMirroredStrategy`: TensorFlow's own
  `tf.distribute.experimental.PreemptionCheckpointHandler` agrees, through
  the cluster's coordination service, on one step at which every worker
  saves (a worker may be one step ahead of another when the signal comes),
  then every worker raises `RunStopped`. Its termination watcher polls the
  same `StopRequest`, so SIGTERM and SIGINT work alike there too.

A second signal while the checkpoint is written is logged and ignored: the
save finishes (TensorFlow writes a checkpoint under a temporary name and
renames it into place, so even a SIGKILL there leaves the newest intact
checkpoint as it was). The launcher turns `RunStopped` into one line,
`stopped.json` and exit status 128 + the signal's number (143 for SIGTERM,
130 for SIGINT, the statuses shells and schedulers give a job a signal
ended); the same command resumes at the saved step.
"""

import contextlib
import signal
import threading

from absl import logging
import tensorflow as tf

from gradmix_tf.errors import RunStopped

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """The stop signal that has arrived, if any (set by a signal handler)."""

  def __init__(self):
    self._signal = None

  @property
  def signal_name(self):
    """`"SIGTERM"`, `"SIGINT"`, or None while no stop was asked for."""
    return None if self._signal is None else signal.Signals(self._signal).name

  @property
  def exit_status(self):
    return 128 + int(self._signal)

  def is_set(self):
    return self._signal is not None

  def set(self, signum):
    self._signal = signum

  def clear(self):
    self._signal = None


# Signals are process-wide, so is the request they set, and the signals
# `stop_on_signals` holds.
REQUEST = StopRequest()
_HELD = []


def _handle(signum, frame):
  del frame
  name = signal.Signals(signum).name
  if REQUEST.is_set():
    logging.warning("%s received while stopping: the checkpoint is being "
                    "written; the run stops when it is.", name)
    return
  REQUEST.set(signum)
  logging.warning("%s received: stopping after the current step (a "
                  "checkpoint is written there).", name)


@contextlib.contextmanager
def stop_on_signals(signals=STOP_SIGNALS):
  """Within the block, `signals` ask the run to stop (module docstring).

  Outside the main thread (where Python cannot install a handler) the
  block changes nothing. The handlers that were there before come back,
  and the request is cleared, when the block ends.
  """
  if threading.current_thread() is not threading.main_thread():
    yield REQUEST
    return
  previous = {s: signal.signal(s, _handle) for s in signals}
  _HELD[:] = signals
  try:
    yield REQUEST
  finally:
    _HELD.clear()
    for s, handler in previous.items():
      signal.signal(s, handler)
    REQUEST.clear()


def reclaim_signals():
  """Installs the handler again for the signals `stop_on_signals` holds.

  TensorFlow's coordination service (started with a multi-worker strategy)
  installs a C++ SIGTERM handler of its own over Python's, under which a
  SIGTERM neither stops the run nor reaches Python; this takes it back.
  """
  if threading.current_thread() is threading.main_thread():
    for s in _HELD:
      signal.signal(s, _handle)


class StepStopper:
  """Asked after every step whether the run must stop there.

  Args:
    strategy: the run's strategy.
    manager: the run's `tf.train.CheckpointManager` (TensorFlow's handler,
      under multi-worker, restores from the first run's of the process).
    save: `save(step)` writes the run's checkpoint at `step`.
    request: the `StopRequest` to watch.

  Under multi-worker one `PreemptionCheckpointHandler` serves every run of
  the process (a pipeline's runs one after another): its keys in the
  coordination service are set once per cluster, so a second handler
  would never hear of a preemption. It saves and stops through the
  stopper of the run in progress. It also asks whether it runs on Google
  Cloud (an HTTP request to the metadata server, `$GCE_METADATA_IP`,
  default `metadata.google.internal`), where it does nothing for CPU
  workers.
  """

  def __init__(self, strategy, manager, save, request=REQUEST):
    self._save = save
    self._request = request
    self._step = None
    self._handler = None
    reclaim_signals()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.cluster_resolver.cluster_spec().jobs):
      _CURRENT[:] = [self]
      if not _HANDLER:
        with strategy.scope():
          _HANDLER.append(
              tf.distribute.experimental.PreemptionCheckpointHandler(
                  strategy.cluster_resolver, manager,
                  termination_config=(
                      tf.distribute.experimental.TerminationConfig(
                          termination_watcher_fn=request.is_set,
                          exit_fn=lambda: _CURRENT[0].stop(),
                          save_fn=lambda step: _CURRENT[0].save(step),
                          grace_period=0))))
      self._handler = _HANDLER[0]

  def after_step(self, step, saved=False):
    """Stops the run at `step` if a stop was asked for (on any worker).

    Args:
      step: the number of steps done.
      saved: whether a checkpoint at `step` was just written.

    Raises:
      RunStopped: after the checkpoint at `step` is written.
    """
    self._step = step
    if self._handler is not None:
      self._handler.save_checkpoint_if_preempted(step)
      return
    if self._request.is_set():
      if not saved:
        self.save(step)
      self.stop()

  def save(self, step):
    self._save(step)

  def stop(self):
    """Raises `RunStopped` at the last step `after_step` was given."""
    if self._request.is_set():
      raise RunStopped(self._step, self._request.signal_name,
                       self._request.exit_status)
    raise RunStopped(self._step)


# The process's multi-worker handler and the stopper of the run in progress.
_HANDLER = []
_CURRENT = []
