"""The results writer keeps what other sections of RESULTS.md hold."""

import argparse
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from conftest import REPO


def _load(name):
  sys.path.insert(0, os.path.join(REPO, "bench"))
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(REPO, "bench", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_replace_block_keeps_other_sections(tmp_path):
  report = _load("report")
  path = str(tmp_path / "RESULTS.md")
  with open(path, "w") as f:
    f.write("# Results\n")
  report.replace_block(path, "table1", "first")
  with open(path, "a") as f:
    f.write("\n## Discussion\nhand-written\n")
  report.replace_block(path, "other", "another experiment")
  report.replace_block(path, "table1", "second")
  text = open(path).read()
  assert text.startswith("# Results")
  assert "second" in text and "first" not in text
  assert "hand-written" in text and "another experiment" in text
  assert text.count("<!-- table1:start -->") == 1


def test_mean_and_standard_error():
  table1 = _load("table1")
  # values 0.90, 0.92, 0.94 -> mean 92.00, sd 2.00, se 2/sqrt(3) = 1.15
  assert table1.mean_se([0.90, 0.92, 0.94]) == "92.00 ± 1.15"
  assert table1.mean_se([0.5]) == "50.00"


def test_a_config_table_has_final_best_h_paper_and_seed_counts(tmp_path):
  table1 = _load("table1")
  runs_dir = str(tmp_path / "runs")
  for seed, (final, best) in enumerate([(0.90, 0.91), (0.94, 0.93)]):
    workdir = table1.run_dir(runs_dir, "gradmix", 2, seed)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump({"test_accuracy": final, "metrics_version": 2,
                 "test_accuracy_at_best_hyperval": best,
                 "train_seconds": 60.0, "wall_seconds": 70.0}, f)
  rows, minutes = table1.table_rows(runs_dir, [0, 1, 2], [2])
  # 0.90, 0.94: mean 92.00, sd 2.83, se 2.00; best-H 92.00 ± 1.00.
  assert rows[-1] == ("| GradMix | 92.00 ± 2.00 | 92.00 ± 1.00 | "
                      "91.17 ± 0.37 | 2 |")
  assert rows[2].startswith("| Target only | – | – | 71.35 ± 1.85 | 0 |")
  assert minutes == pytest.approx(2.0)


def _fake_launcher(tmp_path, exit_status, error):
  """A stand-in for `python -m gradmix_tf.launch`: counts its calls, prints
  `error`, exits with `exit_status`."""
  script = tmp_path / "fake_launch.py"
  script.write_text(
      "import pathlib, sys\n"
      f"calls = pathlib.Path({str(tmp_path / 'calls')!r})\n"
      "calls.write_text(str(int(calls.read_text() or 0) + 1)"
      " if calls.exists() else '1')\n"
      f"print({error!r}, file=sys.stderr)\n"
      f"sys.exit({exit_status})\n")
  return [sys.executable, str(script)]


def test_a_diverged_run_is_recorded_once_and_counted(tmp_path):
  runs = _load("runs")
  table1 = _load("table1")
  runs_dir = str(tmp_path / "runs")
  workdir = table1.run_dir(runs_dir, "gradmix_vat", 5, 1)
  prefix = _fake_launcher(tmp_path, 3, "error: 10 consecutive steps up to "
                          "step 356 had non-finite gradients")
  status = runs.launch(workdir, ["--config=digits_mnistm"], prefix)
  assert status.startswith("stopped: error: 10 consecutive steps")
  assert runs.stopped_record(workdir)["error"].endswith("non-finite "
                                                        "gradients")
  # Rerunning the table does not start the diverged run again.
  assert runs.launch(workdir, [], prefix).startswith("stopped earlier")
  assert (tmp_path / "calls").read_text() == "1"
  assert table1.stopped(runs_dir, "gradmix_vat", 5, [0, 1, 2]) == [1]
  assert table1.load(runs_dir, "gradmix_vat", 5, [0, 1, 2]) == []


def test_a_run_stopped_by_a_signal_stops_the_grid_and_is_resumed(tmp_path,
                                                                 capsys):
  """Exit 143 with `stopped.json` (reason SIGTERM): the grid stops between
  runs (same status), and the next call runs that run again to resume it;
  a diverged run (reason non_finite) would not be."""
  runs = _load("runs")
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / runs.STOPPED_FILE).write_text(json.dumps(
      {"error": None, "step": 955, "reason": "SIGTERM", "source": None}))
  prefix = _fake_launcher(tmp_path, 143, "stopped by SIGTERM at step 955")
  with pytest.raises(SystemExit) as stop:
    runs.launch(str(workdir), [], prefix)
  assert stop.value.code == 143
  assert "run the same command again to resume" in capsys.readouterr().err
  assert runs.stopped_record(str(workdir)) is None
  with pytest.raises(SystemExit):
    runs.launch(str(workdir), [], prefix)
  assert (tmp_path / "calls").read_text() == "2"       # started again
  (workdir / runs.STOPPED_FILE).write_text(json.dumps(
      {"error": "error: x", "step": 9, "reason": "non_finite"}))
  assert runs.stopped_record(str(workdir))["reason"] == "non_finite"


def test_any_other_failed_run_ends_the_script(tmp_path):
  runs = _load("runs")
  prefix = _fake_launcher(tmp_path, 2, "error: unknown method 'x'")
  with pytest.raises(SystemExit, match=r"run failed \(2\)"):
    runs.launch(str(tmp_path / "run"), [], prefix)
  assert runs.stopped_record(str(tmp_path / "run")) is None


def test_fig4_report_lists_every_r_and_draws_what_finished(tmp_path):
  r_ablation = _load("r_ablation")
  runs_dir = tmp_path / "runs"
  finished = {1: (0.9288, 0.9422, 11138, 0.9509),
              3: (0.8618, 0.9352, 7225, 0.9976)}
  for members, (final, best_h, count, correct) in finished.items():
    run = runs_dir / "k2_seed0" / f"R{members}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "test_accuracy": final, "test_accuracy_at_best_hyperval": best_h,
        "pseudo_labels": {"num_hard": count, "num_unlabelled": 13692,
                          "hard_accuracy": correct}}))
  out = tmp_path / "RESULTS.md"
  out.write_text("# Results\n")
  args = argparse.Namespace(
      config="digits_mnistm", k=2, seed=0, betas="5.0,10.0",
      gammas="0.3,0.6,0.9", steps=2000, stage1_dir="",
      runs_dir=str(runs_dir), png=str(tmp_path / "fig4.png"), out=str(out))
  r_ablation.write_report(args, [1, 2, 3])
  text = out.read_text()
  assert "<!-- fig4:start -->" in text and "(`digits_mnistm`)" in text
  assert "| 1 | 92.88 | 94.22 | 11138 of 13692 | 95.09 |" in text
  assert "| 2 | – | – | – | – |" in text
  assert "| 3 | 86.18 | 93.52 | 7225 of 13692 | 99.76 |" in text
  assert "--members=1,2,3" in text
  matplotlib = pytest.importorskip("matplotlib")
  del matplotlib
  assert (tmp_path / "fig4.png").stat().st_size > 0
  assert "![R ablation](fig4.png)" in text
  # Another twin gets its own block, and its command names the twin and
  # the grid it shares.
  args.config, args.stage1_dir = "digits_mnistm_mnist", "grid"
  r_ablation.write_report(args, [1, 2, 3])
  text = out.read_text()
  assert "<!-- fig4:start -->" in text
  assert "<!-- fig4_digits_mnistm_mnist:start -->" in text
  assert "--config=digits_mnistm_mnist --stage1_dir=grid" in text


def test_warmup_report_pairs_each_run_with_its_unwarmed_twin(tmp_path):
  warmup = _load("warmup")
  baselines, r_ablation = tmp_path / "baselines", tmp_path / "r_ablation"
  finished = {  # folder: (final, best-H)
      baselines / "gradmix_soft_label" / "k2_seed0": (0.9142, 0.9300),
      baselines / "gradmix_soft_label" / "k2_seed1": (0.2115, 0.2300),
      baselines / "gradmix_soft_label_warmup200" / "k2_seed0": (0.9000, 0.92),
      baselines / "gradmix_soft_label_warmup200" / "k2_seed1": (0.8800, 0.90),
      r_ablation / "k2_seed0" / "R2": (0.1835, 0.1971)}
  for run, (final, best_h) in finished.items():
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "test_accuracy": final, "test_accuracy_at_best_hyperval": best_h}))
  out = tmp_path / "RESULTS.md"
  out.write_text("# Results\n")
  args = argparse.Namespace(seeds=[0, 1], steps=2000,
                            baselines_dir=str(baselines),
                            r_ablation_dir=str(r_ablation), out=str(out))
  warmup.write_report(args)
  text = out.read_text()
  assert "| soft label | 1 | 21.15 | 23.00 | 88.00 | 90.00 |" in text
  assert "| hard label | 0 | – | – | – | – |" in text
  assert "| hard label, R = 2 (Fig. 4) | 0 | 18.35 | 19.71 | – | – |" in text
  # Means only over seeds with both arms: (91.42, 21.15) and (90.0, 88.0).
  assert ("| soft label, mean ± s.e. of the 2 seeds with both arms | | "
          "56.28 ± 35.13 | 58.00 ± 35.00 | 89.00 ± 1.00 | 91.00 ± 1.00 |"
          in text)
  assert "hard label, mean" not in text
  # The warmed-up R = 2 run goes where r_ablation.py's layout puts it, with
  # r_ablation.py's flags and the warm-up's.
  _, _, _, run, flags = warmup.cases(args)[-1]
  assert run == str(tmp_path / "r_ablation_warmup200" / "k2_seed0" / "R2")
  assert "--config.pseudo_label.members=2" in flags
  assert "--config.lr_warmup_steps=200" in flags
  assert "--config.pseudo_label.stage1_lr_warmup_steps=0" in flags


def test_a_dead_run_by_either_definition():
  health = _load("health")
  ln5 = 1.6094379
  # Final H 23 % with C = 5: within 5 points of chance (20 %).
  assert health.is_dead(0.23, 5, {}) == (True, "final H at chance")
  assert not health.is_dead(0.26, 5, {})[0]
  # Every loss of the last 200 steps within 1 % of ln 5 (1.609 +- 0.016).
  flat = {"loss/s1": ([ln5 + 0.01, ln5 - 0.015], 5),
          "loss/s2": ([ln5], 5)}
  assert health.is_dead(0.6, 5, flat) == (True, "every loss at ln C")
  flat["loss/s2"] = ([ln5 + 0.02], 5)      # 1.2 % off: alive
  assert not health.is_dead(0.6, 5, flat)[0]
  assert health.parse_seeds("0-3,7") == [0, 1, 2, 3, 7]


def test_run_health_reads_the_metrics_and_the_logged_losses(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  health = _load("health")
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({
      "sources": {"s1": {"classes": [5, 6, 7, 8, 9]},
                  "s2": {"classes": [0, 1, 2]}},
      "target": {"classes": [5, 6, 7, 8, 9]}}))
  # H every 100 steps over 2000 steps; the last 1000 steps hold the
  # evaluations at 1100..2000: 0.8 and 0.9 alternating, std 0.05.
  curve = [[s, 1.0, 0.5] for s in range(100, 1100, 100)] + [
      [s, 1.0, 0.8 if (s // 100) % 2 else 0.9] for s in range(1100, 2100, 100)]
  (run / "metrics.json").write_text(json.dumps({
      "steps": 2000, "hyperval_accuracy": 0.9, "best_hyperval_accuracy": 0.93,
      "hyperval_curve": curve, "test_accuracy": 0.88,
      "test_accuracy_at_best_hyperval": 0.91, "wall_seconds": 60.0}))
  writer = tf.summary.create_file_writer(str(run / "tb"))
  with writer.as_default():
    for step in range(50, 2050, 50):
      # s1 sits at ln 5 from step 1850 on; s2 (3 classes) never at ln 3.
      tf.summary.scalar("loss/s1", 1.6094379 if step > 1800 else 0.5,
                        step=step)
      tf.summary.scalar("loss/s2", 0.3, step=step)
  writer.close()
  result = health.run_health(str(run))
  assert not result["dead"]                 # s2 still learns
  assert result["best_minus_final"] == pytest.approx(0.03)
  assert result["late_h_std"] == pytest.approx(0.05)
  series = health.scalar_series(str(run / "tb"))
  assert [s for s, _ in series["loss/s1"]][-4:] == [1850, 1900, 1950, 2000]
  assert health._head_classes({"sources": {"s2": {"classes": [0, 1, 2]}},
                               "target": {"classes": [5]}}, "loss/s2") == 3


def test_death_record_counts_live_units_by_hand_and_records_every_step(
    tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config, tiny_data  # pylint: disable=g-import-not-at-top
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  record = _load("death_record")
  data = tiny_data()
  trainer = build_runner(tiny_config(method="source_only", steps=3), data,
                    str(tmp_path))
  trunk = trainer.model.trunk
  names = [layer.name for layer in record.relu_layers(trunk)]
  assert names == ["conv1", "conv2", "conv3", "conv4", "fc1"]
  conv1 = trunk.get_layer("conv1")
  kernel, bias = conv1.trainable_variables
  # conv1: channel 0 can never be positive (pixels >= 0, weights <= 0,
  # bias -1); channel 1 is positive everywhere (bias 1, weights 0).
  kernel.assign(np.stack([-np.ones(kernel.shape[:-1]),
                          np.zeros(kernel.shape[:-1])], -1))
  bias.assign([-1.0, 1.0])
  fc1_kernel, fc1_bias = trunk.get_layer("fc1").trainable_variables
  fc1_kernel.assign(np.zeros(fc1_kernel.shape))
  fc1_bias.assign([1.0, -1.0, 0.0, 2.0])     # 2 of 4 neurons positive
  live = record.live_fractions(trunk, data.h.images)
  assert live["conv1"] == 0.5 and live["fc1"] == 0.5
  records, layer_names = record.record_run(trainer, 3, data.h.images)
  assert [r["step"] for r in records] == [0, 1, 2, 3]
  assert records[0]["layers"]["conv1"]["update_norm"] == 0.0
  assert records[1]["layers"]["fc1"]["update_norm"] > 0.0
  assert set(records[1]["losses"]) == {"loss/s1", "loss/s2"}
  # The batch-norm trunk: the same five layers, read after their ReLU.
  bn = build_runner(tiny_config(method="source_only", steps=1, model=dict(
      name="digit_convnet", widths=(2, 2, 2, 2), units=4, norm="batch")),
               data, str(tmp_path / "bn"))
  assert [layer.name for layer in record.relu_layers(bn.model.trunk)] == [
      "conv1", "conv2", "conv3", "conv4", "fc1"]
  bn_live = record.live_fractions(bn.model.trunk, data.h.images)
  assert set(bn_live) == set(names)
  assert all(0.0 <= value <= 1.0 for value in bn_live.values())
  # A layer is dead from its first step under 5 % live units.
  fake = [{"step": s, "layers": {"conv1": {"live": l}, "fc1": {"live": 1.0}}}
          for s, l in enumerate([1.0, 0.5, 0.04, 0.0])]
  assert record.first_dead_steps(fake, ["conv1", "fc1"]) == {"conv1": 2,
                                                             "fc1": None}
  assert layer_names == names


def test_paired_difference_by_hand_and_an_exact_wilcoxon_by_enumeration():
  import itertools  # pylint: disable=g-import-not-at-top
  paired = _load("paired")
  a = {0: 0.91, 1: 0.92, 2: 0.93, 3: 0.895, 4: 0.94, 7: 0.5}
  b = {0: 0.90, 1: 0.90, 2: 0.90, 3: 0.90, 4: 0.90}
  found = paired.paired_difference(a, b)
  assert found["seeds"] == [0, 1, 2, 3, 4]          # seed 7 is unpaired
  assert found["differences"] == pytest.approx([1, 2, 3, -0.5, 4])
  assert found["mean"] == pytest.approx(1.9)
  # squared deviations 0.81 + 0.01 + 1.21 + 5.76 + 4.41 = 12.2, / 4.
  assert found["se"] == pytest.approx((12.2 / 4) ** 0.5 / 5 ** 0.5)
  assert found["wins"] == 4
  # |d| ranks 2, 3, 4, 1, 5: W- = 1. Under H0 each sign is a coin flip;
  # count the 2^5 sign patterns whose smaller rank sum is <= 1.
  ranks = [1, 2, 3, 4, 5]
  extreme = sum(
      min(sum(r for r, s in zip(ranks, signs) if s),
          sum(r for r, s in zip(ranks, signs) if not s)) <= 1
      for signs in itertools.product([0, 1], repeat=5))
  assert extreme == 4
  assert found["p"] == pytest.approx(extreme / 32)


def test_paired_rows_name_the_pair_k_and_every_seed():
  paired = _load("paired")
  values = {("gradmix", 2): {0: 0.9, 1: 0.8}, ("fine_tune", 2): {0: 0.85,
                                                                 1: 0.82}}
  rows = paired.paired_rows(values, {"gradmix": "GradMix",
                                     "fine_tune": "Fine-tune"}, [2, 5])
  assert len(rows) == 3                   # header, rule, one row (k=2 only)
  assert rows[2].startswith("| GradMix − Fine-tune | 2 | 2 | +1.50 ± 3.50")
  assert "0: +5.0, 1: -2.0" in rows[2]


def test_solver_record_summary_by_hand():
  record = _load("solver_record")
  # Two layers, two sources, three steps.
  weights = np.array([[[1.0, 0.0], [0.5, 0.5]],
                      [[0.995, 0.005], [0.2, 0.8]],
                      [[0.3, 0.7], [0.0, 1.0]]])
  cosines = np.array([[1.0, -0.5], [0.0, 0.5]])
  summary = record.summarize(weights, cosines, ["conv1", "fc1"], ["a", "b"])
  assert summary["conv1"]["one_source_share"] == pytest.approx(2 / 3)
  assert summary["fc1"]["one_source_share"] == pytest.approx(1 / 3)
  assert summary["conv1"]["mean_weight"]["a"] == pytest.approx(2.295 / 3)
  assert summary["fc1"]["mean_consecutive_cosine"] == pytest.approx(0.0)
  assert record.cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == (
      pytest.approx(2 ** -0.5))
  assert record.cosine(np.zeros(2), np.ones(2)) == 0.0


def test_solver_record_rows_are_the_mean_and_range_over_seeds():
  record = _load("solver_record")

  def summary(share, weight_a, cos):
    return {"conv1": {"one_source_share": share,
                      "mean_weight": {"a": weight_a, "b": 1 - weight_a},
                      "mean_consecutive_cosine": cos}}

  result = {"solvers": {"exact": {"0": {"summary": summary(0.8, 0.4, 0.01)},
                                  "2": {"summary": summary(0.6, 0.6, 0.03)}},
                        "slsqp": {}}}
  assert record.report_rows(result) == [
      "| exact | 0,2 | conv1 | 70.0 (60.0-80.0) % | 0.50 (0.40-0.60) | "
      "0.50 (0.40-0.60) | 0.020 (0.010-0.030) |"]


def test_solver_record_files_and_block_are_per_config():
  record = _load("solver_record")
  twin = argparse.Namespace(config="digits_mnistm_mnist", out="", plot="",
                            health_runs="")
  other = argparse.Namespace(config="digits_mnistm", out="", plot="x.png",
                             health_runs="")
  record.default_paths(twin)
  record.default_paths(other)
  assert os.path.basename(twin.out) == "solver_record.json"
  assert os.path.basename(twin.plot) == "solver_weights.png"
  assert os.path.basename(other.out) == "solver_record_digits_mnistm.json"
  assert other.plot == "x.png"          # a path given is kept
  assert other.health_runs.endswith(
      os.path.join("run_records", "health", "digits_mnistm"))
  assert record.block_name("digits_mnistm_mnist") == "solver_record"
  assert record.block_name("digits_mnistm") == "solver_record_digits_mnistm"


def test_solver_outcomes_pair_each_solver_with_exact_by_seed(tmp_path):
  record = _load("solver_record")
  for variant, method, seed, h in [("default", "gradmix", 0, 0.990),
                                   ("default", "gradmix", 1, 0.995),
                                   ("slsqp", "gradmix", 0, 0.993),
                                   ("slsqp", "gradmix", 1, 0.990)]:
    workdir = tmp_path / variant / method / f"k2_seed{seed}"
    workdir.mkdir(parents=True)
    (workdir / "metrics.json").write_text(json.dumps(
        {"hyperval_accuracy": h, "test_accuracy": h - 0.01}))
  rows = record.outcome_rows(str(tmp_path), ["exact", "slsqp", "meta_sgd"],
                             2, [0, 1, 2])
  assert rows == [
      "| exact | 0,1 | 0: 99.00, 1: 99.50 | 99.25 | 98.25 | – | – |",
      "| slsqp | 0,1 | 0: 99.30, 1: 99.00 | 99.15 | 98.15 | "
      "0: +0.30, 1: -0.50 | 1.00 |"]


def test_solver_record_of_a_tiny_run_matches_its_steps(tmp_path):
  from conftest import tiny_config, tiny_data  # pylint: disable=g-import-not-at-top
  from gradmix_tf.runner import build_runner  # pylint: disable=g-import-not-at-top
  record = _load("solver_record")
  trainer = build_runner(tiny_config(method="gradmix", steps=4), tiny_data(),
                    str(tmp_path))
  weights, cosines, names = record.record_run(trainer, 4)
  assert names == ["conv1", "conv2", "conv3", "conv4", "fc1"]
  assert weights.shape == (4, 5, 2) and cosines.shape == (3, 5)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  assert np.all(np.abs(cosines) <= 1.0 + 1e-6)
  assert int(trainer.step.numpy()) == 4


def test_fig3_averages_the_curves_of_finished_runs(tmp_path):
  fig3 = _load("fig3")
  table1 = _load("table1")
  for seed, losses in ((0, [1.0, 0.5]), (1, [3.0, 0.5]), (2, [9.0])):
    run = table1.run_dir(str(tmp_path), "gradmix", 2, seed)
    os.makedirs(run)
    steps = [100 * (i + 1) for i in range(len(losses))]
    with open(os.path.join(run, "metrics.json"), "w") as f:
      json.dump({"hyperval_curve": [[s, l, 0.5]
                                    for s, l in zip(steps, losses)]}, f)
  # Seed 2 stopped early (another evaluation grid): left out; seed 3 absent.
  steps, losses, found = fig3.curves(str(tmp_path), "gradmix", 2,
                                     [0, 1, 2, 3])
  assert found == [0, 1]
  np.testing.assert_array_equal(steps, [100, 200])
  np.testing.assert_array_equal(losses.mean(0), [2.0, 0.5])
  path = str(tmp_path / "fig3.png")
  counts = fig3.plot(str(tmp_path), ["gradmix"], [2], [0, 1, 2, 3], path)
  assert counts == {("gradmix", 2): 2} and os.path.getsize(path) > 0


def test_archive_keeps_finished_runs_without_checkpoints(tmp_path):
  archive_runs = _load("archive_runs")
  runs = tmp_path / "runs"
  done = runs / "gradmix" / "k2_seed0"
  (done / "tb").mkdir(parents=True)
  (done / "checkpoints").mkdir()
  for name in ("metrics.json", "config.json", "pseudo_labels.json",
               "tb/events", "checkpoints/c"):
    (done / name).write_text("{}")
  unfinished = runs / "gradmix" / "k2_seed1"
  unfinished.mkdir()
  (unfinished / "config.json").write_text("{}")
  out = tmp_path / "archive"
  assert archive_runs.archive(str(runs), str(out)) == 1
  kept = out / "gradmix" / "k2_seed0"
  assert (kept / "metrics.json").exists() and (kept / "tb" / "events").exists()
  assert (kept / "pseudo_labels.json").exists()   # a label pipeline's record
  assert not (kept / "checkpoints").exists()
  assert not (out / "gradmix" / "k2_seed1").exists()
