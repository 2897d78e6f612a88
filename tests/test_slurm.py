"""slurm/train.sh and slurm/train_multinode.sh, submitted to a private one-node SLURM cluster (CPU only).

The cluster (tests/slurm_harness.py) starts once per session; these tests skip
when SLURM and munge are not installed (``.ci/install_slurm.sh`` installs them).
"""
from __future__ import annotations

import json
import os
import random
import socket
import sys
import time
from pathlib import Path

import pytest

from slurm_harness import parse_scontrol_record, slurm, slurm_cluster  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "slurm" / "train.sh"
TRAIN_MULTINODE = REPO / "slurm" / "train_multinode.sh"
# The scripts ask for GPUs, 64 GB and 8 hours: a CPU-only node, as the README says.
CPU_JOB = ["--gres=none", "--mem=1G", "--time=20"]
FAST = ["--image-size", "32", "--batch-size", "16", "--set", "bootstrap_resamples=200",
        "--set", "log_model=false", "--set", "gradcam_examples=1", "--set", "backbone=small_cnn",
        "--set", "min_class_images=10"]
JOB_TIMEOUT = 420


def free_port_pair() -> int:
    """A port ``p`` with ``p`` and ``p + 1`` free a moment ago (the two workers' ports)."""
    for _ in range(100):
        base = random.randint(20000, 30000)
        sockets = [socket.socket(), socket.socket()]
        try:
            for offset, sock in enumerate(sockets):
                sock.bind(("", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no two consecutive free ports between 20000 and 30000")


def job_environment(folder: Path, sites: dict[str, Path]) -> dict[str, str]:
    """The documented variables for a run writing into ``folder``, with this interpreter's virtualenv."""
    env = {"TRAIN_SITE": f"synth_a={sites['synth_a']}", "VAL_SITE": f"synth_b={sites['synth_b']}",
           "TEST_SITES": f"synth_c={sites['synth_c']}", "OUTPUT": str(folder / "run"), "WEIGHTS": "none",
           "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "EXPERIMENT": "slurm",
           "BRAINMRI_CACHE": os.environ["BRAINMRI_CACHE"]}
    if (Path(sys.prefix) / "bin" / "activate").exists():
        env["BRAINMRI_VENV"] = sys.prefix
    else:
        env["BRAINMRI_VENV"] = ""
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    (folder / "logs").mkdir(exist_ok=True)
    return env


def job_log(folder: Path, job_id: int) -> str:
    """The job's output file as the scripts' header names it (``logs/brainmri-%j.out``)."""
    path = folder / "logs" / f"brainmri-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def finished_job(cluster, folder: Path, job_id: int) -> tuple[dict[str, str], str]:
    """Wait for the job; return its fields and log, failing with both when it did not complete."""
    fields = cluster.wait_for_job(job_id, timeout=JOB_TIMEOUT)
    log = job_log(folder, job_id)
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", (
        f"{fields['JobState']} {fields['ExitCode']}\n{log[-6000:]}\n{cluster.log_tails(1500)}")
    return fields, log


def mlflow_run(folder: Path, summary: dict):
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("slurm")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [summary["mlflow_run_id"]]
    return client, runs[0]


def metric_steps(client, run_id: str, key: str) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, key))


# ---- without a cluster ----------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("JobId=7 JobState=COMPLETED Restarts=1 ExitCode=0:0",
     {"JobId": "7", "JobState": "COMPLETED", "Restarts": "1", "ExitCode": "0:0"}),
    ("JobState=PENDING Reason=BeginTime TRES=cpu=2,node=1 Power=",
     {"JobState": "PENDING", "Reason": "BeginTime", "TRES": "cpu=2,node=1", "Power": ""}),
    ("Command=/x/train.sh --epochs 3 --set log_model=false WorkDir=/tmp ReqB:S:C:T=0:0:*:*",
     {"Command": "/x/train.sh --epochs 3 --set log_model=false", "WorkDir": "/tmp", "ReqB:S:C:T": "0:0:*:*"}),
    ("", {}),
])
def test_parse_scontrol_record(text, expected):
    assert parse_scontrol_record(text) == expected


@pytest.mark.parametrize("script", [TRAIN, TRAIN_MULTINODE])
def test_scripts_have_the_documented_header(script):
    text = script.read_text()
    header = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH ")]
    for directive in ("--requeue", "--open-mode=append", "--signal=B:USR1@300", "--output=logs/brainmri-%j.out",
                      "--gres=gpu:4", "--cpus-per-task=16", "--mem=64G", "--time=08:00:00"):
        assert directive in header
    first_command = next(i for i, line in enumerate(text.splitlines()) if line.strip() and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH "))
    assert "scontrol requeue \"$SLURM_JOB_ID\"" in text


# ---- on the private cluster -----------------------------------------------------------------

def preempt_after_first_epoch(cluster, folder: Path, job_id: int, epochs: int) -> str:
    """Once epoch 1 is logged, send what SLURM sends before the time limit (USR1 to the batch shell).

    Returns the MLflow run id of the run so far.
    """
    deadline = time.monotonic() + JOB_TIMEOUT
    while f"epoch 1/{epochs}" not in job_log(folder, job_id):
        fields = cluster.job(job_id)
        assert fields["JobState"] in ("PENDING", "RUNNING"), job_log(folder, job_id)[-6000:]
        assert time.monotonic() < deadline, "epoch 1 did not finish in time"
        time.sleep(0.2)
    cluster.command("scancel", "--signal=USR1", "--batch", str(job_id))
    return json.loads((folder / "run" / "backup" / "state.json").read_text())["run_id"]


def check_resumed_run(cluster, folder: Path, job_id: int, first_run_id: str, epochs: int):
    """The job requeued once, resumed into the same run and logged every epoch exactly once."""
    fields, log = finished_job(cluster, folder, job_id)
    assert fields["Restarts"] == "1", f"the signal came too late to stop training?\n{log[-3000:]}"
    assert "SIGUSR1 received at epoch" in log and "state saved (training" in log
    assert log.count(f"requeueing job {job_id}") == 1  # the finished job does not requeue
    assert f"resuming run {first_run_id}" in log
    summary = json.loads((folder / "run" / "summary.json").read_text())
    assert summary["mlflow_run_id"] == first_run_id and summary["epochs_run"] == epochs
    assert set(summary["sites"]) == {"synth_a", "synth_b", "synth_c"}
    client, run = mlflow_run(folder, summary)
    assert run.info.status == "FINISHED" and run.data.tags["requeued"] == "true"
    for key in ("val_auc", "train_loss", "train_auc", "learning_rate"):
        assert metric_steps(client, first_run_id, key) == list(range(1, epochs + 1)), key
    return log, summary, run


@pytest.mark.slurm
def test_train_sh_requeues_before_time_limit_and_resumes_into_the_same_run(
        slurm, tmp_path, synthetic_sites):  # noqa: F811
    epochs = 4
    job_id = slurm.submit(TRAIN, *CPU_JOB, "--cpus-per-task=2", cwd=tmp_path,
                                  env=job_environment(tmp_path, synthetic_sites),
                                  arguments=(*FAST, "--epochs", str(epochs), "--set", "early_stopping_patience=100"))
    first_run_id = preempt_after_first_epoch(slurm, tmp_path, job_id, epochs)
    log, summary, run = check_resumed_run(slurm, tmp_path, job_id, first_run_id, epochs)
    assert log.count("strategy default: 1 replica(s) on 1 worker(s)") == 2
    assert run.info.run_name == f"brainmri-{job_id}"


@pytest.mark.slurm
def test_train_multinode_two_workers_make_one_model_and_one_run_across_a_requeue(
        slurm, tmp_path, synthetic_sites):  # noqa: F811
    epochs = 3
    env = {**job_environment(tmp_path, synthetic_sites), "BRAINMRI_PORT_BASE": str(free_port_pair())}
    job_id = slurm.submit(TRAIN_MULTINODE, *CPU_JOB, "--nodes=1", "--ntasks=2", "--ntasks-per-node=2",
                                  "--cpus-per-task=1", cwd=tmp_path, env=env,
                                  arguments=(*FAST, "--epochs", str(epochs), "--set", "early_stopping_patience=100"))
    first_run_id = preempt_after_first_epoch(slurm, tmp_path, job_id, epochs)
    log, summary, run = check_resumed_run(slurm, tmp_path, job_id, first_run_id, epochs)
    assert slurm.job(job_id)["NumTasks"] == "2"
    assert log.count("MultiWorkerMirroredStrategy: 2 replica(s) on 2 worker(s)") == 2
    assert log.count("done: ") == 1  # only the chief reports
    output = tmp_path / "run"
    assert (output / "model.keras").is_file() and not list(output.glob("backup/worker-*"))
    assert run.data.tags["system.strategy"] == "MultiWorkerMirroredStrategy"
    assert run.data.tags["system.workers"] == "2" and run.data.tags["system.replicas"] == "2"
