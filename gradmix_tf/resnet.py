r"""ResNet-18 trunk (He et al. 2016) and the torchvision weight converter.

`resnet18_trunk(input_shape)` is torchvision's `resnet18` without its
classifier, as a Keras functional model from raw RGB images (0..255) to the
512-d average-pooled features:

    x / 255, normalised by the ImageNet mean (0.485, 0.456, 0.406) and
    standard deviation (0.229, 0.224, 0.225)
    conv1 7x7/2 (64), BN, ReLU, max-pool 3x3/2
    layer1..layer4: two basic blocks each (64, 128, 256, 512 channels;
      stride 2 at the first block of layers 2-4, with a 1x1/2 conv + BN
      shortcut), each block conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU
    global average pool -> 512

Padding is explicit (`ZeroPadding2D` + "valid") so strided convolutions pad
symmetrically as PyTorch does (Keras "same" pads more on the bottom/right);
max-pooling pads with zeros, which equals PyTorch's -inf padding because
its input is post-ReLU (>= 0). Batch norm uses PyTorch's epsilon 1e-5.

Layer names follow torchvision's state-dict keys (`conv1`, `bn1`,
`layer2_0_conv1`, `layer2_0_downsample_0`, ...), so
`load_torchvision_weights(trunk, state_dict)` maps every tensor by name:
conv weights `[out, in, kh, kw]` -> `[kh, kw, in, out]`; BN `weight, bias,
running_mean, running_var` -> `gamma, beta, moving_mean, moving_variance`.

Convert once and keep a Keras weights file:

    python -m gradmix_tf.resnet --torch_npz=resnet18.npz \
        --out=resnet18_imagenet.weights.h5

where `resnet18.npz` is `numpy.savez(path, **{k: v.numpy() for k, v in
torchvision.models.resnet18(weights="IMAGENET1K_V1").state_dict().items()})`.
"""

import argparse
import sys

import keras
import numpy as np

from gradmix_tf.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPSILON = 1e-5
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))
FEATURES = 512


def _conv_bn(x, filters, kernel, stride, name, bn_name):
  pad = kernel // 2
  if pad:
    x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
  x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid",
                          use_bias=False, name=name)(x)
  return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9,
                                         name=bn_name)(x)


def _basic_block(x, filters, stride, prefix):
  shortcut = x
  y = _conv_bn(x, filters, 3, stride, f"{prefix}_conv1", f"{prefix}_bn1")
  y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
  y = _conv_bn(y, filters, 3, 1, f"{prefix}_conv2", f"{prefix}_bn2")
  if stride != 1 or x.shape[-1] != filters:
    shortcut = _conv_bn(x, filters, 1, stride, f"{prefix}_downsample_0",
                        f"{prefix}_downsample_1")
  y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
  return keras.layers.ReLU(name=f"{prefix}_out")(y)


def resnet18_trunk(input_shape=(224, 224, 3)):
  """The ResNet-18 feature extractor (module docstring)."""
  images = keras.Input(shape=tuple(input_shape), name="images")
  x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(images)
  x = keras.layers.Normalization(
      mean=IMAGENET_MEAN, variance=tuple(s * s for s in IMAGENET_STD),
      name="imagenet_normalise")(x)
  x = _conv_bn(x, 64, 7, 2, "conv1", "bn1")
  x = keras.layers.ReLU(name="relu")(x)
  x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
  x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
  for stage, (filters, stride) in enumerate(STAGES, start=1):
    for block in range(2):
      x = _basic_block(x, filters, stride if block == 0 else 1,
                       f"layer{stage}_{block}")
  features = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
  return keras.Model(images, features, name="trunk")


def torchvision_key(layer_name):
  """`layer2_0_downsample_0` -> `layer2.0.downsample.0`."""
  return layer_name.replace("_", ".")


def load_torchvision_weights(trunk, state_dict):
  """Assigns a torchvision `resnet18` state dict (name -> array) to `trunk`.

  Returns:
    `(fc_kernel [512, 1000], fc_bias [1000])` (Keras layout) when the
    state dict has the ImageNet classifier, else `None`.

  Raises:
    DataError: a missing tensor or a shape that does not match.
  """
  def tensor(key, shape=None):
    if key not in state_dict:
      raise DataError(f"the torchvision state dict has no {key!r}; is it a "
                      "resnet18 state dict?")
    value = np.asarray(state_dict[key], np.float32)
    if shape is not None and value.shape != tuple(shape):
      raise DataError(f"{key} has shape {value.shape}, expected "
                      f"{tuple(shape)} (resnet18)")
    return value

  for layer in trunk.layers:
    key = torchvision_key(layer.name)
    if isinstance(layer, keras.layers.Conv2D):
      kernel = layer.kernel
      kh, kw, cin, cout = kernel.shape
      layer.kernel.assign(tensor(f"{key}.weight", (cout, cin, kh, kw))
                          .transpose(2, 3, 1, 0))
    elif isinstance(layer, keras.layers.BatchNormalization):
      shape = (layer.gamma.shape[0],)
      layer.gamma.assign(tensor(f"{key}.weight", shape))
      layer.beta.assign(tensor(f"{key}.bias", shape))
      layer.moving_mean.assign(tensor(f"{key}.running_mean", shape))
      layer.moving_variance.assign(tensor(f"{key}.running_var", shape))
  if "fc.weight" in state_dict:
    return tensor("fc.weight").T, tensor("fc.bias")
  return None


def load_trunk_weights(trunk, path):
  """Loads ImageNet weights into `trunk` from a Keras `.weights.h5` file or
  a torchvision state dict saved as `.npz`.

  Raises:
    DataError: the file is missing, of another kind, or does not fit.
  """
  import os  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise DataError(f"model weights file {path} does not exist; set "
                    "config.model.weights to a .weights.h5 or torchvision "
                    ".npz file, or to '' to start from random weights")
  if path.endswith(".npz"):
    with np.load(path) as archive:
      load_torchvision_weights(trunk, dict(archive))
  elif path.endswith(".weights.h5"):
    try:
      trunk.load_weights(path)
    except ValueError as err:
      raise DataError(f"{path} does not fit the ResNet-18 trunk: {err}") from None
  else:
    raise DataError(f"model weights {path}: use a Keras .weights.h5 file or "
                    "a torchvision state dict saved as .npz")


def main(argv=None):
  parser = argparse.ArgumentParser(
      description="Convert a torchvision resnet18 state dict (.npz) into a "
      "Keras weights file for the ResNet-18 trunk.")
  parser.add_argument("--torch_npz", required=True)
  parser.add_argument("--out", required=True,
                      help="output path ending in .weights.h5")
  args = parser.parse_args(argv)
  if not args.out.endswith(".weights.h5"):
    print("error: --out must end in .weights.h5", file=sys.stderr)
    return 2
  trunk = resnet18_trunk((224, 224, 3))
  try:
    load_trunk_weights(trunk, args.torch_npz)
  except DataError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  trunk.save_weights(args.out)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
