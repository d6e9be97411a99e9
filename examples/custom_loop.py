"""GradMix in your own training loop, on your own Keras model and data.

A small functional Keras model (a shared two-layer trunk, one head per
label space) and two sources from `tf.data`:

* source A has the target's 3 classes, in another domain (shifted inputs);
* source B has another task (2 classes) in the target's domain;
* V is 4 labelled target examples per class.

Every step takes one batch of each source and all of V, computes a loss per
source and V's loss under one persistent tape, and hands the k + 1 gradient
lists to `GradMix.apply_gradmix`, which mixes the trunk layers toward V's
gradient (heads get their own sources' gradients). With `--mixed_precision`
the model computes in float16 and the inner optimizer is wrapped in a
`LossScaleOptimizer`; every loss goes through `optimizer.scale_loss`.

    python examples/custom_loop.py
    python examples/custom_loop.py --mixed_precision
"""

import argparse

import keras
import numpy as np
import tensorflow as tf

import gradmix_tf

FEATURES = 8
TARGET_CLASSES, OTHER_CLASSES = 3, 2
SOURCE_HEADS = (0, 1)     # source A -> head 0 (the target's), B -> head 1
TARGET_HEAD = 0


def build_model():
  """A trunk of two Dense layers and two heads; returns both heads."""
  inputs = keras.Input((FEATURES,))
  x = keras.layers.Dense(32, activation="relu", name="trunk_1")(inputs)
  x = keras.layers.Dense(32, activation="relu", name="trunk_2")(x)
  # Logits in float32 under mixed precision: the losses stay float32.
  heads = [keras.layers.Dense(n, dtype="float32", name=f"head_{h}")(x)
           for h, n in enumerate((TARGET_CLASSES, OTHER_CLASSES))]
  return keras.Model(inputs, heads)


def make_data(seed=0):
  """Sources A and B as repeating batched datasets, V, and a test set."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(TARGET_CLASSES + OTHER_CLASSES, FEATURES)) * 2

  def draw(classes, n, shift=0.0):
    labels = rng.integers(0, len(classes), n)
    x = centres[np.asarray(classes)[labels]] + rng.normal(size=(n, FEATURES))
    return (x + shift).astype(np.float32), labels.astype(np.int32)

  target, other = range(TARGET_CLASSES), range(TARGET_CLASSES, 5)
  source_a = draw(target, 2000, shift=1.5)     # target task, other domain
  source_b = draw(other, 2000)                 # other task, target domain
  sources = tuple(
      tf.data.Dataset.from_tensor_slices(data).shuffle(2000, seed=seed)
      .repeat().batch(32) for data in (source_a, source_b))
  v_x, v_y = draw(target, 4 * TARGET_CLASSES)
  return tf.data.Dataset.zip(sources), (v_x, v_y), draw(target, 1000)


def train(steps=300, mixed_precision=False, seed=0, log_every=100):
  """Trains with GradMix; returns the target test accuracy and last stats."""
  keras.utils.set_random_seed(seed)
  keras.mixed_precision.set_global_policy(
      "mixed_float16" if mixed_precision else "float32")
  try:
    model = build_model()
    inner = keras.optimizers.SGD(0.05, momentum=0.9)
    if mixed_precision:
      inner = keras.optimizers.LossScaleOptimizer(inner)
    optimizer = gradmix_tf.GradMix(inner, beta=10.0, gamma=0.6)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    sources, (v_x, v_y), (test_x, test_y) = make_data(seed)

    @tf.function
    def train_step(source_batches):
      variables = model.trainable_variables
      with tf.GradientTape(persistent=True) as tape:
        losses = [loss_fn(y, model(x, training=True)[head])
                  for (x, y), head in zip(source_batches, SOURCE_HEADS)]
        v_loss = loss_fn(v_y, model(v_x, training=True)[TARGET_HEAD])
        scaled = [optimizer.scale_loss(loss) for loss in losses + [v_loss]]
      source_grads = [tape.gradient(loss, variables) for loss in scaled[:-1]]
      v_grads = tape.gradient(scaled[-1], variables)
      del tape
      stats = optimizer.apply_gradmix(source_grads, v_grads, variables)
      return losses, v_loss, stats

    for step, batches in enumerate(sources.take(steps)):
      losses, v_loss, stats = train_step(batches)
      if log_every and (step + 1) % log_every == 0:
        print(f"step {step + 1}: source losses "
              f"{[round(float(l), 3) for l in losses]}, V {float(v_loss):.3f}, "
              f"rho {float(stats['rho']):.2f}, "
              f"eta {float(stats['eta']):.2f}, "
              f"layer weights {(np.round(stats['weights'].numpy(), 2) + 0.0).tolist()}")
    logits = model.predict(test_x, verbose=0)[TARGET_HEAD]
    accuracy = float(np.mean(np.argmax(logits, -1) == test_y))
    print(f"target test accuracy: {accuracy:.3f} "
          f"(mixed layers: {optimizer.mixed_layer_names})")
    return accuracy, stats, optimizer
  finally:
    keras.mixed_precision.set_global_policy("float32")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--mixed_precision", action="store_true")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  train(args.steps, args.mixed_precision, args.seed)


if __name__ == "__main__":
  main()
