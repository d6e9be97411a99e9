"""The runner on a tiny synthetic experiment: resume, methods, health."""

import json
import os

import numpy as np
import pytest

from conftest import tiny_config as _config
from conftest import tiny_data as _data
from gradmix_tf import config_lib
from gradmix_tf.errors import ConfigError, TrainingError
from gradmix_tf import methods as method_registry
from gradmix_tf.runner import build_runner
from gradmix_tf.batches import batch_indices
from gradmix_tf.sgd import main_learning_rate


def test_batch_indices_are_epoch_permutations_and_resume_consistently():
  full = batch_indices(10, 4, [0, 1], 0, 10)          # 40 = 4 epochs of 10
  for epoch in range(4):
    assert sorted(full.ravel()[10 * epoch:10 * epoch + 10]) == list(range(10))
  np.testing.assert_array_equal(batch_indices(10, 4, [0, 1], 3, 7), full[3:7])
  assert not np.array_equal(batch_indices(10, 4, [1, 1], 0, 10), full)


def test_main_learning_rate_warms_up_linearly_then_holds():
  rate = main_learning_rate(_config(lr=0.05, lr_warmup_steps=4))
  # 0.05 * min(t / 4, 1)
  np.testing.assert_allclose([float(rate(t)) for t in range(7)],
                             [0.0, 0.0125, 0.025, 0.0375, 0.05, 0.05, 0.05],
                             rtol=1e-6)
  assert main_learning_rate(_config(lr=0.05)) == 0.05


def test_main_learning_rate_decays_over_the_last_steps_of_the_run():
  rate = main_learning_rate(_config(lr=0.05, steps=8, lr_decay_steps=4))
  # 0.05 until step 4, then 0.05 * (1 + cos(pi j / 4)) / 2.
  np.testing.assert_allclose(
      [float(rate(t)) for t in range(8)],
      [0.05] * 4 + [0.05, 0.0426777, 0.025, 0.0073223], rtol=1e-5)
  with pytest.raises(ConfigError, match="lr_decay_steps .* must not exceed"):
    config_lib.resolve(_config(steps=8, lr_decay_steps=9))


def test_a_warmup_longer_than_the_run_barely_moves_the_weights(tmp_path):
  # 6 steps of a 10**9-step ramp run at rates below 6e-9 * lr: the
  # weights stay where they started, where without warm-up they move.
  moved = {}
  for warmup in (0, 10**9):
    trainer = build_runner(_config(method="gradmix", lr_warmup_steps=warmup),
                      _data(), str(tmp_path / str(warmup)))
    start = [w.numpy().copy() for w in trainer.model.trainable_weights]
    trainer.run()
    moved[warmup] = max(float(np.max(np.abs(w.numpy() - s)))
                        for w, s in zip(trainer.model.trainable_weights,
                                        start))
  assert moved[0] > 1e-3
  assert moved[10**9] < 1e-6


def test_negative_warmup_is_refused_when_the_config_resolves():
  with pytest.raises(ConfigError, match="lr_warmup_steps must be at least 0"):
    config_lib.resolve(_config(lr_warmup_steps=-1))


@pytest.mark.parametrize("method,warmup", [("gradmix", 0), ("fine_tune", 0),
                                           ("gradmix", 5)])
def test_resumed_run_equals_uninterrupted_run(tmp_path, method, warmup):
  # warmup 5 spans the interruption: the resumed steps must continue the
  # ramp from the restored step count.
  data = _data()
  whole = build_runner(_config(method=method, lr_warmup_steps=warmup), data,
                  str(tmp_path / "whole"))
  whole.run()
  # "Interrupted" after 4 steps: a run whose last checkpoint is step 4 ...
  first = build_runner(_config(method=method, steps=4, finetune_steps=0,
                          lr_warmup_steps=warmup), data,
                  str(tmp_path / "resumed"))
  first_metrics = first.run()
  # ... then the full run in the same workdir picks up from step 4.
  resumed = build_runner(_config(method=method, lr_warmup_steps=warmup), data,
                    str(tmp_path / "resumed"))
  metrics = resumed.run()
  assert metrics["resumed_from_step"] == 4
  # The training time adds up over the two invocations.
  assert first_metrics["train_seconds"] <= first_metrics["wall_seconds"]
  np.testing.assert_allclose(
      metrics["train_seconds"],
      first_metrics["train_seconds"] + metrics["wall_seconds"], atol=2.0)
  assert metrics["train_seconds"] > metrics["wall_seconds"]
  for a, b in zip(whole.model.weights, resumed.model.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


MULTI_SOURCE_METHODS = [m.name for m in method_registry.REGISTRY
                        if m.task.endswith(":MultiSourceTask")]


@pytest.mark.parametrize("method", MULTI_SOURCE_METHODS)
def test_every_method_trains_and_writes_metrics(tmp_path, method):
  metrics = build_runner(_config(method=method, steps=4), _data(),
                         str(tmp_path)).run()
  with open(tmp_path / "metrics.json") as f:
    on_disk = json.load(f)
  assert on_disk == metrics
  for field in ("method", "steps", "seed", "k", "test_accuracy",
                "hyperval_accuracy", "wall_seconds"):
    assert field in metrics
  assert metrics["steps"] == 4 + (3 if method in ("fine_tune", "gradmix_finetune")
                                  else 0)
  assert metrics["method"] == method
  assert 0.0 <= metrics["test_accuracy"] <= 1.0
  assert [point[0] for point in metrics["hyperval_curve"]] == list(
      range(2, metrics["steps"] + 1, 2))
  assert os.listdir(tmp_path / "tb")
  curve = metrics["hyperval_curve"]
  best = max(curve, key=lambda point: point[2])
  assert metrics["best_hyperval_step"] == best[0]
  assert metrics["best_hyperval_accuracy"] == best[2]
  assert 0.0 <= metrics["test_accuracy_at_best_hyperval"] <= 1.0


def test_gradmix_writes_per_layer_weights_to_tensorboard(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  build_runner(_config(steps=2), _data(), str(tmp_path)).run()
  events = event_accumulator.EventAccumulator(str(tmp_path / "tb"),
                                              size_guidance={"tensors": 0})
  events.Reload()
  tags = set(events.Tags()["tensors"])
  for tag in ("rho", "eta", "loss/s1", "loss/s2", "weights/trunk/conv1/s1",
              "weights/trunk/fc1/s2", "hyperval/accuracy", "grad_norm/s1"):
    assert tag in tags, tag
  assert not any(tag.startswith("weights/head_") for tag in tags)


def test_repeated_non_finite_steps_stop_training(tmp_path):
  config = _config(lr=1e30, max_consecutive_skips=2, steps=20)
  with pytest.raises(TrainingError, match="consecutive steps"):
    build_runner(config, _data(), str(tmp_path)).run()
  assert not os.path.exists(tmp_path / "metrics.json")


def test_jit_compiled_gradmix_step_matches_the_graph_step(tmp_path):
  runs = [build_runner(_config(steps=3, jit_compile=jit), _data(),
                  str(tmp_path / str(jit))) for jit in (False, True)]
  for trainer in runs:
    trainer.run()
  for a, b in zip(runs[0].model.weights, runs[1].model.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_best_hyperval_weights_are_the_ones_evaluated(tmp_path):
  trainer = build_runner(_config(steps=6), _data(), str(tmp_path))
  metrics = trainer.run()
  final_test = trainer.evaluate(trainer.data.test)[1]
  assert final_test == metrics["test_accuracy"]  # final weights are back
  # Restoring best/ by hand gives the reported best-H accuracies.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.train.Checkpoint(model=trainer.model).restore(
      tf.train.latest_checkpoint(str(tmp_path / "best"))).expect_partial()
  assert trainer.evaluate(trainer.data.h)[1] == metrics[
      "best_hyperval_accuracy"]
  assert trainer.evaluate(trainer.data.test)[1] == metrics[
      "test_accuracy_at_best_hyperval"]


def _head_step(tmp_path, train_head, epsilon):
  """The target head's change over one gradmix_vat step."""
  config = _config(method="gradmix_vat", steps=1, finetune_steps=0)
  config.vat.train_head = train_head
  config.vat.epsilon = epsilon
  data = _data()
  trainer = build_runner(config, data, str(tmp_path / f"{train_head}_{epsilon}"))
  head = trainer.model.heads[data.target_head].trainable_variables
  before = np.concatenate([v.numpy().ravel() for v in head])
  trainer.run()
  return np.concatenate([v.numpy().ravel() for v in head]) - before


def test_vat_without_train_head_leaves_the_head_to_the_labelled_sources(
    tmp_path):
  # Without the VAT gradient the head moves along the labelled sources'
  # head gradient alone, which VAT's strength cannot change: two runs that
  # differ only in epsilon move it in the same direction (the mix and eta
  # may scale the step). With the VAT gradient the direction changes. (At
  # initialisation VAT's gradient is small, hence the large epsilon.)
  def cosine(a, b):
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))

  weak, strong = (_head_step(tmp_path, False, eps) for eps in (0.5, 300.0))
  assert np.linalg.norm(weak) > 0
  np.testing.assert_allclose(cosine(weak, strong), 1.0, atol=1e-5)
  with_vat = _head_step(tmp_path, True, 300.0)
  assert cosine(strong, with_vat) < 1.0 - 1e-3


def _first_gradmix_step(tmp_path, method, **overrides):
  """The first step of `method`, with its gradients recomputed by hand.

  Returns `(stats, source_grads, v_grads, trunk_layers, before, trainer)`:
  the step's statistics; per source and for V, float64 gradients of each
  trunk layer (its kernel and bias flattened together) at the initial
  weights; the trunk layers; their flattened weights before the step.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  config = _config(method=method, steps=1, **overrides)
  data = _data()
  trainer = build_runner(config, data, str(tmp_path))
  model = trainer.model
  layers = [l for l in model.trunk.layers if l.trainable_variables]

  def layer_grads(loss_fn):
    variables = [v for l in layers for v in l.trainable_variables]
    with tf.GradientTape() as tape:
      loss = loss_fn()
    grads = iter(tape.gradient(loss, variables))
    return [np.concatenate([next(grads).numpy().ravel().astype(np.float64)
                            for _ in l.trainable_variables]) for l in layers]

  def mean_cross_entropy(images, labels, head):
    logits = model(tf.constant(images), head=head, training=True)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.constant(labels), logits=logits))

  indices = [batch_indices(len(s.y), config.batch_size, [config.seed, i],
                           0, 1)[0] for i, s in enumerate(data.sources)]
  source_grads = [layer_grads(lambda s=s, i=i: mean_cross_entropy(
      s.x[i], s.y[i], s.head)) for s, i in zip(data.sources, indices)]
  v_grads = layer_grads(lambda: mean_cross_entropy(
      data.v.images, data.v.labels, data.target_head))
  before = [np.concatenate([v.numpy().ravel() for v in l.trainable_variables])
            for l in layers]
  stats = trainer.step_functions[0](tuple(tf.constant(i) for i in indices))
  return stats, source_grads, v_grads, layers, before, trainer


def _cosine(a, b):
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_rho_is_the_sum_or_mean_of_layer_cosines_over_every_trunk_layer(
    tmp_path, reduction):
  stats, grads, v, layers, _, _ = _first_gradmix_step(
      tmp_path, "gradmix", rho_reduction=reduction)
  weights = stats["weights"].numpy()
  assert weights.shape == (len(layers), 2) and len(layers) == 5  # 4 conv, fc1
  cosines = [_cosine(sum(w * g[l] for w, g in zip(weights[l], grads)), v[l])
             for l in range(len(layers))]
  np.testing.assert_allclose(stats["cosines"].numpy(), cosines, atol=1e-5)
  expected = sum(cosines) / (len(layers) if reduction == "mean" else 1)
  np.testing.assert_allclose(float(stats["rho"]), expected, atol=1e-5)
  # Five layers whose cosines are not all 1: the sum and the mean differ.
  assert abs(sum(cosines) - sum(cosines) / len(layers)) > 0.1


def test_gradmix_sgd_uses_the_meta_gradient_weights(tmp_path):
  stats, grads, v, layers, _, _ = _first_gradmix_step(tmp_path,
                                                      "gradmix_sgd")
  # Ren et al. 2018 at w = 0: w_i ~ max(0, <g_i, v>), normalised per layer.
  expected = []
  for l in range(len(layers)):
    raw = np.maximum([g[l] @ v[l] for g in grads], 0.0)
    expected.append(raw / raw.sum() if raw.sum() > 0 else np.full(2, 0.5))
  np.testing.assert_allclose(stats["weights"].numpy(), expected, atol=1e-5)
  # The exact solver's weights on the same step are another point: a
  # gradmix_sgd that ran the exact solver would fail the check above.
  exact, *_ = _first_gradmix_step(tmp_path / "exact", "gradmix")
  assert np.max(np.abs(exact["weights"].numpy() - np.asarray(expected))) > 0.01


@pytest.mark.parametrize("method", ["gradmix", "gradmix_no_adalr"])
def test_the_update_is_eta_times_lr_times_the_mixed_gradient(tmp_path,
                                                            method):
  # beta 1 keeps eta well inside (0, 1) so that eta = 1 is told apart.
  stats, grads, _, layers, before, trainer = _first_gradmix_step(
      tmp_path, method, beta=1.0, gamma=0.6)
  rho, eta = float(stats["rho"]), float(stats["eta"])
  if method == "gradmix":
    np.testing.assert_allclose(eta, 1 / (1 + np.exp(-(rho - 0.6))), rtol=1e-6)
    assert eta < 0.95
  else:
    assert eta == 1.0
  weights = stats["weights"].numpy()
  lr = float(trainer.config.lr)
  for l, layer in enumerate(layers):
    after = np.concatenate([v.numpy().ravel()
                            for v in layer.trainable_variables])
    mixed = sum(w * g[l] for w, g in zip(weights[l], grads))
    # SGD's first step with momentum: theta - (eta * lr) * mixed.
    np.testing.assert_allclose(after, before[l] - eta * lr * mixed,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("network", ["resnet18", "digit_convnet_batch_norm"])
def test_v_steers_gradmix_but_does_not_move_batch_norm_statistics(tmp_path,
                                                                  network):
  # ResNet-18 and the digit ConvNet with norm="batch" have batch norm: each
  # source's pass moves the moving statistics; V's pass (it only steers
  # the mix) must not.
  import ml_collections  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  config = _config(method="gradmix", steps=1)
  if network == "resnet18":
    config.model = ml_collections.ConfigDict(dict(name="resnet18",
                                                  weights=""))
  else:
    config.model.norm = "batch"
  data = _data()
  trainer = build_runner(config, data, str(tmp_path / "gradmix"))
  twin = build_runner(config, data, str(tmp_path / "twin"))   # the same init

  def statistics(model):
    return [v.numpy().copy() for v in model.non_trainable_variables]

  assert statistics(trainer.model)       # moving means and variances
  for a, b in zip(statistics(trainer.model), statistics(twin.model)):
    np.testing.assert_array_equal(a, b)
  indices = [batch_indices(len(s.y), config.batch_size, [config.seed, i],
                           0, 1)[0] for i, s in enumerate(data.sources)]
  trainer.step_functions[0](tuple(tf.constant(i) for i in indices))
  # The twin sees the two source batches only, in the step's order.
  for source, index in zip(data.sources, indices):
    twin.model(tf.constant(source.x[index]), head=source.head, training=True)
  after_step = statistics(trainer.model)
  for a, b in zip(after_step, statistics(twin.model)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # V's pass would have moved them (so the check above can fail).
  twin.model(tf.constant(data.v.images), head=data.target_head, training=True)
  assert any(not np.allclose(a, b, rtol=1e-5, atol=1e-6)
             for a, b in zip(after_step, statistics(twin.model)))


def test_gradmix_finetune_is_gradmix_then_fine_tuning_on_v(tmp_path):
  """Phase 1 is GradMix bit for bit (the same seed, the same batches);
  phase 2 is SGD on V alone at `finetune_lr` from GradMix's final weights,
  checked against one step computed here (momentum 0: w - lr * g)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  data = _data()

  def config(method, **overrides):
    return _config(method=method, momentum=0.0, finetune_lr=0.01,
                       **overrides)

  gradmix = build_runner(config("gradmix"), data, str(tmp_path / "gradmix"))
  gradmix.run()
  first_only = build_runner(config("gradmix_finetune", finetune_steps=0),
                            data, str(tmp_path / "first_only"))
  first_only.run()
  for mine, reference in zip(first_only.model.weights, gradmix.model.weights):
    np.testing.assert_array_equal(mine.numpy(), reference.numpy())
  tuned = build_runner(config("gradmix_finetune", finetune_steps=1), data,
                       str(tmp_path / "tuned"))
  assert [p.name for p in tuned.phases] == ["gradmix", "target"]
  tuned.run()
  model = gradmix.model
  with tf.GradientTape() as tape:
    logits = model(tf.constant(data.v.images), head=data.target_head,
                   training=True)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        tf.constant(data.v.labels), logits))
  grads = tape.gradient(loss, model.trainable_variables)
  expected = {v.path: v.numpy() - 0.01 * g.numpy()
              for v, g in zip(model.trainable_variables, grads)
              if g is not None}
  moved = 0
  for variable in tuned.model.trainable_variables:
    if variable.path in expected:
      np.testing.assert_allclose(variable.numpy(), expected[variable.path],
                                 rtol=1e-4, atol=1e-6, err_msg=variable.path)
      moved += 1
  assert moved
