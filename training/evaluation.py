"""Evaluate a model on every validation and test site: predictions, threshold, report, MLflow.

Used at the end of training (best weights) and by ``evaluate`` on any saved
model or several (a seed ensemble). Predictions run on every worker (they
are collective); only the chief writes files and logs.

What each evaluated image is compared with comes from the run's
``train_hashes.npz`` (:class:`TrainingReference`): the perceptual hashes of
the training set that was used (leak-free subset) and of the whole training
site as given (source-disjoint subset), and the non-anatomical image
statistics of the training set, on which the shortcut baseline is fit.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from training.cluster import Cluster
from training.config import TrainConfig
from training.steps import predict_site
from training.tracking import Tracker


@dataclasses.dataclass
class TrainingReference:
    """The training data an evaluation compares each image with (``train_hashes.npz``).

    Attributes:
        hashes: (N, W) uint64 perceptual hashes of the training set that was
            used (after the leakage policy).
        site_hashes: (M, W) uint64 hashes of the whole training site as given
            (M >= N); equal to ``hashes`` for files written before it existed.
        threshold_bits: near-duplicate threshold the hashes are compared at.
        features: (N, F) float64 non-anatomical statistics of the training
            set used (``datasets.shortcuts.FEATURE_NAMES``), or None.
        labels: (N,) int labels of the training set used, or None.
        feature_names: names of the ``features`` columns.
    """

    hashes: np.ndarray
    site_hashes: np.ndarray
    threshold_bits: int
    features: np.ndarray | None = None
    labels: np.ndarray | None = None
    feature_names: tuple[str, ...] = ()

    @classmethod
    def from_sites(cls, used, given, threshold_bits: int) -> "TrainingReference":
        """From the training site after (``used``) and before (``given``) the policy (``CachedSite``)."""
        features = getattr(used, "features", None)
        from datasets.shortcuts import FEATURE_NAMES

        return cls(used.hashes, given.hashes, int(threshold_bits), features,
                   None if features is None else used.labels.astype(np.int64),
                   FEATURE_NAMES if features is not None else ())

    def save(self, path: Path, keys: Sequence[str]) -> None:
        arrays = {"keys": np.array(list(keys)), "hashes": self.hashes, "site_hashes": self.site_hashes,
                  "threshold_bits": self.threshold_bits}
        if self.features is not None:
            arrays.update(features=self.features, labels=self.labels, feature_names=np.array(self.feature_names))
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> "TrainingReference":
        """Read ``train_hashes.npz``; ValueError naming the file when it is not one."""
        try:
            with np.load(path) as stored:
                hashes = stored["hashes"]
                site_hashes = stored["site_hashes"] if "site_hashes" in stored else hashes
                features = stored["features"] if "features" in stored else None
                return cls(hashes, site_hashes, int(stored["threshold_bits"]), features,
                           stored["labels"] if features is not None else None,
                           tuple(str(n) for n in stored["feature_names"]) if features is not None else ())
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{path} is not a train_hashes.npz written by train: {error}") from None

    @classmethod
    def empty(cls) -> "TrainingReference":
        """No training data known: nothing is leaked, no shortcut baseline."""
        return cls(np.zeros((0, 1), np.uint64), np.zeros((0, 1), np.uint64), 0)

    def flags(self, site) -> tuple[np.ndarray, np.ndarray]:
        """(leaked, near_train_site): (N,) bool each for a site's images."""
        from datasets.audit import leaked_flags

        leaked = leaked_flags(site.hashes, self.hashes, self.threshold_bits)
        near = leaked_flags(site.hashes, self.site_hashes, self.threshold_bits) | leaked
        return leaked, near

    def shortcut_scores(self, site, seed: int) -> np.ndarray:
        """(N,) float64 shortcut-baseline probabilities for a site's images; nan when unknown.

        Unknown: no training features stored, features of another version,
        or a training set with one class.
        """
        from datasets.shortcuts import FEATURE_NAMES, shortcut_baseline_scores

        features = getattr(site, "features", None)
        if (self.features is None or features is None or tuple(self.feature_names) != FEATURE_NAMES
                or len(np.unique(self.labels)) < 2):
            return np.full(len(site.samples), math.nan)
        return shortcut_baseline_scores(self.features, self.labels, features, seed=seed)


def evaluate_and_report(config: TrainConfig, cluster: Cluster, tracker: Tracker, model, predict_step,
                        sites: Mapping, roles: Mapping[str, str], output: Path, reference: TrainingReference,
                        threshold: float | None = None, check_stop: Callable[[str], None] | None = None,
                        extra_info: Mapping[str, str] | None = None, shortcuts: dict | None = None,
                        train_review: dict | None = None, model_id: str = "") -> dict:
    """Predict every val/test site, choose the threshold on val, write the report, log it once.

    ``model_id``: the MLflow LoggedModel evaluated; every metric is also linked to it and to the
    dataset of its site (the threshold to the validation site's), so its page lists them per site.

    ``model`` is the model Grad-CAM explains (None: no Grad-CAM). Every
    val/test site gets a data-quality review from the model's probabilities
    (``train_review``: the training site's, cross-validated, written with
    them to ``quality_review.csv`` and ``quality_<site>.png``).

    Returns the summary: ``{"threshold", "threshold_method", "sites": {name: metrics + role}}``.
    """
    from eval.gradcam import grad_cam, gradcam_montage, select_gradcam_examples
    from eval.report import (PredictionRow, evaluate_sites, mlflow_metric_names, threshold_from_validation,
                             write_report)

    from datasets.cache import image_lookup
    from datasets.quality import quality_review, sensitivity_mask, write_quality_outputs

    evaluation = config.evaluation
    rows, scores_by_site, reviews = [], {}, {}
    for name, role in roles.items():
        if role == "train":
            continue
        if check_stop:
            check_stop(f"evaluation of {name}")
        site = sites[name]
        scores = predict_site(cluster, predict_step, site.images, config.trainer.batch_size)
        scores_by_site[name] = scores
        leaked, near = reference.flags(site)
        shortcut = reference.shortcut_scores(site, config.seed)
        flagged = np.zeros(len(site.samples), bool)
        if len(np.unique(site.labels)) == 2:  # cleanlab needs both classes
            reviews[name] = quality_review(name, site.samples, site.images, scores,
                                           probability_source="the trained model")
            flagged = ~sensitivity_mask([s.key for s in site.samples], reviews[name])
        rows += [PredictionRow(site=name, role=role, relative_path=s.relative_path, label=s.label,
                               subclass=s.subclass, score=float(score), leaked=bool(flag),
                               near_train_site=bool(near_flag), shortcut_score=float(short), flagged=bool(bad))
                 for s, score, flag, near_flag, short, bad in zip(site.samples, scores, leaked, near, shortcut,
                                                                  flagged)]
    if threshold is None:
        threshold = threshold_from_validation(rows, method=evaluation.threshold_method,
                                              target_sensitivity=evaluation.target_sensitivity)
    results = evaluate_sites(rows, threshold, n_resamples=evaluation.bootstrap_resamples, seed=config.seed)
    summary = {"threshold": threshold, "threshold_method": evaluation.threshold_method,
               "sites": {name: {**values, "role": roles[name]} for name, values in results.items()}}
    if not cluster.is_chief:
        return summary
    gradcam = {}
    kinds = ("tp", "fp", "tn", "fn")
    for name, scores in scores_by_site.items() if model is not None else ():
        site = sites[name]
        picks = select_gradcam_examples(site.labels, scores, threshold, per_kind=evaluation.gradcam_examples,
                                        seed=config.seed)
        order = [i for kind in kinds for i in picks.get(kind, [])]
        if not order:
            continue
        titles = [f"{kind} {scores[i]:.2f}" for kind in kinds for i in picks.get(kind, [])]
        heatmaps = grad_cam(model, site.images[order][..., None].astype(np.float32))
        gradcam[name] = gradcam_montage(site.images[order], heatmaps, titles)
    run_info = {"mlflow_run_id": tracker.run_id, "train_site": config.data.train_site,
                "weights": config.model.weights, "image_size": config.data.image_size,
                "leakage": config.data.leakage, **(extra_info or {})}
    if train_review:
        reviews = {train_review["site"]: train_review, **reviews}
    quality_paths = []
    if reviews:
        lookup = image_lookup({name: sites[name] for name in reviews})
        quality_paths = [str(path) for path in write_quality_outputs(reviews, lookup, output)]
        summary["quality"] = {name: {**review["counts"], "probability_source": review["probability_source"]}
                              for name, review in reviews.items()}
    figures = [(path, f"Data-quality candidates of {name}: orange probably not MRI, cyan candidate label errors "
                      "(for review; nothing removed)") for name, path in zip(reviews, quality_paths[1:])]
    paths = write_report(output, rows, results, threshold=threshold,
                         title="Cross-site evaluation", run_info=run_info, gradcam=gradcam, shortcuts=shortcuts,
                         quality={"reviews": reviews, "figures": figures})
    paths += quality_paths
    for path in paths:
        tracker.log_artifact(path, artifact_path="report")
    tracker.log_metrics_once({**mlflow_metric_names(results), "threshold": threshold}, model_id=model_id,
                             datasets=metric_datasets(results, sites, roles))
    return summary


def metric_datasets(results: Mapping[str, dict], sites: Mapping, roles: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``{metric name: (site name, site digest)}``: the dataset each evaluation metric was measured on.

    The names are those of ``eval.report.mlflow_metric_names``; ``threshold`` and ``decision_threshold``
    belong to the validation site (where the threshold is chosen), or to none when there is none.
    """
    from eval.report import mlflow_metric_names

    datasets = {}
    for name in results:
        for key in mlflow_metric_names({name: results[name]}):
            datasets[key] = (name, sites[name].digest())
    validation = [name for name in results if roles.get(name) == "val"]
    for key in ("threshold", "decision_threshold"):
        datasets.pop(key, None)
        if validation:
            datasets[key] = (validation[0], sites[validation[0]].digest())
    return datasets


#: Subsets of the console table: summary key ("" the whole site) and column title.
CONSOLE_SUBSETS = (("", "AUC [95% CI]"), ("unique", "leak-free AUC [95% CI]"),
                   ("disjoint", "source-disjoint AUC [95% CI]"))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _console_auc(metrics: dict | None, with_images: bool) -> str:
    """``0.912 [0.88, 0.94]`` (and ``n=300``) of a subset's metrics; ``n/a`` where the AUC is undefined."""
    if not metrics:
        return "n/a"
    images = f" n={metrics.get('images', 0)}" if with_images else ""
    if not _finite(metrics.get("auc")):
        return "n/a (one class)" + images if metrics.get("images") else "n/a (no images)"
    low, high = metrics.get("auc_ci") or (None, None)
    interval = f" [{low:.3f}, {high:.3f}]" if _finite(low) and _finite(high) else ""
    return f"{metrics['auc']:.3f}{interval}{images}"


def _console_rate(value, correct: int, total: int) -> str:
    return "n/a" if not total or not _finite(value) else f"{value:.3f} ({correct}/{total})"


def results_table(summary: dict) -> str:
    """The short per-site console table of an evaluation summary (``summary.json``).

    One row per validation and test site: role, images, AUC with its 95 %
    bootstrap CI on the whole site, on its leak-free and on its
    source-disjoint subset (with their image counts), and sensitivity and
    specificity at the decision threshold (chosen on validation), above it a
    line naming the threshold. The full table (every subset, shortcut
    baseline, calibration) is in ``report.md``.
    """
    results = {name: values for name, values in summary.get("sites", {}).items() if values.get("role") != "train"}
    header = ["site", "role", "images", *(title for _, title in CONSOLE_SUBSETS), "sensitivity", "specificity"]
    rows = []
    for name, values in results.items():
        confusion = values.get("confusion") or {}
        tp, fn, tn, fp = (int(confusion.get(key, 0)) for key in ("tp", "fn", "tn", "fp"))
        rows.append([name, str(values.get("role", "")), str(values.get("images", "")),
                     *(_console_auc(values.get(key) if key else values, with_images=bool(key))
                       for key, _ in CONSOLE_SUBSETS),
                     _console_rate(values.get("sensitivity"), tp, tp + fn),
                     _console_rate(values.get("specificity"), tn, tn + fp)])
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(width) if column == 2 else cell.ljust(width)
                         for column, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    threshold = summary.get("threshold")
    validation = [name for name, values in results.items() if values.get("role") == "val"]
    method = summary.get("threshold_method")
    where = (f"chosen on {', '.join(validation)}{f' by {method}' if method else ''}" if validation
             else "from --threshold or the model's run")
    title = f"Per-site results at the decision threshold {threshold:.4f} ({where})" if _finite(threshold) \
        else "Per-site results"
    legend = ("leak-free: no near-duplicate in the training set used; source-disjoint: none in the training site "
              "as given; every subset, shortcut baseline and calibration in report.md")
    return "\n".join([title, line(header), line(["-" * width for width in widths]), *(line(row) for row in rows),
                      legend])


def _load_models(model_sources: Sequence[str], tracking_uri: str = "") -> list:
    """Each ``--model`` (a model.keras, a run folder, a run id, ``runs:/`` or ``models:/``) as a
    ``training.predict.ModelSource``; ValueError when the image sizes differ."""
    from training.predict import load_model_source

    sources = [load_model_source(source, tracking_uri) for source in model_sources]
    sizes = {source.image_size for source in sources}
    if len(sizes) > 1:
        raise ValueError(f"the models take different image sizes ({sorted(sizes)}); an ensemble needs one size")
    return sources


def _training_reference(model_folders: Sequence[Path | None], train_hashes: str | None) -> TrainingReference:
    """``--train-hashes`` or the ``train_hashes.npz`` in the models' run folders (all the same), else none."""
    if train_hashes:
        return TrainingReference.load(Path(train_hashes))
    found = [Path(folder) / "train_hashes.npz" for folder in model_folders if folder is not None]
    found = [path for path in found if path.exists()]
    if not found:
        return TrainingReference.empty()
    references = [TrainingReference.load(path) for path in found]
    first = references[0]
    for path, other in zip(found[1:], references[1:]):
        if (other.threshold_bits != first.threshold_bits or not np.array_equal(other.hashes, first.hashes)
                or not np.array_equal(other.site_hashes, first.site_hashes)):
            raise ValueError(f"{found[0]} and {path} describe different training sets: the models of an "
                             "ensemble must come from one training set, or pass --train-hashes")
    return first


def evaluate_saved_model(model_paths: Sequence[str], specs: Sequence[tuple[str, str]], *, val_name: str,
                         threshold: float | None, train_hashes: str | None, output: Path, tracking_uri: str,
                         experiment: str, cache_dir: str, seed: int,
                         test_time_augmentation: str | None = None, say: Callable[[str], None] = print,
                         tracking: bool = True) -> dict:
    """``evaluate``: any saved model on any sites, with the same report as training.

    ``model_paths``: each a ``model.keras`` (or its run folder), an MLflow run id (``runs:/<id>``) or a
    ``models:/`` URI. Several models are a seed ensemble: their probabilities are averaged per image and
    evaluated as one model (threshold from ``val_name`` or ``threshold``; no Grad-CAM). Crop settings and
    test-time augmentation default to the first model's run. With ``tracking`` the evaluation is an MLflow
    run of ``experiment`` (default store and experiment as ``train``): tagged with the source training
    run(s) and model, the sites logged as datasets, and, for one model that is a LoggedModel of this
    store, its metrics linked to that model and each site's dataset.
    """
    from datasets.cache import CropParams, load_sites
    from training.cluster import choose_strategy
    from training.console import progress_printer
    from training.state import write_json_atomic
    from training.steps import make_predict_step

    model_paths = list(model_paths)
    if not model_paths:
        raise ValueError("give at least one --model")
    sources = _load_models(model_paths, tracking_uri)
    models = [source.model for source in sources]
    first = sources[0]
    image_size = first.image_size
    saved = first.settings
    if threshold is None and not val_name:
        if len(models) > 1:
            raise ValueError("an ensemble of several models needs --val-site or --threshold")
        threshold = first.threshold
        if threshold is None:
            raise ValueError(f"no --threshold, no --val-site and no threshold known for {first.source!r} (no "
                             "summary.json next to the model, no MLflow metric 'threshold' in its run)")
    if test_time_augmentation is None:
        test_time_augmentation = saved.get("test_time_augmentation", "none")
    reference = _training_reference([source.folder for source in sources], train_hashes)
    config = TrainConfig.from_settings({
        "image_size": image_size, "cache_dir": cache_dir, "seed": seed, "batch_size": 32, "output": str(output),
        "test_time_augmentation": test_time_augmentation, "crop": saved.get("crop", True),
        "crop_margin": saved.get("crop_margin", 0.0)})
    params = CropParams(image_size=image_size, margin=config.data.crop_margin, crop=config.data.crop,
                        max_pixels=int(saved.get("max_pixels", config.data.max_pixels)))
    sites = load_sites(specs, params, cache_dir=cache_dir or None, report=say, progress=progress_printer())
    cluster = choose_strategy()
    roles = {name: ("val" if name == val_name else "test") for name, _ in specs}
    tracker = Tracker(tracking, tracking_uri, experiment or "brainmri")
    label = first.folder.name if first.folder is not None else (first.model_id or first.run_id or "model")
    name = f"evaluate-{label}" + (f"-ensemble{len(models)}" if len(models) > 1 else "")
    tracker.start("", name + ("" if test_time_augmentation == "none" else f"-tta-{test_time_augmentation}"))
    try:
        run_ids = [source.run_id for source in sources]
        tracker.set_tags({key: value for key, value in {
            "source_run_id": ",".join(run_ids) if any(run_ids) else "",
            "source_model_id": ",".join(source.model_id for source in sources if source.model_id),
            "source_model": ",".join(model_paths)[:5000]}.items() if value})
        tracker.log_params({"model_path": ",".join(model_paths)[:6000], "ensemble_size": len(models),
                            "test_time_augmentation": test_time_augmentation})
        tracker.log_datasets(sites, roles)
        model_id = first.model_id if len(sources) == 1 and tracker.has_logged_model(first.model_id) else ""
        predict_step = make_predict_step(cluster, models, test_time_augmentation)
        output.mkdir(parents=True, exist_ok=True)
        extra = {"models": ", ".join(model_paths)} if len(models) > 1 else {}
        summary = evaluate_and_report(config, cluster, tracker, models[0] if len(models) == 1 else None,
                                      predict_step, sites, roles, output, reference, threshold, extra_info=extra,
                                      model_id=model_id)
        summary.update(model_path=model_paths[0], model_paths=model_paths, ensemble_size=len(models),
                       mlflow_run_id=tracker.run_id, test_time_augmentation=test_time_augmentation,
                       source_run_ids=run_ids, source_model_ids=[source.model_id for source in sources])
        write_json_atomic(output / "summary.json", summary)
        tracker.log_artifact(output / "summary.json")
    except BaseException as error:
        tracker.set_tags({"failure_reason": f"{type(error).__name__}: {error}"[:5000]})
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return summary
