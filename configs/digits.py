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

Training protocol: `config.protocol = "stable"`, which departs from the
paper's section 4.1 in three places, each measured on H and training health
(docs/RESULTS.md, "A digit protocol that does not die"): batch norm without
affine before every ReLU of the digit trunk (the paper's ConvNet as we read
it has none; unnormalised, runs died at lr 0.05), a linear warm-up over the
first 10 % of the steps and a cosine decay to 0 over the last 25 % (the
paper: a constant rate). The rate 0.05, momentum 0.9 and fine-tune rate
0.005 are the paper's. `--config.protocol=paper` restores the paper's
network and constant rate in one flag.
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
