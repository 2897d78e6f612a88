"""prepare_store: many processes starting together on one fresh SQLite store all succeed."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from training.mlflow_store import prepare_store, sqlite_path

REPO = Path(__file__).resolve().parents[1]

# Each worker imports everything, reports ready, waits for the "go" file, then opens the store.
WORKER = """
import sys, time
from pathlib import Path
from mlflow.tracking import MlflowClient
from training.mlflow_store import prepare_store

uri, barrier, index = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
(barrier / f"ready-{index}").touch()
while not (barrier / "go").exists():
    time.sleep(0.002)
experiment_id = prepare_store(uri, "exp")
client = MlflowClient(uri)
run = client.create_run(experiment_id)
client.log_metric(run.info.run_id, "loss", 0.5)
client.set_terminated(run.info.run_id)
"""


def start_together(uri: str, barrier: Path, count: int) -> list[tuple[int, str]]:
    """Run ``count`` workers that open ``uri`` at the same moment; (return code, stderr) each."""
    barrier.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, uri, str(barrier), str(index)],
            cwd=barrier, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for index in range(count)
    ]
    try:
        deadline = time.monotonic() + 40
        while len(list(barrier.glob("ready-*"))) < count and time.monotonic() < deadline:
            if any(worker.poll() is not None for worker in workers):
                break
            time.sleep(0.01)
        (barrier / "go").touch()
        errors = [worker.communicate(timeout=40)[1] for worker in workers]
        return [(worker.returncode, error) for worker, error in zip(workers, errors)]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def test_simultaneous_processes_on_fresh_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    results = start_together(uri, tmp_path / "barrier", count=4)
    for code, stderr in results:
        assert code == 0, stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("exp")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4
    assert all(run.data.metrics == {"loss": 0.5} for run in runs)
    assert (tmp_path / "store" / "mlflow.db.lock").is_file()


def test_missing_parent_folder_is_created(tmp_path):
    db = tmp_path / "a" / "b" / "mlflow.db"
    experiment_id = prepare_store(f"sqlite:///{db}", "exp")
    assert db.is_file()
    assert prepare_store(f"sqlite:///{db}", "exp") == experiment_id
    assert prepare_store(f"sqlite:///{db}") is None


def test_sqlite_paths_follow_mlflow(tmp_path, monkeypatch):
    assert sqlite_path("sqlite:////abs/mlflow.db") == Path("/abs/mlflow.db")
    assert sqlite_path("sqlite:///rel/mlflow.db?timeout=30") == Path("rel/mlflow.db")
    assert sqlite_path("http://localhost:5000") is None
    monkeypatch.chdir(tmp_path)
    prepare_store("sqlite:///rel/mlflow.db")
    assert (tmp_path / "rel" / "mlflow.db").is_file()
    assert (tmp_path / "rel" / "mlflow.db.lock").is_file()


@pytest.mark.parametrize("uri", ["sqlite://", "sqlite:///", "sqlite:///:memory:",
                                 "sqlite://host/mlflow.db", "sqlite:mlflow.db"])
def test_malformed_sqlite_uri(uri):
    with pytest.raises(ValueError, match="malformed sqlite tracking URI"):
        prepare_store(uri, "exp")
