"""digits: SVHN 5-9 + MNIST 0-4 -> MNIST 5-9, the paper's setting (section 4.2).

* S1 = SVHN train digits 5-9 (official `train_32x32.mat`, label 10 = '0');
* S2 = MNIST train digits 0-4;
* target = MNIST train 5-9: H = 1000 fixed images, V = k per class (by
  seed), U = the rest; test = MNIST test 5-9.

Inputs are 32x32 RGB: MNIST is zero-padded 28 -> 32 and repeated to RGB.
SVHN must be in the data directory (`train_32x32.mat`, `test_32x32.mat`);
without it the launcher says which files to provide. Use
`--config=digits_mnistm` for the runnable twin of this setting.

    python -m gradmix_tf.launch --config=digits --workdir=runs/digits \
        --config.data_dir=/path/with/svhn_and_mnist

Training protocol: `stable` (its three departures from the paper and the
measurements behind them: `config_lib.PROTOCOLS`); `--config.protocol=paper`
is the paper's network and constant rate.
"""

from gradmix_tf import config_lib


def get_config():
  config = config_lib.base_config()
  config.protocol = "stable"        # see the module docstring
  config.name = "digits"
  config.input_shape = (32, 32, 3)
  config.sources.s1 = config_lib.source("svhn", (5, 6, 7, 8, 9))
  config.sources.s2 = config_lib.source("mnist", (0, 1, 2, 3, 4))
  config.target.dataset = "mnist"
  config.target.classes = (5, 6, 7, 8, 9)
  config.target.half = -1
  return config
