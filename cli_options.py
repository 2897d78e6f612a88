"""Click helpers of the command line (``train_distributed.py``): option callbacks, shared options, usage errors.

Part of the CLI layer: only ``train_distributed.py`` imports this module, and nothing below the CLI
imports click.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click

from datasets.audit import LEAKAGE_POLICIES
from datasets.sites import check_site_folder
from training.config import DEFAULT_RECIPE, RECIPES


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """ValueError (and TypeError from bad settings) below this point become click usage errors."""
    try:
        yield
    except (ValueError, TypeError) as error:
        raise click.UsageError(str(error)) from None


@contextlib.contextmanager
def run_errors() -> Iterator[None]:
    """Around a long run: its ValueError becomes a usage error, its RuntimeError a plain error (exit status 1)."""
    try:
        yield
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None


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


def check_site_choice(option: str, name: str, specs: Sequence[tuple[str, str]]) -> str:
    """``name``, the value of ``option`` (``--val-site``, ...); usage error unless it is one of the ``--site`` names."""
    if name not in [site for site, _ in specs]:
        raise click.UsageError(f"{option} {name!r} is not one of the --site names "
                               f"({', '.join(site for site, _ in specs)})")
    return name


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


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def options(*decorators: Decorator) -> Decorator:
    """Several click options as one decorator; they show in ``--help`` in the order given."""
    def apply(function: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def site_option(name: str, dest: str, *, help: str | None = None, **settings: Any) -> Decorator:
    """A ``NAME=PATH`` site option (``--site``, ``--reference-site``, ...) stored in parameter ``dest``."""
    return click.option(name, dest, metavar="NAME=PATH", help=help, **settings)


def tracking_uri(help: str | None = None) -> Decorator:
    """``--tracking-uri``: an MLflow store URI, checked by :func:`tracking_uri_option`; default ""."""
    return click.option("--tracking-uri", default="", callback=tracking_uri_option, help=help)


def experiment(help: str) -> Decorator:
    """``--experiment``: the MLflow experiment, default ``brainmri`` (the one ``train`` uses)."""
    return click.option("--experiment", default="brainmri", show_default=True, help=help)


def seed(help: str | None = None) -> Decorator:
    """``--seed``: an integer, default 0."""
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def image_size(help: str | None = None) -> Decorator:
    """``--image-size``: crop side in pixels, 32 to 1024, default 224."""
    return click.option("--image-size", type=click.IntRange(32, 1024), default=224, show_default=True, help=help)


def output_folder(default: str) -> Decorator:
    """``--output``: a folder (not a file), with its default shown."""
    return click.option("--output", type=click.Path(file_okay=False), default=default, show_default=True)


def output_file(default: str, help: str | None = None) -> Decorator:
    """``--output``: a file (not a folder), with its default shown."""
    return click.option("--output", type=click.Path(dir_okay=False), default=default, show_default=True, help=help)


def cache_dir(help: str | None = None) -> Decorator:
    """``--cache-dir``: the crop cache folder; "" for the default one."""
    return click.option("--cache-dir", type=click.Path(file_okay=False), default="", help=help)


def follow_external_symlinks() -> Decorator:
    """``--follow-external-symlinks``: read symlinks that leave a site's folder."""
    return click.option("--follow-external-symlinks", is_flag=True,
                        help="Read symlinks that point outside a site's folder (skipped by default).")


def model_option(dest: str, help: str, **settings: Any) -> Decorator:
    """``--model``: a model source (file, run folder, run id, runs:/ or models:/), checked before any work."""
    return click.option("--model", dest, required=True, metavar="MODEL", callback=model_source_option, help=help,
                        **settings)


def threshold(help: str) -> Decorator:
    """``--threshold``: a decision threshold in [0, 1]; default: the model's run's."""
    return click.option("--threshold", type=click.FloatRange(0, 1), default=None, help=help)


def recipe_defaults(key: str, default: Any) -> str:
    """``--help`` text of the default of a ``train`` option per recipe: ``seed: 15, from-scratch: 40``."""
    return ", ".join(f"{name}: {settings.get(key, default)}" for name, settings in RECIPES.items())


#: Options of ``train`` that are config settings (the option's name is the setting's flat key).
TRAIN_SETTINGS = ("train_site", "val_site", "test_sites", "output", "epochs", "batch_size", "image_size",
                  "weights", "leakage", "seed", "tracking_uri", "experiment", "run_name", "gpus",
                  "cpu_replicas", "cache_dir", "register_model", "system_metrics", "follow_external_symlinks",
                  "recipe")

#: The options of ``train``; ``ablate`` passes its train arguments through them for every run.
train_options = options(
    click.option("--train-site", metavar="NAME=PATH", help="Training site."),
    click.option("--val-site", metavar="NAME=PATH", help="Validation site (model and threshold selection)."),
    site_option("--test-site", "test_sites", multiple=True, help="Test site; repeatable."),
    click.option("--output", type=click.Path(file_okay=False), default="",
                 help="Run folder (default: runs/<train site>-seed<seed>-<digest of the settings>, one per "
                      "configuration; the same command resumes it)."),
    click.option("--recipe", type=click.Choice(tuple(RECIPES)), default=DEFAULT_RECIPE, show_default=True,
                 help="Named settings under the config file, the flags and --set: seed (ImageNet weights) or "
                      "from-scratch (weights none, batch 16, 40 epochs, Adam 1e-3, per-image input, balanced "
                      "classes, slower learning-rate cuts; the image size stays --image-size)."),
    click.option("--epochs", type=click.IntRange(1, 10_000), default=15, show_default=recipe_defaults("epochs", 15)),
    click.option("--batch-size", type=click.IntRange(1, 100_000), default=100,
                 show_default=recipe_defaults("batch_size", 100), help="Global batch."),
    image_size(),
    click.option("--weights", default="imagenet", show_default=recipe_defaults("weights", "imagenet"),
                 help="imagenet, none, or a weights file."),
    click.option("--leakage", type=click.Choice(LEAKAGE_POLICIES), default="purge-train", show_default=True),
    seed(),
    click.option("--tracking-uri", default="", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, "
                                                    "else sqlite:///mlflow.db in the working folder)."),
    experiment("MLflow experiment (--demo: brainmri-demo)."),
    click.option("--run-name", default="", help="MLflow run name (default: generated)."),
    click.option("--register-model", default="", metavar="NAME",
                 help="Register the logged model in the MLflow model registry under NAME (once per run)."),
    click.option("--system-metrics/--no-system-metrics", default=True, show_default=True,
                 help="Log MLflow system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) every 10 s."),
    click.option("--gpus", type=int, default=-1, help="GPUs to use on this node (-1: all visible)."),
    click.option("--cpu-replicas", type=click.IntRange(1, 64), default=1, show_default=True,
                 help="Without GPUs: split the CPU into this many devices under MirroredStrategy (tests the "
                      "multi-replica code path on a laptop)."),
    click.option("--cache-dir", default="", help="Crop cache folder (default $BRAINMRI_CACHE or ~/.cache/brainmri)."),
    click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                 help="YAML or JSON file of settings; flags given on the command line override it."),
    click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                 help="Override any config key, e.g. --set augment.histogram_match_probability=0 (repeatable)."),
    follow_external_symlinks(),
    click.option("--demo", is_flag=True, help="Train on three built-in synthetic sites (no download, a few minutes)."),
)


def given_train_settings(ctx: click.Context, flags: dict[str, Any]) -> dict[str, Any]:
    """The :data:`TRAIN_SETTINGS` that ``train``'s command line (``ctx``) gave, by flat key, from its ``flags``."""
    from click.core import ParameterSource

    return {key: list(flags[key]) if key == "test_sites" else flags[key] for key in TRAIN_SETTINGS
            if ctx.get_parameter_source(key) not in (ParameterSource.DEFAULT, None)}
