"""Export for TF Serving: fresh-process round trip, saved_model_cli, refusal."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, tiny_config, tiny_data
from gradmix_tf import export
from gradmix_tf import model_description
from gradmix_tf.data.digits import conform_images
from gradmix_tf.errors import UserError
from gradmix_tf.runner import build_runner

SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable),
                               "saved_model_cli")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  trainer = build_runner(tiny_config(steps=3), tiny_data(), str(root / "run"))
  trainer.run()
  path = export.export_runner(trainer, str(root / "models"), "tiny")
  return trainer, path, root


def _model_outputs(trainer, images):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  data = trainer.data
  logits = trainer.model(tf.constant(images), head=data.target_head)
  probabilities = tf.nn.softmax(logits).numpy()
  classes = np.asarray(data.head_classes[data.target_head])[
      probabilities.argmax(-1)]
  return probabilities, classes


def test_export_layout_and_version_refusal(trained):
  trainer, path, root = trained
  assert path == str(root / "models" / "tiny" / "1")
  assert os.path.isfile(os.path.join(path, "saved_model.pb"))
  with pytest.raises(UserError, match="already exists"):
    export.export_runner(trainer, str(root / "models"), "tiny", version=1)
  assert export.export_runner(trainer, str(root / "models"), "tiny").endswith(
      os.path.join("tiny", "2"))
  assert export.export_runner(trainer, str(root / "models"), "tiny",
                               version=1, overwrite=True).endswith("1")
  leftovers = [n for n in os.listdir(root / "models" / "tiny")
               if n.startswith(".partial")]
  assert not leftovers


def test_fresh_process_matches_the_model_at_two_batch_sizes(trained, tmp_path):
  trainer, path, _ = trained
  images = trainer.data.test.images[:7]
  np.save(tmp_path / "images.npy", images)
  script = (
      "import sys, numpy as np, tensorflow as tf\n"
      "m = tf.saved_model.load(sys.argv[1])\n"
      "serve = m.signatures['serving_default']\n"
      "x = np.load(sys.argv[2])\n"
      "for n in (1, 7):\n"
      "  out = serve(images=tf.constant(x[:n]))\n"
      "  np.save(sys.argv[3] + f'/p{n}.npy', out['probabilities'].numpy())\n"
      "  np.save(sys.argv[3] + f'/c{n}.npy', out['classes'].numpy())\n")
  result = subprocess.run(
      [sys.executable, "-c", script, path, str(tmp_path / "images.npy"),
       str(tmp_path)], capture_output=True, text=True, timeout=180,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-2000:]
  probabilities, classes = _model_outputs(trainer, images)
  for n in (1, 7):
    np.testing.assert_allclose(np.load(tmp_path / f"p{n}.npy"),
                               probabilities[:n], atol=1e-5)
    np.testing.assert_array_equal(np.load(tmp_path / f"c{n}.npy"), classes[:n])


def test_saved_model_cli_show_and_run(trained, tmp_path):
  trainer, path, _ = trained
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  show = subprocess.run(
      [SAVED_MODEL_CLI, "show", "--dir", path, "--tag_set", "serve",
       "--signature_def", "serving_default"], capture_output=True, text=True,
      timeout=120, env=env)
  assert show.returncode == 0, show.stderr[-2000:]
  for name in ("inputs['images']", "outputs['probabilities']",
               "outputs['classes']", "DT_UINT8"):
    assert name in show.stdout
  images = trainer.data.test.images[:5]
  np.save(tmp_path / "images.npy", images)
  run = subprocess.run(
      [SAVED_MODEL_CLI, "run", "--dir", path, "--tag_set", "serve",
       "--signature_def", "serving_default", "--inputs",
       f"images={tmp_path / 'images.npy'}", "--outdir", str(tmp_path / "out")],
      capture_output=True, text=True, timeout=120, env=env)
  assert run.returncode == 0, run.stderr[-2000:]
  _, classes = _model_outputs(trainer, images)
  np.testing.assert_array_equal(np.load(tmp_path / "out" / "classes.npy"),
                                classes)


def test_in_graph_preprocessing_matches_training(trained):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  trainer, path, _ = trained
  grey = np.random.default_rng(0).integers(0, 256, (3, 20, 24, 1)).astype(
      np.uint8)
  served = tf.saved_model.load(path).signatures["serving_default"](
      images=tf.constant(grey))
  probabilities, _ = _model_outputs(trainer, conform_images(grey, 28, 3))
  np.testing.assert_allclose(served["probabilities"].numpy(), probabilities,
                             atol=1e-5)
  served_float = tf.saved_model.load(path).signatures["serve_float"](
      images=tf.constant(grey, tf.float32))
  np.testing.assert_allclose(served_float["probabilities"].numpy(),
                             probabilities, atol=1e-5)


def test_export_cli_from_a_workdir_and_its_errors(trained, tmp_path):
  _, _, root = trained
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  command = [sys.executable, "-m", "gradmix_tf.export",
             f"--workdir={root / 'run'}", f"--export_dir={tmp_path}",
             "--version=3"]
  ok = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                      timeout=180, env=env)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert os.path.isfile(tmp_path / "tiny" / "3" / "saved_model.pb")
  # Rebuilt from the workdir's checkpoint, it serves what the model predicts.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  trainer = trained[0]
  images = trainer.data.test.images[:6]
  served = tf.saved_model.load(str(tmp_path / "tiny" / "3")).signatures[
      "serving_default"](images=tf.constant(images))
  probabilities, _ = _model_outputs(trainer, images)
  np.testing.assert_allclose(served["probabilities"].numpy(), probabilities,
                             atol=1e-5)
  again = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                         timeout=180, env=env)
  assert again.returncode == 2 and "error: " in again.stderr
  assert "already exists" in again.stderr and "Traceback" not in again.stderr
  missing = subprocess.run(
      [sys.executable, "-m", "gradmix_tf.export", f"--workdir={tmp_path}/no",
       f"--export_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
      timeout=180, env=env)
  assert missing.returncode == 2 and "not found" in missing.stderr


def test_served_action_frames_are_preprocessed_as_training_reads_them(
    tmp_path):
  # A UCF101-sized frame (320x240) into a 224x224 network: training reads
  # it from its file with data.actions.read_image; the served graph of an
  # action run must give the same prediction from the raw pixels. The
  # digit preprocessing (area resize) gives another one, so the check can
  # fail.
  import ml_collections  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from gradmix_tf import models  # pylint: disable=g-import-not-at-top
  from gradmix_tf.data.actions import read_image  # pylint: disable=g-import-not-at-top
  model = models.build_model(ml_collections.ConfigDict(dict(
      name="digit_convnet", widths=(2, 2, 2, 2), units=4)), (224, 224, 3),
                             (3,))
  frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3)).astype(
      np.uint8)
  path = str(tmp_path / "frame.png")
  tf.io.write_file(path, tf.io.encode_png(frame))
  trained_on = read_image(path, 224)[None]
  expected = tf.nn.softmax(model(tf.constant(trained_on, tf.float32))).numpy()
  served = {kind: export.ServingModule(model, 0, (0, 1, 2), (224, 224, 3),
                                       kind).serve_uint8(
                                           tf.constant(frame[None]))
            for kind in ("frames", "digits")}
  np.testing.assert_allclose(served["frames"]["probabilities"].numpy(),
                             expected, atol=1e-6)
  assert not np.allclose(served["digits"]["probabilities"].numpy(), expected,
                         atol=1e-6)


def test_an_action_run_describes_frame_preprocessing():
  import ml_collections  # pylint: disable=g-import-not-at-top
  assert model_description.preprocessing_of(
      ml_collections.ConfigDict(dict(experiment="actions"))) == "frames"
  assert model_description.preprocessing_of(tiny_config()) == "digits"
