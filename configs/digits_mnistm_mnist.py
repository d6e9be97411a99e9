"""digits_mnistm_mnist: MNIST-M 5-9 + MNIST 0-4 -> MNIST 5-9 (the twin closest
to the paper: only SVHN is replaced).

The paper's digit experiment (section 4.2) is SVHN 5-9 + MNIST 0-4 -> MNIST
5-9. SVHN cannot be obtained here; MNIST-M plays its role:

* S1 = MNIST-M train digits 5-9 built from one half of MNIST train 5-9
  (`half=0`): the target's task in another, textured colour domain (SVHN's
  role);
* S2 = MNIST train digits 0-4: the target's own domain, another task
  (exactly the paper's S2);
* target = MNIST 5-9 from the *other* half of MNIST train 5-9 (`half=1`):
  H = 1000 fixed images, V = k per class (by seed), U = the rest;
* test = MNIST test 5-9.

MNIST-M is built image by image from MNIST (`gradmix_tf/data/mnistm.py`), so
both datasets hold the same digits in the same order, and the two halves
(the same permutation of the same indices, `split_seed`) never share a
digit: no image is both a source and a target image
(`tests/test_data.py::test_digits_mnistm_mnist_halves_share_no_digit`).
Target only, source only and fine-tune are then directly comparable with
the paper's numbers (the target and S2 are the paper's).

Inputs are 28x28 RGB (MNIST is repeated to three channels).

Run (about 2 minutes of training on 2 CPU cores, 2 min 20 s in all):

    python -m gradmix_tf.launch --config=digits_mnistm_mnist --workdir=runs/digits_mnistm_mnist

Smoke test (seconds): add `--config.quick=True`.

Training protocol: `stable` (its three departures from the paper and the
measurements behind them: `config_lib.PROTOCOLS`); `--config.protocol=paper`
is the paper's network and constant rate.
"""

from gradmix_tf import config_lib

DIGITS_HIGH = (5, 6, 7, 8, 9)
DIGITS_LOW = (0, 1, 2, 3, 4)


def get_config():
  config = config_lib.base_config()
  config.protocol = "stable"        # see the module docstring
  config.name = "digits_mnistm_mnist"
  config.input_shape = (28, 28, 3)
  config.sources.s1 = config_lib.source("mnistm", DIGITS_HIGH, half=0)
  config.sources.s2 = config_lib.source("mnist", DIGITS_LOW)
  config.target.dataset = "mnist"
  config.target.classes = DIGITS_HIGH
  config.target.half = 1
  return config
