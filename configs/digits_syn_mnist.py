"""digits_syn_mnist: printed digits 5-9 + MNIST 0-4 -> MNIST 5-9 (the far
twin: a source in SVHN's role).

The paper's digit experiment (section 4.2) is SVHN 5-9 + MNIST 0-4 -> MNIST
5-9: S1 is far from the target (source only reaches 82.4 % in the paper's
Table 1), and GradMix's gain comes from turning it down layer by layer.
SVHN cannot be obtained here; `syndigits` plays its role:

* S1 = `syndigits` train digits 5-9: digits printed in 21 TrueType fonts in
  colour on photo crops or flat colour, with neighbouring digits cut by the
  frame, blur and noise (`gradmix_tf/data/syndigits.py`; a stand-in for
  SVHN's house numbers made as SynNumbers was);
* S2 = MNIST train digits 0-4 (the paper's S2 exactly);
* target = MNIST train digits 5-9: H = 1000 fixed images, V = k per class
  (by seed), U = the rest; test = MNIST test 5-9 (the paper's target
  exactly).

Inputs are 32x32 RGB as in the paper's digit network: MNIST is padded from
28 to 32 and repeated to three channels, as it is beside SVHN.

Run (the printed digits are rendered once, about 1.5 minutes, and cached):

    python -m gradmix_tf.launch --config=digits_syn_mnist --workdir=runs/digits_syn_mnist

Smoke test: add `--config.quick=True`.

Training protocol: `stable` (`config_lib.PROTOCOLS`), as on the other twins.
"""

from gradmix_tf import config_lib

DIGITS_HIGH = (5, 6, 7, 8, 9)
DIGITS_LOW = (0, 1, 2, 3, 4)


def get_config():
  config = config_lib.base_config()
  config.protocol = "stable"
  config.name = "digits_syn_mnist"
  config.input_shape = (32, 32, 3)
  config.sources.s1 = config_lib.source("syndigits", DIGITS_HIGH)
  config.sources.s2 = config_lib.source("mnist", DIGITS_LOW)
  config.target.dataset = "mnist"
  config.target.classes = DIGITS_HIGH
  return config
