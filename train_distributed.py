"""Train a brain-MRI tumour classifier on one site, select on another, test on the rest.

    python train_distributed.py train --demo
    python train_distributed.py train --train-site br35h=data/br35h --val-site nav=data/nav \\
        --test-site mos=data/mos --weights none --image-size 128 --epochs 12
    python train_distributed.py audit --site br35h=... --site nav=... --site mos=... --output audit/
    python train_distributed.py evaluate --model runs/x/model.keras --site mos=... --output eval/
    python train_distributed.py predict --model models:/m-... scans/ --output predictions.csv

This file is the command line only: options, the one config, calling the
engine (``training/``) and the packages below it, and turning their
``ValueError`` into usage errors; its option callbacks and shared options
are in ``cli_options.py``. Nothing below it imports click.
"""
from __future__ import annotations

import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's info and warning lines off, its errors on

from training.console import quiet_tensorflow_on_cpu  # noqa: E402 (before anything imports TensorFlow)

quiet_tensorflow_on_cpu()  # no GPU: no "failed call to cuInit" error line at start-up

import click

import datasets as _datasets_package

if not getattr(_datasets_package, "BRAINMRI_DATASETS", False):
    raise ImportError(
        f"'import datasets' found {getattr(_datasets_package, '__file__', '?')}, not this project's package "
        "(the Hugging Face 'datasets' package shadows it). Install this project in its own virtualenv; "
        "see README, 'A note on the name datasets'.")

import cli_options as opt
from cli_options import (backend_store_option, check_site_choice, existing_paths_option, non_empty_option,
                         run_errors, site_specs, usage_errors)
from training.config import (TEST_TIME_AUGMENTATIONS, TrainConfig, check_tracking_environment, from_scratch_note,
                             layered_config, read_config_file)
from training.console import progress_printer

DEMO_DATA = Path("runs") / "demo_data"


def say(line: str) -> None:
    """A progress, warning or skipped-file line, to stderr."""
    click.echo(line, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Train a brain-MRI tumour classifier on one site and measure how it carries to others."""


@cli.command()
@opt.site_option("--site", "site_values", multiple=True, required=True, help="A site folder; repeat for each site.")
@opt.output_folder("audit")
@opt.image_size("Crop size of the cache the hashes are computed on.")
@click.option("--threshold-bits", type=click.IntRange(0, 128), default=None,
              help="Hamming distance threshold (default: built-in, 28).")
@opt.cache_dir("Crop cache folder (default $BRAINMRI_CACHE or ~/.cache/brainmri).")
@click.option("--no-crop", is_flag=True, help="Hash whole images instead of brain crops.")
@click.option("--train-site", "train_name", default="", metavar="NAME",
              help="The --site the shortcut baseline is fit on (default: the first).")
@opt.seed("Seed of the bootstrap and the classifiers.")
@opt.follow_external_symlinks()
def audit(site_values, output, image_size, threshold_bits, cache_dir, no_crop, train_name, seed,
          follow_external_symlinks) -> None:
    """Audit sites: near-duplicates (leakage), shortcuts (image statistics vs label) and data quality."""
    from datasets.audit import audit_report
    from datasets.cache import CropParams, load_sites

    specs = site_specs(site_values)
    train_name = check_site_choice("--train-site", train_name or specs[0][0], specs)
    with usage_errors():
        sites = load_sites(specs, CropParams(image_size=image_size, crop=not no_crop), cache_dir=cache_dir or None,
                           report=say, progress=progress_printer(), follow_external_symlinks=follow_external_symlinks)
    text, paths = audit_report(sites, train_name, Path(output), threshold_bits=threshold_bits, seed=seed, say=say)
    click.echo(text)
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


@cli.command("preview-crop")
@opt.site_option("--site", "site_spec", required=True)
@opt.output_file("crop_preview.png")
@click.option("--count", type=click.IntRange(1, 200), default=24, show_default=True)
@opt.seed()
def preview_crop(site_spec, output, count, seed) -> None:
    """Write a PNG montage of originals with their brain crop boxes."""
    from brain_crop import write_crop_preview
    from datasets.sites import read_sampled_images, sample_site_files

    (name, path), = site_specs([site_spec])
    with usage_errors():
        candidates = sample_site_files(name, path, count, seed)
    images, titles = read_sampled_images(candidates, report=say)
    write_crop_preview(output, images, titles)
    click.echo(f"wrote {output} ({len(images)} images)")


@cli.command("preview-augment")
@opt.site_option("--site", "site_spec", required=True, help="Images to augment.")
@opt.site_option("--reference-site", "reference_specs", multiple=True,
                 help="Histogram-matching references (other sites); repeatable.")
@opt.output_file("augment_preview.png")
@opt.image_size()
@click.option("--count", type=click.IntRange(1, 12), default=4, show_default=True)
@opt.seed()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="A training config file; its augment settings are used.")
@opt.cache_dir()
def preview_augment(site_spec, reference_specs, output, image_size, count, seed, config_file, cache_dir) -> None:
    """Write a PNG of originals, augmented variants and histogram-matched examples."""
    from datasets.cache import CropParams, load_sites, matching_pool, pool_left_out_text

    specs = site_specs([("--site", site_spec), *[("--reference-site", spec) for spec in reference_specs]])
    with usage_errors():
        augment_config = TrainConfig.from_settings(read_config_file(config_file) if config_file else {}).augment
        augment_config.validate()
    from augment.preview import write_augment_preview

    with usage_errors():
        sites = load_sites(specs, CropParams(image_size=image_size), cache_dir=cache_dir or None, report=say,
                           progress=progress_printer())
    pool, left_out = matching_pool(dict(list(sites.items())[1:]))
    if pool is not None:
        say(f"histogram-matching pool: {len(pool)} images{pool_left_out_text(left_out)}")
    write_augment_preview(output, list(sites.values())[0].images, pool, augment_config, count=count, seed=seed)
    click.echo(f"wrote {output}")


@cli.command()
@opt.train_options
@click.pass_context
def train(ctx: click.Context, config_file, overrides, demo, **flags) -> None:
    """Train on one site, select on another, evaluate on the test sites; track in MLflow."""
    config = build_train_config(ctx, config_file, overrides, demo, flags)
    note = "" if demo else from_scratch_note(config)
    if note:
        say(note)
    from training.loop import run_training

    with usage_errors():
        status = run_training(config)
    sys.exit(status)


def build_train_config(ctx: click.Context, config_file, overrides, demo, flags: dict, *,
                       write_demo: bool = True) -> TrainConfig:
    """``train``'s config: the flags its command line (``ctx``) gave over the config file and the demo, ``--set``
    over them, as :func:`training.config.layered_config` builds and checks it before any work."""
    with usage_errors():
        return layered_config(config_file, opt.given_train_settings(ctx, flags), overrides,
                              demo_folder=DEMO_DATA if demo else None, write_demo=write_demo)


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
                configs.append(build_train_config(ctx, ctx.params["config_file"], ctx.params["overrides"],
                                                  ctx.params["demo"], ctx.params, write_demo=False))
    return configs


@cli.command()
@opt.model_option("model_paths", "A saved model.keras (or its run folder), an MLflow run id, runs:/<run id> or "
                  "models:/<id>; repeat it for a seed ensemble (probabilities averaged, one row).", multiple=True)
@opt.site_option("--site", "site_values", multiple=True, required=True, help="Repeatable.")
@click.option("--val-site", "val_name", default="", help="Name of the --site used to choose the threshold.")
@opt.threshold("Decision threshold (default: from the model's run).")
@click.option("--train-hashes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="train_hashes.npz of the training run: leaked and source-disjoint images, shortcut baseline "
                   "(default: next to the model).")
@opt.output_folder("evaluation")
@opt.tracking_uri()
@opt.experiment("MLflow experiment of the evaluation run (the store and experiment train uses by default).")
@click.option("--no-tracking", is_flag=True, help="Do not log the evaluation to MLflow.")
@opt.cache_dir()
@opt.seed()
@click.option("--tta", "test_time_augmentation", type=click.Choice(TEST_TIME_AUGMENTATIONS), default=None,
              help="Test-time augmentation: 'flips' averages the four flips of each image "
                   "(default: as the model's run did, else none).")
def evaluate(model_paths, site_values, val_name, threshold, train_hashes, output, tracking_uri, experiment,
             no_tracking, cache_dir, seed, test_time_augmentation) -> None:
    """Evaluate a saved model (or a seed ensemble of several) on any sites and write the report."""
    import zipfile

    specs = site_specs(site_values)
    if val_name:
        check_site_choice("--val-site", val_name, specs)
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
                                       test_time_augmentation=test_time_augmentation, say=say,
                                       tracking=not no_tracking)
    click.echo(results_table(summary))
    click.echo(f"wrote {output}/report.html" + (f" (MLflow run {summary['mlflow_run_id']})"
                                                if summary.get("mlflow_run_id") else ""))


@cli.command()
@opt.model_option("model_source", "A saved model.keras (or its run folder), an MLflow run id, runs:/<run id> or "
                  "models:/<id> (also models:/NAME/VERSION).")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE_OR_FOLDER...", callback=existing_paths_option)
@opt.output_file("predictions.csv", "CSV of path, probability, threshold and decision (1: tumour).")
@opt.threshold("Decision threshold (default: the model's run's, from summary.json or its MLflow metric).")
@opt.tracking_uri("MLflow store of a run id or models:/ model (default as train).")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=32, show_default=True)
def predict(model_source, inputs, output, threshold, tracking_uri, batch_size) -> None:
    """Score images (files or folders, recursively) with a trained model and write a CSV.

    The images are checked and cropped as in training, with the crop settings of the model's run; bad files
    are reported with a reason and skipped.
    """
    from training.predict import load_model_source, predict_images, write_predictions_csv

    with usage_errors():
        source = load_model_source(model_source, tracking_uri)
        found = predict_images(source, inputs, threshold, batch_size=batch_size, report=say)
        path = write_predictions_csv(output, found)
    click.echo(found.summary())
    click.echo(f"wrote {path}")


@cli.command()
@opt.experiment("MLflow experiment (train's default).")
@opt.tracking_uri("MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).")
@opt.output_folder("compare")
@click.option("--ablation", default="", metavar="RUN_ID|NAME",
              help="Only the runs of one ablation: its parent run id (any experiment), or its name (the "
                   "ablate --output folder's name, or the parent's run name) in --experiment.")
def compare(experiment, tracking_uri, output, ablation) -> None:
    """Runs-by-sites table of AUC with confidence intervals from MLflow, and mean ± sd over seeds.

    Runs that share every setting but the seed are one recipe; its AUC is also shown as mean ± sd (n).
    """
    from eval.compare import (RUN_ID_PATTERN, collect_runs, comparison_table, comparison_text, seed_groups,
                              write_comparison)
    from training.config import NOT_DEFINING
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
    click.echo(comparison_text(rows, groups))
    paths = write_comparison(rows, Path(output), groups=groups)
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@opt.output_folder("ablation")
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
        with run_errors():
            text = run_ablation(plan, train_arguments, Path(output), title, Path(__file__).resolve(), say=say,
                                seeds=seeds, describe=describe)
    except AblationStopped as stop:
        say(str(stop))
        sys.exit(EXIT_REQUEUE)
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
    from eval.mlflow_server import (check_host, files_open_to_others, log_tail, prepare_basic_auth, ready_lines,
                                    run_server)

    with usage_errors():
        check_host(host, allow_remote)
        basic_auth = prepare_basic_auth(auth_dir) if auth else None
    if basic_auth is not None:
        for text in files_open_to_others(backend_store_uri, artifacts_destination):
            say(f"warning: {text}")
    say(f"starting MLflow server on {backend_store_uri} (artifacts: {artifacts_destination}"
        f"{', basic auth' if auth else ''}) ...")
    started = []

    def announce(server) -> None:
        started.append(server)
        for line, note in ready_lines(server):
            click.echo(line, err=note)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = lambda message, *rest: say(f"warning: {message}")
        with run_errors():
            stopped_by = run_server(announce, host=host, port=port, backend_store_uri=backend_store_uri,
                                    artifacts_destination=artifacts_destination, allow_remote=allow_remote,
                                    auth=basic_auth)
    if not stopped_by:
        server = started[0]
        raise click.ClickException(f"the MLflow server exited by itself (code {server.returncode}); "
                                   f"last lines of {server.log_path}:\n{log_tail(server.log_path)}")
    say(f"MLflow server stopped ({signal.Signals(stopped_by).name})")
    # Stopped while serving: done as asked. Stopped during the start: the conventional 128 + signal.
    sys.exit(0 if started else 128 + stopped_by)


if __name__ == "__main__":
    cli()
