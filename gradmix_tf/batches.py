"""Which examples each step trains on: index streams from `(seed, epoch)`.

Data stay on the device; each step receives only the indices of its
mini-batches. Step `n`'s batches therefore do not depend on whether the run
was resumed: a resumed run continues exactly where the uninterrupted one
would be.
"""

import numpy as np


def batch_indices(num_examples, batch_size, seed, start_step, end_step):
  """Indices `[end_step - start_step, batch_size]` of steps `start..end`.

  Step `n` takes positions `n*B .. n*B+B-1` of the endless sequence of
  permutations `perm(seed, 0), perm(seed, 1), ...` of `range(num_examples)`.
  """
  first = start_step * batch_size
  last = end_step * batch_size
  epochs = range(first // num_examples, (last - 1) // num_examples + 1)
  stream = np.concatenate([
      np.random.default_rng([*np.atleast_1d(seed), epoch]).permutation(
          num_examples) for epoch in epochs])
  offset = epochs[0] * num_examples
  return stream[first - offset:last - offset].reshape(-1, batch_size).astype(
      np.int32)
