"""The GradMix optimizer: hand-computed steps, equivalences, state."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf import solvers
from gradmix_tf.config_lib import base_config
from gradmix_tf.optimizer import GradMix
from gradmix_tf.sgd import make_main_sgd


def _variables():
  """A one-layer trunk and two single-weight heads, named like Keras layers."""
  with keras.name_scope("trunk"):
    trunk = keras.Variable(np.array([1.0, 2.0], np.float32), name="kernel")
  with keras.name_scope("head_0"):
    head0 = keras.Variable(np.array([0.5], np.float32), name="kernel")
  with keras.name_scope("head_1"):
    head1 = keras.Variable(np.array([0.3], np.float32), name="kernel")
  return [trunk, head0, head1]


def test_single_step_by_hand():
  variables = _variables()
  optimizer = GradMix(keras.optimizers.SGD(0.1), beta=2.0, gamma=1.0)
  source_grads = [
      [tf.constant([1.0, 0.0]), tf.constant([0.4]), None],   # source 0
      [tf.constant([0.0, 1.0]), None, tf.constant([-0.2])],  # source 1
  ]
  val_grads = [tf.constant([1.0, 2.0]), tf.constant([9.0]), None]
  stats = optimizer.apply_gradmix(source_grads, val_grads, variables)
  # v = (1, 2) lies in the cone of (1, 0), (0, 1): w = (1, 2) -> (1/3, 2/3).
  np.testing.assert_allclose(stats["weights"].numpy(), [[1 / 3, 2 / 3]],
                             atol=1e-6)
  # cos(mixed, v) = 1 -> rho = 1; eta = sigmoid(2 * 1 - 1) = 0.7310586.
  assert float(stats["rho"]) == pytest.approx(1.0, abs=1e-6)
  assert float(stats["eta"]) == pytest.approx(0.7310586, abs=1e-6)
  # trunk: (1, 2) - 0.1 * 0.7310586 * (1/3, 2/3) = (0.9756314, 1.9512628)
  np.testing.assert_allclose(variables[0].numpy(), [0.9756314, 1.9512628],
                             atol=1e-6)
  # heads get their own source's gradient, unmixed, at eta * alpha:
  # 0.5 - 0.07310586 * 0.4 = 0.4707577;  0.3 + 0.07310586 * 0.2 = 0.3146212
  np.testing.assert_allclose(variables[1].numpy(), [0.4707577], atol=1e-6)
  np.testing.assert_allclose(variables[2].numpy(), [0.3146212], atol=1e-6)
  assert optimizer.mixed_layer_names == ["trunk"]
  assert int(optimizer.inner_optimizer.iterations) == 1
  assert int(optimizer.iterations) == 1


def test_warmed_up_rate_is_multiplied_by_eta_by_hand():
  # The gradients of test_single_step_by_hand (eta = 0.7310586 at every
  # step) with lr 0.1 warmed up over 4 steps and no momentum: step t moves
  # the trunk by 0.1 * (t / 4) * eta * (1/3, 2/3).
  config = base_config()
  config.lr, config.momentum, config.lr_warmup_steps = 0.1, 0.0, 4
  variables = _variables()
  optimizer = GradMix(make_main_sgd(config), beta=2.0, gamma=1.0)
  source_grads = [[tf.constant([1.0, 0.0]), tf.constant([0.4]), None],
                  [tf.constant([0.0, 1.0]), None, tf.constant([-0.2])]]
  val_grads = [tf.constant([1.0, 2.0]), tf.constant([9.0]), None]
  optimizer.apply_gradmix(source_grads, val_grads, variables)
  # Step 0 runs at rate 0: nothing moves, but the step counts.
  np.testing.assert_allclose(variables[0].numpy(), [1.0, 2.0], atol=1e-7)
  assert int(optimizer.inner_optimizer.iterations) == 1
  for _ in range(2):
    stats = optimizer.apply_gradmix(source_grads, val_grads, variables)
  assert float(stats["eta"]) == pytest.approx(0.7310586, abs=1e-6)
  # Steps 1 and 2: 0.1 * 0.7310586 * (1 + 2) / 4 = 0.05482940;
  # (1, 2) - 0.05482940 * (1/3, 2/3) = (0.9817235, 1.9634471).
  np.testing.assert_allclose(variables[0].numpy(), [0.9817235, 1.9634471],
                             atol=1e-6)
  # head 0: 0.5 - 0.05482940 * 0.4 = 0.4780682
  np.testing.assert_allclose(variables[1].numpy(), [0.4780682], atol=1e-6)


def test_rho_mean_and_no_adaptive_rate():
  variables = _variables()
  optimizer = GradMix(keras.optimizers.SGD(0.1), adaptive_lr=False,
                      rho_reduction="mean")
  grads = [[tf.constant([1.0, 0.0]), tf.constant([0.0]), tf.constant([0.0])]]
  stats = optimizer.apply_gradmix(grads, [tf.constant([1.0, 1.0]), None,
                                          None], variables)
  # V reaches only the trunk, so only the trunk is mixed:
  # rho = mean over one layer of cos((1,0),(1,1)) = 0.7071068.
  assert optimizer.mixed_layer_names == ["trunk"]
  assert float(stats["rho"]) == pytest.approx(0.7071068, abs=1e-6)
  assert float(stats["eta"]) == 1.0
  # 1 - 0.1 * 1.0 = 0.9
  np.testing.assert_allclose(variables[0].numpy(), [0.9, 2.0], atol=1e-7)


def _random_grads(rng, variables, steps, k):
  return [[[tf.constant(rng.normal(size=v.shape).astype(np.float32))
            for v in variables] for _ in range(k)] for _ in range(steps)]


@pytest.mark.parametrize("make_inner", [
    lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    lambda: keras.optimizers.Adam(0.01),
])
@pytest.mark.parametrize("copies", [1, 2])
def test_one_or_identical_sources_without_adalr_equal_the_inner_optimizer(
    make_inner, copies):
  rng = np.random.default_rng(0)
  mixed_vars = [keras.Variable(np.ones((3, 2), np.float32)),
                keras.Variable(np.zeros(2, np.float32))]
  plain_vars = [keras.Variable(np.ones((3, 2), np.float32)),
                keras.Variable(np.zeros(2, np.float32))]
  gradmix = GradMix(make_inner(), adaptive_lr=False)
  plain = make_inner()
  for (grads,) in _random_grads(rng, mixed_vars, 4, 1):
    val = [tf.constant(rng.normal(size=v.shape).astype(np.float32))
           for v in mixed_vars]
    gradmix.apply_gradmix([grads] * copies, val, mixed_vars)
    plain.apply(grads, plain_vars)
  for a, b in zip(mixed_vars, plain_vars):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_adaptive_rate_scales_the_learning_rate_not_the_gradient():
  # With Adam, scaling the gradient by eta would change nothing on the first
  # step (m/sqrt(v) is scale free); scaling the rate moves by eta * alpha.
  variables = [keras.Variable(np.zeros(2, np.float32))]
  optimizer = GradMix(keras.optimizers.Adam(0.1, epsilon=1e-12),
                      beta=1.0, gamma=0.0)
  g = tf.constant([1.0, 1.0])
  stats = optimizer.apply_gradmix([[g]], [tf.constant([1.0, -1.0])],
                                  variables)
  # cos((1,1),(1,-1)) = 0 -> rho = 0 -> eta = sigmoid(0) = 0.5
  assert float(stats["eta"]) == pytest.approx(0.5)
  # First Adam step: m_hat / sqrt(v_hat) = 1 -> 0 - 0.5 * 0.1 * 1 = -0.05
  np.testing.assert_allclose(variables[0].numpy(), [-0.05, -0.05], atol=1e-6)
  # The inner learning rate is back to alpha afterwards.
  assert float(optimizer.inner_optimizer.learning_rate) == pytest.approx(0.1)


def test_non_finite_gradients_skip_the_step_and_are_counted():
  variables = _variables()
  before = [v.numpy().copy() for v in variables]
  optimizer = GradMix(keras.optimizers.SGD(0.1, momentum=0.9))
  good = [tf.constant([1.0, 0.0]), tf.constant([0.4]), None]
  bad = [tf.constant([np.nan, 0.0]), None, tf.constant([1.0])]
  val = [tf.constant([1.0, 1.0]), None, None]
  step = tf.function(lambda s, v, _: optimizer.apply_gradmix(s, v, variables))
  stats = step([good, bad], val, variables)
  assert not bool(stats["applied"])
  assert int(stats["nonfinite_source"]) == 1
  for v, b in zip(variables, before):
    np.testing.assert_array_equal(v.numpy(), b)
  assert int(optimizer.iterations) == 0
  stats = step([good, bad], val, variables)
  assert int(optimizer.consecutive_skips) == 2
  stats = step([good, good[:1] + [None, tf.constant([1.0])]], val, variables)
  assert bool(stats["applied"]) and int(stats["nonfinite_source"]) == -1
  assert int(optimizer.consecutive_skips) == 0
  assert int(optimizer.skipped_steps) == 2
  assert int(optimizer.iterations) == 1


@pytest.mark.parametrize("where,culprit", [("head", 1), ("validation", 2),
                                            ("inf trunk", 0)])
def test_non_finite_head_or_validation_gradient_is_caught(where, culprit):
  variables = _variables()
  before = [v.numpy().copy() for v in variables]
  optimizer = GradMix(keras.optimizers.SGD(0.1))
  s0 = [tf.constant([1.0, 0.0]), tf.constant([0.4]), None]
  s1 = [tf.constant([0.0, 1.0]), None, tf.constant([0.2])]
  val = [tf.constant([1.0, 1.0]), None, None]
  if where == "head":
    s1[2] = tf.constant([np.nan])
  elif where == "validation":
    val[0] = tf.constant([1.0, np.inf])
  else:
    s0[0] = tf.constant([-np.inf, 0.0])
  stats = optimizer.apply_gradmix([s0, s1], val, variables)
  assert not bool(stats["applied"])
  assert int(stats["nonfinite_source"]) == culprit
  for v, b in zip(variables, before):
    np.testing.assert_array_equal(v.numpy(), b)


def test_config_round_trip():
  optimizer = GradMix(keras.optimizers.Adam(0.003), beta=7.0, gamma=0.3,
                      solver="slsqp", adaptive_lr=False, rho_reduction="mean",
                      max_consecutive_skips=4)
  restored = keras.optimizers.deserialize(
      keras.optimizers.serialize(optimizer))
  assert isinstance(restored, GradMix)
  assert restored.get_config() == optimizer.get_config()
  assert isinstance(restored.inner_optimizer, keras.optimizers.Adam)
  assert restored.inner_optimizer.learning_rate.numpy() == pytest.approx(0.003)


def test_wrong_arguments_say_where_they_belong():
  with pytest.raises(ValueError, match="set `weight_decay` on the inner"):
    GradMix(keras.optimizers.SGD(0.1), weight_decay=0.1)
  with pytest.raises(ValueError, match="unexpected arguments"):
    GradMix(keras.optimizers.SGD(0.1), betta=3.0)
  with pytest.raises(ValueError, match="Unknown GradMix solver"):
    GradMix(keras.optimizers.SGD(0.1), solver="newton")


def test_checkpoint_restores_slots_and_iterations(tmp_path):
  rng = np.random.default_rng(4)
  steps = _random_grads(rng, [np.zeros((2, 2))], 4, 2)
  val = [tf.constant(rng.normal(size=(2, 2)).astype(np.float32))]

  def make():
    var = keras.Variable(np.ones((2, 2), np.float32))
    return var, GradMix(keras.optimizers.SGD(0.1, momentum=0.9))

  var, optimizer = make()
  for grads in steps:
    optimizer.apply_gradmix(grads, val, [var])
  uninterrupted = var.numpy()

  var, optimizer = make()
  optimizer.build([var])
  checkpoint = tf.train.Checkpoint(var=var, optimizer=optimizer)
  for grads in steps[:2]:
    optimizer.apply_gradmix(grads, val, [var])
  path = checkpoint.save(str(tmp_path / "ckpt"))

  var, optimizer = make()
  optimizer.build([var])
  tf.train.Checkpoint(var=var, optimizer=optimizer).restore(
      path).assert_consumed()
  assert int(optimizer.iterations) == 2
  for grads in steps[2:]:
    optimizer.apply_gradmix(grads, val, [var])
  np.testing.assert_allclose(var.numpy(), uninterrupted, rtol=1e-6)


def test_subclass_hooks_are_used():
  class FirstSourceOnly(GradMix):
    def solve_weights(self, gram, cross):
      k = gram.shape[-1]
      return tf.one_hot(tf.zeros(tf.shape(gram)[:1], tf.int32), k)

    def learning_rate_scale(self, rho):
      return tf.constant(0.5)

  var = keras.Variable(np.zeros(2, np.float32))
  optimizer = FirstSourceOnly(keras.optimizers.SGD(1.0))
  optimizer.apply_gradmix([[tf.constant([1.0, 0.0])], [tf.constant([0.0, 4.0])]],
                          [tf.constant([0.0, 1.0])], [var])
  # 0 - 1.0 * 0.5 * (1, 0) = (-0.5, 0)
  np.testing.assert_allclose(var.numpy(), [-0.5, 0.0])


def test_meta_sgd_weights_follow_the_finite_difference_meta_gradient():
  """L2RW: d f_V(theta - alpha sum_i eps_i g_i) / d eps_i at eps = 0."""
  rng = np.random.default_rng(0)
  alpha = 0.3
  theta = tf.constant(rng.normal(size=(4, 3)))
  data = [(tf.constant(rng.normal(size=(6, 4))), rng.integers(0, 3, 6))
          for _ in range(4)]  # three sources and V, float64

  def loss(params, batch):
    x, y = batch
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=y, logits=x @ params))

  def grad(batch):
    with tf.GradientTape() as tape:
      tape.watch(theta)
      value = loss(theta, batch)
    return tape.gradient(value, theta).numpy().ravel()

  source_grads = np.stack([grad(b) for b in data[:3]])
  v = grad(data[3])

  def meta_loss(eps):
    step = (eps @ source_grads).reshape(4, 3)
    return float(loss(theta - alpha * step, data[3]))

  h = 1e-6
  fd = np.array([(meta_loss(h * np.eye(3)[i]) - meta_loss(-h * np.eye(3)[i]))
                 / (2 * h) for i in range(3)])
  np.testing.assert_allclose(fd, -alpha * source_grads @ v, rtol=1e-5,
                             atol=1e-9)
  expected = np.maximum(-fd, 0)
  expected = expected / expected.sum() if expected.sum() else np.full(3, 1 / 3)
  weights = solvers.solve_mix_weights(
      (source_grads @ source_grads.T)[None], (source_grads @ v)[None],
      "meta_sgd").numpy()[0]
  np.testing.assert_allclose(weights, expected, atol=1e-6)


def test_global_clipnorm_clips_the_mixed_gradient_by_hand():
  # The step of test_single_step_by_hand with config.global_clipnorm 0.1
  # on the inner SGD (lr 0.1, no momentum): eta * lr scales the rate, the
  # clip acts on the gradient the inner optimizer receives, which is the
  # mixed trunk gradient (1/3, 2/3) and head gradients 0.4, -0.2 together:
  # global norm sqrt(1/9 + 4/9 + 0.16 + 0.04) = 0.8717798 -> factor
  # 0.1 / 0.8717798 = 0.1147079.
  config = base_config()
  config.lr, config.momentum, config.global_clipnorm = 0.1, 0.0, 0.1
  variables = _variables()
  optimizer = GradMix(make_main_sgd(config), beta=2.0, gamma=1.0)
  stats = optimizer.apply_gradmix(*_hand_step_grads(), variables)
  eta = 0.7310586
  assert float(stats["eta"]) == pytest.approx(eta, abs=1e-6)
  factor = 0.1 / np.sqrt(1 / 9 + 4 / 9 + 0.16 + 0.04)
  np.testing.assert_allclose(
      variables[0].numpy(),
      np.array([1.0, 2.0]) - 0.1 * eta * factor * np.array([1 / 3, 2 / 3]),
      atol=1e-6)
  np.testing.assert_allclose(variables[1].numpy(),
                             [0.5 - 0.1 * eta * factor * 0.4], atol=1e-6)
  np.testing.assert_allclose(variables[2].numpy(),
                             [0.3 + 0.1 * eta * factor * 0.2], atol=1e-6)


def _hand_step_grads(scale=1.0):
  """The gradients of test_single_step_by_hand, times `scale`."""
  source_grads = [[tf.constant([1.0, 0.0]) * scale,
                   tf.constant([0.4]) * scale, None],
                  [tf.constant([0.0, 1.0]) * scale, None,
                   tf.constant([-0.2]) * scale]]
  val_grads = [tf.constant([1.0, 2.0]) * scale, tf.constant([9.0]) * scale,
               None]
  return source_grads, val_grads


def _with_inf(source_grads):
  poisoned = [list(g) for g in source_grads]
  poisoned[0][0] = tf.constant([np.inf, 0.0])
  return poisoned


def test_a_single_gradient_list_is_refused_outside_plain_steps():
  variables = [keras.Variable(np.array([1.0, 2.0], np.float32))]
  optimizer = GradMix(keras.optimizers.SGD(0.1))
  with pytest.raises(ValueError, match="single gradient list.*apply_gradmix"):
    optimizer.apply([tf.constant([1.0, 1.0])], variables)
  with pytest.raises(ValueError, match="single gradient list"):
    optimizer.apply_gradients([(tf.constant([1.0, 1.0]), variables[0])])
  np.testing.assert_array_equal(variables[0].numpy(), [1.0, 2.0])
  # Declared plain: SGD's step, 0.1 * (1, -1).
  with optimizer.plain_steps():
    optimizer.apply([tf.constant([1.0, -1.0])], variables)
  np.testing.assert_allclose(variables[0].numpy(), [0.9, 2.1], atol=1e-7)
  with pytest.raises(ValueError, match="single gradient list"):
    optimizer.apply([tf.constant([1.0, 1.0])], variables)


def test_compile_and_fit_with_gradmix_cannot_train_silently():
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  model.compile(optimizer=GradMix(keras.optimizers.SGD(0.1)),
                loss="sparse_categorical_crossentropy")
  before = [w.numpy().copy() for w in model.weights]
  with pytest.raises(ValueError, match="single gradient list"):
    model.fit(np.ones((4, 3), np.float32), np.zeros(4, np.int32), verbose=0)
  for w, b in zip(model.weights, before):
    np.testing.assert_array_equal(w.numpy(), b)


@pytest.mark.parametrize("graph", [False, True])
def test_the_optimizer_raises_on_the_skip_after_its_limit(graph):
  variables = _variables()
  optimizer = GradMix(keras.optimizers.SGD(0.1), max_consecutive_skips=2)
  finite, val = _hand_step_grads()
  nonfinite = _with_inf(finite)

  def step(grads):
    return optimizer.apply_gradmix(grads, val, variables)["applied"]

  if graph:
    step = tf.function(step)
  assert not bool(step(nonfinite))
  assert not bool(step(nonfinite))
  assert bool(step(finite))             # a finite step resets the count
  assert not bool(step(nonfinite))
  assert not bool(step(nonfinite))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="skipped more than 2 consecutive steps"):
    step(nonfinite)
  assert int(optimizer.skipped_steps) == 5


def test_a_loss_scale_overflow_halves_the_scale_then_steps_apply():
  # GradMix(LossScaleOptimizer(SGD(0.1))), scale 2**15, growth every 2
  # steps. Gradients arrive scaled by the loss scale.
  variables = _variables()
  scaled = keras.optimizers.LossScaleOptimizer(
      keras.optimizers.SGD(0.1), initial_scale=2.0**15, dynamic_growth_steps=2)
  optimizer = GradMix(scaled, beta=2.0, gamma=1.0)
  assert float(optimizer.scale_loss(tf.constant(1.0))) == 2.0**15
  source_grads, val_grads = _hand_step_grads(2.0**15)
  # 1. An overflow: skipped, nothing moves, the scale halves.
  stats = optimizer.apply_gradmix(_with_inf(source_grads), val_grads,
                                  variables)
  assert not bool(stats["applied"])
  assert float(scaled.dynamic_scale) == 2.0**14
  np.testing.assert_array_equal(variables[0].numpy(), [1.0, 2.0])
  # 2. Gradients at the new scale: the hand step of
  # test_single_step_by_hand (weights, eta and the unscaled update).
  source_grads, val_grads = _hand_step_grads(2.0**14)
  stats = optimizer.apply_gradmix(source_grads, val_grads, variables)
  assert bool(stats["applied"])
  np.testing.assert_allclose(stats["weights"].numpy(), [[1 / 3, 2 / 3]],
                             atol=1e-6)
  assert float(stats["eta"]) == pytest.approx(0.7310586, abs=1e-6)
  np.testing.assert_allclose(variables[0].numpy(), [0.9756314, 1.9512628],
                             atol=1e-6)
  np.testing.assert_allclose(variables[1].numpy(), [0.4707577], atol=1e-6)
  assert float(scaled.dynamic_scale) == 2.0**14
  # 3. A second finite step: dynamic_growth_steps reached, scale doubles.
  optimizer.apply_gradmix(source_grads, val_grads, variables)
  assert float(scaled.dynamic_scale) == 2.0**15
  assert int(optimizer.skipped_steps) == 1
  assert int(optimizer.iterations) == 2
