"""MultiSourceModel: GradMix through compile()/fit(), equal to the runner."""

import csv
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config, tiny_data
import gradmix_tf
from gradmix_tf.models import AllHeads
from gradmix_tf.multi_source_model import as_fit_element
from gradmix_tf.runner import build_runner
from gradmix_tf.batches import batch_indices
from gradmix_tf.tasks.multi_source import make_gradmix


def _loss():
  return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _batches(data, config, steps):
  """The runner's source batches of steps 0..steps-1, as index arrays."""
  return [[batch_indices(len(s.y), config.batch_size, [config.seed, i],
                         step, step + 1)[0]
           for i, s in enumerate(data.sources)] for step in range(steps)]


def _fit_elements(data, batches):
  names = [s.name for s in data.sources]
  elements = [{**{n: (s.x[i], s.y[i]) for n, s, i in
                  zip(names, data.sources, step)},
               "validation": (data.v.images, data.v.labels)}
              for step in batches]
  return tf.data.Dataset.from_tensor_slices(
      {key: tuple(np.stack([e[key][j] for e in elements]) for j in (0, 1))
       for key in elements[0]}).map(as_fit_element)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_fit_takes_the_runners_gradmix_step(tmp_path, norm):
  # Three steps of the launcher's GradMix step and three fit() steps on the
  # same batches from the same initial weights end at the same weights
  # (and, with batch norm, the same moving statistics: V moves neither).
  config = tiny_config(method="gradmix", steps=3)
  config.model.norm = norm
  data = tiny_data()
  runner = build_runner(config, data, str(tmp_path / "runner"))
  twin = build_runner(config, data, str(tmp_path / "twin"))    # the same init
  batches = _batches(data, config, 3)
  for step in batches:
    runner.step_functions[0](tuple(tf.constant(i) for i in step))
  model = gradmix_tf.MultiSourceModel(
      AllHeads(twin.model), {s.name: s.head for s in data.sources},
      validation_output=data.target_head, log_mix_weights=True)
  model.compile(optimizer=make_gradmix(config, "gradmix"), loss=_loss())
  history = model.fit(_fit_elements(data, batches), epochs=1, verbose=0)
  for a, b in zip(runner.model.weights, twin.model.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, rtol=1e-5,
                               err_msg=a.path)
  assert int(model.optimizer.iterations) == 3
  logs = history.history
  assert {"loss", "loss_s1", "loss_s2", "loss_V", "gradmix_rho",
          "gradmix_eta"} <= set(logs)
  assert any(k.startswith("mix_weight/") and k.endswith("/s2") for k in logs)
  assert logs["loss"][0] == pytest.approx(logs["loss_s1"][0]
                                          + logs["loss_s2"][0], rel=1e-5)


def _user_model():
  """A small functional model of a user's own: trunk, two heads."""
  inputs = keras.Input((6,))
  x = keras.layers.Dense(8, activation="relu", name="trunk")(inputs)
  return keras.Model(inputs, [keras.layers.Dense(3, name="target_head")(x),
                              keras.layers.Dense(2, name="other_head")(x)])


def _user_data(rng):
  def source(n, classes):
    return (rng.normal(size=(n, 6)).astype(np.float32),
            rng.integers(0, classes, n).astype(np.int32))
  return {"a": source(64, 3), "b": source(64, 2)}, source(6, 3), source(20, 3)


def test_fit_with_callbacks_save_load_and_evaluate(tmp_path):
  rng = np.random.default_rng(0)
  sources, v, test = _user_data(rng)
  model = gradmix_tf.MultiSourceModel(_user_model(), {"a": 0, "b": 1})
  model.compile(optimizer=gradmix_tf.GradMix(keras.optimizers.SGD(0.05,
                                                                  momentum=0.9)),
                loss=_loss(), metrics=["accuracy"])
  callbacks = [
      keras.callbacks.TensorBoard(str(tmp_path / "tb")),
      keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras")),
      keras.callbacks.EarlyStopping(monitor="val_loss", patience=5),
      keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
      keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))]
  model.fit(gradmix_tf.multi_source_dataset(sources, v, batch_size=16),
            epochs=2, steps_per_epoch=4, validation_data=test,
            callbacks=callbacks, verbose=0)
  with open(tmp_path / "log.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2
  assert {"loss_a", "loss_b", "loss_V", "gradmix_eta", "val_loss",
          "val_accuracy"} <= set(rows[0])
  assert "loss_a" not in model.evaluate(*test, return_dict=True, verbose=0)
  assert glob.glob(str(tmp_path / "tb" / "train" / "events.*"))
  assert os.path.isfile(tmp_path / "best.keras")
  # .keras round trip, optimizer state included.
  path = str(tmp_path / "model.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert isinstance(loaded, gradmix_tf.MultiSourceModel)
  assert isinstance(loaded.optimizer, gradmix_tf.GradMix)
  assert int(loaded.optimizer.iterations) == 8
  np.testing.assert_allclose(loaded.predict(test[0], verbose=0),
                             model.predict(test[0], verbose=0), atol=1e-6)
  for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  # Both continue to the same weights.
  for m in (model, loaded):
    m.fit(gradmix_tf.multi_source_dataset(sources, v, batch_size=16, seed=3),
          epochs=1, steps_per_epoch=2, verbose=0)
  for a, b in zip(loaded.weights, model.weights):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_explicit_shared_and_source_variables():
  # Source a keeps its gradient on the trunk and the target head only:
  # the other head, which its loss never reaches anyway, and nothing else.
  # Declared so, b may not touch the target head even through a shared
  # output: the trunk is the only mixed layer.
  rng = np.random.default_rng(1)
  sources, v, _ = _user_data(rng)
  user = _user_model()
  trunk = user.get_layer("trunk").trainable_variables
  model = gradmix_tf.MultiSourceModel(
      user, {"a": 0, "b": 1}, shared_variables=trunk, log_mix_weights=True,
      source_variables={"a": user.get_layer("target_head").trainable_variables,
                        "b": user.get_layer("other_head").trainable_variables})
  model.compile(optimizer=gradmix_tf.GradMix(keras.optimizers.SGD(0.05)),
                loss=_loss())
  history = model.fit(gradmix_tf.multi_source_dataset(sources, v),
                      epochs=1, steps_per_epoch=1, verbose=0)
  assert model.optimizer.mixed_layer_names == ["trunk"]
  assert {"mix_weight/trunk/a", "mix_weight/trunk/b"} <= set(history.history)


def test_explicit_variables_survive_save_and_load(tmp_path):
  # Source a declared to train the trunk only: the target head, which its
  # loss reaches, gets no gradient (V's head gradient is never applied),
  # before and after a .keras round trip; inferred, a would train it.
  rng = np.random.default_rng(2)
  sources, v, _ = _user_data(rng)
  user = _user_model()
  model = gradmix_tf.MultiSourceModel(
      user, {"a": 0, "b": 1},
      shared_variables=user.get_layer("trunk").trainable_variables,
      source_variables={"a": [],
                        "b": user.get_layer("other_head").trainable_variables})
  model.compile(optimizer=gradmix_tf.GradMix(keras.optimizers.SGD(0.05)),
                loss=_loss())
  path = str(tmp_path / "explicit.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  for m in (model, loaded):
    head = m.model.get_layer("target_head")
    before = [w.numpy().copy() for w in head.weights]
    other = m.model.get_layer("other_head").kernel.numpy().copy()
    m.fit(gradmix_tf.multi_source_dataset(sources, v), epochs=1,
          steps_per_epoch=2, verbose=0)
    for w, b in zip(head.weights, before):
      np.testing.assert_array_equal(w.numpy(), b)
    assert not np.array_equal(m.model.get_layer("other_head").kernel.numpy(),
                              other)


def test_an_unbuilt_model_is_refused_with_the_fix():
  unbuilt = keras.Sequential([keras.layers.Dense(2)])
  with pytest.raises(ValueError, match="needs a built model"):
    gradmix_tf.MultiSourceModel(unbuilt, {"a": 0})


def test_compile_refuses_an_optimizer_that_is_not_gradmix():
  model = gradmix_tf.MultiSourceModel(_user_model(), {"a": 0, "b": 1})
  with pytest.raises(ValueError, match="trains with GradMix"):
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=_loss())


def test_fit_under_mixed_float16_moves_the_loss_scale_inside_gradmix():
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    rng = np.random.default_rng(2)
    sources, v, test = _user_data(rng)
    model = gradmix_tf.MultiSourceModel(_user_model(), {"a": 0, "b": 1})
    model.compile(optimizer=gradmix_tf.GradMix(keras.optimizers.SGD(0.05)),
                  loss=_loss())
    assert isinstance(model.optimizer, gradmix_tf.GradMix)
    assert isinstance(model.optimizer.inner_optimizer,
                      keras.optimizers.LossScaleOptimizer)
    history = model.fit(gradmix_tf.multi_source_dataset(sources, v),
                        epochs=1, steps_per_epoch=3, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(model.optimizer.skipped_steps) == 0
    assert int(model.optimizer.iterations) == 3
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_a_loss_given_by_name_steps_as_the_loss_object():
  rng = np.random.default_rng(4)
  sources, v, _ = _user_data(rng)
  losses = {}
  for loss in (keras.losses.SparseCategoricalCrossentropy(from_logits=True),
               "sparse_categorical_crossentropy"):
    keras.utils.set_random_seed(0)
    user = _user_model()
    softmax = keras.Model(user.inputs,
                          [keras.layers.Softmax()(o) for o in user.outputs])
    model = gradmix_tf.MultiSourceModel(
        softmax if isinstance(loss, str) else user, {"a": 0, "b": 1})
    model.compile(optimizer=gradmix_tf.GradMix(keras.optimizers.SGD(0.05)),
                  loss=loss)
    model.fit(gradmix_tf.multi_source_dataset(sources, v), epochs=1,
              steps_per_epoch=1, verbose=0)
    losses[isinstance(loss, str)] = [w.numpy() for w in user.weights]
  # Logits + from_logits and softmax outputs + the function: the same
  # mean loss, so the same step (a per-example sum would step 16x further).
  for by_name, by_object in zip(losses[True], losses[False]):
    np.testing.assert_allclose(by_name, by_object, atol=1e-5)


_FIT_UNTIL_SIGTERM = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import keras
import gradmix_tf
import own_model_fit as example

backup, log, kill_after = sys.argv[2], sys.argv[3], int(sys.argv[4])


class Record(keras.callbacks.Callback):
  def on_epoch_end(self, epoch, logs=None):
    with open(log, "a") as f:
      f.write(f"{epoch} {int(self.model.optimizer.iterations)}\n")
    if epoch == kill_after:
      os.kill(os.getpid(), signal.SIGTERM)   # the default action: killed


keras.utils.set_random_seed(0)
sources, v, validation, _ = example.make_data(0)
model = gradmix_tf.MultiSourceModel(
    example.build_model(),
    source_outputs={"other_domain": "target", "other_task": "other"},
    validation_output="target")
model.compile(optimizer=gradmix_tf.GradMix(keras.optimizers.SGD(0.05)),
              loss=keras.losses.SparseCategoricalCrossentropy(
                  from_logits=True))
model.fit(gradmix_tf.multi_source_dataset(sources, validation=v), epochs=4,
          steps_per_epoch=10, verbose=0,
          # BackupAndRestore first: the backup of an epoch is written
          # before the next callback sees its end.
          callbacks=[keras.callbacks.BackupAndRestore(backup), Record()])
"""


def test_a_sigtermed_fit_resumes_with_backup_and_restore(tmp_path):
  """fit() has no stop handler of its own: SIGTERM kills it. Keras'
  BackupAndRestore (README "Using fit()") keeps the last finished epoch,
  optimizer included, and the rerun continues from the next epoch."""
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  backup, log = tmp_path / "backup", tmp_path / "epochs.log"
  command = [sys.executable, "-c", _FIT_UNTIL_SIGTERM,
             os.path.join(REPO, "examples"), str(backup), str(log)]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  killed = subprocess.run(command + ["1"], capture_output=True, text=True,
                          env=env, timeout=300)
  assert killed.returncode == -signal.SIGTERM, killed.stderr[-3000:]
  assert os.listdir(backup)               # the backup of epoch 1 is there
  finished = subprocess.run(command + ["-1"], capture_output=True, text=True,
                            env=env, timeout=300)
  assert finished.returncode == 0, finished.stderr[-3000:]
  # Epochs 0 and 1, killed; then 2 and 3 from the restored optimizer
  # (its step count goes on from 20).
  assert log.read_text().split("\n")[:-1] == ["0 10", "1 20", "2 30", "3 40"]
  assert not backup.exists()       # removed when training ends
