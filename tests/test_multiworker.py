"""Real multi-worker training: two local CPU processes with TF_CONFIG on loopback ports."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_one_model_into_one_run(tmp_path, synthetic_sites):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    output = tmp_path / "run"
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    arguments = [sys.executable, str(REPO / "train_distributed.py"), "train",
                 "--train-site", f"synth_a={synthetic_sites['synth_a']}",
                 "--val-site", f"synth_b={synthetic_sites['synth_b']}",
                 "--test-site", f"synth_c={synthetic_sites['synth_c']}",
                 "--image-size", "32", "--batch-size", "16", "--weights", "none", "--epochs", "2",
                 "--output", str(output), "--tracking-uri", uri, "--experiment", "multiworker",
                 "--set", "bootstrap_resamples=200", "--set", "log_model=false", "--set", "gradcam_examples=1",
                 "--set", "backbone=small_cnn", "--set", "min_class_images=10"]
    processes = []
    for index in range(2):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        log = open(tmp_path / f"worker{index}.log", "w")
        processes.append((subprocess.Popen(arguments, cwd=tmp_path, env=env, stdout=log, stderr=log), log))
    codes = []
    for process, log in processes:
        try:
            codes.append(process.wait(timeout=600))
        finally:
            process.kill()
            log.close()
    logs = [(tmp_path / f"worker{index}.log").read_text() for index in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "MultiWorkerMirroredStrategy: 2 replica(s) on 2 worker(s)" in logs[0]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and (output / "model.keras").exists()
    assert not list(output.glob("backup/worker-*"))
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name("multiworker")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == summary["mlflow_run_id"]
    assert runs[0].data.tags["system.strategy"] == "MultiWorkerMirroredStrategy"
    assert runs[0].data.tags["system.replicas"] == "2"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_auc")] == [1, 2]
