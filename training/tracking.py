"""MLflow tracking behind one small class; a no-op on every worker but the chief.

Everything a run logs goes through ``Tracker``: the run is opened once (or
reopened on resume), and metrics are logged once however often a step is
retried (``log_metrics_once``, ``logged_steps``). The final model is an
MLflow LoggedModel (``log_model``), found again by its run and name on a
resume instead of being logged twice, and so is its registered version.
Opening a run sets the SLURM job's facts as tags (``slurm.*``) and, when
asked, starts MLflow's system-metrics monitor (``system/...`` metrics).
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def resolve_tracking_uri(uri: str = "") -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working folder."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()
            if value is not None and math.isfinite(float(value))}


#: Name of the final model's LoggedModel in its run.
MODEL_NAME = "model"


class Tracker:
    """MLflow logging of one run through ``MlflowClient`` (no global active run); a no-op when disabled."""

    def __init__(self, enabled: bool, tracking_uri: str = "", experiment: str = "brainmri",
                 system_metrics: bool = False):
        self.enabled = enabled
        self.run_id = ""
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.system_metrics = system_metrics and enabled
        self.monitor = None
        if not enabled:
            return
        import mlflow

        from training.mlflow_store import prepare_store

        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
        warnings.filterwarnings("ignore", message=".*Integer columns in Python cannot represent missing.*")
        self.mlflow = mlflow
        self.experiment_id = prepare_store(self.tracking_uri, experiment)
        self.client = mlflow.tracking.MlflowClient(self.tracking_uri)

    # ---- the run ----------------------------------------------------------------------------

    def run_status(self, run_id: str) -> str | None:
        """``RUNNING``, ``FINISHED``, ... of ``run_id`` in this store; None when it is not there."""
        if not self.enabled or not run_id:
            return None
        try:
            return self.client.get_run(run_id).info.status
        except self.mlflow.exceptions.MlflowException:
            return None

    def start(self, run_id: str = "", run_name: str = "", tags: Mapping[str, str] | None = None) -> str:
        """Open a new run (``run_id`` '') or reopen ``run_id`` (status RUNNING again); returns the run id.

        ``tags``: set on a new run as it is created (``mlflow.parentRunId`` nests it under that run).
        """
        if not self.enabled:
            return ""
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            self.run_id = self.client.create_run(self.experiment_id, run_name=run_name or None,
                                                 tags=dict(tags or {})).info.run_id
        self.set_tags(slurm_tags())  # a requeued job updates slurm.restart_count (a tag has one value)
        if self.system_metrics:
            self.start_system_metrics(resume=bool(run_id))
        return self.run_id

    def end(self, status: str) -> None:
        """Close the run with ``status`` (FINISHED, FAILED, KILLED); stops the system-metrics monitor first."""
        self.stop_system_metrics()
        if self.enabled and self.run_id:
            self.client.set_terminated(self.run_id, status=status)

    def start_system_metrics(self, resume: bool) -> bool:
        """Start MLflow's ``SystemMetricsMonitor`` on this run (a thread; CPU, memory, disk, network, GPU).

        ``resume``: continue the steps of the ``system/...`` metrics already in the run. Sampling every
        ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (default 10). GPU metrics need
        ``nvidia-ml-py`` (the ``gpu`` extra). Returns False (with a warning) when it cannot start.
        """
        if not self.enabled or not self.run_id or self.monitor is not None:
            return False
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError as error:  # psutil missing
            warnings.warn(f"system metrics are off: {error}")
            return False
        self.monitor = SystemMetricsMonitor(self.run_id, resume_logging=resume, tracking_uri=self.tracking_uri)
        self.monitor.start()
        return True

    def stop_system_metrics(self) -> None:
        """Stop the monitor (if running) and write what it has collected."""
        if self.monitor is not None:
            monitor, self.monitor = self.monitor, None
            monitor.finish()

    def mark_finished(self, run_id: str) -> None:
        """Set a run that is not FINISHED to FINISHED without reopening it (a kill after the last write)."""
        if self.enabled and self.run_status(run_id) not in (None, "FINISHED"):
            self.client.set_terminated(run_id, status="FINISHED")

    # ---- values -----------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.enabled:
            from mlflow.entities import Param

            items = [Param(key, str(value)) for key, value in params.items()]
            for start in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[start:start + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled and self.run_id:
            from mlflow.entities import RunTag

            self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, *, model_id: str = "",
                    datasets: Mapping[str, tuple[str, str]] | None = None, timestamp: int | None = None) -> None:
        """Log the finite values of ``metrics`` (NaN and None are left out) in batches.

        ``model_id``: also link each metric to that LoggedModel (shown on the model's page);
        ``datasets``: ``{metric key: (dataset name, digest)}`` of the dataset it was measured on
        (only stored with a ``model_id``). ``timestamp`` in ms (default: now).
        """
        if not self.enabled:
            return
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000) if timestamp is None else int(timestamp)
        datasets = datasets or {}
        items = [Metric(key, value, timestamp, step or 0, model_id=model_id or None,
                        dataset_name=datasets[key][0] if model_id and key in datasets else None,
                        dataset_digest=datasets[key][1] if model_id and key in datasets else None)
                 for key, value in _finite(metrics).items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def logged_steps(self, key: str) -> set[int]:
        """Steps at which metric ``key`` is already in the run."""
        if not self.enabled or not self.run_id:
            return set()
        return {metric.step for metric in self.client.get_metric_history(self.run_id, key)}

    def log_metrics_once(self, metrics: Mapping[str, float], *, model_id: str = "",
                         datasets: Mapping[str, tuple[str, str]] | None = None) -> int:
        """Log the metrics not yet in the run (a retried finish logs nothing twice); returns how many.

        With ``model_id`` each metric is also linked to that LoggedModel and to its dataset
        (``datasets``, as in :meth:`log_metrics`), and a metric missing from the model is logged
        again with the same timestamp (the model's creation time): MLflow stores a run's metric
        under (key, value, timestamp, step), so a job killed between the run's and the model's
        rows of one batch adds the model's row without a second value in the run.
        """
        if not self.enabled:
            return 0
        present = set(self.client.get_run(self.run_id).data.metrics)
        timestamp = None
        if model_id:
            logged = self.client.get_logged_model(model_id)
            timestamp = logged.creation_timestamp
            present &= {metric.key for metric in logged.metrics or []}
        missing = {key: value for key, value in _finite(metrics).items() if key not in present}
        self.log_metrics(missing, model_id=model_id, datasets=datasets, timestamp=timestamp)
        return len(missing)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def log_datasets(self, sites: Mapping[str, Any], roles: Mapping[str, str]) -> None:
        """Each site as an MLflow dataset input (name, path, image count, digest) with its role."""
        if not self.enabled:
            return
        import pandas as pd
        from mlflow.entities import DatasetInput, InputTag

        for name, site in sites.items():
            frame = pd.DataFrame({"relative_path": [s.relative_path for s in site.samples],
                                  "label": [s.label for s in site.samples],
                                  "subclass": [s.subclass for s in site.samples],
                                  "sha256": [s.sha256 for s in site.samples]})
            dataset = self.mlflow.data.from_pandas(frame, source=site.root, name=name, targets="label",
                                                   digest=site.digest())
            entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", roles[name])])
            for attempt in range(5):
                try:
                    self.client.log_inputs(self.run_id, datasets=[entry])
                    break
                except self.mlflow.exceptions.MlflowException as error:
                    # Two runs registering the same dataset at once: the loser's insert violates the
                    # unique (experiment, name, digest) key; once the winner's row exists, logging works.
                    if "UNIQUE constraint" not in str(error) or attempt == 4:
                        raise
                    time.sleep(0.5 + attempt)

    # ---- the model --------------------------------------------------------------------------

    def find_logged_model(self, name: str = MODEL_NAME):
        """This run's LoggedModel called ``name`` (any status), the newest if several; None if none."""
        if not self.enabled or not self.run_id:
            return None
        found = self.client.search_logged_models(
            [self.experiment_id], filter_string=f"source_run_id = '{self.run_id}' AND name = '{name}'",
            order_by=[{"field_name": "creation_time", "ascending": False}])
        return found[0] if found else None

    def has_logged_model(self, model_id: str) -> bool:
        """Whether LoggedModel ``model_id`` is in this store (a model of another store is not)."""
        if not self.enabled or not model_id:
            return False
        try:
            self.client.get_logged_model(model_id)
        except self.mlflow.exceptions.MlflowException:
            return False
        return True

    def log_model(self, model, example_images: np.ndarray, *, name: str = MODEL_NAME,
                  register_as: str = "") -> str:
        """The final model as an MLflow LoggedModel of the run; returns its id ('' when disabled).

        ``example_images``: (N, S, S) uint8 crops; the input example is their (N, S, S, 1) float32
        tensor, from which the signature is inferred. Logged once per run: a resumed job finds the
        model by its run and name and reuses it (one left PENDING by a kill is uploaded again and
        finalised). ``register_as``: also register it in the model registry under that name, once.
        """
        if not self.enabled:
            return ""
        from mlflow.entities import LoggedModelStatus

        logged = self.find_logged_model(name)
        if logged is None:  # with the run's params, as mlflow's log_model does
            logged = self.client.create_logged_model(
                self.experiment_id, name=name, source_run_id=self.run_id, model_type="keras",
                params=dict(self.client.get_run(self.run_id).data.params),
                tags={"brainmri.input": "(S, S, 1) float32 grey levels 0..255 of the brain crop",
                      "brainmri.output": "(1,) tumour probability"})
        self.link_model(logged.model_id)
        if logged.status != LoggedModelStatus.READY:
            self.save_model_artifacts(logged, model, example_images)
            self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        if register_as:
            self.register_model(logged.model_id, register_as)
        return logged.model_id

    def link_model(self, model_id: str) -> None:
        """Record ``model_id`` as an output of the run ("Logged models" on its page), once."""
        from mlflow.entities import LoggedModelOutput

        outputs = self.client.get_run(self.run_id).outputs
        if model_id not in {output.model_id for output in (outputs.model_outputs if outputs else [])}:
            self.client.log_outputs(self.run_id, [LoggedModelOutput(model_id, step=0)])

    def save_model_artifacts(self, logged, model, example_images: np.ndarray) -> None:
        """Write the MLflow model (keras flavour, signature, input example) and upload it to ``logged``.

        Why the keras flavour written here rather than ``mlflow.keras.log_model`` or
        ``mlflow.tensorflow.log_model``: ``mlflow.keras.log_model`` with an input example fails (it
        writes the example before it creates the model folder, MLflow issue #16183), so
        ``mlflow.keras.save_model`` writes into a folder made first and the client uploads it to the
        LoggedModel, which is what ``log_model`` does inside. ``mlflow.tensorflow.log_model`` works but
        pickles Keras' registered custom objects (our layers, by reference to ``training.model``), so
        loading it would need this project installed. The model saved is :func:`portable_model`: the
        same layers and weights with the project's own layers written as Keras ops, so that
        ``mlflow.pyfunc.load_model`` and ``mlflow.keras.load_model`` work in any process with keras
        and mlflow, without importing this project. The requirements are pinned explicitly: MLflow
        would otherwise load the model in a subprocess to infer them (on a GPU node, a second process
        on the GPU).
        """
        import tempfile

        import keras
        import tensorflow as tf
        from mlflow.models import Model, infer_signature

        example = np.asarray(example_images)[..., None].astype(np.float32)
        portable = portable_model(model)
        signature = infer_signature(example, np.asarray(portable(example, training=False), np.float32))
        metadata = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=self.run_id,
                         model_id=logged.model_id)
        requirements = [f"mlflow=={self.mlflow.__version__}", f"keras=={keras.__version__}",
                        f"tensorflow=={tf.__version__}", f"numpy=={np.__version__}"]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model"
            path.mkdir()  # mlflow.keras writes the input example before it creates the folder (#16183)
            self.mlflow.keras.save_model(portable, str(path), mlflow_model=metadata, signature=signature,
                                         input_example=example, pip_requirements=requirements)
            self.client.log_model_artifacts(logged.model_id, str(path))

    def register_model(self, model_id: str, name: str) -> str:
        """Register LoggedModel ``model_id`` under ``name``, once per run; returns the version."""
        from mlflow.exceptions import MlflowException

        logged = self.client.get_logged_model(model_id)
        versions = self.client.search_model_versions(f"name = '{name}' AND run_id = '{self.run_id}'")
        if versions:
            version = versions[0].version
        else:
            try:
                self.client.create_registered_model(name)
            except MlflowException as error:
                if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            # The source is the model's artifact location, not models:/<id>: the SQL registry store
            # resolves a models:/ source through the global tracking URI, not this client's.
            version = self.client.create_model_version(name, source=logged.artifact_location, run_id=self.run_id,
                                                       model_id=model_id).version
        # As mlflow.register_model does: the LoggedModel lists its versions (its page links them).
        listed = json.loads(logged.tags.get("mlflow.modelVersions", "[]"))
        entry = {"name": name, "version": version}
        if entry not in listed:
            self.client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps([*listed, entry])})
        return str(version)


def portable_model(model):
    """``model`` with every layer of this project's own (``training.model.custom_objects``) replaced by
    the Keras ops of its ``call``, in a copy with the same weights: the same outputs, and loadable by
    plain Keras (no registered custom objects); ``model`` is left as it was. ``model`` itself when it
    has none of them.
    """
    import keras

    from training.model import custom_objects

    own = tuple(custom_objects().values())
    if not any(isinstance(layer, own) for layer in model._flatten_layers(include_self=False, recursive=True)):
        return model
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)
              and any(isinstance(inner, own) for inner in layer._flatten_layers(include_self=False))]
    if nested:
        raise ValueError(f"custom layers inside the nested model {nested[0].name!r} are not supported")

    def call(layer, *args, **kwargs):
        return layer.call(*args, **kwargs) if isinstance(layer, own) else layer(*args, **kwargs)

    # New layers with copied weights: calling the model's own layers again would give each a second
    # inbound node, and Grad-CAM (eval.gradcam) could no longer tell which node is the model's.
    portable = keras.models.clone_model(model, call_function=call)
    portable.set_weights(model.get_weights())
    return portable


def slurm_tags(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The SLURM job's facts as run tags ``slurm.<name>`` (none outside SLURM); see ``training.cluster``."""
    from training.cluster import slurm_facts

    return {f"slurm.{key}": value for key, value in slurm_facts(os.environ if environ is None else environ).items()}


def check_experiment(tracking_uri: str, name: str | None) -> None:
    """Raise ValueError unless the store at ``tracking_uri`` exists and (``name`` not None) holds experiment
    ``name``, not deleted; the message lists the experiments it holds. Creates nothing: a SQLite file or a
    file-store folder that does not exist is reported without being opened.
    """
    from urllib.parse import urlparse

    from training.config import uri_scheme
    from training.mlflow_store import sqlite_path

    database = sqlite_path(tracking_uri)
    folder = None
    if uri_scheme(tracking_uri) in ("", "file"):
        folder = Path(urlparse(tracking_uri).path if tracking_uri.startswith("file:") else tracking_uri)
    missing = database if database is not None and not database.is_file() else \
        folder if folder is not None and not folder.is_dir() else None
    if missing is not None:
        raise ValueError(f"no MLflow store at {missing} (tracking URI {tracking_uri}); train first or pass "
                         "--tracking-uri")
    if name is None:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage != "deleted":
        return
    names = sorted(experiment.name for experiment in client.search_experiments(max_results=1000))
    listed = ", ".join(repr(other) for other in names[:50]) + (", ..." if len(names) > 50 else "") or "none"
    state = "is deleted" if found is not None else "does not exist"
    raise ValueError(f"experiment {name!r} {state} in {tracking_uri}; experiments there: {listed}")
