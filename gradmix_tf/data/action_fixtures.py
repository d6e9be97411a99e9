"""Tiny MPII / BU101 / UCF101 datasets in their official layouts, for tests
and `--config=ucf101 --config.quick=True`.

`write_action_fixtures(root)` writes `root/ucf101`, `root/mpii` and
`root/bu101` as `gradmix_tf/data/actions.py` expects them: UCF101's
`classInd.txt` and split-1 lists (real class names, the real
`<Class>/v_<Class>_g<group>_c<clip>.avi` naming, groups 1-7 in the test
list as in the release), clips as folders of JPEG frames; an MPII
annotation `.mat` with the `RELEASE` struct (`annolist(i).image.name`,
`act(i).act_id / act_name / cat_name`, `img_train`) written by scipy,
including images without an activity (`act_id = -1`); BU101 class folders.
Images are coloured by class so a network can learn them.
"""

import os

import numpy as np
import scipy.io
import tensorflow as tf

FIXTURE_DIR = "action_fixtures_v2"   # bump when the fixtures change
UCF_CLASSES = ("ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling")
MPII_ACTIVITIES = ((2, "curling", "sports"), (15, "ice skating", "winter"),
                   (80, "bicycling", "bicycling"))


def _write_jpeg(path, rng, label, size):
  base = np.zeros((size, size, 3), np.float32)
  base[..., label % 3] = 120 + 40 * (label // 3)
  image = np.clip(base + rng.normal(0, 25, base.shape), 0, 255)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tf.io.write_file(path, tf.io.encode_jpeg(image.astype(np.uint8)))


def write_action_fixtures(root, train_groups=(8, 9, 10, 11, 12, 13),
                          test_groups=(1, 2), frames=4, size=24, seed=0):
  """Writes the three datasets under `root`; returns `root`."""
  rng = np.random.default_rng(seed)
  ucf = os.path.join(root, "ucf101")
  lists = os.path.join(ucf, "ucfTrainTestlist")
  os.makedirs(lists, exist_ok=True)
  with open(os.path.join(lists, "classInd.txt"), "w") as f:
    for i, name in enumerate(UCF_CLASSES, start=1):
      f.write(f"{i} {name}\r\n")            # the release uses CRLF
  with open(os.path.join(lists, "trainlist01.txt"), "w") as train, open(
      os.path.join(lists, "testlist01.txt"), "w") as test:
    for label, name in enumerate(UCF_CLASSES):
      for group in train_groups + test_groups:
        stem = f"v_{name}_g{group:02d}_c01"
        if group in train_groups:
          train.write(f"{name}/{stem}.avi {label + 1}\r\n")
        else:
          test.write(f"{name}/{stem}.avi\r\n")
        for frame in range(frames):
          _write_jpeg(os.path.join(ucf, "frames", name, stem,
                                   f"frame{frame + 1:06d}.jpg"), rng, label,
                      size)

  mpii = os.path.join(root, "mpii")
  entries = []
  # Images 0-9 have activities (image 9 is in MPII's test split), 10-11
  # none.
  for i in range(12):
    activity = MPII_ACTIVITIES[i % len(MPII_ACTIVITIES)] if i < 10 else (
        -1, "", "")
    name = f"{100000000 + i:09d}.jpg"
    _write_jpeg(os.path.join(mpii, "images", name), rng,
                max(activity[0], 0) % 5, size)
    entries.append((name, activity))
  write_mpii_annotation(mpii, entries, [1] * 9 + [0] * 3)

  for label, name in enumerate(UCF_CLASSES):
    for i in range(5):
      _write_jpeg(os.path.join(root, "bu101", name, f"{name}_{i:04d}.jpg"),
                  rng, label, size)
  return root


def write_mpii_annotation(mpii_dir, entries, is_train):
  """MPII's annotation `.mat` (the `RELEASE` struct) for `entries`, a list
  of `(image name, (act_id, act_name, cat_name))` (act_id -1: none), and
  `is_train` (1 for MPII's training split) per image."""
  annolist = np.empty((1, len(entries)), dtype=[("image", "O")])
  act = np.empty((len(entries), 1),
                 dtype=[("act_id", "O"), ("act_name", "O"), ("cat_name", "O")])
  for i, (name, (act_id, act_name, cat_name)) in enumerate(entries):
    annolist[0, i]["image"] = {"name": name}
    act[i, 0]["act_id"] = np.array([[act_id]], np.float64)
    act[i, 0]["act_name"] = act_name
    act[i, 0]["cat_name"] = cat_name
  os.makedirs(mpii_dir, exist_ok=True)
  scipy.io.savemat(os.path.join(mpii_dir, "mpii_human_pose_v1_u12_1.mat"), {
      "RELEASE": {"annolist": annolist, "act": act,
                  "img_train": np.array([list(is_train)], np.uint8)}})
