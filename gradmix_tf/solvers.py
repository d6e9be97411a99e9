"""Layer-wise mixing weights for GradMix (paper Eq. 6-7), on the Gram form.

For one layer `l` let `G` hold the `k` source gradients of that layer as
columns and `v` the validation gradient. Eq. 6 asks for

    w* = argmax_{w >= 0} cos(G w, v)

and Eq. 7 normalises it, `w~ = w* / sum(w*)`. Everything here works on the
Gram form only:

    gram  = G^T G        [layers, k, k]
    cross = G^T v        [layers, k]

so whole gradients never leave the device; the solvers see `k*k + k` numbers
per layer.

Solvers:

* ``"exact"`` (default). The projection `p` of `v` onto the cone
  `{G w : w >= 0}` maximises the cosine over that cone whenever `p != 0`, and
  `p = G w` for the non-negative least-squares (NNLS) solution
  `w = argmin_{w >= 0} |G w - v|^2`. An NNLS optimum is attained on a support
  `S` whose columns are independent, where `w_S` solves `A_SS w_S = b_S`;
  there the residual is `|v|^2 - b_S . w_S`, so the optimum is the feasible
  (`w_S >= 0`) support with the largest `b_S . w_S`. For `k <= 3` every
  support is enumerated at once, batched over layers; above that the
  Lawson-Hanson active-set loop runs in-graph, batched over layers. Both
  are compiled with XLA. If no `b_i > 0` the projection is zero and the best
  cosine is a single source: for `b <= 0`,
  `|b.w| / |G w| >= sum w_i |b_i| / sum w_i |g_i| >= min_i |b_i| / |g_i|`
  (triangle inequality, then the mediant inequality), so the one-hot weight
  on the source of largest cosine is optimal.
* ``"slsqp"``. scipy's SLSQP on `-cos`, as the paper did with NLopt, on the
  Gram form and host-side through `tf.py_function`. Because `cos` is scale
  free, it is solved on the simplex (`w >= 0`, `sum w = 1`), which Eq. 7 maps
  to anyway; the run starts from uniform weights and the best vertex is kept
  if it is better (the problem is not concave when all `b_i <= 0`).
* ``"meta_sgd"`` (GradMix SGD; Ren et al. 2018). One meta-gradient step from
  `w = 0` on `f_V(theta - alpha * sum_i w_i g_i)`: the derivative is
  `-alpha <g_i, v>`, so `w_i ∝ max(0, <g_i, v>)`.

Degenerate layers (all `b_i == 0`, which covers `v = 0`, or every source
gradient zero) get uniform weights; non-finite inputs never raise (the
optimizer skips such steps). Zero source gradients get weight 0 from
the exact and SLSQP solvers (they cannot change the direction).
"""

import itertools

import numpy as np
import scipy.optimize
import tensorflow as tf

SOLVERS = ("exact", "slsqp", "meta_sgd")

# Above this many sources the exact solver runs the active-set loop instead
# of enumerating the 2^k - 1 supports; both are exact, the loop is faster
# from k = 4 on (bench/step_time.py, solver table).
MAX_ENUMERATED_SOURCES = 3

# A support whose normalised Gram block has a Cholesky pivot below this is
# treated as linearly dependent (pivots of unit-diagonal blocks lie in [0, 1]).
_SINGULAR_PIVOT = 1e-10
_FEASIBLE_TOL = 1e-10


def gram_statistics(source_grads, validation_grads):
  """Gram matrices, cross products and |v|^2 of each layer, on the device.

  Args:
    source_grads: `[layers][k][variables]` tensors: for each layer, for each
      source, the gradients of that layer's variables.
    validation_grads: `[layers][variables]` tensors, the gradient of the
      validation loss for the same variables.

  Returns:
    `(gram [layers, k, k], cross [layers, k], v_sq [layers])`, float32, with
    `gram[l, i, j] = <g_i^l, g_j^l>`, `cross[l, i] = <g_i^l, v^l>` and
    `v_sq[l] = |v^l|^2`, the layer's variables taken together as one vector.
  """
  grams, crosses, v_sqs = [], [], []
  for layer_sources, layer_val in zip(source_grads, validation_grads):
    # Vectors 0..k-1 are the sources, k is V. Each entry is a sum over the
    # layer's variables of elementwise products: a reduction parallel over
    # the parameters, with no stacked copy (a [k, n] x [n, k] MatMul has a
    # tiny output to split across cores; docs/PERFORMANCE.md).
    vectors = [[tf.cast(g, tf.float32) for g in grads]
               for grads in list(layer_sources) + [layer_val]]
    k = len(layer_sources)

    def dot(a, b):
      return tf.add_n([tf.reduce_sum(x * y)
                       for x, y in zip(vectors[a], vectors[b])])

    entries = {(a, b): dot(a, b) for a in range(k + 1)
               for b in range(a, k + 1)}
    grams.append(tf.stack([tf.stack([entries[min(a, b), max(a, b)]
                                     for b in range(k)]) for a in range(k)]))
    crosses.append(tf.stack([entries[a, k] for a in range(k)]))
    v_sqs.append(entries[k, k])
  return tf.stack(grams), tf.stack(crosses), tf.stack(v_sqs)


def mixed_cosine(gram, cross, v_sq, weights):
  """Cosine between the mixed gradient `G w` and `v` for each layer (Eq. 8).

  `cos = (w . b) / (sqrt(w^T A w) * |v|)`, and 0 where either norm is 0.

  Args:
    gram: `[layers, k, k]`.
    cross: `[layers, k]`.
    v_sq: `[layers]`, the squared norm of the validation gradient.
    weights: `[layers, k]`.

  Returns:
    `[layers]` cosines, in the dtype of `gram`.
  """
  dtype = gram.dtype
  weights = tf.cast(weights, dtype)
  numerator = tf.reduce_sum(weights * tf.cast(cross, dtype), -1)
  mixed_sq = tf.einsum("li,lij,lj->l", weights, gram, weights)
  denominator = tf.sqrt(tf.maximum(mixed_sq, 0.0) * tf.cast(v_sq, dtype))
  return tf.math.divide_no_nan(numerator, denominator)


def solve_mix_weights(gram, cross, solver="exact"):
  """Normalised layer-wise source weights `w~` (Eq. 6 and 7).

  Args:
    gram: `[layers, k, k]` Gram matrices of the source gradients.
    cross: `[layers, k]` dot products of each source gradient with the
      validation gradient.
    solver: one of `"exact"`, `"slsqp"`, `"meta_sgd"`.

  Returns:
    `[layers, k]` float32 weights, non-negative, each row summing to 1.

  Raises:
    ValueError: for an unknown solver or badly shaped inputs.
  """
  if solver not in SOLVERS:
    raise ValueError(
        f"Unknown GradMix solver {solver!r}; choose one of {SOLVERS}.")
  gram = tf.convert_to_tensor(gram)
  cross = tf.convert_to_tensor(cross)
  if gram.shape.rank != 3 or cross.shape.rank != 2:
    raise ValueError(
        "solve_mix_weights expects gram [layers, k, k] and cross [layers, k]; "
        f"got shapes {gram.shape} and {cross.shape}.")
  k = gram.shape[-1]
  if k is None or gram.shape[-2] != k or cross.shape[-1] != k:
    raise ValueError(
        "solve_mix_weights: the number of sources k must be static and agree: "
        f"gram {gram.shape}, cross {cross.shape}.")
  if solver == "exact":
    return _solve_exact_compiled(gram, cross)
  if solver == "slsqp":
    return _solve_slsqp(gram, cross)
  return _solve_meta_sgd(cross)


def _normalise(weights):
  """Eq. 7: rows sum to one; an all-zero row becomes uniform."""
  total = tf.reduce_sum(weights, -1, keepdims=True)
  k = tf.cast(tf.shape(weights)[-1], weights.dtype)
  uniform = tf.ones_like(weights) / k
  return tf.where(total > 0, weights / tf.where(total > 0, total, 1.0),
                  uniform)


def _solve_meta_sgd(cross):
  cross = tf.cast(cross, tf.float32)
  return _normalise(tf.maximum(cross, 0.0))


def _unit_diagonal_form(gram, cross):
  """Rescales each source gradient to unit norm: `A D`, `D b` (float64).

  Returns `(a_hat, b_hat, scale, active)` with `a_hat` of unit diagonal on
  active (non-zero) sources, `b_hat` scaled so that max |b_hat| = 1 per layer,
  and `scale = 1/|g_i|` (0 for zero gradients) to map weights back.
  """
  gram = tf.cast(gram, tf.float64)
  cross = tf.cast(cross, tf.float64)
  diag = tf.linalg.diag_part(gram)
  active = diag > 0.0
  scale = tf.where(active, tf.math.rsqrt(tf.where(active, diag, 1.0)), 0.0)
  a_hat = gram * scale[:, :, None] * scale[:, None, :]
  b_hat = cross * scale
  b_max = tf.reduce_max(tf.abs(b_hat), -1, keepdims=True)
  b_hat = tf.math.divide_no_nan(b_hat, b_max)
  return a_hat, b_hat, scale, active


def _solve_exact(gram, cross):
  k = gram.shape[-1]
  a_hat, b_hat, scale, active = _unit_diagonal_form(gram, cross)
  if k <= MAX_ENUMERATED_SOURCES:
    u = _nnls_by_enumeration(a_hat, b_hat, active, k)
  else:
    u = _nnls_by_active_set(a_hat, b_hat, active, k)
  # No positive b_i: the projection is 0 and the best single source wins.
  best_single = tf.one_hot(
      tf.argmax(tf.where(active, b_hat, -np.inf), -1), k, dtype=tf.float64)
  has_positive = tf.reduce_any(b_hat > 0.0, -1, keepdims=True)
  u = tf.where(has_positive, u, best_single)
  weights = u * scale
  degenerate = tf.logical_or(
      tf.reduce_all(tf.equal(b_hat, 0.0), -1, keepdims=True),
      tf.logical_not(tf.reduce_any(active, -1, keepdims=True)))
  weights = tf.where(degenerate, tf.zeros_like(weights), weights)
  return tf.cast(_normalise(weights), tf.float32)


# Both NNLS paths are many tiny elementwise ops; XLA fuses them (the
# enumeration at 60 layers, k = 8: 12.1 ms as a graph, 3.6 ms compiled).
_solve_exact_compiled = tf.function(_solve_exact, jit_compile=True)


def _support_masks(k):
  """All non-empty subsets of k sources as a `[2^k - 1, k]` 0/1 array."""
  masks = [m for m in itertools.product((0.0, 1.0), repeat=k) if any(m)]
  return np.asarray(masks, dtype=np.float64)


def _nnls_by_enumeration(a_hat, b_hat, active, k):
  """NNLS over every support at once: `[layers, k]` non-negative solution."""
  masks = tf.constant(_support_masks(k))                       # [S, k]
  a_s = (a_hat[:, None] * masks[None, :, :, None]
         * masks[None, :, None, :])                            # [L, S, k, k]
  a_s += tf.linalg.diag(1.0 - masks)[None]
  b_s = b_hat[:, None, :] * masks[None]                        # [L, S, k]
  u, singular = _cholesky_solve(a_s, b_s)                      # [L, S, k]
  uses_inactive = tf.reduce_any(
      tf.logical_and(masks[None] > 0, tf.logical_not(active)[:, None, :]), -1)
  feasible = (tf.logical_not(singular)
              & tf.logical_not(uses_inactive)
              & tf.reduce_all(u >= -_FEASIBLE_TOL, -1))
  value = tf.where(feasible, tf.reduce_sum(b_s * u, -1), -np.inf)
  best = tf.argmax(value, -1)                                  # [L]
  u_best = tf.gather(u, best, batch_dims=1)
  return tf.maximum(u_best, 0.0)


def _cholesky_solve(a, b):
  """Solves `a x = b` for a batch of small symmetric PSD matrices.

  A Cholesky factorisation unrolled over the static `k` in elementwise ops,
  so it compiles under XLA (which has no determinant kernel) and never
  raises. For a unit-diagonal Gram matrix the pivot `d_j` is the squared
  distance of column `j` from the span of the earlier ones; a pivot below
  `_SINGULAR_PIVOT` (or NaN, from non-finite gradients) marks the matrix
  singular, and its `x` is then meaningless.

  Returns:
    `(x [..., k], singular [...])`.
  """
  k = a.shape[-1]
  lower = [[None] * k for _ in range(k)]
  singular = tf.zeros(tf.shape(a)[:-2], tf.bool)
  for j in range(k):
    pivot = a[..., j, j] - sum(
        (tf.square(lower[j][m]) for m in range(j)), tf.zeros_like(a[..., j, j]))
    bad = tf.logical_not(pivot >= _SINGULAR_PIVOT)
    singular = tf.logical_or(singular, bad)
    lower[j][j] = tf.sqrt(tf.where(bad, tf.ones_like(pivot), pivot))
    for i in range(j + 1, k):
      dot = sum((lower[i][m] * lower[j][m] for m in range(j)),
                tf.zeros_like(pivot))
      lower[i][j] = (a[..., i, j] - dot) / lower[j][j]
  forward = []
  for i in range(k):  # L y = b
    dot = sum((lower[i][m] * forward[m] for m in range(i)),
              tf.zeros_like(b[..., i]))
    forward.append((b[..., i] - dot) / lower[i][i])
  x = [None] * k
  for i in reversed(range(k)):  # L^T x = y
    dot = sum((lower[m][i] * x[m] for m in range(i + 1, k)),
              tf.zeros_like(b[..., i]))
    x[i] = (forward[i] - dot) / lower[i][i]
  return tf.stack(x, -1), singular


def _nnls_by_active_set(a_hat, b_hat, active, k):
  """Lawson-Hanson NNLS, batched over layers, in-graph.

  Minimises `u^T A u / 2 - b^T u` over `u >= 0` (the NNLS of the Gram form).
  The passive set `P` starts empty; each outer iteration adds the source of
  largest positive gradient `w = b - A u` outside `P`, then the inner loop
  solves the least squares on `P` (a masked Cholesky solve) and, while that
  solution has non-positive entries, moves from `u` towards it as far as
  feasibility allows and drops the sources that reach zero. A layer is done
  when no source outside `P` has `w_i > 0` (the KKT conditions hold). Each
  layer stops on its own; the loops run until all are done (at most `3k`
  outer and `k + 1` inner iterations).
  """
  tol = _FEASIBLE_TOL
  dtype = b_hat.dtype

  def solve_on(passive):
    mask = tf.cast(passive, dtype)
    a_p = (a_hat * mask[:, :, None] * mask[:, None, :]
           + tf.linalg.diag(1.0 - mask))
    z, singular = _cholesky_solve(a_p, b_hat * mask)
    return z * mask, singular

  def outer_cond(step, u, passive, done):
    del u, passive
    return tf.logical_and(step < 3 * k,
                          tf.logical_not(tf.reduce_all(done)))

  def outer_body(step, u, passive, done):
    w = b_hat - tf.einsum("lij,lj->li", a_hat, u)
    candidates = tf.logical_not(passive) & active & (w > tol)
    done = done | tf.logical_not(tf.reduce_any(candidates, -1))
    pick = tf.one_hot(tf.argmax(tf.where(candidates, w, -np.inf), -1), k,
                      on_value=True, off_value=False)
    passive = passive | (pick & tf.logical_not(done)[:, None])

    def inner_cond(inner_step, u, passive, settled):
      del u, passive
      return tf.logical_and(inner_step <= k,
                            tf.logical_not(tf.reduce_all(settled | done)))

    def inner_body(inner_step, u, passive, settled):
      del settled
      z, singular = solve_on(passive)
      feasible = tf.reduce_all((z > tol) | tf.logical_not(passive), -1)
      feasible = feasible & tf.logical_not(singular)
      blocking = passive & (z <= tol)
      ratio = tf.where(blocking, u / tf.maximum(u - z, 1e-300), np.inf)
      alpha = tf.reduce_min(ratio, -1)
      alpha = tf.where(tf.math.is_finite(alpha), alpha, 0.0)
      stepped = u + alpha[:, None] * (z - u)
      moving = tf.logical_not(feasible) & tf.logical_not(done) & (
          tf.logical_not(singular))
      u = tf.where((feasible & tf.logical_not(done))[:, None], z,
                   tf.where(moving[:, None], stepped, u))
      passive = tf.where(moving[:, None], passive & (u > tol), passive)
      # A singular passive set (numerically dependent sources) ends the layer
      # with the last feasible point.
      settled = feasible | singular
      return inner_step + 1, u, passive, settled

    _, u, passive, _ = tf.while_loop(
        inner_cond, inner_body,
        (tf.constant(0), u, passive, tf.zeros_like(done)))
    return step + 1, u, passive, done

  no_layer_done = tf.zeros(tf.shape(b_hat)[:1], tf.bool)
  _, u, _, _ = tf.while_loop(
      outer_cond, outer_body,
      (tf.constant(0), tf.zeros_like(b_hat), tf.zeros_like(active),
       no_layer_done))
  return tf.maximum(u, 0.0)


def _negative_cosine(u, a, b):
  norm = np.sqrt(max(float(u @ a @ u), 1e-300))
  value = -float(b @ u) / norm
  grad = -(b / norm) + (float(b @ u) / norm**3) * (a @ u)
  return value, grad


def slsqp_weights_numpy(gram, cross):
  """SLSQP on the Gram form for each layer; numpy in, numpy out.

  Solves `max cos(G u, v)` over the simplex of active (non-zero) sources on
  the unit-norm rescaling, then maps back and normalises (Eq. 7).
  """
  gram = np.asarray(gram, np.float64)
  cross = np.asarray(cross, np.float64)
  layers, k = cross.shape
  out = np.empty((layers, k), np.float64)
  for l in range(layers):
    diag = np.diag(gram[l]).copy()
    active = diag > 0
    if (not active.any() or np.all(cross[l] == 0)
        or not np.all(np.isfinite(gram[l])) or not np.all(np.isfinite(cross[l]))):
      out[l] = 1.0 / k
      continue
    scale = np.where(active, 1.0 / np.sqrt(np.where(active, diag, 1.0)), 0.0)
    a = gram[l] * scale[:, None] * scale[None, :]
    b = cross[l] * scale
    b = b / np.max(np.abs(b))
    n_active = int(active.sum())
    x0 = np.where(active, 1.0 / n_active, 0.0)
    bounds = [(0.0, 1.0) if act else (0.0, 0.0) for act in active]
    result = scipy.optimize.minimize(
        _negative_cosine, x0, args=(a, b), jac=True, method="SLSQP",
        bounds=bounds,
        constraints=[{"type": "eq", "fun": lambda u: np.sum(u) - 1.0,
                      "jac": lambda u: np.ones_like(u)}],
        options={"ftol": 1e-14, "maxiter": 500})
    candidates = [np.clip(result.x, 0.0, None)]
    candidates += [np.eye(k)[i] for i in range(k) if active[i]]
    best = min(candidates, key=lambda u: _negative_cosine(u, a, b)[0])
    weights = best * scale
    out[l] = weights / weights.sum()
  return out


def _solve_slsqp(gram, cross):
  weights = tf.py_function(
      lambda g, c: slsqp_weights_numpy(g.numpy(), c.numpy()),
      [gram, cross], tf.float64)
  weights.set_shape(cross.shape)
  return tf.cast(weights, tf.float32)
