"""Unlabelled losses on U that GradMix mixes as one more source (paper 3.6).

**VAT** (Miyato et al. 2018). With `p = softmax(f(x))` held fixed,

    d    <- a unit random direction (per image, L2 over all pixels)
    d    <- unit(grad_r KL(p || softmax(f(x + r))) at r = xi d)   (power
            iterations, one by default)
    loss =  mean KL(p || softmax(f(x + eps d))).

`xi` and `eps` are in units of pixels scaled to [0, 1], as in the VAT
paper; our images are 0..255, so the perturbations are multiplied by 255.
VAT's xi = 1e-6 is below float32's resolution here: the digit ConvNet
rescales inside the graph, and `python bench/vat_xi.py` finds zero
directions for 2 of 8 images at 1e-6 (and directions from two random starts
that agree no better than at random); the default `vat.xi` is 1e-3, still
1/2000 of `eps`.

**MixMatch** (Berthelot et al. 2019), the unlabelled term. For an
unlabelled batch `u` and the labelled images `x` (V, one-hot labels):

    q     = sharpen(mean_k softmax(f(augment_k(u))), T)    (K = 2, T = 0.5)
    W     = shuffle(concat(augment(x), augment_1..K(u)))   (targets: labels, q)
    u'    = mixup(augment_k(u), W[|x|:]), with lambda' = max(lambda, 1 - lambda),
            lambda ~ Beta(alpha, alpha), alpha = 0.75
    loss  = lambda_u(t) * mean ||q' - softmax(f(u'))||^2 / classes

with `lambda_u(t)` rising linearly from 0 to `lambda_u` over `rampup_steps`.
`sharpen(p, T)_c = p_c^(1/T) / sum_j p_j^(1/T)`. The augmentation is a
random translation by up to `max_shift` pixels (zero padding), which suits
digits (no flips). MixMatch's labelled term is left out: V is already
GradMix's validation loss.

Randomness is stateless, drawn from the `seed` tensors passed in, so a
resumed run repeats it.
"""

import tensorflow as tf

PIXEL_SCALE = 255.0


def kl_divergence(p, logits_q):
  """`mean_batch sum_c p_c (log p_c - log q_c)` with `q = softmax(logits)`."""
  log_q = tf.nn.log_softmax(logits_q)
  log_p = tf.math.log(tf.maximum(p, 1e-12))
  return tf.reduce_mean(tf.reduce_sum(p * (log_p - log_q), -1))


def unit_direction(d):
  """`d / |d|` per image (L2 over every axis but the first)."""
  axes = list(range(1, len(d.shape)))
  return d / tf.maximum(tf.sqrt(tf.reduce_sum(tf.square(d), axes,
                                              keepdims=True)), 1e-12)


def vat_direction(model_fn, images, xi, seed, power_iterations=1,
                  scale=PIXEL_SCALE):
  """The adversarial unit direction `d` (module docstring)."""
  images = tf.cast(images, tf.float32) if images.dtype == tf.uint8 else images
  p = tf.stop_gradient(tf.nn.softmax(model_fn(images)))
  d = unit_direction(tf.random.stateless_normal(tf.shape(images), seed=seed,
                                                dtype=images.dtype))
  for _ in range(int(power_iterations)):
    r = tf.cast(xi * scale, images.dtype) * d
    with tf.GradientTape() as tape:
      tape.watch(r)
      distance = kl_divergence(p, model_fn(images + r))
    d = unit_direction(tf.stop_gradient(tape.gradient(distance, r)))
  return d


def vat_loss(model_fn, images, xi, epsilon, seed, power_iterations=1,
             scale=PIXEL_SCALE):
  """`mean KL(p(x) || p(x + eps d_adv))`, differentiable in the model."""
  images = tf.cast(images, tf.float32) if images.dtype == tf.uint8 else images
  d = vat_direction(model_fn, images, xi, seed, power_iterations, scale)
  p = tf.stop_gradient(tf.nn.softmax(model_fn(images)))
  return kl_divergence(p, model_fn(images + tf.cast(epsilon * scale,
                                                    images.dtype) * d))


def sharpen(p, temperature):
  """`p^(1/T)` renormalised over the last axis."""
  powered = tf.pow(p, 1.0 / float(temperature))
  return powered / tf.reduce_sum(powered, -1, keepdims=True)


def mixup(x1, p1, x2, p2, lam):
  """MixMatch's MixUp with `lambda' = max(lambda, 1 - lambda)` per example
  (`lam [N]`)."""
  lam = tf.maximum(lam, 1.0 - lam)
  lam_x = tf.reshape(lam, [-1] + [1] * (len(x1.shape) - 1))
  lam_p = lam[:, None]
  return (lam_x * x1 + (1.0 - lam_x) * x2,
          lam_p * p1 + (1.0 - lam_p) * p2)


def sample_beta(shape, alpha, seed):
  """Beta(alpha, alpha) as X / (X + Y) with X, Y ~ Gamma(alpha)."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  x = tf.random.stateless_gamma(shape, seeds[0], alpha=alpha)
  y = tf.random.stateless_gamma(shape, seeds[1], alpha=alpha)
  return x / (x + y)


def translate(images, max_shift, seed):
  """Each image shifted by up to `max_shift` pixels (zero fill)."""
  images = tf.cast(images, tf.float32)
  n = tf.shape(images)[0]
  height, width = int(images.shape[1]), int(images.shape[2])
  padded = tf.pad(images, [[0, 0], [max_shift, max_shift],
                           [max_shift, max_shift], [0, 0]])
  offsets = tf.random.stateless_uniform([n, 2], seed=seed, minval=0,
                                        maxval=2 * max_shift + 1,
                                        dtype=tf.int32)
  rows = offsets[:, :1] + tf.range(height)[None]              # [N, H]
  cols = offsets[:, 1:] + tf.range(width)[None]               # [N, W]
  picked = tf.gather(padded, rows, axis=1, batch_dims=1)      # [N, H, W+2s, C]
  return tf.gather(picked, cols, axis=2, batch_dims=1)


def mixmatch_unlabelled_loss(model_fn, labelled_images, labels, num_classes,
                             unlabelled_images, seed, weight, augmentations=2,
                             temperature=0.5, alpha=0.75, max_shift=2):
  """`weight * mean ||q' - softmax(f(u'))||^2 / classes` (module docstring).

  `weight` is `lambda_u(t)` (the caller ramps it).
  """
  seeds = tf.random.experimental.stateless_split(seed, augmentations + 3)
  u_views = [translate(unlabelled_images, max_shift, seeds[k])
             for k in range(augmentations)]
  guesses = tf.add_n([tf.nn.softmax(model_fn(view)) for view in u_views])
  q = tf.stop_gradient(sharpen(guesses / float(augmentations), temperature))
  x_view = translate(labelled_images, max_shift, seeds[augmentations])
  x_targets = tf.one_hot(labels, num_classes)
  all_images = tf.concat([x_view] + u_views, 0)
  all_targets = tf.concat([x_targets] + [q] * augmentations, 0)
  order = tf.argsort(tf.random.stateless_uniform(
      [tf.shape(all_images)[0]], seed=seeds[augmentations + 1]))
  partners, partner_targets = (tf.gather(all_images, order),
                               tf.gather(all_targets, order))
  x_count = tf.shape(x_view)[0]
  u_images = tf.concat(u_views, 0)
  u_targets = tf.concat([q] * augmentations, 0)
  lam = sample_beta([tf.shape(u_images)[0]], alpha, seeds[augmentations + 2])
  mixed, mixed_targets = mixup(u_images, u_targets, partners[x_count:],
                               partner_targets[x_count:], lam)
  mixed_targets = tf.stop_gradient(mixed_targets)
  probs = tf.nn.softmax(model_fn(mixed))
  return weight * tf.reduce_mean(tf.square(mixed_targets - probs))
