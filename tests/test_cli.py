"""The real CLI: usage errors, an end-to-end run, resume after a kill, requeue on SIGUSR1."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from eval.metrics import roc_auc
from eval.report import read_predictions_csv

from train_distributed import cli

REPO = Path(__file__).resolve().parents[1]


def site_flags(sites: dict[str, Path]) -> list[str]:
    return ["--train-site", f"synth_a={sites['synth_a']}", "--val-site", f"synth_b={sites['synth_b']}",
            "--test-site", f"synth_c={sites['synth_c']}"]


FAST = ["--image-size", "32", "--batch-size", "16", "--weights", "none", "--set", "bootstrap_resamples=200",
        "--set", "log_model=false", "--set", "gradcam_examples=1", "--set", "min_class_images=10"]


@pytest.mark.parametrize("arguments, message", [
    (["train"], "training site and a validation site are required"),
    (["train", "--train-site", "BR35H=x", "--val-site", "nav=y"], "lower-case"),
    (["train", "--train-site", "br35h", "--val-site", "nav=y"], "NAME=PATH"),
    (["train", "--train-site", "a=missing_folder_x", "--val-site", "b=missing_folder_y"], "does not exist"),
    (["train", "--train-site", "a=afile.txt", "--val-site", "b=afile.txt"], "is a file, not a folder"),
    (["train", "--epochs", "0"], "0 is not in the range 1<=x<=10000"),
    (["train", "--leakage", "sometimes"], "'sometimes' is not one of"),
    (["train", "--weights", "no_such_file.h5", "--demo"], "weights must be 'imagenet', 'none' or an existing file"),
    (["train", "--demo", "--set", "no_such_key=1"], "unknown config keys ['no_such_key']"),
    (["train", "--demo", "--set", "augment.zoom=-1"], "zoom must be in [0, 1)"),
    (["train", "--demo", "--set", "epochs=2.5"], "epochs must be a whole number, got '2.5'"),
    (["train", "--demo", "--set", "epochs=[1,2]"], "epochs must be a whole number, got '[1,2]'"),
    (["train", "--demo", "--set", "learning_rate=[1"], "learning_rate must be a number, got '[1'"),
    (["train", "--demo", "--set", "crop=maybe"], "crop must be true or false, got 'maybe'"),
    (["train", "--demo", "--set", "leakage=sometimes"], "leakage must be one of"),
    (["train", "--demo", "--set", "augment.nosuch=1"], "unknown augment key 'nosuch'"),
    (["train", "--demo", "--set", "=3"], "must be KEY=VALUE"),
    (["train", "--demo", "--cpu-replicas", "2", "--gpus", "1"], "cpu_replicas is for machines without GPUs"),
    (["train", "--config", "bad.yaml"], "is not valid YAML"),
    (["train", "--config", "augment5.yaml"], "augment must be a mapping of settings"),
    (["train", "--config", "list.json"], "must hold a mapping of settings"),
    (["audit", "--site", "Bad Name=x"], "lower-case"),
    (["audit", "--site", "good=A", "--site", "good=B"], "given more than once: good"),
    (["compare", "--experiment", "nosuchexp", "--tracking-uri", "sqlite:///absent.db"], "no MLflow store at"),
])
def test_bad_configuration_is_a_usage_error(arguments, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("not a folder")
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    (tmp_path / "augment5.yaml").write_text("augment: 5\n")
    (tmp_path / "list.json").write_text("[1, 2]")
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # rejected before any work (no demo data written)
    assert not (tmp_path / "absent.db").exists()


def test_config_file_and_flags(tmp_path, monkeypatch, synthetic_sites):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"train_site: synth_a={synthetic_sites['synth_a']}\n"
                           f"val_site: synth_b={synthetic_sites['synth_b']}\n"
                           "epochs: 7\nbatch_size: 20\nrun_name: no\naugment:\n  zoom: 0.1\n")
    captured = {}
    monkeypatch.setattr("training.loop.run_training", lambda config: captured.setdefault("c", config) and 0)
    result = CliRunner().invoke(cli, ["train", "--config", str(config_file), "--epochs", "3",
                                      "--set", "augment.rotation_degrees=5", "--set", "learning_rate=1e-3",
                                      "--set", "crop=false", "--set", "seed=010"])
    assert result.exit_code == 0, result.output
    config = captured["c"]
    assert (config.trainer.epochs, config.trainer.batch_size, config.seed) == (3, 20, 10)
    assert (config.augment.zoom, config.augment.rotation_degrees) == (0.1, 5.0)
    assert (config.trainer.learning_rate, config.data.crop) == (0.001, False)
    assert config.tracking.run_name == "no"  # parsed by the setting's type, not as a YAML boolean
    assert config.flat_params()["augment.zoom"] == "0.1"
    assert config.runtime.output == config.default_output()
    assert config.runtime.output.startswith(str(Path("runs") / "synth_a-seed10-"))


def run_cli(arguments: list[str], cwd: Path, env: dict | None = None, timeout: int = 600):
    return subprocess.run([sys.executable, str(REPO / "train_distributed.py"), *arguments], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def mlflow_run(tracking_uri: str, run_id: str):
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri)
    return client, client.get_run(run_id)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synthetic_sites):
    """One real training run through the CLI, shared by the tests that inspect its outputs."""
    folder = tmp_path_factory.mktemp("e2e")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    output = folder / "run"
    result = run_cli(["train", *site_flags(synthetic_sites), *FAST, "--epochs", "2", "--output", str(output),
                      "--tracking-uri", uri, "--experiment", "e2e", "--set", "log_model=true"], cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"folder": folder, "output": output, "uri": uri, "stderr": result.stderr}


@pytest.mark.slow
def test_end_to_end_training_run(trained_run):
    output, uri = trained_run["output"], trained_run["uri"]
    for name in ("model.keras", "config.json", "summary.json", "audit.json", "audit_pairs.png", "bad_files.json",
                 "report.html", "report.md", "predictions.csv", "metrics.json", "augment_preview.png"):
        assert (output / name).exists(), name
    assert "leakage policy purge-train" in trained_run["stderr"]
    config = json.loads((output / "config.json").read_text())
    assert config["data"]["image_size"] == 32 and config["augment"]["histogram_match_probability"] == 0.3
    summary = json.loads((output / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["model_path"].endswith("model.keras")
    state = json.loads((output / "backup" / "state.json").read_text())
    assert state["phase"] == "finished" and [r["epoch"] for r in state["history"]] == [1, 2]
    kept = sorted(path.name for path in (output / "backup").glob("ckpt-*"))
    assert state["checkpoint"] == "ckpt-e2" and kept == ["ckpt-e2.data-00000-of-00001", "ckpt-e2.index"]
    assert set(summary["sites"]) == {"synth_a", "synth_b", "synth_c"}
    assert summary["sites"]["synth_a"]["role"] == "train"
    for name, role in (("synth_b", "val"), ("synth_c", "test")):
        site = summary["sites"][name]
        assert site["role"] == role and site["images"] == 48
        assert site["auc_ci"][0] <= site["auc"] <= site["auc_ci"][1]
        # the reported AUC is the exact AUC of the scores written to predictions.csv
        rows = [row for row in read_predictions_csv(output / "predictions.csv") if row.site == name]
        assert len(rows) == 48
        assert site["auc"] == pytest.approx(roc_auc(np.array([r.label for r in rows]),
                                                    np.array([r.score for r in rows])), abs=1e-12)
        assert {"threshold", "sensitivity", "specificity", "ece", "unique", "disjoint"} <= set(site)
        assert site["threshold"] == summary["threshold"]
        # the demo sites share no images: every subset is the whole site; the shortcut baseline is beside it
        assert site["disjoint"]["images"] == site["unique"]["images"] == 48
        assert 0.0 <= site["shortcut_auc"] <= 1.0 and site["disjoint"]["shortcut_auc"] == site["shortcut_auc"]
        assert all(np.isfinite(r.shortcut_score) and not r.near_train_site for r in rows)
    audit = json.loads((output / "audit.json").read_text())
    shortcuts = audit["shortcuts"]
    assert shortcuts["train_site"] == "synth_a" and set(shortcuts["sites"]) == {"synth_a", "synth_b", "synth_c"}
    assert "baseline" in shortcuts["sites"]["synth_c"] and "baseline" not in shortcuts["sites"]["synth_a"]
    assert "shortcut audit" in trained_run["stderr"]
    # the data-quality review: the training site cross-validated, the others by the trained model
    assert summary["quality"]["synth_a"]["probability_source"].startswith("cross-validated")
    assert summary["quality"]["synth_c"]["probability_source"] == "the trained model"
    assert (output / "quality_review.csv").exists() and (output / "quality_synth_c.png").exists()
    flagged = sum(r.flagged for r in read_predictions_csv(output / "predictions.csv") if r.site == "synth_c")
    assert summary["sites"]["synth_c"]["flagged_images"] == flagged
    assert summary["sites"]["synth_c"]["disjoint_unflagged"]["images"] == 48 - flagged
    assert "synth_a" in audit["quality"]
    report = (output / "report.md").read_text()
    assert "## Data-quality review" in report and "## Shortcut audit" in report
    assert "![Data-quality candidates of synth_c" in report
    client, run = mlflow_run(uri, summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["image_size"] == "32" and run.data.params["leakage"] == "purge-train"
    assert run.data.params["reference_pool_sites"] == "synth_b"
    assert "augment.histogram_match_probability" in run.data.params
    assert {"val_auc", "train_loss", "train_auc", "learning_rate", "epoch_seconds", "images_per_second",
            "test_synth_c_auc", "test_synth_c_auc_ci_low", "val_synth_b_auc", "test_synth_c_unique_auc",
            "test_synth_c_disjoint_auc", "test_synth_c_shortcut_auc", "test_synth_c_near_train_site_images",
            "shortcut_synth_c_baseline_auc", "shortcut_synth_a_cv_auc", "shortcut_synth_c_sharpness_auc",
            "leakage_removed_synth_a"} <= set(run.data.metrics)
    assert run.data.metrics["test_synth_c_auc"] == pytest.approx(summary["sites"]["synth_c"]["auc"])
    # The per-epoch curve is val_auc; val_<site>_auc is the final evaluation alone (compare reads it).
    final_val = client.get_metric_history(run.info.run_id, "val_synth_b_auc")
    assert [m.value for m in final_val] == [pytest.approx(summary["sites"]["synth_b"]["auc"])]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"audit", "report", "summary.json", "config.json", "augment_preview.png"} <= artifacts
    # the model is a LoggedModel of the run (tests/test_mlflow_model.py), not a run artifact
    assert [output.model_id for output in run.outputs.model_outputs] == [summary["mlflow_model_id"]]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "audit")} >= {"audit/audit.json",
                                                                                  "audit/audit_pairs.png"}
    assert run.data.tags["system.strategy"] == "default"
    assert run.data.tags["system.tensorflow"].startswith("2.")
    inputs = {i.dataset.name: i.tags[0].value for i in run.inputs.dataset_inputs}
    assert inputs == {"synth_a": "train", "synth_b": "val", "synth_c": "test"}


@pytest.mark.slow
def test_evaluate_command_reproduces_the_test_auc(trained_run, synthetic_sites):
    output = trained_run["output"]
    result = run_cli(["evaluate", "--model", str(output / "model.keras"),
                      "--site", f"synth_c={synthetic_sites['synth_c']}", "--output", str(output / "again")],
                     cwd=trained_run["folder"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((output / "summary.json").read_text())
    again = json.loads((output / "again" / "summary.json").read_text())
    assert again["threshold"] == summary["threshold"]
    assert again["sites"]["synth_c"]["auc"] == pytest.approx(summary["sites"]["synth_c"]["auc"], abs=1e-6)
    assert (output / "again" / "report.html").exists() and (output / "again" / "predictions.csv").exists()
    assert again["test_time_augmentation"] == "none"
    # the shortcut baseline is refit from train_hashes.npz: the same numbers as in training
    assert again["sites"]["synth_c"]["shortcut_auc"] == summary["sites"]["synth_c"]["shortcut_auc"]


@pytest.mark.slow
def test_evaluate_a_seed_ensemble(trained_run, synthetic_sites):
    """Two copies of one model average to that model: the same scores and AUC as one row."""
    output = trained_run["output"]
    model = str(output / "model.keras")
    sites = ["--site", f"synth_b={synthetic_sites['synth_b']}", "--site", f"synth_c={synthetic_sites['synth_c']}"]
    refused = run_cli(["evaluate", "--model", model, "--model", model, *sites], cwd=trained_run["folder"])
    assert refused.returncode == 2 and "needs --val-site or --threshold" in refused.stderr
    result = run_cli(["evaluate", "--model", model, "--model", model, *sites, "--val-site", "synth_b",
                      "--output", str(output / "ensemble")], cwd=trained_run["folder"])
    assert result.returncode == 0, result.stderr[-3000:]
    ensemble = json.loads((output / "ensemble" / "summary.json").read_text())
    single = json.loads((output / "summary.json").read_text())
    assert ensemble["ensemble_size"] == 2 and ensemble["model_paths"] == [model, model]
    assert ensemble["threshold"] == pytest.approx(single["threshold"], abs=1e-6)
    for name in ("synth_b", "synth_c"):
        assert ensemble["sites"][name]["auc"] == pytest.approx(single["sites"][name]["auc"], abs=1e-6)


@pytest.mark.slow
def test_evaluate_with_flip_test_time_augmentation(trained_run, synthetic_sites):
    output = trained_run["output"]
    result = run_cli(["evaluate", "--model", str(output / "model.keras"), "--tta", "flips",
                      "--site", f"synth_c={synthetic_sites['synth_c']}", "--output", str(output / "tta")],
                     cwd=trained_run["folder"])
    assert result.returncode == 0, result.stderr[-3000:]
    plain = json.loads((output / "summary.json").read_text())
    flipped = json.loads((output / "tta" / "summary.json").read_text())
    assert flipped["test_time_augmentation"] == "flips" and flipped["threshold"] == plain["threshold"]
    plain_rows = [row for row in read_predictions_csv(output / "predictions.csv") if row.site == "synth_c"]
    flipped_rows = read_predictions_csv(output / "tta" / "predictions.csv")
    assert [row.relative_path for row in flipped_rows] == [row.relative_path for row in plain_rows]
    difference = np.abs(np.array([r.score for r in flipped_rows]) - np.array([r.score for r in plain_rows]))
    assert difference.max() > 1e-6  # four views averaged, not the plain scores
    assert flipped["sites"]["synth_c"]["auc"] == pytest.approx(
        roc_auc(np.array([r.label for r in flipped_rows]), np.array([r.score for r in flipped_rows])), abs=1e-12)


@pytest.mark.slow
def test_compare_command_reads_the_runs(trained_run):
    result = run_cli(["compare", "--experiment", "e2e", "--tracking-uri", trained_run["uri"],
                      "--output", str(trained_run["folder"] / "compare")], cwd=trained_run["folder"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "synth_c" in result.stdout
    for name in ("compare.md", "compare.csv", "compare.png"):
        assert (trained_run["folder"] / "compare" / name).exists()


def test_audit_and_crop_preview_commands(tmp_path, synthetic_sites, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["audit", "--site", f"a={synthetic_sites['synth_a']}",
                                 "--site", f"c={synthetic_sites['synth_c']}", "--image-size", "48",
                                 "--output", "audit"])
    assert result.exit_code == 0, result.output
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert audit["sites"]["a"]["images"] == 48 and {o["site"] for o in audit["overlap"]} == {"a", "c"}
    assert (tmp_path / "audit" / "audit_pairs.png").exists()
    result = runner.invoke(cli, ["preview-augment", "--site", f"a={synthetic_sites['synth_a']}",
                                 "--reference-site", f"c={synthetic_sites['synth_c']}", "--image-size", "48",
                                 "--output", "augment.png"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "augment.png").stat().st_size > 1000
    result = runner.invoke(cli, ["preview-crop", "--site", f"a={synthetic_sites['synth_a']}", "--count", "6",
                                 "--output", "crops.png"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "crops.png").stat().st_size > 1000


def wait_for(process: subprocess.Popen, log: Path, text: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in log.read_text():
            return
        if process.poll() is not None:
            raise AssertionError(f"process ended early: {log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not seen: {log.read_text()[-3000:]}")


# The demo's sites and recipe on the small backbone at 96 px: epochs of a few seconds, so that a signal sent
# half a second after epoch 1 lands inside epoch 2, without ResNet50's minute of graph building in each of the 5 processes.
DEMO = ["train", "--demo", "--epochs", "3", "--image-size", "96", "--set", "backbone=small_cnn"]


def demo_results(folder: Path) -> tuple[dict, list[dict], Path]:
    """summary.json, the per-epoch history and the run folder of the one demo run under ``folder/runs``."""
    output, = [path for path in (folder / "runs").iterdir() if path.name != "demo_data"]
    summary = json.loads((output / "summary.json").read_text())
    history = json.loads((output / "backup" / "state.json").read_text())["history"]
    return summary, history, output


@pytest.fixture(scope="module")
def uninterrupted_demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_whole")
    result = run_cli([*DEMO, "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"], cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return demo_results(folder)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_stopped_run_started_again_ends_with_the_same_numbers(tmp_path, how, uninterrupted_demo):
    """Killed or signalled inside epoch 2, then the same command: bit-identical per-epoch and final numbers."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    arguments = [sys.executable, str(REPO / "train_distributed.py"), *DEMO, "--tracking-uri", uri]
    log = tmp_path / "first.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(arguments, cwd=tmp_path, stderr=handle, stdout=handle)
        wait_for(process, log, "epoch 1/3")
        time.sleep(0.5)  # inside epoch 2 (10 steps of about 0.15 s each, then validation)
        process.send_signal(getattr(signal, how))
        status = process.wait(timeout=120)
    if how == "SIGTERM":
        assert status == 3, log.read_text()[-2000:]
        # Mid-training (epoch 1 or, on a slow machine, epoch 2 done), never in setup or evaluation.
        assert re.search(r"state saved \(training, epoch [12], step \d+\)", log.read_text()), log.read_text()[-2000:]
    else:
        assert status == -signal.SIGKILL
    second = subprocess.run(arguments, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming run" in second.stderr
    summary, history, output = demo_results(tmp_path)
    whole_summary, whole_history, _ = uninterrupted_demo
    assert whole_summary["sites"]["synth_c"]["auc"] > 0.9  # the demo learns: its test site is not chance
    keys = ("epoch", "train_loss", "train_auc", "val_auc", "learning_rate")
    assert [[r[k] for k in keys] for r in history] == [[r[k] for k in keys] for r in whole_history]
    assert summary["threshold"] == whole_summary["threshold"]
    for name in ("synth_b", "synth_c"):
        for key in ("auc", "auc_ci", "sensitivity", "specificity", "ece"):
            assert summary["sites"][name][key] == whole_summary["sites"][name][key], (name, key)
    client, run = mlflow_run(uri, summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    experiment = client.get_experiment_by_name("brainmri-demo")
    assert len(client.search_runs([experiment.experiment_id])) == 1
    for key in ("val_auc", "train_loss", "learning_rate"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3]
    final_keys = [key for key in run.data.metrics if key.startswith(("val_synth", "test_synth"))]
    assert len(final_keys) > 40
    assert all(len(client.get_metric_history(run.info.run_id, key)) == 1 for key in final_keys)
    # The same command once more: says it is finished, logs nothing, changes nothing.
    third = subprocess.run(arguments, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0 and "this run already finished" in third.stderr, third.stderr[-2000:]
    _, again = mlflow_run(uri, summary["mlflow_run_id"])
    assert again.info.status == "FINISHED" and again.data.metrics == run.data.metrics
    assert again.info.end_time == run.info.end_time


@pytest.mark.parametrize("varies, mode, expected", [
    ([], "one-at-a-time", ["base"]),
    (["leakage=report-only", "crop=false"], "one-at-a-time", ["base", "leakage=report-only", "crop=false"]),
    (["augment.histogram_match_probability=0,0.3"], "one-at-a-time",
     ["base", "histogram_match_probability=0", "histogram_match_probability=0.3"]),
    (["leakage=report-only,purge-train", "crop=true,false"], "grid",
     ["leakage=report-only,crop=true", "leakage=report-only,crop=false", "leakage=purge-train,crop=true",
      "leakage=purge-train,crop=false"]),
])
def test_ablation_variants(varies, mode, expected):
    from training.ablation import ablation_variants

    variants = ablation_variants(varies, mode)
    assert [name for name, _ in variants] == expected
    if mode == "grid":
        assert variants[1][1] == ["--set", "leakage=report-only", "--set", "crop=false"]


@pytest.mark.parametrize("text, expected", [
    ("report-only: leakage=report-only epochs=6",
     ("report-only", ["--set", "leakage=report-only", "--set", "epochs=6"])),
    ("p=0:augment.histogram_match_probability=0",
     ("p=0", ["--set", "augment.histogram_match_probability=0"])),
])
def test_parse_named_variant(text, expected):
    from training.ablation import parse_named_variant

    assert parse_named_variant(text) == expected


@pytest.mark.parametrize("text", ["no-colon leakage=report-only", ": epochs=3", "name:", "name: epochs",
                                  "name: =3", "a b: epochs=3", "a/b: epochs=3"])
def test_parse_named_variant_rejects(text):
    from training.ablation import parse_named_variant

    with pytest.raises(ValueError, match="--variant"):
        parse_named_variant(text)


def test_ablate_rejects_a_variant_name_twice(tmp_path):
    from train_distributed import cli

    result = CliRunner().invoke(cli, ["ablate", "--output", str(tmp_path / "abl"), "--variant", "x: epochs=1",
                                      "--variant", "x: epochs=2", "--", "--epochs", "1"])
    assert result.exit_code == 2 and "used twice" in result.output


@pytest.mark.slow
def test_ablate_runs_each_variant_per_seed_and_writes_results(tmp_path, synthetic_sites):
    """The base run for seeds 0 and 1 (the --vary and --variant plans and the seed tables are tested without
    training)."""
    result = run_cli(["ablate", "--output", str(tmp_path / "abl"), "--seeds", "0,1",
                      "--", *site_flags(synthetic_sites), *FAST, "--set", "batch_size=8", "--set", "backbone=small_cnn",
                      "--epochs", "1", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    entries = json.loads((tmp_path / "abl" / "results.json").read_text())
    assert [(entry["name"], entry["seed"]) for entry in entries] == [("base", 0), ("base", 1)]
    text = (tmp_path / "abl" / "RESULTS.md").read_text()
    assert "synth_c AUC (source-disjoint)" in text and "--set batch_size=8" in text and "--set seed=1" in text
    assert "## Over seeds" in text and "### base (seed 1)" in text
    config = json.loads((tmp_path / "abl" / "02-base-seed1" / "config.json").read_text())
    assert config["seed"] == 1 and config["trainer"]["batch_size"] == 8
    aucs = [entry["summary"]["sites"]["synth_c"]["auc"] for entry in entries]
    for auc in aucs:
        assert f"{auc:.3f}" in text
    mean, sd = sum(aucs) / 2, abs(aucs[0] - aucs[1]) / 2 ** 0.5
    row = next(line for line in text.splitlines() if line.startswith("| base | 0, 1 | "))
    assert f" {mean:.3f} ± {sd:.3f} ({aucs[0]:.3f}, {aucs[1]:.3f}) |" in row


@pytest.mark.parametrize("arguments, message", [
    (["--seeds", "0,x"], "integers >= 0"),
    (["--seeds", "1,1"], "twice"),
    (["--seeds", "0,1", "--vary", "seed=3,4"], "leave seed= out"),
    (["--seeds", "0,1", "--", "--set", "seed=2"], "leave seed= out"),
])
def test_ablate_seed_usage_errors(tmp_path, arguments, message):
    result = CliRunner().invoke(cli, ["ablate", "--output", str(tmp_path / "abl"), *arguments])
    assert result.exit_code == 2 and message in result.output and not (tmp_path / "abl").exists()


def test_dataset_inputs_survive_a_concurrent_registration(monkeypatch):
    """Two runs registering one dataset at once: the loser retries instead of crashing."""
    import types

    import mlflow

    from datasets.records import Sample
    from training.tracking import Tracker

    calls = []

    def log_input(dataset, context):
        calls.append((dataset.name, context))
        if len(calls) == 1:
            raise mlflow.exceptions.MlflowException("UNIQUE constraint failed: datasets.experiment_id")

    monkeypatch.setattr("time.sleep", lambda seconds: None)
    tracker = Tracker(False)
    tracker.enabled, tracker.mlflow, tracker.run_id = True, mlflow, "run"
    tracker.client = types.SimpleNamespace(log_inputs=lambda run_id, datasets: log_input(
        types.SimpleNamespace(name=datasets[0].dataset.name), datasets[0].tags[0].value))
    site = types.SimpleNamespace(samples=[Sample("/x/a.png", "yes/a.png", "a", 1, "tumour", "0" * 64)],
                                 root="/x", digest=lambda: "abc")
    tracker.log_datasets({"a": site}, {"a": "train"})
    assert calls == [("a", "train"), ("a", "train")]


@pytest.mark.parametrize("flag, expected_images", [([], 48), (["--follow-external-symlinks"], 49)])
def test_audit_follows_symlinks_outside_the_site_only_when_asked(tmp_path, synthetic_sites, monkeypatch, flag,
                                                                 expected_images):
    import shutil

    site = tmp_path / "site"
    shutil.copytree(synthetic_sites["synth_a"], site)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    extra = next((site / "yes").iterdir())
    shutil.copy(extra, outside / "scan.png")
    (site / "yes" / "linked.png").symlink_to(outside / "scan.png")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["audit", "--site", f"a={site}", "--image-size", "32", "--output", "audit",
                                      *flag])
    assert result.exit_code == 0, result.output
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert audit["sites"]["a"]["images"] == expected_images
    bad = json.loads((tmp_path / "audit" / "bad_files.json").read_text())
    assert ("symlink_outside_site" in json.dumps(bad)) == (not flag)
