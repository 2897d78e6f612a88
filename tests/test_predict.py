"""``predict`` (training/predict.py) on a tiny trained model from every kind of source, and ``evaluate``
through MLflow: logged by default, linked to the training run, its model and the evaluated datasets."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from eval.report import read_predictions_csv
from train_distributed import cli
from training.predict import read_predictions_csv as read_scores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_sites):
    """One tiny training run in-process (small CNN, 32 px, one epoch), its model logged and registered,
    system metrics sampled every 0.5 s."""
    from training.config import TrainConfig
    from training.loop import run_training

    folder = tmp_path_factory.mktemp("predict")
    here, before = os.getcwd(), os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
    os.chdir(folder)  # the new store's artifacts (./mlruns) go into this folder
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.5"
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    try:
        config = TrainConfig.from_settings({
            "train_site": f"synth_a={synthetic_sites['synth_a']}", "val_site": f"synth_b={synthetic_sites['synth_b']}",
            "test_sites": [f"synth_c={synthetic_sites['synth_c']}"], "image_size": 32, "batch_size": 16,
            "epochs": 1, "weights": "none", "backbone": "small_cnn", "input_normalization": "per_image",
            "dense_units": 8, "bootstrap_resamples": 50, "gradcam_examples": 0, "min_class_images": 10,
            "output": str(folder / "run"), "tracking_uri": uri, "experiment": "predict",
            "register_model": "brainmri-predict"}).validate()
        assert run_training(config) == 0
    finally:
        os.chdir(here)
        if before is None:
            os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", None)
        else:
            os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = before
    output = folder / "run"
    summary = json.loads((output / "summary.json").read_text())
    # A folder to score: the test site's images as files of their own, plus files that must be skipped.
    images = folder / "images"
    shutil.copytree(synthetic_sites["synth_c"], images / "scans")
    (images / "scans" / ".complete").unlink(missing_ok=True)  # the demo writer's marker
    (images / "scans" / "notes.jpg").write_text("not an image")
    (images / "scans" / ".DS_Store").write_bytes(b"\0\1")
    (images / "scans" / "empty.png").write_bytes(b"")
    (images / "readme.txt").write_text("hello")
    return {"folder": folder, "output": output, "uri": uri, "summary": summary, "images": images,
            "synthetic_sites": synthetic_sites}


def run_predict(trained, source: str, *extra: str):
    csv_path = trained["folder"] / "scores.csv"
    csv_path.unlink(missing_ok=True)
    result = CliRunner().invoke(cli, ["predict", "--model", source, str(trained["images"]), "--output",
                                      str(csv_path), "--tracking-uri", trained["uri"], *extra])
    return result, csv_path


def test_the_training_run_has_system_metrics(trained):
    client = mlflow.MlflowClient(trained["uri"])
    metrics = client.get_run(trained["summary"]["mlflow_run_id"]).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_percentage" in metrics


@pytest.mark.parametrize("kind", ["model.keras", "run folder", "run id", "runs:/", "models:/id", "models:/name/1"])
def test_predict_scores_a_folder_as_the_run_scored_its_test_site(trained, kind):
    summary = trained["summary"]
    source = {"model.keras": str(trained["output"] / "model.keras"), "run folder": str(trained["output"]),
              "run id": summary["mlflow_run_id"], "runs:/": f"runs:/{summary['mlflow_run_id']}",
              "models:/id": f"models:/{summary['mlflow_model_id']}",
              "models:/name/1": "models:/brainmri-predict/1"}[kind]
    result, csv_path = run_predict(trained, source)
    assert result.exit_code == 0, result.output
    rows = read_scores(csv_path)
    # the run's own scores of the same files (predictions.csv of its evaluation)
    expected = {row.relative_path: row.score for row in read_predictions_csv(trained["output"] / "predictions.csv")
                if row.site == "synth_c"}
    assert len(rows) == len(expected) == 48
    threshold = summary["threshold"]
    for row in rows:
        relative = Path(row["path"]).relative_to(trained["images"] / "scans").as_posix()
        assert row["probability"] == pytest.approx(expected[relative], abs=1e-6)
        assert row["threshold"] == pytest.approx(threshold, abs=1e-9)
        assert row["decision"] == int(row["probability"] >= threshold)
    # three bad files named with their reason, skipped and counted; the .txt file too
    for text in ("notes.jpg: not_an_image", ".DS_Store: hidden_file", "empty.png: empty_file",
                 "readme.txt: unsupported_extension", "scored 48 images", "skipped 4"):
        assert text in result.output, text


def test_predict_threshold_override_and_a_model_without_a_known_threshold(trained, tmp_path):
    result, csv_path = run_predict(trained, str(trained["output"] / "model.keras"), "--threshold", "0")
    assert result.exit_code == 0, result.output
    assert {row["decision"] for row in read_scores(csv_path)} == {1}
    alone = tmp_path / "model.keras"
    shutil.copy(trained["output"] / "model.keras", alone)  # no summary.json, config.json or run beside it
    result, _ = run_predict(trained, str(alone))
    assert result.exit_code == 2 and "no decision threshold known" in result.output and "--threshold" in result.output
    result, csv_path = run_predict(trained, str(alone), "--threshold", "0.5")
    assert result.exit_code == 0 and len(read_scores(csv_path)) == 48


@pytest.mark.parametrize("source, message", [
    ("no_such_model.keras", "a model.keras file, a run folder with one, an MLflow run id"),
    ("0123456789abcdef0123456789abcdef", "there is no run 0123456789abcdef0123456789abcdef"),
    ("models:/m-0000", "cannot be loaded from"),
])
def test_predict_names_a_bad_model_source(trained, source, message):
    result, _ = run_predict(trained, source)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_predict_crops_as_the_training_cache_does(trained):
    from datasets.cache import CropParams, load_site
    from training.predict import crop_files, image_files

    params = CropParams(image_size=32)
    site = load_site("synth_c", trained["synthetic_sites"]["synth_c"], params)
    paths, crops, skipped = crop_files(image_files([str(trained["images"] / "scans")]), params)
    by_name = {Path(path).name: crop for path, crop in zip(paths, crops)}
    assert len(skipped) == 3 and len(by_name) == len(site.samples)
    for sample, cached in zip(site.samples, site.images):
        np.testing.assert_array_equal(by_name[Path(sample.path).name], cached)


def test_evaluate_logs_by_default_and_links_the_training_run_model_and_datasets(trained, tmp_path):
    summary, client = trained["summary"], mlflow.MlflowClient(trained["uri"])
    site = f"synth_c={trained['synthetic_sites']['synth_c']}"
    result = CliRunner().invoke(cli, ["evaluate", "--model", f"models:/{summary['mlflow_model_id']}", "--site", site,
                                      "--tracking-uri", trained["uri"], "--output", str(tmp_path / "by_uri")])
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "by_uri" / "summary.json").read_text())
    assert again["sites"]["synth_c"]["auc"] == pytest.approx(summary["sites"]["synth_c"]["auc"], abs=1e-6)
    assert again["threshold"] == pytest.approx(summary["threshold"])
    run = client.get_run(again["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "brainmri"  # train's default experiment
    assert run.data.tags["source_run_id"] == summary["mlflow_run_id"]
    assert run.data.tags["source_model_id"] == summary["mlflow_model_id"]
    assert [(i.dataset.name, i.tags[0].value) for i in run.inputs.dataset_inputs] == [("synth_c", "test")]
    linked = {(m.key, m.run_id, m.dataset_name) for m in client.get_logged_model(summary["mlflow_model_id"]).metrics}
    assert ("test_synth_c_auc", run.info.run_id, "synth_c") in linked  # beside the training run's
    assert ("test_synth_c_auc", summary["mlflow_run_id"], "synth_c") in linked
    # From the run folder's model.keras: the source run comes from its summary.json.
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(trained["output"] / "model.keras"), "--site", site,
                                      "--tracking-uri", trained["uri"], "--output", str(tmp_path / "by_file")])
    assert result.exit_code == 0, result.output
    by_file = json.loads((tmp_path / "by_file" / "summary.json").read_text())
    assert client.get_run(by_file["mlflow_run_id"]).data.tags["source_run_id"] == summary["mlflow_run_id"]
    assert by_file["sites"]["synth_c"]["shortcut_auc"] == summary["sites"]["synth_c"]["shortcut_auc"]
    # --no-tracking: no run
    experiment = client.get_experiment_by_name("brainmri")
    count = len(client.search_runs([experiment.experiment_id]))
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(trained["output"]), "--site", site, "--no-tracking",
                                      "--tracking-uri", trained["uri"], "--output", str(tmp_path / "untracked")])
    assert result.exit_code == 0, result.output
    assert len(client.search_runs([experiment.experiment_id])) == count
    assert json.loads((tmp_path / "untracked" / "summary.json").read_text())["mlflow_run_id"] == ""
