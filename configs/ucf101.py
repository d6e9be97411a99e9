"""ucf101: MPII + BU101 -> UCF101 split 1 with ResNet-18 (paper section 4.3).

S1 = MPII Human Pose activity images (410 activities, own head), S2 = BU101
web images of the 101 UCF101 actions (the target's head), target = UCF101
split 1: V = k clips per class of its training list (k = 3, 5, 10 in the
paper's Table 3), U = the rest, test = its test list. ResNet-18 with
ImageNet weights, lr 0.001, fine-tune lr 5e-5; per-frame and per-video
accuracy in metrics.json.

Data layout and where to get it: README, "Action recognition data". Point
`--config.actions.root` (or $GRADMIX_ACTIONS_DIR) at the folder holding
`ucf101/`, `mpii/` and `bu101/`, and `--config.model.weights` at ImageNet
weights (`python -m gradmix_tf.resnet --help` converts torchvision's):

    python -m gradmix_tf.launch --config=ucf101 --config.k=3 \
        --config.actions.root=/data/actions \
        --config.model.weights=/data/resnet18_imagenet.weights.h5

`--config.quick=True` without a data root runs on generated fixtures in
the official layouts (gradmix_tf/data/action_fixtures.py), at 32x32.
"""

import ml_collections

from gradmix_tf import config_lib


def get_config():
  config = config_lib.base_config()
  config.name = "ucf101"
  config.experiment = "actions"
  config.k = 3
  config.input_shape = (224, 224, 3)
  config.model = ml_collections.ConfigDict(dict(name="resnet18", weights=""))
  config.lr = 0.001
  config.finetune_lr = 5e-5
  config.steps = 3000
  config.batch_size = 32
  # Sources, U and the test frames are listed and decoded batch by batch
  # (gradmix_tf/data/actions.py): host memory stays bounded at full size.
  config.input_pipeline = "stream"
  config.actions = ml_collections.ConfigDict(dict(
      root="",                     # '' -> $GRADMIX_ACTIONS_DIR
      ucf101_dir="",               # '' -> <root>/ucf101
      mpii_dir="",                 # '' -> <root>/mpii
      bu101_dir="",                # '' -> <root>/bu101
      split=1,
      train_frames_per_clip=8,     # kept per V clip
      frames_per_step=1,           # of them, per V clip, in each step
      test_frames_per_clip=0,      # per test clip; 0: every frame (the
                                   # paper's per-video accuracy), streamed
      hyperval_clips_per_class=1,  # H
      fixture=False,               # generated fixtures (quick mode)
  ))
  return config
