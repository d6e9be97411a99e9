"""GradMix with Keras' fit() on your own two-head model and tf.data sources.

The setting of examples/custom_loop.py (source A: the target's 3 classes in
another domain; source B: another task in the target's domain; V: 4
labelled target examples per class), trained with `model.fit` and Keras'
callbacks, saved as `.keras`, loaded back and used to predict.

    python examples/own_model_fit.py --out=/tmp/own_model_fit
    tensorboard --logdir=/tmp/own_model_fit/tensorboard
"""

import argparse
import os

import keras
import numpy as np
import tensorflow as tf

import gradmix_tf

FEATURES, TARGET_CLASSES = 8, 3


def build_model():
  """A user's functional model: a shared trunk, a target and another head."""
  inputs = keras.Input((FEATURES,))
  x = keras.layers.Dense(32, activation="relu", name="trunk_1")(inputs)
  x = keras.layers.Dense(32, activation="relu", name="trunk_2")(x)
  return keras.Model(inputs, {
      "target": keras.layers.Dense(TARGET_CLASSES, name="target_head")(x),
      "other": keras.layers.Dense(2, name="other_head")(x)})


def make_data(seed=0):
  """`{source: tf.data batches}`, V, validation and test arrays."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(5, FEATURES)) * 2

  def draw(classes, n, shift=0.0):
    labels = rng.integers(0, len(classes), n)
    x = centres[np.asarray(classes)[labels]] + rng.normal(size=(n, FEATURES))
    return (x + shift).astype(np.float32), labels.astype(np.int32)

  sources = {
      "other_domain": draw(range(3), 2000, shift=1.5),
      "other_task": draw(range(3, 5), 2000)}
  sources = {name: tf.data.Dataset.from_tensor_slices(data)
             .shuffle(2000, seed=seed).repeat().batch(32)
             for name, data in sources.items()}
  return (sources, draw(range(3), 4 * TARGET_CLASSES),
          draw(range(3), 200), draw(range(3), 1000))


def train(out, epochs=3, steps_per_epoch=100, seed=0, verbose=1):
  """Fits, saves, reloads; returns (test accuracy, reloaded model, history)."""
  keras.utils.set_random_seed(seed)
  sources, v, validation, test = make_data(seed)
  model = gradmix_tf.MultiSourceModel(
      build_model(),
      source_outputs={"other_domain": "target", "other_task": "other"},
      validation_output="target")
  model.compile(
      optimizer=gradmix_tf.GradMix(keras.optimizers.SGD(0.05, momentum=0.9),
                                   beta=10.0, gamma=0.6),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"])
  history = model.fit(
      gradmix_tf.multi_source_dataset(sources, validation=v),
      epochs=epochs, steps_per_epoch=steps_per_epoch,
      validation_data=validation, verbose=verbose,
      callbacks=[
          keras.callbacks.TensorBoard(os.path.join(out, "tensorboard")),
          keras.callbacks.ModelCheckpoint(os.path.join(out, "best.keras"),
                                          monitor="val_accuracy",
                                          save_best_only=True),
          keras.callbacks.EarlyStopping(monitor="val_loss", patience=3),
          keras.callbacks.BackupAndRestore(os.path.join(out, "backup")),
          keras.callbacks.CSVLogger(os.path.join(out, "log.csv"))])
  path = os.path.join(out, "model.keras")
  model.save(path)
  reloaded = keras.models.load_model(path)
  probabilities = tf.nn.softmax(reloaded.predict(test[0], verbose=0))
  accuracy = float(np.mean(np.argmax(probabilities, -1) == test[1]))
  if verbose:
    print(f"reloaded {path}: test accuracy {accuracy:.3f}; last epoch: "
          f"eta {history.history['gradmix_eta'][-1]:.2f}, "
          f"V loss {history.history['loss_V'][-1]:.3f}")
  return accuracy, reloaded, history


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="own_model_fit")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  train(args.out, args.epochs, seed=args.seed)


if __name__ == "__main__":
  main()
