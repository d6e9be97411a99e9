"""Action recognition data: MPII + BU101 -> UCF101, in their official layouts.

Expected layout (each directory can be set on its own in the config):

    <ucf101_dir>/ucfTrainTestlist/classInd.txt      "1 ApplyEyeMakeup"
    <ucf101_dir>/ucfTrainTestlist/trainlist0<s>.txt "ApplyEyeMakeup/v_..._c01.avi 1"
    <ucf101_dir>/ucfTrainTestlist/testlist0<s>.txt  "ApplyEyeMakeup/v_..._c01.avi"
    <ucf101_dir>/frames/<Class>/<video stem>/*.jpg   extracted frames, or
    <ucf101_dir>/videos/<Class>/<video>.avi         decoded with OpenCV
    <mpii_dir>/mpii_human_pose_v1_u12_1.mat         RELEASE struct
    <mpii_dir>/images/<annolist(i).image.name>
    <bu101_dir>/<UCF101 class name>/*.jpg

* MPII Human Pose: training image `i` (`RELEASE.img_train(i) = 1`; the
  paper's S1 is MPII's training split) has activity `RELEASE.act(i).act_id`
  (-1: none; those images are skipped); the distinct ids, sorted, are the
  classes (410 in the release) and `act_name` names them.
* BU101: every folder is a UCF101 class; its images share the target head.
* UCF101 split `s`: `k` training clips per class form V (drawn with the run
  seed), `hyperval_clips_per_class` further clips per class form H (fixed by
  `split_seed`), the rest of the split's training clips U, its test list the
  test set.

Frames. A V clip keeps `train_frames_per_clip` evenly spaced frames (the
centres of equal segments); each step uses `frames_per_step` of them per
clip, drawn at random (`MultiSourceTask.validation_images`). H and U keep one middle frame per clip.
A test clip keeps `test_frames_per_clip` evenly spaced frames, or every
frame (0, the paper's protocol); per-video accuracy averages their softmax
(`gradmix_tf.evaluation`).

`config.input_pipeline`:

* ``stream`` (the `ucf101` config's): the MPII and BU101 images, U's
  frames and every test frame are listed, not decoded
  (`image_files.ImageFiles`); the runner's `tf.data` pipeline decodes each
  step's batches, and evaluation streams the test frames, so host memory
  does not grow with the datasets (`bench/input_pipeline.py`). Streaming
  reads extracted JPEG frames (`<ucf101_dir>/frames/...`): a clip with only
  its `.avi` is refused with the `ffmpeg` command that extracts it.
  V and H (a few clips per class) are decoded up front.
* ``memory``: everything is decoded into memory at `input_shape` (uint8);
  `.avi` clips are decoded with OpenCV. At 224x224 the full MPII + BU101
  sources take about 7 GB of host memory, the test set at 5 frames per
  clip about 2.8 GB.
"""

import dataclasses
import glob
import os

import numpy as np
import scipy.io
import tensorflow as tf

from gradmix_tf.data import image_files
from gradmix_tf.data.experiment import ExperimentData, LabelledSet, SourceData
from gradmix_tf.errors import ConfigError, DataError

SPLIT_DIR = "ucfTrainTestlist"
MPII_ANNOTATION = "mpii_human_pose_v1_u12_1.mat"
FRAME_PATTERNS = ("*.jpg", "*.jpeg", "*.png")
_WHERE = {
    "ucf101": "https://www.crcv.ucf.edu/data/UCF101.php (UCF101.rar and "
              "UCF101TrainTestSplits-RecognitionTask.zip)",
    "mpii": "http://human-pose.mpi-inf.mpg.de (images and annotations)",
    "bu101": "http://cs-people.bu.edu/sbargal/BU-action/ (BU101)",
}


@dataclasses.dataclass(frozen=True)
class Clip:
  path: str      # as in the split list, e.g. "Archery/v_Archery_g01_c01.avi"
  label: int     # 0-based index into classInd order

  @property
  def class_name(self):
    return self.path.split("/", 1)[0]

  @property
  def stem(self):
    return os.path.splitext(os.path.basename(self.path))[0]


def read_class_index(ucf101_dir):
  """`classInd.txt` -> list of class names in label order."""
  path = _split_file(ucf101_dir, "classInd.txt")
  names = {}
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != 2 or not parts[0].isdigit():
        raise DataError(f"{path}:{number}: expected '<id> <ClassName>', got "
                        f"{line.strip()!r}")
      names[int(parts[0])] = parts[1]
  if sorted(names) != list(range(1, len(names) + 1)):
    raise DataError(f"{path}: class ids must be 1..{len(names)}")
  return [names[i] for i in range(1, len(names) + 1)]


def read_split(ucf101_dir, class_names, split=1, subset="train"):
  """The clips of `trainlist0<split>.txt` or `testlist0<split>.txt`."""
  path = _split_file(ucf101_dir, f"{subset}list0{int(split)}.txt")
  index = {name: i for i, name in enumerate(class_names)}
  clips = []
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      parts = line.split()
      if not parts:
        continue
      name = parts[0].split("/", 1)[0]
      if name not in index or "/" not in parts[0]:
        raise DataError(
            f"{path}:{number}: class {name!r} of {parts[0]!r} is not in "
            f"classInd.txt; the split list and classInd.txt must come from "
            "the same UCF101 release")
      label = index[name]
      if len(parts) > 1 and int(parts[1]) - 1 != label:
        raise DataError(f"{path}:{number}: label {parts[1]} disagrees with "
                        f"classInd.txt's {label + 1} for {name}")
      clips.append(Clip(parts[0], label))
  return clips


def read_mpii_activities(mpii_dir):
  """MPII `RELEASE` -> (image file names, activity labels, class names).

  Images whose activity id is -1 are skipped; labels index the sorted
  distinct activity ids.
  """
  path = os.path.join(mpii_dir, MPII_ANNOTATION)
  if not os.path.isfile(path):
    raise DataError(f"MPII annotation {path} does not exist; get it from "
                    f"{_WHERE['mpii']} or set config.actions.mpii_dir")
  try:
    release = scipy.io.loadmat(path, struct_as_record=False,
                               squeeze_me=True)["RELEASE"]
    annolist = np.atleast_1d(release.annolist)
    activities = np.atleast_1d(release.act)
    is_train = np.atleast_1d(getattr(release, "img_train",
                                     np.ones(len(annolist))))
  except (ValueError, KeyError, AttributeError, OSError) as err:
    raise DataError(f"{path} is not an MPII annotation file with "
                    f"RELEASE.annolist and RELEASE.act: {err}") from None
  if len(annolist) != len(activities):
    raise DataError(f"{path}: {len(annolist)} images but "
                    f"{len(activities)} activity entries")
  names, ids, id_names = [], [], {}
  for entry, act, train in zip(annolist, activities, is_train):
    act_id = int(np.asarray(act.act_id).ravel()[0]) if np.size(
        act.act_id) else -1
    if act_id < 0 or not train:
      continue
    names.append(str(entry.image.name))
    ids.append(act_id)
    id_names.setdefault(act_id, str(act.act_name) if np.size(
        act.act_name) else str(act_id))
  distinct = sorted(id_names)
  label_of = {a: i for i, a in enumerate(distinct)}
  return names, np.array([label_of[a] for a in ids], np.int64), [
      id_names[a] for a in distinct]


def read_bu101(bu101_dir, class_names):
  """BU101 class folders -> (image paths, labels in classInd order)."""
  if not os.path.isdir(bu101_dir):
    raise DataError(f"BU101 directory {bu101_dir} does not exist; get it "
                    f"from {_WHERE['bu101']} or set config.actions.bu101_dir")
  index = {name: i for i, name in enumerate(class_names)}
  paths, labels = [], []
  for folder in sorted(os.listdir(bu101_dir)):
    if not os.path.isdir(os.path.join(bu101_dir, folder)):
      continue
    if folder not in index:
      raise DataError(f"BU101 folder {folder!r} is not a UCF101 class in "
                      "classInd.txt")
    files = _image_files(os.path.join(bu101_dir, folder))
    paths += files
    labels += [index[folder]] * len(files)
  if not paths:
    raise DataError(f"no images in the class folders of {bu101_dir}")
  return paths, np.array(labels, np.int64)


def evenly_spaced(count, frames):
  """Indices of the centres of `frames` equal segments of `count` frames."""
  return np.minimum(((np.arange(frames) + 0.5) * count / frames).astype(int),
                    count - 1)


def resize_frames(images, size):
  """RGB frame(s) `[..., h, w, 3]` -> `[..., size, size, 3]` float32 whole
  numbers in 0..255: bilinear with antialiasing, rounded and clipped. Every
  action image and frame is preprocessed by this, in training and in the
  served graph (gradmix_tf/export.py)."""
  resized = tf.image.resize(tf.cast(images, tf.float32), (size, size),
                            antialias=True)
  return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def read_image(path, size):
  """One image file -> `[size, size, 3]` uint8 (`resize_frames`)."""
  try:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                               expand_animations=False)
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as err:
    raise DataError(f"cannot read image {path}: "
                    f"{err.message.splitlines()[0]}") from None
  return tf.cast(resize_frames(image, size), tf.uint8).numpy()


def frame_paths(ucf101_dir, clip, frames):
  """The files of `frames` evenly spaced extracted frames of `clip` (all
  of them for 0), for streaming."""
  folder = os.path.join(ucf101_dir, "frames", clip.class_name, clip.stem)
  files = _image_files(folder) if os.path.isdir(folder) else []
  if not files:
    video = os.path.join(ucf101_dir, "videos", clip.path)
    raise DataError(
        f"clip {clip.path}: no extracted frames in {folder}; streaming "
        f"reads JPEG frames: extract them with `mkdir -p {folder} && ffmpeg "
        f"-i {video} {folder}/%05d.jpg` (every clip), or use "
        "--config.input_pipeline=memory (decodes .avi with OpenCV)")
  if not frames:
    return files
  return [files[i] for i in evenly_spaced(len(files), frames)]


def clip_frames(ucf101_dir, clip, frames, size):
  """`frames` evenly spaced frames of `clip` (all for 0),
  `[frames, size, size, 3]`."""
  folder = os.path.join(ucf101_dir, "frames", clip.class_name, clip.stem)
  files = _image_files(folder) if os.path.isdir(folder) else []
  if files:
    chosen = evenly_spaced(len(files), frames) if frames else range(
        len(files))
    return np.stack([read_image(files[i], size) for i in chosen])
  video = os.path.join(ucf101_dir, "videos", clip.path)
  if not os.path.isfile(video):
    raise DataError(f"clip {clip.path}: no extracted frames in {folder} and "
                    f"no video {video}")
  return _decode_video(video, frames, size)


def build_action_experiment(config, seed, k):
  """`ExperimentData` for `ucf101` (module docstring): heads MPII (410
  activities) and UCF101 (101 classes, shared by BU101 and the target)."""
  actions = config.actions
  if actions.fixture:
    actions = _with_fixture_root(actions, config.cache_dir)
  size = int(config.input_shape[0])
  if int(config.input_shape[1]) != size or int(config.input_shape[2]) != 3:
    raise ConfigError(f"input_shape must be (n, n, 3) for action data, got "
                      f"{tuple(config.input_shape)}")
  ucf101_dir = _directory(actions, "ucf101_dir", "ucf101")
  class_names = read_class_index(ucf101_dir)
  train = read_split(ucf101_dir, class_names, actions.split, "train")
  test = read_split(ucf101_dir, class_names, actions.split, "test")

  mpii_dir = _directory(actions, "mpii_dir", "mpii")
  mpii_names, mpii_labels, mpii_classes = read_mpii_activities(mpii_dir)
  mpii_paths = [os.path.join(mpii_dir, "images", n) for n in mpii_names]
  bu_paths, bu_labels = read_bu101(_directory(actions, "bu101_dir", "bu101"),
                                   class_names)
  cap = int(config.get("max_source_examples", 0))
  stream = config.get("input_pipeline", "memory") == "stream"
  decode = image_files.frame_image(size)

  def listed(paths):
    for path in paths:
      image_files.check_signature(path)
    return image_files.ImageFiles(np.asarray(paths, object), decode,
                                  (size, size, 3))

  sources = []
  for name, paths, labels, head in (("mpii", mpii_paths, mpii_labels, 0),
                                    ("bu101", bu_paths, bu_labels, 1)):
    index = np.arange(len(paths))
    if cap and len(index) > cap:
      index = np.sort(np.random.default_rng([config.split_seed, 5])
                      .permutation(len(index))[:cap])
    images = (listed([paths[i] for i in index]) if stream else
              np.stack([read_image(paths[i], size) for i in index]))
    sources.append(SourceData(name, images, labels[index], head))

  labels = np.array([c.label for c in train])
  order = np.random.default_rng([config.split_seed, 7]).permutation(
      len(train))
  h_index = _per_class(labels, order, int(actions.hyperval_clips_per_class),
                       len(class_names), "actions.hyperval_clips_per_class")
  pool = np.setdiff1d(np.arange(len(train)), h_index)
  v_index = _per_class(
      labels, np.random.default_rng([seed, 11]).permutation(pool), k,
      len(class_names), "k")
  u_index = np.setdiff1d(pool, v_index)
  if int(config.get("max_unlabelled", 0)):
    u_index = u_index[:int(config.max_unlabelled)]
  test_clips = test
  if int(config.get("max_test", 0)):
    test_clips = test[:int(config.max_test)]

  def frames_of(clips, count, streamed=False):
    """(frames, labels, groups) of `count` frames per clip (0: all),
    decoded, or listed when `streamed`."""
    if streamed:
      files = [frame_paths(ucf101_dir, c, count) for c in clips]
      images = listed([path for paths in files for path in paths])
    else:
      files = [clip_frames(ucf101_dir, c, count, size) for c in clips]
      images = (np.concatenate(files) if files else
                np.zeros((0, size, size, 3), np.uint8))
    counts = [len(x) for x in files]
    groups = np.repeat(np.arange(len(clips)), counts)
    labels = np.repeat([c.label for c in clips], counts)
    return images, labels, groups

  v_x, v_y, v_groups = frames_of([train[i] for i in v_index],
                                 int(actions.train_frames_per_clip))
  h_x, h_y, _ = frames_of([train[i] for i in h_index], 1)
  u_x, u_y, _ = frames_of([train[i] for i in u_index], 1, stream)
  t_x, t_y, t_groups = frames_of(test_clips,
                                 int(actions.test_frames_per_clip), stream)
  return ExperimentData(
      sources=tuple(sources),
      head_classes=(tuple(mpii_classes), tuple(class_names)),
      target_head=1,
      v=LabelledSet(v_x, v_y.astype(np.int64), v_groups),
      h=LabelledSet(h_x, h_y.astype(np.int64)),
      u=LabelledSet(u_x, u_y.astype(np.int64)),
      test=LabelledSet(t_x, t_y.astype(np.int64), t_groups),
      v_frames_per_step=int(actions.frames_per_step))


def _with_fixture_root(actions, cache_dir):
  """`actions` pointing at generated fixtures (written once, atomically)."""
  from gradmix_tf.data import action_fixtures  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  root = os.path.join(cache_dir, action_fixtures.FIXTURE_DIR)
  if not os.path.isdir(root):
    os.makedirs(cache_dir, exist_ok=True)
    partial = tempfile.mkdtemp(prefix="action_fixtures.", dir=cache_dir)
    action_fixtures.write_action_fixtures(partial)
    try:
      os.rename(partial, root)
    except OSError:   # another process won the race
      shutil.rmtree(partial, ignore_errors=True)
  actions = actions.copy_and_resolve_references()
  actions.root = root
  actions.ucf101_dir = actions.mpii_dir = actions.bu101_dir = ""
  return actions


def _directory(actions, field, dataset):
  path = actions[field] or (os.path.join(actions.root, dataset)
                            if actions.root else "")
  if not path:
    raise ConfigError(
        f"set config.actions.root (or config.actions.{field}) to where "
        f"{dataset} is laid out as README 'Action recognition data' says, "
        f"or $GRADMIX_ACTIONS_DIR; get it from {_WHERE[dataset]}")
  return path


def _split_file(ucf101_dir, name):
  path = os.path.join(ucf101_dir, SPLIT_DIR, name)
  if not os.path.isfile(path):
    raise DataError(f"UCF101 split file {path} does not exist; unpack "
                    f"UCF101TrainTestSplits-RecognitionTask.zip from "
                    f"{_WHERE['ucf101']} into {ucf101_dir}")
  return path


def _image_files(folder):
  files = []
  for pattern in FRAME_PATTERNS:
    files += glob.glob(os.path.join(folder, pattern))
  return sorted(files)


def _per_class(labels, order, count, num_classes, field):
  """The first `count` entries of `order` of each class."""
  chosen = []
  for label in range(num_classes):
    members = order[labels[order] == label]
    if len(members) < count:
      raise DataError(f"{field}={count} is more than the {len(members)} "
                      f"training clips of class {label + 1} left; lower "
                      f"{field}")
    chosen.append(np.sort(members[:count]))
  return np.concatenate(chosen) if chosen else np.zeros(0, int)


def _decode_video(path, frames, size):
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError(
        f"{path}: decoding .avi needs OpenCV (pip install "
        "opencv-python-headless), or extract the frames into "
        "<ucf101_dir>/frames/<Class>/<video stem>/") from None
  capture = cv2.VideoCapture(path)
  images = []
  while True:
    ok, frame = capture.read()
    if not ok:
      break
    images.append(frame[:, :, ::-1])
  capture.release()
  if not images:
    raise DataError(f"cannot decode any frame of {path}")
  return np.stack([tf.cast(resize_frames(images[i], size), tf.uint8).numpy()
                   for i in (evenly_spaced(len(images), frames) if frames
                             else range(len(images)))])
