"""MirroredStrategy on two logical CPU devices: the same numbers as one replica, and the real CLI on it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_and_two_replicas():
    result = subprocess.run([sys.executable, str(REPO / "tests" / "mirrored_check.py")], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_replicas_at_the_same_global_batch_match_one(one_and_two_replicas):
    one, two = one_and_two_replicas["1"], one_and_two_replicas["2"]
    assert (one["strategy"], one["replicas"], two["strategy"], two["replicas"]) == ("default", 1, "MirroredStrategy", 2)
    # every BatchNormalization (ResNet50's 53 and the head's; the small backbone's 8 and the head's)
    # uses global-batch statistics on 2 replicas only
    assert (one["resnet_synchronized"], one["synchronized"]) == (0, 0)
    assert (two["resnet_synchronized"], two["synchronized"]) == (54, 9)
    # the project's model (small backbone) with Adam: four steps' losses and the first step's probabilities
    np.testing.assert_allclose(two["losses"], one["losses"], atol=1e-4, rtol=0)
    assert np.abs(np.array(one["first_probabilities"]) - np.array(two["first_probabilities"])).max() < 2e-4
    assert abs(one["losses"][3] - one["losses"][0]) > 1e-3  # the weights move (the labels are noise)


@pytest.mark.slow
def test_exact_auc_gathered_from_two_replicas_equals_one(one_and_two_replicas):
    one, two = one_and_two_replicas["1"], one_and_two_replicas["2"]
    np.testing.assert_array_equal(one["scores"], two["scores"])  # every image once, in input order
    assert one["auc"] == two["auc"]


@pytest.mark.slow
def test_train_with_cpu_replicas_runs_mirrored_strategy(tmp_path, synthetic_sites):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [sys.executable, str(REPO / "train_distributed.py"), "train", "--cpu-replicas", "2",
         "--train-site", f"synth_a={synthetic_sites['synth_a']}", "--val-site", f"synth_b={synthetic_sites['synth_b']}",
         "--image-size", "32", "--batch-size", "16", "--weights", "none", "--epochs", "1",
         "--output", str(tmp_path / "run"), "--tracking-uri", uri, "--set", "dense_units=16",
         "--set", "backbone=small_cnn", "--set", "min_class_images=10",
         "--set", "bootstrap_resamples=100", "--set", "log_model=false", "--set", "gradcam_examples=0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "strategy MirroredStrategy: 2 replica(s) on 1 worker(s)" in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["sites"]["synth_b"]["images"] == 48 and summary["epochs_run"] == 1
    run = mlflow.tracking.MlflowClient(uri).get_run(summary["mlflow_run_id"])
    assert (run.data.tags["system.strategy"], run.data.tags["system.replicas"]) == ("MirroredStrategy", "2")
    assert run.info.status == "FINISHED"
