"""Evaluate a model on every validation and test site: predictions, threshold, report, MLflow.

Used at the end of training (best weights) and by ``evaluate`` on any saved
model. Predictions run on every worker (they are collective); only the chief
writes files and logs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from training.cluster import Cluster
from training.config import TrainConfig
from training.steps import predict_site
from training.tracking import Tracker


def evaluate_and_report(config: TrainConfig, cluster: Cluster, tracker: Tracker, model, predict_step,
                        sites: Mapping, roles: Mapping[str, str], output: Path, train_hashes: np.ndarray,
                        threshold_bits: int, threshold: float | None = None,
                        check_stop: Callable[[str], None] | None = None) -> dict:
    """Predict every val/test site, choose the threshold on val, write the report, log it once.

    Returns the summary: ``{"threshold", "threshold_method", "sites": {name: metrics + role}}``.
    """
    from datasets.audit import leaked_flags
    from eval.gradcam import grad_cam, gradcam_montage, select_gradcam_examples
    from eval.report import (PredictionRow, evaluate_sites, mlflow_metric_names, threshold_from_validation,
                             write_report)

    evaluation = config.evaluation
    rows, scores_by_site = [], {}
    for name, role in roles.items():
        if role == "train":
            continue
        if check_stop:
            check_stop(f"evaluation of {name}")
        site = sites[name]
        scores = predict_site(cluster, predict_step, site.images, config.trainer.batch_size)
        scores_by_site[name] = scores
        leaked = leaked_flags(site.hashes, train_hashes, threshold_bits)
        rows += [PredictionRow(site=name, role=role, relative_path=s.relative_path, label=s.label,
                               subclass=s.subclass, score=float(score), leaked=bool(flag))
                 for s, score, flag in zip(site.samples, scores, leaked)]
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
    for name, scores in scores_by_site.items():
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
                "leakage": config.data.leakage}
    paths = write_report(output, rows, results, threshold=threshold,
                         title="Cross-site evaluation", run_info=run_info, gradcam=gradcam)
    for path in paths:
        tracker.log_artifact(path, artifact_path="report")
    tracker.log_metrics_once({**mlflow_metric_names(results), "threshold": threshold})
    return summary


def results_table(summary: dict) -> str:
    """The per-site markdown table (AUC with CI, full / leak-free, sensitivity, specificity)."""
    from eval.report import markdown_table, site_table

    results = {name: values for name, values in summary["sites"].items() if values.get("role") != "train"}
    return markdown_table(*site_table(results))


def evaluate_saved_model(model_path: str, specs: Sequence[tuple[str, str]], *, val_name: str,
                         threshold: float | None, train_hashes: str | None, output: Path, tracking_uri: str,
                         experiment: str, cache_dir: str, seed: int,
                         test_time_augmentation: str | None = None, say: Callable[[str], None] = print) -> dict:
    """``evaluate``: any saved model on any sites, with the same report as training."""
    import keras

    from datasets.cache import CropParams, load_sites
    from training.cluster import choose_strategy
    from training.console import progress_printer
    from training.model import custom_objects
    from training.state import write_json_atomic
    from training.steps import make_predict_step

    try:
        model = keras.models.load_model(model_path, custom_objects=custom_objects())
    except Exception as error:
        raise ValueError(f"{model_path} cannot be loaded as a Keras model: {error}") from None
    model_dir = Path(model_path).parent
    image_size = int(model.inputs[0].shape[1])
    saved = {}
    if (model_dir / "config.json").exists():
        saved = TrainConfig.from_settings(json.loads((model_dir / "config.json").read_text())).flat()
    if threshold is None and not val_name:
        if not (model_dir / "summary.json").exists():
            raise ValueError("no --threshold, no --val-site and no summary.json next to the model")
        threshold = json.loads((model_dir / "summary.json").read_text())["threshold"]
    if test_time_augmentation is None:
        test_time_augmentation = saved.get("test_time_augmentation", "none")
    config = TrainConfig.from_settings({
        "image_size": image_size, "cache_dir": cache_dir, "seed": seed, "batch_size": 32, "output": str(output),
        "test_time_augmentation": test_time_augmentation, "crop": saved.get("crop", True),
        "crop_margin": saved.get("crop_margin", 0.0)})
    params = CropParams(image_size=image_size, margin=config.data.crop_margin, crop=config.data.crop,
                        max_pixels=config.data.max_pixels)
    sites = load_sites(specs, params, cache_dir=cache_dir or None, report=say, progress=progress_printer())
    hashes_file = Path(train_hashes) if train_hashes else model_dir / "train_hashes.npz"
    stored_hashes, bits = np.zeros((0, 1), np.uint64), 0
    if hashes_file.exists():
        with np.load(hashes_file) as stored:
            stored_hashes, bits = stored["hashes"], int(stored["threshold_bits"])
    cluster = choose_strategy()
    roles = {name: ("val" if name == val_name else "test") for name, _ in specs}
    tracker = Tracker(bool(experiment), tracking_uri, experiment or "brainmri")
    tracker.start("", f"evaluate-{model_dir.name}"
                      + ("" if test_time_augmentation == "none" else f"-tta-{test_time_augmentation}"))
    tracker.log_params({"model_path": model_path, "test_time_augmentation": test_time_augmentation})
    predict_step = make_predict_step(cluster, model, test_time_augmentation)
    output.mkdir(parents=True, exist_ok=True)
    summary = evaluate_and_report(config, cluster, tracker, model, predict_step, sites, roles, output,
                                  stored_hashes, bits, threshold)
    summary.update(model_path=model_path, mlflow_run_id=tracker.run_id,
                   test_time_augmentation=test_time_augmentation)
    write_json_atomic(output / "summary.json", summary)
    tracker.log_artifact(output / "summary.json")
    tracker.end("FINISHED")
    return summary
