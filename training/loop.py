"""The training job: prepare the data, fit with exact validation AUC, evaluate, finish.

One run per output folder. ``backup/state.json`` holds the run's fingerprint
(its defining settings and the content digests of its sites); the same
command resumes it (or, once finished, says so and logs nothing), other
settings are refused with the keys that differ. A run killed at any moment
and started again ends with the same numbers as an uninterrupted one.

Phases and where a stop signal is honoured:
setup (loading, cropping, audit) -> training (after each step chunk) ->
evaluating (between sites) -> finished.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from training import steps
from training.cluster import Cluster, choose_precision, choose_strategy, system_facts
from training.config import TrainConfig
from training.console import progress_printer, say
from training.faults import EXIT_NAN, EXIT_REQUEUE, NanLossError, RequeueRequested, StopSignal
from training.state import (CheckpointStore, Schedule, StateError, TrainState, advance_schedule, changed_settings,
                            stop_reason, write_json_atomic)
from training.tracking import Tracker


@dataclasses.dataclass
class RunData:
    """The sites of a run after the leakage policy, and what the audit decided."""

    sites: dict[str, Any]
    roles: dict[str, str]
    train_name: str
    val_name: str
    removed: dict[str, int]
    digests: dict[str, str]
    reference_names: list[str]
    pool: np.ndarray | None
    audit_paths: list[Path]
    reference: Any = None  # training.evaluation.TrainingReference
    shortcuts: dict = dataclasses.field(default_factory=dict)
    train_review: dict | None = None


def run_training(config: TrainConfig) -> int:
    """The whole job for a validated config; returns the process exit status.

    Raises ValueError (including StateError) for anything the user must change:
    other settings in the output folder, damaged state files, too few images.
    """
    stop = StopSignal().install()
    try:
        return _run(config, stop)
    except RequeueRequested as request:
        say(f"{request}: nothing to save yet; exiting with status {EXIT_REQUEUE} for requeue")
        return EXIT_REQUEUE
    finally:
        stop.restore()


def _check_same_run(state: TrainState, settings: dict[str, str], output: Path) -> None:
    stored = {key: value for key, value in state.fingerprint.items() if not key.startswith("site_digest.")}
    differences = changed_settings(stored, settings)
    if differences:
        raise StateError(
            f"{output} holds a run with other settings ({'; '.join(differences)}). Leave --output out "
            f"(every configuration gets its own folder under runs/), choose another --output, or delete "
            f"{output} to replace that run.")


def _run(config: TrainConfig, stop: StopSignal) -> int:
    import keras

    output = Path(config.runtime.output)
    cluster = choose_strategy(config.runtime.gpus, config.runtime.cpu_replicas)
    chief = cluster.is_chief
    if cluster.threads_note:
        say(cluster.threads_note, chief=chief)
    store = CheckpointStore(output, chief=chief, worker_index=cluster.worker_index)
    state = store.read_state()
    settings = config.defining_settings()
    tracking = config.tracking
    if state is not None:
        _check_same_run(state, settings, output)
        if state.phase == "finished":
            Tracker(chief, tracking.tracking_uri, tracking.experiment).mark_finished(state.run_id)
            say(f"this run already finished (MLflow run {state.run_id}); results in {output / 'summary.json'}. "
                f"Nothing was logged. To train again, delete {output} or choose another --output.", chief=chief)
            _say_finished_results(output, chief)
            return 0
        if state.replicas != cluster.replicas:
            raise StateError(f"{store.state_path} was written by {state.replicas} replica(s), this job has "
                             f"{cluster.replicas}: resume with the same number of devices, or delete {output}")
    if config.trainer.batch_size % cluster.replicas:
        raise ValueError(f"batch size {config.trainer.batch_size} is not divisible by the "
                         f"{cluster.replicas} replicas")
    say(f"output {output}; strategy {cluster.name}: {cluster.replicas} replica(s) on {cluster.workers} "
        f"worker(s); global batch {config.trainer.batch_size}", chief=chief)

    data = prepare_data(config, cluster, stop, output)
    fingerprint = {**settings, **{f"site_digest.{name}": digest for name, digest in data.digests.items()}}
    changed = changed_settings(state.fingerprint, fingerprint) if state is not None else []
    if changed:
        raise StateError(f"the files of a site changed since this run started ({'; '.join(changed)}): choose "
                         f"another --output for the new data, or delete {output} to start over")
    train_site = data.sites[data.train_name]
    steps_per_epoch = len(train_site.images) // config.trainer.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"training site has {len(train_site.images)} images after the leakage policy, fewer "
                         f"than one batch of {config.trainer.batch_size}")

    precision = choose_precision(config.runtime.mixed_precision, config.runtime.jit_compile)
    precision.apply()
    keras.utils.set_random_seed(config.seed)
    model, optimizer = build_model_and_optimizer(config, cluster, precision.mixed)
    class_weights = (1.0, 1.0)
    if config.trainer.class_weighting == "balanced":
        class_weights = balanced_class_weights(train_site.labels)
        say(f"class weights (no tumour, tumour): {class_weights[0]:.3f}, {class_weights[1]:.3f}", chief=chief)
    train_chunk = steps.make_train_chunk(cluster, model, optimizer, global_batch=config.trainer.batch_size,
                                         label_smoothing=config.trainer.label_smoothing,
                                         class_weights=class_weights, jit_compile=precision.xla)
    predict_step = steps.make_predict_step(cluster, model, config.evaluation.test_time_augmentation)
    say(f"model {model.name}: {model.count_params():,} parameters, mixed precision "
        f"{'on' if precision.mixed else 'off'}, XLA {'on' if precision.xla else 'off'}", chief=chief)

    saved_scores = store.restore(state.checkpoint, model, optimizer) if state and state.checkpoint else None
    tracker = Tracker(chief, tracking.tracking_uri, tracking.experiment, system_metrics=tracking.system_metrics)
    if state is not None and chief and tracker.run_status(state.run_id) is None:
        raise StateError(f"MLflow run {state.run_id} of {store.state_path} is not in {tracker.tracking_uri}: "
                         f"resume with the tracking URI the run started with, or delete {output}")
    tracker.start(state.run_id if state else "", tracking.run_name, tags=tracking.new_run_tags())
    try:
        if state is None:
            state = TrainState(run_id=tracker.run_id, fingerprint=fingerprint, replicas=cluster.replicas,
                               schedule=Schedule(learning_rate=config.trainer.learning_rate))
            store.write_state(state)
            if chief:
                write_json_atomic(output / "config.json", config.to_dict())
        else:
            say(f"resuming run {state.run_id} ({state.phase}) at epoch {state.epoch + 1}, step {state.step}",
                chief=chief)
        if not state.setup_logged:
            log_setup(config, cluster, tracker, data, output)
            state.setup_logged = True
            store.write_state(state)
        fit(config, cluster, model, optimizer, store, state, data, tracker, stop, train_chunk, predict_step,
            steps_per_epoch, saved_scores)
        finish(config, cluster, model, store, state, data, tracker, stop, predict_step, output)
        return 0
    except RequeueRequested as request:
        say(f"{request}: state saved ({state.phase if state else 'setup'}, epoch {state.epoch if state else 0}, "
            f"step {state.step if state else 0}); exiting with status {EXIT_REQUEUE} for requeue", chief=chief)
        tracker.set_tags({"requeued": "true"})
        tracker.end("KILLED")
        return EXIT_REQUEUE
    except NanLossError as error:
        tracker.set_tags({"failure_reason": str(error)})
        tracker.end("FAILED")
        say(f"error: {error}", chief=chief)
        return EXIT_NAN
    except BaseException as error:
        tracker.set_tags({"failure_reason": f"{type(error).__name__}: {error}"[:5000]})
        tracker.end("FAILED")
        raise


def _say_finished_results(output: Path, chief: bool) -> None:
    """The per-site table of a finished run's ``summary.json`` and its report path (nothing if unreadable)."""
    import json

    from training.evaluation import results_table

    try:
        summary = json.loads((output / "summary.json").read_text())
    except (OSError, ValueError):
        return
    say(results_table(summary), chief=chief)
    say(f"report: {output / 'report.html'}", chief=chief)


def prepare_data(config: TrainConfig, cluster: Cluster, stop: StopSignal, output: Path) -> RunData:
    """Validate, crop and cache every site; audit leakage; apply the policy; the matching pool."""
    from datasets.audit import apply_leakage_policy, audit_shortcuts, audit_sites, write_audit_outputs
    from datasets.cache import CropParams, load_sites
    from datasets.quality import cross_validated_review
    from training.evaluation import TrainingReference

    chief = cluster.is_chief
    data = config.data
    params = CropParams(image_size=data.image_size, margin=data.crop_margin, crop=data.crop,
                        max_pixels=data.max_pixels)
    roles = {name: role for role, name, _ in config.sites()}
    sites = load_sites([(name, path) for _, name, path in config.sites()], params, cache_dir=data.cache_dir or None,
                       report=lambda line: say(line, chief=chief),
                       progress=progress_printer(chief, check=lambda: stop.check("loading")),
                       follow_external_symlinks=data.follow_external_symlinks)
    stop.check("loading")
    digests = {name: site.digest() for name, site in sites.items()}
    audit_result = audit_sites(sites, data.threshold_bits)
    stop.check("the leakage audit")
    train_name = next(name for name, role in roles.items() if role == "train")
    val_name = next(name for name, role in roles.items() if role == "val")
    eval_names = [name for name, role in roles.items() if role != "train"]
    kept, removed = apply_leakage_policy(audit_result, {n: s.samples for n, s in sites.items()},
                                         policy=data.leakage, train_site=train_name, eval_sites=eval_names)
    given_sites = dict(sites)
    for name, site in list(sites.items()):
        keep_keys = {sample.key for sample in kept[name]}
        sites[name] = site.subset([i for i, s in enumerate(site.samples) if s.key in keep_keys])
    say(f"leakage policy {data.leakage}: removed " + ", ".join(f"{name} {count}" for name, count in removed.items()),
        chief=chief)
    alternatives = {policy: counts for policy, counts in policy_class_counts(
        audit_result, {name: site.samples for name, site in given_sites.items()}, train_name, eval_names).items()
        if policy != data.leakage}
    for line in check_training_classes(train_name, data.leakage, class_counts(given_sites[train_name].labels),
                                       class_counts(sites[train_name].labels), data.min_class_images, alternatives):
        say(line, chief=chief)
    shortcuts, train_review, audit_paths = {}, None, []
    if chief:  # only the chief reports, logs and writes them
        shortcuts = audit_shortcuts({name: sites[name] if name == train_name else given_sites[name]
                                     for name in sites}, train_name,
                                    n_resamples=config.evaluation.bootstrap_resamples, seed=config.seed,
                                    train_site_hashes=given_sites[train_name].hashes,
                                    threshold_bits=data.threshold_bits)
        stop.check("the shortcut audit")
        for line in shortcut_summary(shortcuts):
            say(line)
        train_review = cross_validated_review(sites[train_name], seed=config.seed,
                                              threshold_bits=data.threshold_bits)
        stop.check("the data-quality review")
        say(f"data-quality review of {train_name} (cross-validated): {train_review['counts']['not_mri']} probably "
            f"not MRI, {train_review['counts']['label_issue']} candidate label errors; candidates only, nothing "
            "removed")
        audit_paths = write_audit_outputs(audit_result, given_sites, output,
                                          {"shortcuts": shortcuts, "quality": {train_name: train_review}})
    given_train_site = given_sites[train_name]
    train_site = sites[train_name]
    reference = TrainingReference.from_sites(train_site, given_train_site, data.threshold_bits)
    if chief:
        reference.save(output / "train_hashes.npz", [s.key for s in train_site.samples])
    reference_names = [name for name in config.reference_site_names() if name != train_name] or \
        config.reference_site_names()
    from datasets.cache import matching_pool, pool_left_out_text

    pool, left_out = matching_pool({name: sites[name] for name in reference_names})
    say(f"histogram-matching pool: {', '.join(reference_names)} ({0 if pool is None else len(pool)} images"
        f"{pool_left_out_text(left_out)})", chief=chief)
    return RunData(sites, roles, train_name, val_name, removed, digests, reference_names, pool, audit_paths,
                   reference, shortcuts, train_review)


def shortcut_summary(shortcuts: dict) -> list[str]:
    """Console lines: per site the shortcut baseline, the within-site CV AUC and the strongest single feature."""
    lines = [f"shortcut audit (non-anatomical image statistics; baseline fit on {shortcuts['train_site']}; "
             f"full table in audit.json or the audit command):"]
    for site, entry in shortcuts["sites"].items():
        aucs = {name: values["auc"] for name, values in entry["feature_auc"].items() if values["auc"] is not None}
        best = max(aucs, key=aucs.get) if aucs else None
        parts = [f"baseline AUC {entry['baseline']['auc']:.3f}" if (entry.get("baseline") or {}).get("auc")
                 is not None else "training site"]
        if entry["cross_validated"]["auc"] is not None:
            parts.append(f"explained within the site {entry['cross_validated']['auc']:.3f}")
        if best:
            parts.append(f"strongest feature {best} {aucs[best]:.3f}")
        lines.append(f"  {site}: " + ", ".join(parts))
    return lines


def shortcut_metric_names(shortcuts: dict) -> dict[str, float]:
    """MLflow metrics of the shortcut audit: ``shortcut_{site}_baseline_auc``, ``_cv_auc``, ``_{feature}_auc``."""
    metrics = {}
    for site, entry in shortcuts.get("sites", {}).items():
        for key, name in (("baseline", "baseline_auc"), ("cross_validated", "cv_auc")):
            if (entry.get(key) or {}).get("auc") is not None:
                metrics[f"shortcut_{site}_{name}"] = entry[key]["auc"]
        for feature, values in entry.get("feature_auc", {}).items():
            if values.get("auc") is not None:
                metrics[f"shortcut_{site}_{feature}_auc"] = values["auc"]
    separability = shortcuts.get("site_separability") or {}
    if separability.get("balanced_accuracy") is not None:
        metrics["shortcut_site_separability_balanced_accuracy"] = separability["balanced_accuracy"]
    return metrics


#: A class with fewer than this fraction of the other class's training images gets a warning line.
IMBALANCE_WARNING_FRACTION = 0.2


def class_counts(labels: np.ndarray) -> tuple[int, int]:
    """(no tumour, tumour) image counts of (N,) int labels in {0, 1}."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=2)
    return int(counts[0]), int(counts[1])


def policy_class_counts(audit_result, samples: dict[str, list], train_site: str,
                        eval_sites: list[str]) -> dict[str, tuple[int, int]]:
    """(no tumour, tumour) training images that each leakage policy keeps of ``samples[train_site]``."""
    from datasets.audit import LEAKAGE_POLICIES, apply_leakage_policy

    return {policy: class_counts([sample.label for sample in apply_leakage_policy(
        audit_result, samples, policy=policy, train_site=train_site, eval_sites=eval_sites)[0][train_site]])
        for policy in LEAKAGE_POLICIES}


def _counts_text(counts: tuple[int, int]) -> str:
    return f"{counts[0]:,} no tumour, {counts[1]:,} tumour"


def check_training_classes(site: str, policy: str, before: tuple[int, int], after: tuple[int, int],
                           minimum: int, alternatives: dict[str, tuple[int, int]]) -> list[str]:
    """Stop a run whose training set lost a class to the leakage policy; warn when it is lopsided.

    Args:
        site: the training site's name.
        policy: the leakage policy applied.
        before, after: (no tumour, tumour) training images before and after the policy.
        minimum: fewest images a class may keep (``min_class_images``); an empty class always stops.
        alternatives: (no tumour, tumour) the training set would keep under each other policy.

    Returns:
        Warning lines for the console (empty when the classes are balanced enough).

    Raises:
        ValueError: a class keeps fewer than ``max(minimum, 1)`` images; the message gives the counts
            before and after, and the policies that keep more of that class.
    """
    if minimum < 0:
        raise ValueError(f"min_class_images must be at least 0, got {minimum}")
    short = int(np.argmin(after))
    names, plain = ("no-tumour", "tumour"), ("no tumour", "tumour")
    if after[short] < max(minimum, 1):
        better = [f"{name} ({_counts_text(counts)})" for name, counts in alternatives.items()
                  if counts[short] > after[short]]
        ways = (f"Policies that keep more: {'; '.join(better)}. Choose one with --leakage (and read the leak-free "
                "and source-disjoint numbers), or " if better else
                "No leakage policy keeps more (the site itself is that small): add images, or ")
        raise ValueError(
            f"training site {site} keeps {after[short]:,} {names[short]} images after the leakage policy {policy} "
            f"(before: {_counts_text(before)}; after: {_counts_text(after)}), fewer than min_class_images="
            f"{minimum}: the model would learn that class from almost nothing. {ways}lower the minimum with "
            f"--set min_class_images=N.")
    lines = []
    if after[short] < IMBALANCE_WARNING_FRACTION * after[1 - short]:
        lines.append(f"warning: the training set after the leakage policy {policy} is lopsided: "
                     f"{_counts_text(after)} ({plain[short]} {100 * after[short] / after[1 - short]:.0f} % of "
                     f"{plain[1 - short]}; before: {_counts_text(before)}); --set class_weighting=balanced weighs "
                     "both classes equally in the loss")
    return lines


def constant_scores_note(scores: np.ndarray) -> str | None:
    """A console line when all (N,) validation scores are equal (AUC exactly 0.5), else None."""
    scores = np.asarray(scores)
    if len(scores) == 0 or np.ptp(scores) > 0:
        return None
    return (f"  val AUC 0.5: all {len(scores)} validation scores are equal ({float(scores[0]):.4g}: the model "
            "predicts one value); usual in the first epochs from scratch, while BatchNorm's moving statistics "
            "settle")


def balanced_class_weights(labels: np.ndarray) -> tuple[float, float]:
    """(no tumour, tumour) weights ``N / (2 * count)``, so both classes weigh the same in the loss.

    A class with no images counts as one image (its weight is then unused).
    """
    counts = np.bincount(np.asarray(labels, np.int64), minlength=2).astype(float)
    return tuple(float(v) for v in counts.sum() / (2 * np.maximum(counts, 1)))


def build_model_and_optimizer(config: TrainConfig, cluster: Cluster, mixed: bool):
    """The model and Adam (loss-scaled under mixed precision), built in the strategy's scope."""
    import keras

    from training.model import build_model

    with cluster.strategy.scope():
        model = build_model(config.model, config.data.image_size, synchronized_batch_norm=cluster.replicas > 1)
        optimizer = keras.optimizers.Adam(learning_rate=config.trainer.learning_rate)
        if mixed:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    return model, optimizer


def log_setup(config: TrainConfig, cluster: Cluster, tracker: Tracker, data: RunData, output: Path) -> None:
    """What a new run logs once: params, system tags, datasets, the audit and the augmentation preview."""
    from augment.preview import augment_preview_montage

    tracker.log_params(config.flat_params())
    tracker.set_tags({f"system.{k}": v for k, v in system_facts(cluster).items()})
    for path in data.audit_paths:
        tracker.log_artifact(path, artifact_path="audit")
    tracker.log_metrics({f"leakage_removed_{name}": count for name, count in data.removed.items()})
    tracker.log_metrics({f"images_{name}": len(site.samples) for name, site in data.sites.items()})
    tracker.log_metrics(shortcut_metric_names(data.shortcuts))
    tracker.log_datasets(data.sites, data.roles)
    tracker.log_params({"reference_pool_sites": ",".join(data.reference_names),
                        "reference_pool_images": 0 if data.pool is None else len(data.pool)})
    if cluster.is_chief:
        from brain_crop.preview import write_png

        train_images = data.sites[data.train_name].images
        rng = np.random.default_rng(config.seed)
        chosen = train_images[rng.choice(len(train_images), min(4, len(train_images)), replace=False)]
        preview = augment_preview_montage(chosen, data.pool if data.pool is not None else train_images,
                                          config.augment, seed=config.seed)
        write_png(output / "augment_preview.png", preview)
        tracker.log_artifact(output / "augment_preview.png")


def fit(config: TrainConfig, cluster: Cluster, model, optimizer, store: CheckpointStore, state: TrainState,
        data: RunData, tracker: Tracker, stop: StopSignal, train_chunk, predict_step, steps_per_epoch: int,
        saved_scores: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Train epoch by epoch from ``state`` (model and optimizer already restored) until the schedule stops.

    ``saved_scores``: training-set (probabilities, labels) of the interrupted epoch's finished steps.
    """
    import tensorflow as tf

    from augment.pipeline import train_dataset
    from eval.metrics import roc_auc

    chief, trainer = cluster.is_chief, config.trainer
    optimizer.learning_rate.assign(state.schedule.learning_rate)
    logged = tracker.logged_steps("val_auc")  # a run killed between saving and logging an epoch
    for record in state.history:
        if record["epoch"] not in logged:
            tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])
    train_site, val_site = data.sites[data.train_name], data.sites[data.val_name]
    images, labels = train_site.images, train_site.labels
    agree = steps.make_agreement(cluster)
    step_options = dict(per_replica_batch=trainer.batch_size // cluster.replicas, seed=config.seed,
                        augment=config.augment, reference_pool=data.pool)

    while state.phase == "training" and not stop_reason(state.schedule, state.epoch, trainer):
        epoch, start_step = state.epoch, state.step

        def dataset_fn(context):
            dataset = train_dataset(images, labels, epoch=epoch, pipeline_id=context.input_pipeline_id,
                                    num_pipelines=context.num_input_pipelines, **step_options)
            return dataset.skip(start_step * cluster.local_replicas)

        iterator = iter(cluster.strategy.distribute_datasets_from_function(dataset_fn))
        epoch_start = time.time()
        step, seen = start_step, 0
        probabilities, truths = [], []
        if start_step and saved_scores is not None:
            probabilities, truths = [saved_scores[0]], [saved_scores[1]]
        saved_scores = None
        while step < steps_per_epoch:
            chunk = min(config.runtime.steps_per_execution, steps_per_epoch - step)
            losses, probs, batch_labels = train_chunk(iterator, tf.constant(chunk))
            losses = losses.numpy()
            if not np.all(np.isfinite(losses)):
                raise NanLossError(f"loss became NaN at epoch {epoch + 1}, step {step + 1}")
            state.loss_sum += float(losses.sum())
            state.loss_steps += len(losses)
            probabilities.append(probs.numpy())
            truths.append(batch_labels.numpy())
            step += chunk
            seen += chunk * trainer.batch_size
            if agree(stop.requested):
                name = f"ckpt-e{epoch}-s{step}"
                store.save(name, model, optimizer, (np.concatenate(probabilities), np.concatenate(truths)))
                state.step, state.checkpoint = step, name
                store.write_state(state)
                store.prune(name)
                raise RequeueRequested(f"{stop.signal_name or 'stop'} received at epoch {epoch + 1}, step {step}")
        train_seconds = time.time() - epoch_start
        val_scores = steps.predict_site(cluster, predict_step, val_site.images, trainer.batch_size)
        val_auc = roc_auc(val_site.labels, val_scores)
        epoch_seconds = time.time() - epoch_start
        train_probs, train_truth = np.concatenate(probabilities), np.concatenate(truths)
        record = {"epoch": epoch + 1, "train_loss": state.loss_sum / max(state.loss_steps, 1),
                  "train_auc": roc_auc(train_truth.astype(int), train_probs), "val_auc": val_auc,
                  "learning_rate": float(state.schedule.learning_rate), "epoch_seconds": epoch_seconds,
                  "images_per_second": seen / max(train_seconds, 1e-9)}
        schedule = advance_schedule(state.schedule, epoch + 1, val_auc, trainer)
        if schedule.improved:
            store.save_best(model)
        optimizer.learning_rate.assign(schedule.learning_rate)
        state.schedule = schedule
        state.history.append(record)
        state.epoch, state.step, state.loss_sum, state.loss_steps = epoch + 1, 0, 0.0, 0
        name = f"ckpt-e{epoch + 1}"
        store.save(name, model, optimizer)
        state.checkpoint = name
        store.write_state(state)
        store.prune(name)
        tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
        say(f"epoch {epoch + 1}/{trainer.epochs}: loss {record['train_loss']:.4f} train AUC "
            f"{record['train_auc']:.3f} val {data.val_name} AUC {val_auc:.4f}{' *' if schedule.improved else ''} "
            f"lr {record['learning_rate']:.2g} {epoch_seconds:.0f} s "
            f"({record['images_per_second']:.0f} img/s)", chief=chief)
        if constant_scores_note(val_scores):
            say(constant_scores_note(val_scores), chief=chief)
        if agree(stop.requested):  # all workers stop at the same point, or none does
            raise RequeueRequested(f"{stop.signal_name or 'stop'} received after epoch {epoch + 1}")
    if state.phase == "training":
        reason = stop_reason(state.schedule, state.epoch, trainer)
        if reason.startswith("early stop"):
            say(reason, chief=chief)
        state.phase = "evaluating"
        store.write_state(state)


def finish(config: TrainConfig, cluster: Cluster, model, store: CheckpointStore, state: TrainState, data: RunData,
           tracker: Tracker, stop: StopSignal, predict_step, output: Path) -> None:
    """Best weights, the evaluation of every val/test site, model and summary; each logged once."""
    from training.evaluation import evaluate_and_report, results_table

    chief = cluster.is_chief
    store.restore_best(model)
    say(f"restored best weights of epoch {state.schedule.best_epoch} (val AUC {state.schedule.best_auc:.4f})",
        chief=chief)
    train_site = data.sites[data.train_name]
    agree = steps.make_agreement(cluster)

    def check_stop(where: str) -> None:  # predictions are collective: every worker stops or none
        if agree(stop.requested):
            raise RequeueRequested(f"{stop.signal_name or 'stop'} received during {where}")

    # The LoggedModel first (found again, not logged twice, on a resume), so that every evaluation metric
    # is linked to it and to its site's dataset.
    model_id = ""
    if config.tracking.log_model:
        model_id = tracker.log_model(model, data.sites[data.val_name].images[:2],
                                     register_as=config.tracking.register_model)
    summary = evaluate_and_report(config, cluster, tracker, model, predict_step, data.sites, data.roles, output,
                                  data.reference, check_stop=check_stop, shortcuts=data.shortcuts,
                                  train_review=data.train_review, model_id=model_id)
    summary.update(epochs_run=state.epoch, best_epoch=state.schedule.best_epoch, mlflow_run_id=state.run_id,
                   model_path=str(output / "model.keras"), removed=data.removed, mlflow_model_id=model_id)
    summary["sites"][data.train_name] = {"role": "train", "images": len(train_site.samples),
                                         "removed_by_leakage_policy": data.removed.get(data.train_name, 0),
                                         "bad_files": len(train_site.bad_files)}
    if not chief:
        return
    stop.check("writing the results")
    model.save(output / "model.keras")
    write_json_atomic(output / "summary.json", summary)
    tracker.log_artifact(output / "summary.json")
    tracker.log_artifact(output / "config.json")
    tracker.log_metrics_once({"epochs_run": state.epoch, "best_epoch": state.schedule.best_epoch})
    state.phase = "finished"
    store.write_state(state)
    tracker.end("FINISHED")
    say(results_table(summary))
    say(f"report: {output / 'report.html'} (and report.md); run folder: {output}")
    say(f"done: {output / 'summary.json'}  (MLflow run {state.run_id}"
        f"{f', model models:/{model_id}' if model_id else ''})")
