"""MLflow tracking behind one small class; a no-op on every worker but the chief.

Everything a run logs goes through ``Tracker``: the run is opened once (or
reopened on resume), and metrics are logged once however often a step is
retried (``log_metrics_once``, ``logged_steps``).
"""
from __future__ import annotations

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


class Tracker:
    """MLflow logging of one run through ``MlflowClient`` (no global active run); a no-op when disabled."""

    def __init__(self, enabled: bool, tracking_uri: str = "", experiment: str = "brainmri"):
        self.enabled = enabled
        self.run_id = ""
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
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

    def start(self, run_id: str = "", run_name: str = "") -> str:
        """Open a new run (``run_id`` '') or reopen ``run_id`` (status RUNNING again); returns the run id."""
        if not self.enabled:
            return ""
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            self.run_id = self.client.create_run(self.experiment_id, run_name=run_name or None).info.run_id
        return self.run_id

    def end(self, status: str) -> None:
        """Close the run with ``status`` (FINISHED, FAILED, KILLED)."""
        if self.enabled and self.run_id:
            self.client.set_terminated(self.run_id, status=status)

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

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log the finite values of ``metrics`` (NaN and None are left out) in one batch."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        items = [Metric(key, value, timestamp, step or 0) for key, value in _finite(metrics).items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def logged_steps(self, key: str) -> set[int]:
        """Steps at which metric ``key`` is already in the run."""
        if not self.enabled or not self.run_id:
            return set()
        return {metric.step for metric in self.client.get_metric_history(self.run_id, key)}

    def log_metrics_once(self, metrics: Mapping[str, float]) -> int:
        """Log the metrics not yet in the run (a retried finish logs nothing twice); returns how many."""
        if not self.enabled:
            return 0
        present = set(self.client.get_run(self.run_id).data.metrics)
        missing = {key: value for key, value in _finite(metrics).items() if key not in present}
        self.log_metrics(missing)
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

    def log_model(self, model, example_images: np.ndarray) -> None:
        """The final model (MLflow Keras flavour) with its signature and an input example."""
        if not self.enabled:
            return
        import tempfile

        from mlflow.models import infer_signature

        example = example_images[..., None].astype(np.float32)
        signature = infer_signature(example, np.asarray(model(example, training=False)))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model"
            path.mkdir()  # mlflow.keras writes the input example before it creates the folder
            self.mlflow.keras.save_model(model, str(path), signature=signature, input_example=example)
            self.client.log_artifacts(self.run_id, str(path), artifact_path="model")
