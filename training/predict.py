"""Score new images with a trained model: the ``predict`` command's engine.

A model is named by a saved ``model.keras`` (or the run folder holding it), an
MLflow run id (``runs:/<id>`` or the bare 32-hex id) or a ``models:/`` URI (a
LoggedModel ``models:/m-...`` or a registered version ``models:/NAME/VERSION``).
What its training run knew comes with it (:class:`ModelSource`): the crop
settings (``config.json``), the decision threshold (``summary.json``, else the
run's MLflow metric ``threshold``) and the run and model ids.

Images are validated and cropped by the code that fills the training crop
cache (hidden files and extensions as ``datasets.sites``, then
``datasets.cache.process_file``) with the run's crop settings, and scored as
evaluation scores a site (``training.steps``, the run's test-time
augmentation): (S, S, 1) float32 grey levels 0..255 in, a tumour probability
out. A bad file is reported with its reason, skipped and counted.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from datasets.records import IMAGE_EXTENSIONS, BadFile

#: An MLflow run id: 32 lower-case hex digits.
RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")


@dataclasses.dataclass
class ModelSource:
    """A loaded model and what its training run knew.

    Attributes:
        source: the model as given (path, run id or URI).
        model: the Keras model: (B, S, S, 1) float32 0..255 -> (B, 1) probability.
        settings: flat settings of the run's ``config.json`` ({} when unknown).
        summary: the run's ``summary.json`` ({} when unknown).
        run_id: the training run's MLflow id ('' when unknown).
        model_id: the MLflow LoggedModel id ('' when unknown).
        folder: the run folder of a local ``model.keras`` (None for an MLflow source).
        run_threshold: the run's MLflow metric ``threshold`` (None when unknown).
    """

    source: str
    model: Any
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    run_id: str = ""
    model_id: str = ""
    folder: Path | None = None
    run_threshold: float | None = None

    @property
    def image_size(self) -> int:
        """Side S of the model's (S, S, 1) input."""
        return int(self.model.inputs[0].shape[1])

    @property
    def threshold(self) -> float | None:
        """The run's decision threshold: ``summary.json``, else its MLflow metric; None when unknown."""
        value = self.summary.get("threshold")
        return float(value) if value is not None else self.run_threshold

    @property
    def test_time_augmentation(self) -> str:
        return str(self.settings.get("test_time_augmentation", "none"))

    def crop_params(self):
        """The run's crop settings (``datasets.cache.CropParams``) at the model's input size."""
        from datasets.cache import CropParams

        defaults = CropParams()
        return CropParams(image_size=self.image_size, margin=float(self.settings.get("crop_margin", defaults.margin)),
                          crop=bool(self.settings.get("crop", defaults.crop)),
                          max_pixels=int(self.settings.get("max_pixels", defaults.max_pixels)))


@contextlib.contextmanager
def tracking_uri_in_use(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` inside the block, as it was after it.

    ``mlflow.keras.load_model("models:/...")`` and ``get_model_info`` resolve the URI through the global
    tracking (and registry) URI only. ``set_tracking_uri`` also sets ``$MLFLOW_TRACKING_URI``, which is
    put back as well.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils

    before, environment = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if environment is not None:
            os.environ["MLFLOW_TRACKING_URI"] = environment


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``; {} when absent; ValueError naming the file when it is not JSON."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} cannot be read as JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return value


def _flat_settings(config: dict, where: str) -> dict[str, Any]:
    """Flat settings of a ``config.json`` mapping; {} for {}; ValueError naming ``where`` otherwise."""
    from training.config import TrainConfig

    if not config:
        return {}
    try:
        return TrainConfig.from_settings(config).flat()
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where} is not a config.json written by train: {error}") from None


def load_model_source(source: str, tracking_uri: str = "") -> ModelSource:
    """The model named by ``source`` with its run's settings, threshold and ids.

    Raises ValueError naming the source when it is none of a ``model.keras``
    file, a run folder holding one, ``runs:/<run id>``, a run id or a
    ``models:/`` URI, or when it cannot be loaded.
    """
    from training.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if source.startswith("models:/"):
        return _from_mlflow_model(source, source, uri)
    if source.startswith("runs:/"):
        return _from_run(source[len("runs:/"):].strip("/").split("/")[0], source, uri)
    path = Path(source)
    if path.is_dir() and (path / "model.keras").is_file():
        path = path / "model.keras"
    if path.is_file():
        return _from_file(path, source)
    if RUN_ID_PATTERN.match(source):
        return _from_run(source, source, uri)
    raise ValueError(f"model {source!r} is not a model.keras file, a run folder with one, an MLflow run id, "
                     "runs:/<run id> or a models:/ URI")


def _from_file(path: Path, source: str) -> ModelSource:
    import keras

    from training.model import custom_objects

    try:
        model = keras.models.load_model(path, custom_objects=custom_objects())
    except Exception as error:
        raise ValueError(f"{path} cannot be loaded as a Keras model: {error}") from None
    folder = path.parent
    summary = _read_json(folder / "summary.json")
    state = _read_json(folder / "backup" / "state.json")
    return ModelSource(source, model, _flat_settings(_read_json(folder / "config.json"), str(folder / "config.json")),
                       summary, run_id=str(summary.get("mlflow_run_id") or state.get("run_id") or ""),
                       model_id=str(summary.get("mlflow_model_id") or ""), folder=folder)


def _from_run(run_id: str, source: str, uri: str) -> ModelSource:
    """The LoggedModel of training run ``run_id`` (the one named ``model``, else its newest)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from training.tracking import MODEL_NAME

    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ValueError(f"model {source!r}: there is no run {run_id} in {uri}") from None
    found = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'",
                                        order_by=[{"field_name": "creation_time", "ascending": False}])
    ready = [model for model in found if str(model.status) == "READY"]
    if not ready:
        raise ValueError(f"model {source!r}: run {run_id} has no logged model (trained with log_model=false, or "
                         "not finished); give its model.keras instead")
    chosen = next((model for model in ready if model.name == MODEL_NAME), ready[0])
    return _from_mlflow_model(f"models:/{chosen.model_id}", source, uri)


def _from_mlflow_model(model_uri: str, source: str, uri: str) -> ModelSource:
    """Download and load an MLflow model (keras flavour), then its run's config.json, summary.json, threshold."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with tracking_uri_in_use(uri):
        try:
            info = mlflow.models.get_model_info(model_uri)
            model = mlflow.keras.load_model(model_uri)
        except (MlflowException, OSError) as error:
            raise ValueError(f"model {source!r} cannot be loaded from {uri}: {error}") from None
    run_id = info.run_id or ""
    model_id = getattr(info, "model_id", None) or (model_uri[len("models:/"):] if model_uri.startswith("models:/m-")
                                                   else "")
    settings, summary, threshold = {}, {}, None
    if run_id:
        client = MlflowClient(uri)
        with tempfile.TemporaryDirectory() as folder:
            for name in ("config.json", "summary.json"):
                try:
                    client.download_artifacts(run_id, name, folder)
                except (MlflowException, OSError):
                    continue
            settings = _flat_settings(_read_json(Path(folder) / "config.json"), f"config.json of run {run_id}")
            summary = _read_json(Path(folder) / "summary.json")
        try:
            threshold = client.get_run(run_id).data.metrics.get("threshold")
        except MlflowException:
            threshold = None
    return ModelSource(source, model, settings, summary, run_id=run_id, model_id=model_id, run_threshold=threshold)


# ---- images -------------------------------------------------------------------------------------


def image_files(inputs: Sequence[str]) -> list[str]:
    """The files to score: each input file as given, each input folder's files (recursively, sorted;
    hidden sub-folders such as ``.git`` are not entered, hidden files are listed and skipped later).

    Raises ValueError for an input that does not exist.
    """
    if not inputs:
        raise ValueError("give at least one image or folder")
    files: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for folder, folders, names in os.walk(path):
                folders[:] = sorted(name for name in folders if not name.startswith("."))
                files += [str(Path(folder) / name) for name in sorted(names)]
        elif path.exists() or path.is_symlink():
            files.append(str(path))
        else:
            raise ValueError(f"{item!r} does not exist")
    return files


def crop_files(paths: Sequence[str], params) -> tuple[list[str], np.ndarray, list[BadFile]]:
    """Validate and crop each file as the training cache does (``datasets.cache.process_file``).

    Returns ``(kept paths, (N, S, S) uint8 crops, skipped)``; hidden files and
    extensions that are not images are skipped without being read, as in a site.
    """
    from datasets.cache import process_file
    from datasets.validation import is_hidden

    kept, crops, skipped = [], [], []
    for path in paths:
        extension = Path(path).suffix.lower()
        if is_hidden(Path(path).name):
            skipped.append(BadFile(path, path, "predict", "hidden_file"))
        elif extension not in IMAGE_EXTENSIONS:
            skipped.append(BadFile(path, path, "predict", "unsupported_extension",
                                   f"extension {extension or '(none)'!r}"))
        else:
            crop, _, _, reason, detail, _ = process_file(path, params)
            if crop is None:
                skipped.append(BadFile(path, path, "predict", reason, detail))
            else:
                kept.append(path)
                crops.append(crop)
    size = params.image_size
    return kept, np.stack(crops) if crops else np.zeros((0, size, size), np.uint8), skipped


def score_crops(source: ModelSource, crops: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, S, S) uint8 crops -> (N,) float32 tumour probabilities, as evaluation scores a site."""
    from training.cluster import choose_strategy
    from training.steps import make_predict_step, predict_site

    cluster = choose_strategy()
    predict_step = make_predict_step(cluster, source.model, source.test_time_augmentation)
    return predict_site(cluster, predict_step, crops, batch_size * cluster.replicas)


@dataclasses.dataclass
class Predictions:
    """What ``predict`` found: per scored file its probability and decision, and the skipped files."""

    paths: list[str]
    probabilities: np.ndarray  # (N,) float32 in [0, 1]
    threshold: float
    skipped: list[BadFile]

    @property
    def decisions(self) -> np.ndarray:
        """(N,) int: 1 tumour (probability >= threshold), 0 no tumour."""
        return (self.probabilities >= self.threshold).astype(np.int64)

    def summary(self) -> str:
        """One line: how many images were scored at which threshold, the decisions, the skipped files by reason."""
        from datasets.validation import summarize_bad_files

        skipped = summarize_bad_files(self.skipped)
        tumour = int(self.decisions.sum())
        return (f"scored {len(self.paths)} images at threshold {self.threshold:.4f}: {tumour} tumour, "
                f"{len(self.paths) - tumour} no tumour; skipped {len(self.skipped)}"
                + (f" ({', '.join(f'{k} {v}' for k, v in skipped.items())})" if skipped else ""))


def predict_images(source: ModelSource, inputs: Sequence[str], threshold: float | None = None, *,
                   batch_size: int = 32, report: Callable[[str], None] | None = None) -> Predictions:
    """Score the images of ``inputs`` (files and folders) with ``source``'s model.

    ``threshold`` overrides the run's; ValueError when neither is known, or
    when it is outside [0, 1]. ``report(line)`` receives each skipped file.
    """
    threshold = source.threshold if threshold is None else float(threshold)
    if threshold is None:
        raise ValueError(f"no decision threshold known for {source.source!r} (no summary.json, no MLflow metric "
                         "'threshold'): give --threshold")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    paths, crops, skipped = crop_files(image_files(inputs), source.crop_params())
    for bad in skipped:
        if report:
            report(f"skipped {bad.path}: {bad.reason}" + (f" ({bad.detail})" if bad.detail else ""))
    probabilities = score_crops(source, crops, batch_size) if len(paths) else np.zeros(0, np.float32)
    return Predictions(paths, probabilities, threshold, skipped)


def write_predictions_csv(path: str | os.PathLike, predictions: Predictions) -> Path:
    """Write ``path,probability,threshold,decision`` rows (decision 1: tumour); returns the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "probability", "threshold", "decision"])
            for file, probability, decision in zip(predictions.paths, predictions.probabilities,
                                                   predictions.decisions):
                writer.writerow([file, format(float(probability), ".9g"), format(predictions.threshold, ".9g"),
                                 int(decision)])
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def read_predictions_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a CSV written by :func:`write_predictions_csv`, with probability as float, decision as int."""
    with open(path, newline="") as handle:
        return [{"path": row["path"], "probability": float(row["probability"]), "threshold": float(row["threshold"]),
                 "decision": int(row["decision"])} for row in csv.DictReader(handle)]


def check_model_source(source: str) -> None:
    """Raise ValueError unless ``source`` can name a model: a ``.keras``/``.h5`` model file (its header and
    zip directory checked), a run folder holding ``model.keras``, an MLflow run id, ``runs:/<run id>`` or
    ``models:/...``. Nothing is loaded."""
    from training.config import check_keras_file

    if source.startswith("models:/"):
        if not source[len("models:/"):].strip("/"):
            raise ValueError(f"model {source!r} names no model: models:/<model id> or models:/NAME/VERSION")
        return
    if source.startswith("runs:/"):
        if not RUN_ID_PATTERN.match(source[len("runs:/"):].strip("/").split("/")[0]):
            raise ValueError(f"model {source!r}: runs:/ needs a run id of 32 hex digits")
        return
    path = Path(source)
    if path.is_dir():
        if not (path / "model.keras").is_file():
            raise ValueError(f"model {source!r} is a folder without a model.keras")
        path = path / "model.keras"
    if path.exists():
        check_keras_file(str(path), "model", "config.json")
    elif not RUN_ID_PATTERN.match(source):
        raise ValueError(f"model {source!r} does not exist; give a model.keras file, a run folder with one, "
                         "an MLflow run id, runs:/<run id> or a models:/ URI")
