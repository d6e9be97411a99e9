"""Restoring the newest checkpoint that is intact.

A checkpoint whose files were cut short (a full disk, a kill while the
filesystem was writing) or deleted must not end every rerun in a traceback
while an older, intact checkpoint sits beside it. `restore_newest_intact`
tries the checkpoints of a directory newest first, says in one log line
which ones did not restore and which one did, and refuses in one line when
none does. `save` writes one so that a full disk leaves no part of it.
"""

import glob
import os
import re

from absl import logging
import numpy as np
import tensorflow as tf

from gradmix_tf import files
from gradmix_tf.errors import DataError

_NUMBER = re.compile(r"-(\d+)$")


def candidates(directory):
  """Checkpoint prefixes in `directory`, newest (largest number) first.

  Both the prefixes the `checkpoint` state file lists and any `*.index`
  file on disk count, so a damaged state file does not hide a checkpoint.
  """
  prefixes = set()
  try:
    state = tf.train.get_checkpoint_state(directory)
  except Exception:  # pylint: disable=broad-except
    # Any damage to the state file (a parse error of its text proto, an
    # unreadable file): fall back to the files on disk.
    state = None
  if state is not None:
    for path in state.all_model_checkpoint_paths:
      prefixes.add(path if os.path.isabs(path)
                   else os.path.join(directory, path))
  for index in glob.glob(os.path.join(directory, "*.index")):
    prefixes.add(index[:-len(".index")])

  def number(prefix):
    match = _NUMBER.search(prefix)
    return int(match.group(1)) if match else -1

  return sorted(prefixes, key=number, reverse=True)


def _reason(err):
  text = getattr(err, "message", None) or str(err) or type(err).__name__
  return text.strip().splitlines()[0][:200]


def restore_newest_intact(checkpoint, directory, partial=False,
                          fallback=True):
  """Restores `checkpoint` from the newest intact checkpoint in `directory`.

  Args:
    checkpoint: a `tf.train.Checkpoint` whose variables exist (so restoring
      is immediate and a damaged file fails here, not later).
    directory: the checkpoint directory.
    partial: the checkpoint object holds only part of what was saved (as
      the exporter's model alone); silences the warning about the rest.
    fallback: False where only the newest checkpoint will do (the final
      weights of a finished run): a damaged one is refused, not replaced.

  Returns:
    The prefix restored, or None when `directory` holds no checkpoint.

  Raises:
    DataError: checkpoints exist but none restores (or, without
      `fallback`, the newest does not).
  """
  tried = []
  for prefix in candidates(directory):
    try:
      status = checkpoint.restore(prefix)
      if partial:
        status.expect_partial()
    except Exception as err:  # pylint: disable=broad-except
      # A damaged file fails in many ways (DataLossError, NotFoundError,
      # "IndexError: Read less bytes than requested", a parse error...);
      # each is reported with its reason, and none is silent.
      tried.append((prefix, _reason(err)))
      if not fallback:
        raise DataError(
            f"the newest checkpoint {prefix} does not restore "
            f"({tried[-1][1]}); delete {os.path.dirname(directory)} to "
            "train that run again") from None
      logging.warning("Checkpoint %s does not restore (%s); trying the one "
                      "before it.", prefix, tried[-1][1])
      continue
    if tried:
      logging.warning("Restored %s: the newer checkpoint(s) %s did not "
                      "restore.", prefix, ", ".join(p for p, _ in tried))
    return prefix
  if tried:
    newest, reason = tried[0]
    raise DataError(
        f"no checkpoint in {directory} restores ({len(tried)} tried; the "
        f"newest, {os.path.basename(newest)}: {reason}); delete {directory} "
        "to train the run from the start")
  return None


def save(manager, number, needed, step=None):
  """`manager.save(checkpoint_number=number)`, all of it or a clear error.

  TensorFlow writes a checkpoint under `<prefix>_temp/` and then renames
  its files into place; a save that fails for lack of space leaves the
  temporary directory (and possibly half of the final files) behind. Both
  are removed before `NoSpaceError` is raised, so the newest complete
  checkpoint stays the newest; a checkpoint of the same number that was
  complete before the save is left alone.

  Args:
    manager: a `tf.train.CheckpointManager` (default checkpoint name).
    number: the checkpoint's number (the step).
    needed: about how many bytes the checkpoint takes.
    step: the training step, for the error (None outside training).

  Raises:
    NoSpaceError: the file system is full.
  """
  prefix = os.path.join(manager.directory, f"ckpt-{number}")
  partial = [prefix + "_temp*"]
  if not os.path.exists(prefix + ".index"):
    partial.append(prefix + ".*")
  with files.space_for(manager.directory, f"checkpoint ckpt-{number}",
                       needed, partial=partial, step=step):
    return manager.save(checkpoint_number=number)


def variable_bytes(variables):
  """Bytes of the values of `variables` (what a checkpoint of them holds)."""
  return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size
             for v in variables)
