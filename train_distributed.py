"""Train a brain-MRI tumour classifier on one site, select on another, test on the rest.

    python train_distributed.py train --demo
    python train_distributed.py train --train-site br35h=data/br35h --val-site nav=data/nav \\
        --test-site mos=data/mos --weights none --image-size 128 --epochs 12
    python train_distributed.py audit --site br35h=... --site nav=... --site mos=... --output audit/
    python train_distributed.py evaluate --model runs/x/model.keras --site mos=... --output eval/
    python train_distributed.py predict --model models:/m-... scans/ --output predictions.csv

This file is the command line only: options, the one config, calling the
engine (``training/``) and the packages below it, and turning their
``ValueError`` into usage errors. Nothing below it imports click.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's info and warning lines off, its errors on

from training.console import quiet_tensorflow_on_cpu  # noqa: E402 (before anything imports TensorFlow)

quiet_tensorflow_on_cpu()  # no GPU: no "failed call to cuInit" error line at start-up

import click
import numpy as np

import datasets as _datasets_package

if not getattr(_datasets_package, "BRAINMRI_DATASETS", False):
    raise ImportError(
        f"'import datasets' found {getattr(_datasets_package, '__file__', '?')}, not this project's package "
        "(the Hugging Face 'datasets' package shadows it). Install this project in its own virtualenv; "
        "see README, 'A note on the name datasets'.")

from datasets.audit import LEAKAGE_POLICIES
from datasets.sites import check_site_folder
from training.config import (DEFAULT_RECIPE, RECIPES, TEST_TIME_AUGMENTATIONS, TrainConfig,
                             check_tracking_environment, flatten_settings, from_scratch_note, read_config_file)

DEMO_DATA = Path("runs") / "demo_data"


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """ValueError (and TypeError from bad settings) below this point become click usage errors."""
    try:
        yield
    except (ValueError, TypeError) as error:
        raise click.UsageError(str(error)) from None


def site_specs(values: Sequence[str | tuple[str, str]], *, check_folders: bool = True) -> list[tuple[str, str]]:
    """Every site option value of one command together as ``[(name, path), ...]``, checked before any work.

    ``values``: ``NAME=PATH`` texts of ``--site``, or ``(option, NAME=PATH)`` pairs (``("--reference-site",
    "nav=...")``) so that messages name the option. Names must be valid and unique across all of them;
    with ``check_folders`` each folder must exist and hold class folders of both classes (listed by name,
    no image is read).
    """
    from datasets.sites import parse_site_spec
    from training.config import check_unique_site_names

    pairs = [value if isinstance(value, tuple) else ("--site", value) for value in values]
    with usage_errors():
        specs = [parse_site_spec(spec) for _, spec in pairs]
        check_unique_site_names(pairs)
        if check_folders:
            for name, path in specs:
                check_site_folder(name, path)
    return specs


def tracking_uri_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Click callback of ``--tracking-uri``: an MLflow store URI (see ``training.config.check_tracking_uri``)."""
    from training.config import check_tracking_uri

    try:
        return check_tracking_uri(value, "tracking URI")
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def backend_store_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Click callback of ``ui --backend-store-uri``: a folder or a database URI an MLflow server can serve."""
    from training.config import BACKEND_STORE_SCHEMES, check_tracking_uri

    try:
        if not value.strip():
            raise ValueError("the backend store URI is empty; use e.g. sqlite:///mlflow.db")
        return check_tracking_uri(value, "backend store URI", BACKEND_STORE_SCHEMES)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def non_empty_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Click callback: the option's value must not be empty."""
    if not value.strip():
        raise click.BadParameter("must not be empty", ctx, param)
    return value


def model_source_option(ctx: click.Context, param: click.Parameter, value):
    """Click callback of ``--model`` (one value or several): each checked by ``training.predict.check_model_source``."""
    from training.predict import check_model_source

    for source in (value if isinstance(value, tuple) else (value,)):
        try:
            check_model_source(source)
        except ValueError as error:
            raise click.BadParameter(str(error), ctx, param) from None
    return value


def existing_paths_option(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """Click callback of file-or-folder arguments: each must exist."""
    missing = [item for item in value if not (Path(item).exists() or Path(item).is_symlink())]
    if missing:
        raise click.BadParameter(f"{', '.join(repr(item) for item in missing)} does not exist", ctx, param)
    return value


def crop_params(image_size: int, crop: bool = True, margin: float = 0.0):
    from datasets.cache import CropParams

    return CropParams(image_size=image_size, crop=crop, margin=margin)


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    import cv2

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def console_progress():
    from training.console import progress_printer

    return progress_printer()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Train a brain-MRI tumour classifier on one site and measure how it carries to others."""


@cli.command()
@click.option("--site", "site_values", multiple=True, required=True, metavar="NAME=PATH",
              help="A site folder; repeat for each site.")
@click.option("--output", type=click.Path(file_okay=False), default="audit", show_default=True)
@click.option("--image-size", type=click.IntRange(32, 1024), default=224, show_default=True,
              help="Crop size of the cache the hashes are computed on.")
@click.option("--threshold-bits", type=click.IntRange(0, 128), default=None,
              help="Hamming distance threshold (default: built-in, 28).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default="",
              help="Crop cache folder (default $BRAINMRI_CACHE or ~/.cache/brainmri).")
@click.option("--no-crop", is_flag=True, help="Hash whole images instead of brain crops.")
@click.option("--train-site", "train_name", default="", metavar="NAME",
              help="The --site the shortcut baseline is fit on (default: the first).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap and the classifiers.")
@click.option("--follow-external-symlinks", is_flag=True,
              help="Read symlinks that point outside a site's folder (skipped by default).")
def audit(site_values, output, image_size, threshold_bits, cache_dir, no_crop, train_name, seed,
          follow_external_symlinks) -> None:
    """Audit sites: near-duplicates (leakage), shortcuts (image statistics vs label) and data quality."""
    from datasets.audit import audit_shortcuts, audit_sites, format_audit_table, write_audit_outputs
    from datasets.quality import cross_validated_review, format_quality_table, write_quality_outputs
    from datasets.cache import image_lookup, load_sites
    from datasets.phash import DEFAULT_THRESHOLD_BITS
    from datasets.shortcuts import format_shortcut_table

    specs = site_specs(site_values)
    train_name = train_name or specs[0][0]
    if train_name not in [name for name, _ in specs]:
        raise click.UsageError(f"--train-site {train_name!r} is not one of the --site names "
                               f"({', '.join(name for name, _ in specs)})")
    with usage_errors():
        sites = load_sites(specs, crop_params(image_size, crop=not no_crop), cache_dir=cache_dir or None,
                           report=lambda line: click.echo(line, err=True), progress=console_progress(),
                           follow_external_symlinks=follow_external_symlinks)
    bits = DEFAULT_THRESHOLD_BITS if threshold_bits is None else threshold_bits
    result = audit_sites(sites, bits)
    click.echo("shortcut audit...", err=True)
    shortcuts = audit_shortcuts(sites, train_name, seed=seed, threshold_bits=bits)
    click.echo("data-quality review...", err=True)
    quality = {name: cross_validated_review(site, seed=seed, threshold_bits=bits) for name, site in sites.items()}
    paths = write_audit_outputs(result, sites, Path(output), {"shortcuts": shortcuts, "quality": quality})
    paths += write_quality_outputs(quality, image_lookup(sites), Path(output))
    click.echo(format_audit_table(result))
    click.echo("")
    click.echo("Shortcut audit: AUC of non-anatomical image statistics alone for tumour vs no tumour")
    click.echo(format_shortcut_table(shortcuts))
    click.echo("")
    click.echo("Data-quality review: probably not MRI (CT-like skull ring) and candidate label errors (cleanlab)")
    click.echo(format_quality_table(quality))
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


@cli.command("preview-crop")
@click.option("--site", "site_spec", required=True, metavar="NAME=PATH")
@click.option("--output", type=click.Path(dir_okay=False), default="crop_preview.png", show_default=True)
@click.option("--count", type=click.IntRange(1, 200), default=24, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def preview_crop(site_spec, output, count, seed) -> None:
    """Write a PNG montage of originals with their brain crop boxes."""
    from brain_crop import crop_preview_montage, find_brain_box
    from datasets.sites import open_site
    from datasets.validation import ImageRejected, read_image_file

    (name, path), = site_specs([site_spec])
    with usage_errors():
        candidates, _ = open_site(name, path).list_files()
    rng = np.random.default_rng(seed)
    chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), min(count, len(candidates)), replace=False))]
    images, boxes, titles = [], [], []
    for candidate in chosen:
        try:
            image = read_image_file(candidate.path)
        except ImageRejected as error:
            click.echo(f"skipped {candidate.relative_path}: {error.reason}", err=True)
            continue
        images.append(image)
        boxes.append(find_brain_box(image))
        titles.append(candidate.relative_path[-28:])
    write_png(output, crop_preview_montage(images, boxes, titles))
    click.echo(f"wrote {output} ({len(images)} images)")



@cli.command("preview-augment")
@click.option("--site", "site_spec", required=True, metavar="NAME=PATH", help="Images to augment.")
@click.option("--reference-site", "reference_specs", multiple=True, metavar="NAME=PATH",
              help="Histogram-matching references (other sites); repeatable.")
@click.option("--output", type=click.Path(dir_okay=False), default="augment_preview.png", show_default=True)
@click.option("--image-size", type=click.IntRange(32, 1024), default=224, show_default=True)
@click.option("--count", type=click.IntRange(1, 12), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="A training config file; its augment settings are used.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default="")
def preview_augment(site_spec, reference_specs, output, image_size, count, seed, config_file, cache_dir) -> None:
    """Write a PNG of originals, augmented variants and histogram-matched examples."""
    from datasets.cache import load_sites, matching_pool, pool_left_out_text

    specs = site_specs([("--site", site_spec), *[("--reference-site", spec) for spec in reference_specs]])
    with usage_errors():
        augment_config = TrainConfig.from_settings(read_config_file(config_file) if config_file else {}).augment
        augment_config.validate()
    from augment.preview import augment_preview_montage

    with usage_errors():
        sites = load_sites(specs, crop_params(image_size), cache_dir=cache_dir or None,
                           report=lambda line: click.echo(line, err=True), progress=console_progress())
    images = list(sites.values())[0].images
    rng = np.random.default_rng(seed)
    chosen = images[np.sort(rng.choice(len(images), min(count, len(images)), replace=False))]
    pool, left_out = matching_pool(dict(list(sites.items())[1:]))
    if pool is not None:
        click.echo(f"histogram-matching pool: {len(pool)} images{pool_left_out_text(left_out)}", err=True)
    write_png(output, augment_preview_montage(chosen, pool, augment_config, seed=seed, every_acquisition_family=True))
    click.echo(f"wrote {output}")


def recipe_defaults(key: str, default: Any) -> str:
    """``--help`` text of the default of a ``train`` option per recipe: ``seed: 15, from-scratch: 40``."""
    return ", ".join(f"{name}: {settings.get(key, default)}" for name, settings in RECIPES.items())


#: Options of ``train`` that are config settings (the option's name is the setting's flat key).
TRAIN_SETTINGS = ("train_site", "val_site", "test_sites", "output", "epochs", "batch_size", "image_size",
                  "weights", "leakage", "seed", "tracking_uri", "experiment", "run_name", "gpus",
                  "cpu_replicas", "cache_dir", "register_model", "system_metrics", "follow_external_symlinks",
                  "recipe")


@cli.command()
@click.option("--train-site", metavar="NAME=PATH", help="Training site.")
@click.option("--val-site", metavar="NAME=PATH", help="Validation site (model and threshold selection).")
@click.option("--test-site", "test_sites", multiple=True, metavar="NAME=PATH", help="Test site; repeatable.")
@click.option("--output", type=click.Path(file_okay=False), default="",
              help="Run folder (default: runs/<train site>-seed<seed>-<digest of the settings>, one per "
                   "configuration; the same command resumes it).")
@click.option("--recipe", type=click.Choice(tuple(RECIPES)), default=DEFAULT_RECIPE, show_default=True,
              help="Named settings under the config file, the flags and --set: seed (ImageNet weights) or "
                   "from-scratch (weights none, batch 16, 40 epochs, Adam 1e-3, per-image input, balanced "
                   "classes, slower learning-rate cuts; the image size stays --image-size).")
@click.option("--epochs", type=click.IntRange(1, 10_000), default=15, show_default=recipe_defaults("epochs", 15))
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=100,
              show_default=recipe_defaults("batch_size", 100), help="Global batch.")
@click.option("--image-size", type=click.IntRange(32, 1024), default=224, show_default=True)
@click.option("--weights", default="imagenet", show_default=recipe_defaults("weights", "imagenet"),
              help="imagenet, none, or a weights file.")
@click.option("--leakage", type=click.Choice(LEAKAGE_POLICIES), default="purge-train", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tracking-uri", default="", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, "
                                                 "else sqlite:///mlflow.db in the working folder).")
@click.option("--experiment", default="brainmri", show_default=True, help="MLflow experiment (--demo: brainmri-demo).")
@click.option("--run-name", default="", help="MLflow run name (default: generated).")
@click.option("--register-model", default="", metavar="NAME",
              help="Register the logged model in the MLflow model registry under NAME (once per run).")
@click.option("--system-metrics/--no-system-metrics", default=True, show_default=True,
              help="Log MLflow system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) every 10 s.")
@click.option("--gpus", type=int, default=-1, help="GPUs to use on this node (-1: all visible).")
@click.option("--cpu-replicas", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Without GPUs: split the CPU into this many devices under MirroredStrategy (tests the "
                   "multi-replica code path on a laptop).")
@click.option("--cache-dir", default="", help="Crop cache folder (default $BRAINMRI_CACHE or ~/.cache/brainmri).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML or JSON file of settings; flags given on the command line override it.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set augment.histogram_match_probability=0 (repeatable).")
@click.option("--follow-external-symlinks", is_flag=True,
              help="Read symlinks that point outside a site's folder (skipped by default).")
@click.option("--demo", is_flag=True, help="Train on three built-in synthetic sites (no download, a few minutes).")
@click.pass_context
def train(ctx: click.Context, config_file, overrides, demo, **flags) -> None:
    """Train on one site, select on another, evaluate on the test sites; track in MLflow."""
    config = build_train_config(ctx, config_file, overrides, demo, flags)
    note = "" if demo else from_scratch_note(config)
    if note:
        click.echo(note, err=True)
    from training.loop import run_training

    with usage_errors():
        status = run_training(config)
    sys.exit(status)


def parse_override(text: str) -> tuple[str, str]:
    """``--set KEY=VALUE`` -> ``(key, value text)``; the value is parsed later by the setting's type."""
    key, separator, raw = text.partition("=")
    if not separator or not key.strip():
        raise click.UsageError(f"--set {text!r} must be KEY=VALUE")
    return key.strip(), raw.strip()


def build_train_config(ctx: click.Context, config_file, overrides, demo, flags: dict, *,
                       write_demo: bool = True) -> TrainConfig:
    """Defaults < recipe < config file < demo settings < command-line flags < --set; all checked before any work.

    The recipe is the one named by the highest of these layers that names one (``--recipe``, ``recipe:`` in
    the file, ``--set recipe=...``); its values sit just above the defaults, under every layer given.

    Checked first: every setting, the site folders (their class folders listed, no image read; the
    demo's own sites excepted), the tracking URI or ``$MLFLOW_TRACKING_URI`` and a weights file's
    header. Only then are the demo's sites written (unless ``write_demo`` is False).
    """
    from click.core import ParameterSource

    with usage_errors():
        values: dict[str, Any] = flatten_settings(read_config_file(config_file)) if config_file else {}
        if demo:
            values.update(demo_settings(DEMO_DATA))
        for key in TRAIN_SETTINGS:
            if ctx.get_parameter_source(key) not in (ParameterSource.DEFAULT, None):
                values[key] = list(flags[key]) if key == "test_sites" else flags[key]
        values.update(flatten_settings(dict(parse_override(text) for text in overrides)))
        config = TrainConfig.from_settings(values).validate(check_folders=not demo)
        demo_paths = {str(DEMO_DATA / name) for name in ("synth_a", "synth_b", "synth_c")} if demo else set()
        for _, name, path in config.sites():
            if path not in demo_paths:
                check_site_folder(name, path)
        check_tracking_environment(config.tracking.tracking_uri)
        if demo and write_demo:
            from datasets.synthetic import write_demo_sites

            write_demo_sites(DEMO_DATA, images_per_class=150, size=96)
            config.validate()
        if not config.runtime.output:
            config = config.replace(output=config.default_output())
    return config


def check_ablation_runs(plan: Sequence[tuple[str, list[str]]], arguments: Sequence[str],
                        seeds: Sequence[int]) -> list[TrainConfig]:
    """The config of every run of an ablation, built from its ``train`` arguments as ``train`` builds it.

    Every variant (and seed) is parsed and checked before the first run starts: unknown options, bad
    values, site names given twice, missing site folders. Nothing is written (the demo's sites neither).
    """
    parent = click.get_current_context(silent=True)
    configs = []
    for _, extra in plan:
        for seed in (seeds or [None]):
            tail = [*arguments, *extra, *(["--set", f"seed={seed}"] if seed is not None else [])]
            with train.make_context("train", tail, parent=parent) as ctx:
                params = ctx.params
                configs.append(build_train_config(ctx, params["config_file"], params["overrides"], params["demo"],
                                                  params, write_demo=False))
    return configs


def demo_settings(folder: Path) -> dict[str, Any]:
    """Settings of ``train --demo``: three synthetic sites (written into ``folder``), small and fast."""
    return {
        "train_site": f"synth_a={folder / 'synth_a'}", "val_site": f"synth_b={folder / 'synth_b'}",
        "test_sites": [f"synth_c={folder / 'synth_c'}"],
        "image_size": 48, "epochs": 15, "batch_size": 32, "weights": "none", "learning_rate": 1e-3,
        "bootstrap_resamples": 500, "experiment": "brainmri-demo",
    }


@cli.command()
@click.option("--model", "model_paths", multiple=True, required=True, metavar="MODEL", callback=model_source_option,
              help="A saved model.keras (or its run folder), an MLflow run id, runs:/<run id> or models:/<id>; "
                   "repeat it for a seed ensemble (probabilities averaged, one row).")
@click.option("--site", "site_values", multiple=True, required=True, metavar="NAME=PATH", help="Repeatable.")
@click.option("--val-site", "val_name", default="", help="Name of the --site used to choose the threshold.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Decision threshold (default: from the model's run).")
@click.option("--train-hashes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="train_hashes.npz of the training run: leaked and source-disjoint images, shortcut baseline "
                   "(default: next to the model).")
@click.option("--output", type=click.Path(file_okay=False), default="evaluation", show_default=True)
@click.option("--tracking-uri", default="", callback=tracking_uri_option)
@click.option("--experiment", default="brainmri", show_default=True,
              help="MLflow experiment of the evaluation run (the store and experiment train uses by default).")
@click.option("--no-tracking", is_flag=True, help="Do not log the evaluation to MLflow.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default="")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tta", "test_time_augmentation", type=click.Choice(TEST_TIME_AUGMENTATIONS), default=None,
              help="Test-time augmentation: 'flips' averages the four flips of each image "
                   "(default: as the model's run did, else none).")
def evaluate(model_paths, site_values, val_name, threshold, train_hashes, output, tracking_uri, experiment,
             no_tracking, cache_dir, seed, test_time_augmentation) -> None:
    """Evaluate a saved model (or a seed ensemble of several) on any sites and write the report."""
    import zipfile

    specs = site_specs(site_values)
    if val_name and val_name not in [name for name, _ in specs]:
        raise click.UsageError(f"--val-site {val_name!r} is not one of the --site names "
                               f"({', '.join(name for name, _ in specs)})")
    if len(model_paths) > 1 and threshold is None and not val_name:
        raise click.UsageError("an ensemble of several models needs --val-site or --threshold")
    local = Path(model_paths[0])
    if threshold is None and not val_name and local.exists() and \
            not ((local if local.is_dir() else local.parent) / "summary.json").is_file():
        raise click.UsageError("no --threshold, no --val-site and no summary.json next to the model")
    if train_hashes and not zipfile.is_zipfile(train_hashes):
        raise click.UsageError(f"--train-hashes {train_hashes!r} is not a .npz file (train_hashes.npz of a run)")
    if not no_tracking and not experiment.strip():
        raise click.UsageError("--experiment is empty; name an MLflow experiment or pass --no-tracking")
    with usage_errors():
        if not no_tracking:
            check_tracking_environment(tracking_uri)
    from training.evaluation import evaluate_saved_model, results_table

    with usage_errors():
        summary = evaluate_saved_model(model_paths, specs, val_name=val_name, threshold=threshold,
                                       train_hashes=train_hashes, output=Path(output), tracking_uri=tracking_uri,
                                       experiment=experiment, cache_dir=cache_dir, seed=seed,
                                       test_time_augmentation=test_time_augmentation,
                                       say=lambda line: click.echo(line, err=True), tracking=not no_tracking)
    click.echo(results_table(summary))
    click.echo(f"wrote {output}/report.html" + (f" (MLflow run {summary['mlflow_run_id']})"
                                                if summary.get("mlflow_run_id") else ""))


@cli.command()
@click.option("--model", "model_source", required=True, metavar="MODEL", callback=model_source_option,
              help="A saved model.keras (or its run folder), an MLflow run id, runs:/<run id> or models:/<id> "
                   "(also models:/NAME/VERSION).")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE_OR_FOLDER...", callback=existing_paths_option)
@click.option("--output", type=click.Path(dir_okay=False), default="predictions.csv", show_default=True,
              help="CSV of path, probability, threshold and decision (1: tumour).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Decision threshold (default: the model's run's, from summary.json or its MLflow metric).")
@click.option("--tracking-uri", default="", callback=tracking_uri_option,
              help="MLflow store of a run id or models:/ model (default as train).")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=32, show_default=True)
def predict(model_source, inputs, output, threshold, tracking_uri, batch_size) -> None:
    """Score images (files or folders, recursively) with a trained model and write a CSV.

    The images are checked and cropped as in training, with the crop settings of the model's run; bad files
    are reported with a reason and skipped.
    """
    from datasets.validation import summarize_bad_files
    from training.predict import load_model_source, predict_images, write_predictions_csv

    with usage_errors():
        source = load_model_source(model_source, tracking_uri)
        found = predict_images(source, inputs, threshold, batch_size=batch_size,
                               report=lambda line: click.echo(line, err=True))
        path = write_predictions_csv(output, found)
    skipped = summarize_bad_files(found.skipped)
    click.echo(f"scored {len(found.paths)} images at threshold {found.threshold:.4f}: "
               f"{int(found.decisions.sum())} tumour, {len(found.paths) - int(found.decisions.sum())} no tumour; "
               f"skipped {len(found.skipped)}" + (f" ({', '.join(f'{k} {v}' for k, v in skipped.items())})"
                                                  if skipped else ""))
    click.echo(f"wrote {path}")


@cli.command()
@click.option("--experiment", default="brainmri", show_default=True, help="MLflow experiment (train's default).")
@click.option("--tracking-uri", default="", callback=tracking_uri_option,
              help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).")
@click.option("--output", type=click.Path(file_okay=False), default="compare", show_default=True)
@click.option("--ablation", default="", metavar="RUN_ID|NAME",
              help="Only the runs of one ablation: its parent run id (any experiment), or its name (the "
                   "ablate --output folder's name, or the parent's run name) in --experiment.")
def compare(experiment, tracking_uri, output, ablation) -> None:
    """Runs-by-sites table of AUC with confidence intervals from MLflow, and mean ± sd over seeds.

    Runs that share every setting but the seed are one recipe; its AUC is also shown as mean ± sd (n).
    """
    from eval.compare import (SUBSET_VALUES, collect_runs, comparison_table, format_markdown_table,
                              format_seed_table, seed_groups, write_comparison)
    from training.config import NOT_DEFINING
    from eval.compare import RUN_ID_PATTERN
    from training.tracking import check_experiment, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    with usage_errors():
        check_tracking_environment(tracking_uri)
        check_experiment(uri, None if RUN_ID_PATTERN.match(ablation) else experiment)
        runs = collect_runs(experiment, uri, ablation=ablation)
    if not runs:
        raise click.UsageError(f"experiment {experiment!r} has no runs")
    rows = comparison_table(runs)
    groups = seed_groups(runs, ignored=NOT_DEFINING | {"seed"})
    for value, title in SUBSET_VALUES:
        click.echo(f"{title}:\n{format_markdown_table(rows, value)}\n")
    for value, title in SUBSET_VALUES:
        click.echo(f"{title}, mean ± sd over seeds:\n{format_seed_table(groups, value)}\n")
    paths = write_comparison(rows, Path(output), groups=groups)
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--output", type=click.Path(file_okay=False), default="ablation", show_default=True)
@click.option("--vary", "varies", multiple=True, metavar="KEY=V1,V2",
              help="A config key and the values to try, e.g. leakage=report-only,purge-train; repeatable.")
@click.option("--variant", "named_variants", multiple=True, metavar="'NAME: KEY=V KEY=V'",
              help="A run that changes several keys together, e.g. 'report-only: leakage=report-only "
                   "epochs=6' (same number of optimizer steps); repeatable, runs after the --vary runs.")
@click.option("--mode", type=click.Choice(["one-at-a-time", "grid"]), default="one-at-a-time", show_default=True)
@click.option("--seeds", "seeds_text", default="", metavar="S1,S2,...",
              help="Run every variant once per seed, e.g. 0,1,2; tables show mean, sd and each seed, and "
                   "whether a difference exceeds seed variation.")
@click.option("--title", default="Cross-site results", show_default=True,
              help="Heading of RESULTS.md and description of the MLflow parent run (named after --output).")
@click.argument("train_arguments", nargs=-1, type=click.UNPROCESSED)
def ablate(output, varies, named_variants, mode, seeds_text, title, train_arguments) -> None:
    """Run ``train`` once per variant and write RESULTS.md and results.json.

    In MLflow the ablation is one parent run (named after --output) with a child run per variant and seed;
    stopped (Ctrl-C, SIGTERM: exit status 3) and run again, it continues into the same parent run.
    Everything after the options is passed to ``train`` (sites, epochs, --set ...). Example:

    \b
        train_distributed.py ablate --output abl --vary leakage=report-only --vary crop=false
        -- --train-site br35h=... --val-site nav=... --test-site mos=... --weights none
    """
    from training.ablation import AblationStopped, ablation_plan, check_ablation_arguments, parse_seeds, run_ablation
    from training.faults import EXIT_REQUEUE
    from training.tracking import resolve_tracking_uri

    with usage_errors():
        plan = ablation_plan(varies, named_variants, mode)
        seeds = parse_seeds(seeds_text) if seeds_text else []
        arguments = check_ablation_arguments(plan, train_arguments, seeds)
    check_ablation_runs(plan, arguments, seeds)

    def describe(arguments: list[str]) -> tuple[str, str, int]:
        """The MLflow store, experiment and seed that ``train`` would use with these arguments."""
        context = train.make_context("train", list(arguments))
        config = build_train_config(context, context.params["config_file"], context.params["overrides"],
                                    context.params["demo"], context.params)
        return resolve_tracking_uri(config.tracking.tracking_uri), config.tracking.experiment, config.seed

    try:
        text = run_ablation(plan, train_arguments, Path(output), title, Path(__file__).resolve(),
                            say=lambda line: click.echo(line, err=True), seeds=seeds, describe=describe)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    except AblationStopped as stop:
        click.echo(str(stop), err=True)
        sys.exit(EXIT_REQUEUE)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None
    click.echo(text)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; anything but loopback needs --allow-remote.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="TCP port (0: a free one).")
@click.option("--backend-store-uri", default="sqlite:///mlflow.db", show_default=True, callback=backend_store_option,
              help="Runs database: the store that training writes to by default in this folder.")
@click.option("--artifacts-destination", default="./mlartifacts", show_default=True, callback=non_empty_option,
              help="Folder (or URI) where the server keeps reports and models of runs logged through it.")
@click.option("--allow-remote", is_flag=True,
              help="Allow a non-loopback --host. Without --auth anyone who can reach the port can read and "
                   "delete every run; with it, passwords cross the network unencrypted.")
@click.option("--auth", is_flag=True,
              help="Run MLflow's basic-auth app: every page and API call asks for a user name and password. "
                   "The admin account is made on the first start with $MLFLOW_AUTH_ADMIN_PASSWORD, else with "
                   "a generated password saved to AUTH-DIR/admin_password (mode 0600). Needs "
                   "pip install -e \".[auth]\".")
@click.option("--auth-dir", type=click.Path(file_okay=False), default="mlflow-auth", show_default=True,
              help="With --auth: folder (mode 0700) of basic_auth.ini, the accounts database and the admin "
                   "password file.")
def ui(host, port, backend_store_uri, artifacts_destination, allow_remote, auth, auth_dir) -> None:
    """Serve the MLflow UI and tracking API on this machine until Ctrl-C, SIGTERM or SIGHUP.

    The server is stopped on every way out, an interrupt during its start included.
    """
    import warnings

    from eval.mlflow_server import check_host, files_open_to_others, log_tail, prepare_basic_auth, run_server

    with usage_errors():
        check_host(host, allow_remote)
        basic_auth = prepare_basic_auth(auth_dir) if auth else None
    if basic_auth is not None:
        for text in files_open_to_others(backend_store_uri, artifacts_destination):
            click.echo(f"warning: {text}", err=True)
    click.echo(f"starting MLflow server on {backend_store_uri} (artifacts: {artifacts_destination}"
               f"{', basic auth' if auth else ''}) ...", err=True)
    started = []

    def announce(server) -> None:
        started.append(server)
        click.echo(f"MLflow UI: {server.url}")
        if server.auth is None:
            click.echo(f"log training to it with: --tracking-uri {server.url}")
            click.echo("no authentication: every user of this machine can read, change and delete these runs "
                       "(--auth asks for a password)", err=True)
        else:
            user = server.auth.admin_username
            if server.auth.password_file is not None:
                password, where = f'"$(cat {server.auth.password_file})"', f"in {server.auth.password_file}"
            elif "MLFLOW_AUTH_ADMIN_PASSWORD" in server.auth.environment:
                password, where = '"$MLFLOW_AUTH_ADMIN_PASSWORD"', "$MLFLOW_AUTH_ADMIN_PASSWORD"
            else:
                password, where = "...", f"the one {server.auth.database_path} was made with"
            click.echo(f"sign in as {user!r}, password {where}")
            click.echo(f"log training to it with: MLFLOW_TRACKING_USERNAME={user} MLFLOW_TRACKING_PASSWORD="
                       f"{password} python train_distributed.py train ... --tracking-uri {server.url}")
        click.echo(f"server log: {server.log_path}; Ctrl-C stops the server", err=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = lambda message, *rest: click.echo(f"warning: {message}", err=True)
        try:
            stopped_by = run_server(announce, host=host, port=port, backend_store_uri=backend_store_uri,
                                    artifacts_destination=artifacts_destination, allow_remote=allow_remote,
                                    auth=basic_auth)
        except ValueError as error:
            raise click.UsageError(str(error)) from None
        except RuntimeError as error:
            raise click.ClickException(str(error)) from None
    if not stopped_by:
        server = started[0]
        raise click.ClickException(f"the MLflow server exited by itself (code {server.returncode}); "
                                   f"last lines of {server.log_path}:\n{log_tail(server.log_path)}")
    import signal

    click.echo(f"MLflow server stopped ({signal.Signals(stopped_by).name})", err=True)
    # Stopped while serving: done as asked. Stopped during the start: the conventional 128 + signal.
    sys.exit(0 if started else 128 + stopped_by)


if __name__ == "__main__":
    cli()
