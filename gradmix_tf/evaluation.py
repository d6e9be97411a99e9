"""Predictions in batches; accuracy of frames and of videos (the mean of
their frames' softmax)."""

import numpy as np

EVAL_BATCH = 500


def in_batches(predict, images, batch_size=EVAL_BATCH):
  """`predict` (images -> `[n, ...]` outputs) over `images` in batches of
  `batch_size`, concatenated as one NumPy array. `images` is an array
  (NumPy batches), or streamed `ImageFiles` (batches decoded by `tf.data`
  in parallel, prefetched; only the outputs are kept)."""
  from gradmix_tf.data import image_files  # pylint: disable=g-import-not-at-top
  if image_files.is_streamed(images):
    batches = (batch["images"] for batch in images.dataset(
        batch_size=batch_size).prefetch(2))
  else:
    batches = (images[start:start + batch_size]
               for start in range(0, len(images), batch_size))
  return np.concatenate([np.asarray(predict(batch)) for batch in batches])


def video_accuracy(probabilities, labels, groups):
  """Per-frame and per-video accuracy.

  Args:
    probabilities: `[frames, classes]` softmax outputs.
    labels: `[frames]` true labels (equal within a video).
    groups: `[frames]` the video of each frame.

  Returns:
    `(per_frame, per_video)`: the fraction of frames whose argmax is right,
    and of videos whose mean probability vector's argmax is right.
  """
  probabilities = np.asarray(probabilities, np.float64)
  labels = np.asarray(labels)
  groups = np.asarray(groups)
  per_frame = float((probabilities.argmax(-1) == labels).mean())
  videos, inverse = np.unique(groups, return_inverse=True)
  sums = np.zeros((len(videos), probabilities.shape[1]))
  np.add.at(sums, inverse, probabilities)
  counts = np.bincount(inverse, minlength=len(videos))[:, None]
  video_labels = np.zeros(len(videos), labels.dtype)
  video_labels[inverse] = labels
  per_video = float(((sums / counts).argmax(-1) == video_labels).mean())
  return per_frame, per_video
