"""GradMF (Han et al., ICASSP 2024): turn the source gradient toward the target's.

With `G_s` the source gradient (here the sum of the source gradients, the
plain multi-source step) and `G_t` the target gradient (the labelled target
set `V`), GradMF takes up to `K` *progressive steps*

    G_s <- G_s + (G_t - (<G_t, G_s> / |G_s|^2) G_s),                  (1)

each adding the part of `G_t` orthogonal to the current `G_s`, and then
updates with the projection of the turned `G_s` on `G_t`

    update = (<G_s, G_t> / |G_t|^2) G_t.                              (2)

Everything is computed from the Gram form GradMix already builds
(`<g_i, g_j>`, `<g_i, v>`, `|v|^2` per layer): `G_s` stays in the span of
the source gradients and `G_t`, so it is carried as `G_s = G w + c G_t`
with `w = 1, c = 0` at the start, and step (1) with
`r = <G_t, G_s> / |G_s|^2` is `w <- (1 - r) w`, `c <- (1 - r) c + 1`, where

    <G_s, G_t> = w . b + c |v|^2,
    |G_s|^2   = w^T A w + 2 c (w . b) + c^2 |v|^2.

GradMF is therefore the GradMix optimizer with another `mix_coefficients`:
the update of a mixed layer is `sum_i W_i g_i + u v` with `W = 0` and
`u = <G_s, G_t> / |G_t|^2` for the projection (2), or `W = w`, `u = c` for
`update="turned"` (the turned gradient itself, which is what the public
PyTorch code sets as the gradient after one step of (1)). Heads that `V`
does not reach get the plain sum of their sources' gradients, as in GradMix.

Behaviour of (1). In the plane of `G_s` and `G_t`, one step moves `G_s`
to `(|G_s|, |G_t^perp|)` in coordinates where `G_s` is the first axis and
`G_t = (a, |G_t^perp|)`. When `|G_s| >= |G_t|` the step never overshoots
`G_t` (its angle `atan(|G_t^perp| / |G_s|)` is at most `G_t`'s) and
`|G_s|` only grows, so the cosine to `G_t` rises monotonically with `K`.
When `|G_s| < a` a step can overshoot past `G_t` and the cosine can fall
(e.g. `G_s = (0.01, 0)`, `G_t = (1, 0.1)`); the angle threshold stops the
steps once the angle to `G_t` is at most `angle_threshold` degrees.

Choices the paper leaves open, and ours:

* `mode="global"` (default, as in its public code): one `G_s`, `G_t` over
  all mixed layers flattened together; `"layer"`: one per layer.
* A zero `G_t` gives no direction to project on: the layer (or, globally,
  the step) falls back to the plain source sum. A zero `G_s` makes step (1)
  `G_s <- G_t` (`r = 0`).
* `K = 1` and no angle threshold by default; no adaptive learning rate
  (`eta = 1`) unless asked. The reported cosines (and `rho`) are those of the
  turned `G_s` with `G_t`; in global mode every mixed layer reports the one
  global cosine, so `rho` (a sum over layers) is that cosine times the
  number of mixed layers (`rho_reduction="mean"` gives the cosine).
"""

import keras
import tensorflow as tf

from gradmix_tf.optimizer import GradMix

MODES = ("global", "layer")
UPDATES = ("projection", "turned")


def progressive_turn(gram, cross, v_sq, steps, angle_threshold=0.0):
  """Runs step (1) `steps` times in the Gram form.

  Args:
    gram: `[L, k, k]` source Gram matrices.
    cross: `[L, k]` inner products with the target gradient.
    v_sq: `[L]` squared norms of the target gradient.
    steps: `K`, the number of progressive steps.
    angle_threshold: degrees; a step is taken only while the angle between
      `G_s` and `G_t` exceeds it (0: always).

  Returns:
    `(w [L, k], c [L], cosine [L])`: the turned `G_s = G w + c G_t` and its
    cosine with `G_t` (float64).
  """
  gram = tf.cast(gram, tf.float64)
  cross = tf.cast(cross, tf.float64)
  v_sq = tf.cast(v_sq, tf.float64)
  w = tf.ones_like(cross)
  c = tf.zeros_like(v_sq)
  threshold_cos = tf.cos(tf.constant(float(angle_threshold), tf.float64)
                         * (3.141592653589793 / 180.0))

  def inner_products(w, c):
    wb = tf.reduce_sum(w * cross, -1)
    s_dot_t = wb + c * v_sq
    s_sq = tf.einsum("li,lij,lj->l", w, gram, w) + 2.0 * c * wb + (
        c * c * v_sq)
    return s_dot_t, tf.maximum(s_sq, 0.0)

  def cosine(s_dot_t, s_sq):
    denominator = tf.sqrt(s_sq * v_sq)
    return tf.where(denominator > 0,
                    s_dot_t / tf.where(denominator > 0, denominator, 1.0),
                    tf.zeros_like(denominator))

  for _ in range(int(steps)):
    s_dot_t, s_sq = inner_products(w, c)
    turn = v_sq > 0
    if angle_threshold > 0:
      turn = tf.logical_and(turn, cosine(s_dot_t, s_sq) < threshold_cos)
    r = tf.where(s_sq > 0, s_dot_t / tf.where(s_sq > 0, s_sq, 1.0),
                 tf.zeros_like(s_sq))
    w = tf.where(turn[:, None], (1.0 - r)[:, None] * w, w)
    c = tf.where(turn, (1.0 - r) * c + 1.0, c)
  return w, c, cosine(*inner_products(w, c))


def gradmf_coefficients(gram, cross, v_sq, steps=1, angle_threshold=0.0,
                        mode="global", update="projection"):
  """`(W [L, k], u [L], cosine [L])` of the GradMF update (module docstring).

  The update of layer `l` is `sum_i W[l, i] g_i^l + u[l] v^l`.
  """
  if mode not in MODES:
    raise ValueError(f"GradMF mode must be one of {MODES}, got {mode!r}.")
  if update not in UPDATES:
    raise ValueError(
        f"GradMF update must be one of {UPDATES}, got {update!r}.")
  layers = tf.shape(cross)[0]
  if mode == "global":
    gram = tf.reduce_sum(gram, 0, keepdims=True)
    cross = tf.reduce_sum(cross, 0, keepdims=True)
    v_sq = tf.reduce_sum(v_sq, 0, keepdims=True)
  w, c, cosine = progressive_turn(gram, cross, v_sq, steps, angle_threshold)
  v_sq = tf.cast(v_sq, tf.float64)
  if update == "projection":
    s_dot_t = tf.reduce_sum(w * tf.cast(cross, tf.float64), -1) + c * v_sq
    u = s_dot_t / tf.where(v_sq > 0, v_sq, 1.0)
    w = tf.zeros_like(w)
  else:
    u = c
  # No target direction: follow the sources.
  no_target = v_sq <= 0
  w = tf.where(no_target[:, None], tf.ones_like(w), w)
  u = tf.where(no_target, tf.zeros_like(u), u)
  if mode == "global":
    w = tf.repeat(w, layers, axis=0)
    u = tf.repeat(u, layers, axis=0)
    cosine = tf.repeat(cosine, layers, axis=0)
  return w, u, cosine


@keras.saving.register_keras_serializable(package="gradmix_tf")
class GradMF(GradMix):
  """GradMF as a `GradMix` whose update is the projected turned gradient.

  Args:
    inner_optimizer: applies the update (SGD with momentum in our configs).
    steps: `K`, progressive steps per update.
    angle_threshold: degrees; stop turning once `G_s` is this close to
      `G_t` (0: take all `K` steps).
    mode: `"global"` or `"layer"`.
    update: `"projection"` (the method) or `"turned"` (the public code's
      effective update).
    adaptive_lr: scale the rate by Eq. 9 of GradMix from the turned
      cosines (off by default: GradMF has no such rule).
    **kwargs: `beta`, `gamma`, `rho_reduction`, `max_consecutive_skips`,
      `name`, as for `GradMix`.

  Raises:
    ValueError: an unknown mode or update, negative steps, or a `solver`
      (GradMF solves nothing).
  """

  def __init__(self, inner_optimizer, steps=1, angle_threshold=0.0,
               mode="global", update="projection", adaptive_lr=False,
               **kwargs):
    if mode not in MODES:
      raise ValueError(f"GradMF mode must be one of {MODES}, got {mode!r}.")
    if update not in UPDATES:
      raise ValueError(
          f"GradMF update must be one of {UPDATES}, got {update!r}.")
    if int(steps) < 0:
      raise ValueError(f"GradMF steps must be >= 0, got {steps}.")
    if "solver" in kwargs:
      # As LossScaleOptimizer refuses its inner optimizer's arguments: no
      # argument is silently dropped.
      raise ValueError(
          "GradMF takes no `solver`: its update is the turned source "
          "gradient projected on V's (`mix_coefficients`), not a solve of "
          "GradMix's Eq. 6.")
    kwargs.setdefault("name", "gradmf")
    super().__init__(inner_optimizer, adaptive_lr=adaptive_lr, **kwargs)
    self.steps = int(steps)
    self.angle_threshold = float(angle_threshold)
    self.mode = mode
    self.update = update

  def mix_coefficients(self, gram, cross, v_sq):
    return gradmf_coefficients(gram, cross, v_sq, self.steps,
                               self.angle_threshold, self.mode, self.update)

  def get_config(self):
    config = super().get_config()
    config.pop("solver")
    config.update(steps=self.steps, angle_threshold=self.angle_threshold,
                  mode=self.mode, update=self.update)
    return config
