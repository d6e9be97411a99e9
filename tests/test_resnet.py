"""ResNet-18: the torchvision converter against a NumPy forward pass."""

import numpy as np
import pytest

from gradmix_tf import resnet
from gradmix_tf.errors import DataError

_BLOCKS = [(stage, block) for stage in range(1, 5) for block in range(2)]


def _random_state_dict(rng):
  """A torchvision resnet18 state dict with random values (its key names
  and shapes)."""
  state = {}

  def conv(key, cout, cin, k):
    state[f"{key}.weight"] = (rng.normal(size=(cout, cin, k, k))
                              * np.sqrt(2.0 / (cin * k * k))).astype(
                                  np.float32)

  def bn(key, c):
    state[f"{key}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    state[f"{key}.bias"] = rng.normal(scale=0.1, size=c).astype(np.float32)
    state[f"{key}.running_mean"] = rng.normal(scale=0.1, size=c).astype(
        np.float32)
    state[f"{key}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    state[f"{key}.num_batches_tracked"] = np.array(7)

  conv("conv1", 64, 3, 7)
  bn("bn1", 64)
  cin = 64
  for stage, block in _BLOCKS:
    cout = 64 * 2 ** (stage - 1)
    prefix = f"layer{stage}.{block}"
    conv(f"{prefix}.conv1", cout, cin if block == 0 else cout, 3)
    bn(f"{prefix}.bn1", cout)
    conv(f"{prefix}.conv2", cout, cout, 3)
    bn(f"{prefix}.bn2", cout)
    if block == 0 and stage > 1:
      conv(f"{prefix}.downsample.0", cout, cin, 1)
      bn(f"{prefix}.downsample.1", cout)
    cin = cout
  state["fc.weight"] = rng.normal(scale=0.05, size=(1000, 512)).astype(
      np.float32)
  state["fc.bias"] = rng.normal(scale=0.05, size=1000).astype(np.float32)
  return state


def _numpy_resnet18(images, state):
  """torchvision's resnet18 forward (eval mode), NCHW, float64."""
  mean = np.array(resnet.IMAGENET_MEAN)[None, :, None, None]
  std = np.array(resnet.IMAGENET_STD)[None, :, None, None]
  x = (images.astype(np.float64).transpose(0, 3, 1, 2) / 255.0 - mean) / std

  def conv(x, key, stride, pad):
    w = state[f"{key}.weight"].astype(np.float64)
    k = w.shape[-1]
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), (2, 3))
    windows = windows[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", windows, w)

  def bn(x, key):
    g, b, m, v = (state[f"{key}.{n}"].astype(np.float64)[None, :, None, None]
                  for n in ("weight", "bias", "running_mean", "running_var"))
    return (x - m) / np.sqrt(v + 1e-5) * g + b

  relu = lambda x: np.maximum(x, 0.0)
  x = relu(bn(conv(x, "conv1", 2, 3), "bn1"))
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  x = np.lib.stride_tricks.sliding_window_view(x, (3, 3), (2, 3))[
      :, :, ::2, ::2].max(axis=(-1, -2))
  for stage, block in _BLOCKS:
    prefix = f"layer{stage}.{block}"
    stride = 2 if (block == 0 and stage > 1) else 1
    y = relu(bn(conv(x, f"{prefix}.conv1", stride, 1), f"{prefix}.bn1"))
    y = bn(conv(y, f"{prefix}.conv2", 1, 1), f"{prefix}.bn2")
    if f"{prefix}.downsample.0.weight" in state:
      x = bn(conv(x, f"{prefix}.downsample.0", stride, 0),
             f"{prefix}.downsample.1")
    x = relu(y + x)
  features = x.mean(axis=(2, 3))
  return features @ state["fc.weight"].T.astype(np.float64) + state["fc.bias"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  rng = np.random.default_rng(0)
  state = _random_state_dict(rng)
  path = str(tmp_path_factory.mktemp("weights") / "resnet18.npz")
  np.savez(path, **state)
  trunk = resnet.resnet18_trunk((40, 40, 3))
  resnet.load_trunk_weights(trunk, path)
  images = rng.integers(0, 256, (2, 40, 40, 3)).astype(np.uint8)
  return state, trunk, images, path


def test_converted_network_gives_the_numpy_logits(converted):
  state, trunk, images, _ = converted
  kernel, bias = resnet.load_torchvision_weights(trunk, state)
  logits = trunk(images.astype(np.float32), training=False).numpy() @ (
      kernel) + bias
  expected = _numpy_resnet18(images, state)
  np.testing.assert_allclose(logits, expected, rtol=1e-3,
                             atol=1e-3 * np.abs(expected).max())
  assert np.abs(expected).max() > 0.1   # not a trivially small output


def test_keras_weights_file_round_trip(converted, tmp_path):
  _, trunk, images, path = converted
  out = str(tmp_path / "trunk.weights.h5")
  assert resnet.main(["--torch_npz", path, "--out", out]) == 0
  fresh = resnet.resnet18_trunk((40, 40, 3))
  resnet.load_trunk_weights(fresh, out)
  np.testing.assert_allclose(
      fresh(images.astype(np.float32)).numpy(),
      trunk(images.astype(np.float32)).numpy(), rtol=1e-5, atol=1e-5)


def test_bad_weight_files_are_clear_errors(converted, tmp_path):
  state, _, _, _ = converted
  trunk = resnet.resnet18_trunk((40, 40, 3))
  with pytest.raises(DataError, match="does not exist"):
    resnet.load_trunk_weights(trunk, str(tmp_path / "none.npz"))
  broken = dict(state)
  del broken["layer3.1.bn2.running_var"]
  with pytest.raises(DataError, match="layer3.1.bn2.running_var"):
    resnet.load_torchvision_weights(trunk, broken)
  broken = dict(state)
  broken["conv1.weight"] = broken["conv1.weight"][:32]
  with pytest.raises(DataError, match="conv1.weight has shape"):
    resnet.load_torchvision_weights(trunk, broken)
  (tmp_path / "x.pt").write_bytes(b"")
  with pytest.raises(DataError, match=".weights.h5"):
    resnet.load_trunk_weights(trunk, str(tmp_path / "x.pt"))
