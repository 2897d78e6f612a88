"""The final model as an MLflow LoggedModel: fresh-process loading, serving, logged and registered once,
metrics linked to the model and each site's dataset, SLURM tags and system metrics."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from training.config import ModelConfig, TrainConfig
from training.model import build_model
from eval.gradcam import find_last_conv_layer, grad_cam
from training.tracking import Tracker, portable_model


class SimulatedKill(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler sees it."""


def tiny_model(image_size: int = 32):
    """The project's model on the small CNN with per-image standardisation (its custom layer)."""
    return build_model(ModelConfig(backbone="small_cnn", weights="none", input_normalization="per_image",
                                   dense_units=8), image_size)


def images(count: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """(count, size, size) uint8 images with some structure (a bright disc of random radius)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = rng.integers(0, 60, (count, size, size)).astype(np.uint8)
    for image, radius in zip(out, rng.uniform(3, size / 2, count)):
        image[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius ** 2] += 150
    return out


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one takes seconds); each test has its own experiment."""
    folder = tmp_path_factory.mktemp("store")
    here = os.getcwd()
    os.chdir(folder)  # the store's artifact root (./mlruns) is fixed when it is first opened
    try:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        Tracker(True, uri, "setup")
    finally:
        os.chdir(here)
    return uri


def experiment_name(request) -> str:
    return "".join(c if c.isalnum() else "-" for c in request.node.name)


@pytest.fixture()
def tracker(store_uri, request):
    tracker = Tracker(True, store_uri, experiment_name(request))
    tracker.start("", "final")
    tracker.log_params({"image_size": 32})
    return tracker


def test_portable_model_has_no_custom_layer_and_the_same_outputs():
    model = tiny_model()
    portable = portable_model(model)
    names = {type(layer).__name__ for layer in portable._flatten_layers(include_self=False)}
    assert "PerImageStandardization" in {type(layer).__name__ for layer in model.layers}
    assert "PerImageStandardization" not in names
    batch = images(4)[..., None].astype(np.float32)
    np.testing.assert_array_equal(np.asarray(portable(batch, training=False)), np.asarray(model(batch, training=False)))
    plain = build_model(ModelConfig(backbone="small_cnn", weights="none", dense_units=8), 32)
    assert portable_model(plain) is plain  # nothing to replace
    # The model itself is untouched: every layer still has one inbound node, so Grad-CAM finds its last
    # convolution (once it found the standardization layer, the only layer not called again, and failed).
    assert all(len(layer._inbound_nodes) == 1 for layer in model.layers)
    assert find_last_conv_layer(model) == find_last_conv_layer(plain)
    assert grad_cam(model, batch).shape == (4, 32, 32)


FRESH_PROCESS = """
import json, sys
import numpy as np
import mlflow
uri, inputs = sys.argv[1], np.load(sys.argv[2])
by_pyfunc = np.asarray(mlflow.pyfunc.load_model(uri).predict(inputs)).ravel()
by_keras = np.asarray(mlflow.keras.load_model(uri)(inputs, training=False)).ravel()
ours = sorted(name for name in sys.modules if name.split(".")[0] in ("training", "datasets", "augment", "brain_crop"))
print(json.dumps({"pyfunc": by_pyfunc.tolist(), "keras": by_keras.tolist(), "project_modules": ours}))
"""


@pytest.mark.slow
def test_logged_model_loads_by_pyfunc_and_keras_in_a_fresh_process(tracker, tmp_path):
    model = tiny_model()
    model_id = tracker.log_model(model, images(2))
    logged = tracker.client.get_logged_model(model_id)
    assert (str(logged.status), logged.name, logged.source_run_id) == ("READY", "model", tracker.run_id)
    assert logged.params == {"image_size": "32"}  # the run's params, as mlflow's log_model copies them
    run = tracker.client.get_run(tracker.run_id)
    assert [output.model_id for output in run.outputs.model_outputs] == [model_id]
    batch = images(3, seed=1)[..., None].astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, f"models:/{model_id}", str(tmp_path / "batch.npy")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MLFLOW_TRACKING_URI": tracker.tracking_uri,
                                 "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["project_modules"] == []  # the custom layer needed nothing of this project
    expected = np.asarray(model(batch, training=False)).ravel()
    np.testing.assert_allclose(loaded["pyfunc"], expected, atol=1e-6)
    np.testing.assert_allclose(loaded["keras"], expected, atol=1e-6)
    # signature and input example: (-1, 32, 32, 1) float32 in, (-1, 1) out; the example is two crops
    folder = Path(logged.artifact_location)
    meta = mlflow.models.Model.load(str(folder / "MLmodel"))
    (inputs,), (outputs,) = meta.signature.inputs.inputs, meta.signature.outputs.inputs
    assert (str(inputs.type), inputs.shape, str(outputs.type), outputs.shape) == \
        ("float32", (-1, 32, 32, 1), "float32", (-1, 1))
    assert (meta.model_id, meta.run_id, set(meta.flavors)) == (model_id, tracker.run_id, {"keras", "python_function"})
    example = np.asarray(json.loads((folder / "input_example.json").read_text()))
    assert example.shape == (2, 32, 32, 1)


def test_a_resumed_job_logs_and_registers_the_model_once(tracker, monkeypatch):
    """Killed during the upload (the LoggedModel left PENDING), again after it: one model, one version."""
    model = tiny_model()
    real = Tracker.save_model_artifacts
    with monkeypatch.context() as patch:
        patch.setattr(Tracker, "save_model_artifacts", lambda *args: (_ for _ in ()).throw(SimulatedKill()))
        with pytest.raises(SimulatedKill):
            tracker.log_model(model, images(2), register_as="brainmri-once")
    (pending,) = tracker.client.search_logged_models([tracker.experiment_id])
    assert str(pending.status) == "PENDING"
    calls = []
    monkeypatch.setattr(Tracker, "save_model_artifacts", lambda self, *args: calls.append(1) or real(self, *args))
    first = tracker.log_model(model, images(2), register_as="brainmri-once")
    again = tracker.log_model(model, images(2), register_as="brainmri-once")  # killed after it, started again
    assert first == again == pending.model_id and calls == [1]
    (logged,) = tracker.client.search_logged_models([tracker.experiment_id])
    assert str(logged.status) == "READY"
    versions = tracker.client.search_model_versions("name = 'brainmri-once'")
    assert [(v.version, v.run_id) for v in versions] == [(1, tracker.run_id)]
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": "brainmri-once", "version": 1}]
    run = tracker.client.get_run(tracker.run_id)
    assert [output.model_id for output in run.outputs.model_outputs] == [first]
    # the registered version loads as the model
    with_uri = mlflow.MlflowClient(tracker.tracking_uri)
    assert with_uri.get_model_version("brainmri-once", "1").source == logged.artifact_location


def fake_site(name: str, digest: str):
    from datasets.records import Sample

    return types.SimpleNamespace(samples=[Sample(f"/x/{name}/a.png", "yes/a.png", name, 1, "tumour", "0" * 64)],
                                 root=f"/x/{name}", digest=lambda: digest)


def test_metrics_are_linked_to_the_model_and_each_sites_dataset_once(tracker, monkeypatch):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from training.evaluation import metric_datasets

    sites = {"nav": fake_site("nav", "d1"), "mos": fake_site("mos", "d2")}
    roles = {"nav": "val", "mos": "test"}
    tracker.log_datasets(sites, roles)
    model_id = tracker.log_model(tiny_model(), images(2))
    results = {"nav": {"role": "val"}, "mos": {"role": "test"}}
    monkeypatch.setattr("eval.report.mlflow_metric_names", lambda results: {
        key: value for name in results for key, value in
        ({f"{results[name]['role']}_{name}_auc": 0.9 if name == "nav" else 0.7, "decision_threshold": 0.4}).items()})
    datasets = metric_datasets(results, sites, roles)
    assert datasets == {"val_nav_auc": ("nav", "d1"), "test_mos_auc": ("mos", "d2"),
                        "threshold": ("nav", "d1"), "decision_threshold": ("nav", "d1")}
    metrics = {"val_nav_auc": 0.9, "test_mos_auc": 0.7, "threshold": 0.4}
    # Killed between the run's rows and the model's rows of one batch: the run has them, the model not.
    real = SqlAlchemyStore._log_model_metrics
    with monkeypatch.context() as patch:
        patch.setattr(SqlAlchemyStore, "_log_model_metrics", lambda *args, **kwargs: (_ for _ in ()).throw(
            SimulatedKill()))
        with pytest.raises(SimulatedKill):
            tracker.log_metrics_once(metrics, model_id=model_id, datasets=datasets)
    assert set(tracker.client.get_run(tracker.run_id).data.metrics) >= set(metrics)
    assert not tracker.client.get_logged_model(model_id).metrics
    monkeypatch.setattr(SqlAlchemyStore, "_log_model_metrics", real)
    assert tracker.log_metrics_once(metrics, model_id=model_id, datasets=datasets) == 3
    assert tracker.log_metrics_once(metrics, model_id=model_id, datasets=datasets) == 0
    linked = {(m.key, m.value, m.dataset_name, m.dataset_digest) for m in tracker.client.get_logged_model(model_id).metrics}
    assert linked == {("val_nav_auc", 0.9, "nav", "d1"), ("test_mos_auc", 0.7, "mos", "d2"),
                      ("threshold", 0.4, "nav", "d1")}
    for key in metrics:  # one value each in the run: the second batch matched the first one's rows
        assert len(tracker.client.get_metric_history(tracker.run_id, key)) == 1


@pytest.mark.parametrize("environment, expected", [
    ({}, {}),
    ({"SLURM_JOB_ID": "4711", "SLURM_JOB_NODELIST": "gpu[01-04]"},
     {"job_id": "4711", "job_nodelist": "gpu[01-04]", "restart_count": "0"}),
    ({"SLURM_JOB_ID": "4712", "SLURM_ARRAY_JOB_ID": "4700", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_NODELIST": "n1",
      "SLURM_RESTART_COUNT": "2"},
     {"job_id": "4712", "array_job_id": "4700", "array_task_id": "3", "job_nodelist": "n1", "restart_count": "2"}),
    ({"SLURM_JOB_ID": " ", "SLURM_RESTART_COUNT": ""}, {}),
])
def test_slurm_facts(environment, expected):
    from training.cluster import slurm_facts

    assert slurm_facts(environment) == expected


def test_slurm_tags_are_set_on_start_and_updated_on_resume(store_uri, request, monkeypatch):
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[01-02]")
    tracker = Tracker(True, store_uri, experiment_name(request))
    run_id = tracker.start("", "slurm")
    assert tracker.client.get_run(run_id).data.tags["slurm.restart_count"] == "0"
    tracker.end("KILLED")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued: same job, next start
    again = Tracker(True, store_uri, experiment_name(request))
    again.start(run_id)
    tags = {k: v for k, v in again.client.get_run(run_id).data.tags.items() if k.startswith("slurm.")}
    assert tags == {"slurm.job_id": "4711", "slurm.job_nodelist": "gpu[01-02]", "slurm.restart_count": "1"}


@pytest.mark.parametrize("enabled", [True, False])
def test_system_metrics_are_logged_only_when_on(store_uri, request, monkeypatch, enabled):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    tracker = Tracker(True, store_uri, experiment_name(request), system_metrics=enabled)
    run_id = tracker.start("", "system")
    time.sleep(1.5)
    tracker.end("FINISHED")
    assert tracker.monitor is None  # stopped with the run
    metrics = tracker.client.get_run(run_id).data.metrics
    system = {key for key in metrics if key.startswith("system/")}
    if enabled:
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
        steps = [m.step for m in tracker.client.get_metric_history(run_id, "system/cpu_utilization_percentage")]
        assert steps == list(range(len(steps))) and len(steps) >= 2
    else:
        assert system == set()


def test_cli_options_set_the_tracking_keys(monkeypatch, synthetic_sites):
    from click.testing import CliRunner

    from train_distributed import cli

    captured = {}
    monkeypatch.setattr("training.loop.run_training", lambda config: captured.setdefault("config", config) and 0)
    sites = ["--train-site", f"synth_a={synthetic_sites['synth_a']}", "--val-site",
             f"synth_b={synthetic_sites['synth_b']}"]
    assert CliRunner().invoke(cli, ["train", *sites]).exit_code == 0
    tracking = captured.pop("config").tracking
    assert (tracking.system_metrics, tracking.register_model) == (True, "")
    result = CliRunner().invoke(cli, ["train", *sites, "--no-system-metrics", "--register-model", "brainmri-x"])
    assert result.exit_code == 0, result.output
    tracking = captured.pop("config").tracking
    assert (tracking.system_metrics, tracking.register_model) == (False, "brainmri-x")
    for arguments, message in ((["--register-model", "a/b"], "registered model name"),
                               (["--register-model", "x", "--set", "log_model=false"], "needs log_model=true")):
        result = CliRunner().invoke(cli, ["train", *sites, *arguments])
        assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.slow
def test_a_training_run_killed_after_logging_its_model_logs_it_once(tmp_path, store_uri, synthetic_sites,
                                                                     monkeypatch):
    """In-process: killed right after the model was logged and registered, then the same config again."""
    from training import loop

    monkeypatch.chdir(tmp_path)
    config = TrainConfig.from_settings({
        "train_site": f"synth_a={synthetic_sites['synth_a']}", "val_site": f"synth_b={synthetic_sites['synth_b']}",
        "test_sites": [f"synth_c={synthetic_sites['synth_c']}"], "image_size": 32, "batch_size": 16, "epochs": 1,
        "weights": "none", "backbone": "small_cnn", "dense_units": 8, "bootstrap_resamples": 50,
        "gradcam_examples": 0, "min_class_images": 10, "output": str(tmp_path / "run"), "tracking_uri": store_uri,
        "experiment": "resume", "register_model": "brainmri-resume", "system_metrics": False}).validate()
    with monkeypatch.context() as patch:
        patch.setattr("training.evaluation.evaluate_and_report", lambda *args, **kwargs: (_ for _ in ()).throw(
            SimulatedKill()))
        patch.setattr(Tracker, "end", lambda self, status: None)
        patch.setattr(Tracker, "set_tags", lambda self, tags: None)
        with pytest.raises(SimulatedKill):
            loop.run_training(config)
    client = mlflow.MlflowClient(config.tracking.tracking_uri)
    (experiment_id,) = [e.experiment_id for e in client.search_experiments() if e.name == "resume"]
    (logged,) = client.search_logged_models([experiment_id])
    assert str(logged.status) == "READY" and not logged.metrics
    assert loop.run_training(config) == 0
    (again,) = client.search_logged_models([experiment_id])
    assert again.model_id == logged.model_id
    assert [v.version for v in client.search_model_versions("name = 'brainmri-resume'")] == [1]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["mlflow_model_id"] == logged.model_id
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert not [key for key in run.data.metrics if key.startswith("system/")]  # system_metrics=false
    final = [key for key in run.data.metrics if key.startswith(("val_synth", "test_synth"))] + ["threshold"]
    assert len(final) > 40 and all(len(client.get_metric_history(run.info.run_id, key)) == 1 for key in final)
    linked = [(m.key, m.dataset_name) for m in again.metrics]
    assert len(linked) == len(set(linked)) and {key for key, _ in linked} >= set(final)
    assert ("test_synth_c_auc", "synth_c") in linked and ("val_synth_b_auc", "synth_b") in linked
    assert dict(linked)["threshold"] == "synth_b"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_models_probability(tracker, tmp_path):
    """README's command: ``mlflow models serve -m models:/<id> --env-manager local``, then the curl body."""
    executable = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    if not Path(executable).exists():
        pytest.skip("the mlflow command is not installed")
    model = tiny_model()
    model_id = tracker.log_model(model, images(2))
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as handle:
        server = subprocess.Popen([executable, "models", "serve", "-m", f"models:/{model_id}", "--env-manager",
                                   "local", "-p", str(port), "-h", "127.0.0.1"], cwd=tmp_path, stdout=handle,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "MLFLOW_TRACKING_URI": tracker.tracking_uri})
    try:
        deadline = time.time() + 240
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow models serve exited ({server.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.time() > deadline:
                pytest.skip(f"mlflow models serve did not start within 240 s here:\n{log.read_text()[-2000:]}")
            time.sleep(1)
        batch = images(1, seed=3)[..., None].astype(np.float32)  # (1, S, S, 1) float32 grey levels 0..255
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": batch.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            predictions = json.loads(answer.read())["predictions"]
        assert np.asarray(predictions).shape == (1, 1)
        assert predictions[0][0] == pytest.approx(float(np.asarray(model(batch, training=False))[0, 0]), abs=1e-6)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
