"""The one configuration of a training run: grouped frozen dataclasses.

``TrainConfig`` holds the groups ``data``, ``model``, ``trainer``,
``runtime``, ``tracking``, ``evaluation`` and ``augment`` plus the run's
``seed`` and ``recipe``. Every setting has one flat name that is unique across groups
(``learning_rate``, ``image_size``, ``augment.zoom``): the name used by
``--set KEY=VALUE``, config files and MLflow params. A config file may also
be grouped (``trainer: {epochs: 3}``), as ``config.json`` is written.

Values are parsed by the type of the setting, never guessed: ``run_name=no``
stays the string ``"no"``, ``seed=010`` is 10, ``epochs=2.5`` is an error.

A recipe (:data:`RECIPES`) is a named set of values that sits just above the
defaults: defaults < recipe < config file < demo < command-line flags < --set.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

from augment.config import AugmentConfig
from datasets.audit import LEAKAGE_POLICIES
from datasets.cache import DEFAULT_MAX_PIXELS
from datasets.phash import DEFAULT_THRESHOLD_BITS

THRESHOLD_METHODS = ("youden", "sensitivity")
INPUT_NORMALIZATIONS = ("imagenet", "per_image")
#: resnet50: the seed recipe's backbone; small_cnn: eight 3x3 convolutions (16 to 128 filters), from scratch only.
BACKBONES = ("resnet50", "small_cnn")
CLASS_WEIGHTINGS = ("none", "balanced")
#: Test-time augmentation: the image axes of (B, S, S, 1) batches each view flips; () is the image itself.
TEST_TIME_FLIPS: dict[str, list[tuple[int, ...]]] = {"none": [()], "flips": [(), (2,), (1,), (1, 2)]}
TEST_TIME_AUGMENTATIONS = tuple(TEST_TIME_FLIPS)
RESNET50_FREEZE_UNTIL = "conv3_block4_out"
SWITCHES = ("auto", "on", "off")
#: Schemes of the tracking stores MLflow registers (``mlflow.tracking._tracking_service.utils``); '' is a path.
TRACKING_URI_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks",
                        "databricks-uc", "uc")
#: Schemes an MLflow server's ``--backend-store-uri`` may have: a local folder or a database.
BACKEND_STORE_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _resnet50_layer_names() -> frozenset[str]:
    """Names of the layers of ``keras.applications.ResNet50(include_top=False)`` (175), without Keras."""
    names = {"input_layer", "conv1_pad", "conv1_conv", "conv1_bn", "conv1_relu", "pool1_pad", "pool1_pool"}
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        for block in range(1, blocks + 1):
            parts = ["1_conv", "1_bn", "1_relu", "2_conv", "2_bn", "2_relu", "3_conv", "3_bn", "add", "out"]
            parts += ["0_conv", "0_bn"] if block == 1 else []
            names.update(f"conv{stage}_block{block}_{part}" for part in parts)
    return frozenset(names)


RESNET50_LAYERS = _resnet50_layer_names()

#: Named training recipes: ``{name: {flat key: value}}``, chosen by ``--recipe NAME`` (config key ``recipe``).
#: A recipe's values sit just above the dataclass defaults and below everything given for the run
#: (defaults < recipe < config file < demo < flags < --set), so any value it sets can still be changed;
#: the one exception is ``weights``: a recipe that trains from scratch refuses pretrained weights
#: (``TrainConfig.validate``), since its values were measured from scratch. The recipe's name is itself a
#: setting that defines the run (config.json, MLflow params, the output folder's digest).
#:
#: ``seed``: the defaults of the dataclasses themselves (ImageNet weights, 224 px, batch 100, Adam 2e-4, ...).
#: ``from-scratch``: each value is from RESULTS.md ("Recipe of every row below": ResNet50 from scratch at
#: 128 px on the 431 leak-free BR35H images, NAV AUC 0.940 / 0.878 and MOS 0.870 / 0.795 for seeds 0 and 1).
#: It does not set ``image_size``: the size is a choice of compute and of the question asked, not of the
#: weights (RESULTS.md ran 128 px because it had 2 CPU cores; 224 px from scratch is unmeasured), and a
#: recipe that silently shrank the images would make a 224 px command run at 128 px. Give
#: ``--image-size 128`` for the measured setting.
#: ``small-cnn``: the small backbone from scratch, each value from RESULTS.md ("Carrying to unseen sources",
#: the base row: NAV AUC 0.949 +- 0.014 over seeds 0, 1, 2 at 128 px, about 3 minutes a run on 2 CPU cores);
#: like ``from-scratch`` it leaves ``image_size`` to the run.
RECIPES: dict[str, dict[str, Any]] = {
    "seed": {},
    "from-scratch": {
        "weights": "none",                   # RESULTS.md: ResNet50 from scratch, nothing frozen
        "epochs": 40,                        # RESULTS.md: at most 40 epochs
        "batch_size": 16,                    # RESULTS.md: global batch 16 (more updates on few images)
        "learning_rate": 1e-3,               # RESULTS.md: Adam 1e-3
        "input_normalization": "per_image",  # RESULTS.md: per-image standardised input
        "class_weighting": "balanced",       # RESULTS.md: balanced class weights (343 tumour, 88 no tumour)
        "reduce_lr_patience": 4,             # RESULTS.md: learning rate x0.2 after 4 epochs without a NAV gain
        "early_stopping_patience": 10,       # RESULTS.md: early stopping after 10 (best NAV epoch restored)
    },
    # RESULTS.md, "Carrying to unseen sources": every value of its base row (3 seeds, crop version 2).
    "small-cnn": {
        "weights": "none",                   # from scratch (the small CNN has no pretrained weights)
        "backbone": "small_cnn",             # eight 3x3 convolutions, 16 to 128 filters
        "epochs": 30,
        "batch_size": 32,
        "learning_rate": 1e-3,
        "input_normalization": "per_image",
        "class_weighting": "balanced",
        "reduce_lr_patience": 3,
        "early_stopping_patience": 8,
    },
}
DEFAULT_RECIPE = "seed"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Sites (``NAME=PATH``), crops and the leakage policy."""

    train_site: str = ""
    val_site: str = ""
    test_sites: tuple[str, ...] = ()
    image_size: int = 224
    crop: bool = True
    crop_margin: float = 0.0
    cache_dir: str = ""
    max_pixels: int = DEFAULT_MAX_PIXELS
    follow_external_symlinks: bool = False  # read symlinks that resolve outside a site folder
    leakage: str = "purge-train"
    audit_threshold_bits: int = -1  # -1: datasets.phash.DEFAULT_THRESHOLD_BITS
    reference_sites: tuple[str, ...] = ()
    min_class_images: int = 50  # fewest training images per class after the leakage policy; empty always stops

    @property
    def threshold_bits(self) -> int:
        """The near-duplicate Hamming threshold actually used."""
        return DEFAULT_THRESHOLD_BITS if self.audit_threshold_bits < 0 else self.audit_threshold_bits


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The backbone (ResNet50 by default) and the seed recipe's head."""

    backbone: str = "resnet50"
    weights: str = "imagenet"
    dense_units: int = 512
    dropout: float = 0.5
    freeze_until: str = RESNET50_FREEZE_UNTIL
    input_normalization: str = "imagenet"


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Optimisation: epochs, batch, Adam, loss, early stopping and learning-rate cuts."""

    epochs: int = 15
    batch_size: int = 100
    learning_rate: float = 2e-4
    label_smoothing: float = 0.01
    early_stopping_patience: int = 5
    reduce_lr_factor: float = 0.2
    reduce_lr_patience: int = 2
    min_learning_rate: float = 1e-7
    class_weighting: str = "none"


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Where and on what the run executes; none of it changes the numbers on one device."""

    output: str = ""  # "": runs/<train site>-seed<seed>-<digest of the settings>
    gpus: int = -1
    cpu_replicas: int = 1
    mixed_precision: str = "auto"
    jit_compile: str = "auto"
    steps_per_execution: int = 1


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """MLflow: store, experiment, run name, the model (logged, registered) and system metrics."""

    tracking_uri: str = ""
    experiment: str = "brainmri"
    run_name: str = ""
    log_model: bool = True
    register_model: str = ""  # "": not registered; else the registered model's name
    system_metrics: bool = True  # MLflow's system/... metrics (CPU, memory, GPU) on the chief
    parent_run_id: str = ""  # a new run is made a child of this MLflow run (ablate sets it)
    run_tags: str = ""  # JSON object of tags a new run is created with, e.g. {"brainmri.variant": "base"}

    def new_run_tags(self) -> dict[str, str]:
        """Tags a new run is created with: ``run_tags`` and ``mlflow.parentRunId``; ValueError for bad JSON."""
        try:
            tags = json.loads(self.run_tags) if self.run_tags.strip() else {}
        except json.JSONDecodeError as error:
            raise ValueError(f"run_tags must be a JSON object of tags, got {self.run_tags!r}: {error}") from None
        if not isinstance(tags, dict):
            raise ValueError(f"run_tags must be a JSON object of tags, got {self.run_tags!r}")
        tags = {str(key): str(value) for key, value in tags.items()}
        return {**tags, "mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else tags


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Threshold choice on the validation site, bootstrap, Grad-CAM, test-time augmentation."""

    threshold_method: str = "youden"
    target_sensitivity: float = 0.9
    bootstrap_resamples: int = 1000
    gradcam_examples: int = 2
    test_time_augmentation: str = "none"


GROUPS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "trainer": TrainerConfig,
                           "runtime": RuntimeConfig, "tracking": TrackingConfig,
                           "evaluation": EvaluationConfig, "augment": AugmentConfig}
#: Settings that do not define a run: changing them resumes the same run.
NOT_DEFINING = frozenset({"output", "cache_dir", "run_name", "log_model", "gpus", "tracking_uri", "register_model",
                          "system_metrics", "parent_run_id", "run_tags", "min_class_images"})


def _flat_index() -> dict[str, tuple[str, str, Any]]:
    """``{flat key: (group, field, default)}``; ``augment`` fields are ``augment.<field>``."""
    index: dict[str, tuple[str, str, Any]] = {"seed": ("", "seed", 0), "recipe": ("", "recipe", DEFAULT_RECIPE)}
    for group, cls in GROUPS.items():
        for field in dataclasses.fields(cls):
            key = f"augment.{field.name}" if group == "augment" else field.name
            if key in index:
                raise RuntimeError(f"setting {key!r} is defined twice")
            index[key] = (group, field.name, field.default)
    return index


FLAT_KEYS = _flat_index()


def parse_setting(key: str, value: Any) -> Any:
    """``value`` (text, or a scalar / list from a config file) as the type of setting ``key``.

    Raises ValueError naming the key, the value and what is allowed.
    """
    if key not in FLAT_KEYS:
        raise ValueError(f"unknown setting {key!r}; known settings: {', '.join(sorted(FLAT_KEYS))}")
    default = FLAT_KEYS[key][2]
    if isinstance(value, Mapping):
        raise ValueError(f"{key} must be a single value, got a mapping {dict(value)!r}")
    if isinstance(default, tuple):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("[") != text.endswith("]"):
                raise ValueError(f"{key} must be a list like [a,b] or a,b; got {value!r}")
            items = [item.strip() for item in text.strip("[]").split(",")]
        elif isinstance(value, (list, tuple)):
            items = [str(item).strip() for item in value]
        else:
            items = [str(value)]
        return tuple(item for item in items if item)
    if isinstance(value, (list, tuple)):
        raise ValueError(f"{key} must be a single {type(default).__name__}, got a list {list(value)!r}")
    text = str(value).strip()
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if isinstance(default, int):
        try:
            return int(text, 10)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{key} must be a whole number, got {value!r}") from None
        if not math.isfinite(number) or number != int(number):
            raise ValueError(f"{key} must be a whole number, got {value!r}")
        return int(number)
    if isinstance(default, float):
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        return number
    return value if isinstance(value, str) else text


def recipe_settings(name: str) -> dict[str, Any]:
    """The flat settings of recipe ``name`` (a copy of ``RECIPES[name]``); ValueError listing the recipes."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return dict(RECIPES[name])


def flatten_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """A flat or grouped mapping (config file, ``config.json``) as ``{flat key: value}``.

    Accepts ``{"epochs": 3}``, ``{"trainer": {"epochs": 3}}``, ``{"augment": {"zoom": 0.1}}``,
    ``{"augment.zoom": 0.1}`` and ``{"trainer.epochs": 3}``. Unknown keys are errors.
    """
    flat: dict[str, Any] = {}
    for key, value in values.items():
        key = str(key)
        group, dot, inner = key.partition(".")
        if key in GROUPS:
            if not isinstance(value, Mapping):
                raise ValueError(f"{key} must be a mapping of settings (like {key}: {{...}}), got {value!r}")
            for inner_key, inner_value in value.items():
                flat[_flat_name(key, str(inner_key))] = inner_value
        elif dot and group in GROUPS:
            flat[_flat_name(group, inner)] = value
        else:
            flat[key] = value
    unknown = sorted(key for key in flat if key not in FLAT_KEYS)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known keys: {', '.join(sorted(FLAT_KEYS))}")
    return flat


def _flat_name(group: str, field: str) -> str:
    key = f"augment.{field}" if group == "augment" else field
    if key not in FLAT_KEYS or FLAT_KEYS[key][0] != group:
        known = [name for name, (owner, _, _) in FLAT_KEYS.items() if owner == group]
        raise ValueError(f"unknown {group} key {field!r}; known keys: {', '.join(known)}")
    return key


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Built once by the CLI, validated, saved and logged."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    trainer: TrainerConfig = TrainerConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    tracking: TrackingConfig = TrackingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    augment: AugmentConfig = AugmentConfig()
    seed: int = 0
    recipe: str = DEFAULT_RECIPE

    # ---- building ---------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """From a flat or grouped mapping on top of the recipe it names (key ``recipe``, default ``seed``).

        Precedence: defaults < the recipe's values (:data:`RECIPES`) < ``values``. Every value is parsed by
        its setting's type; an unknown recipe is a ValueError listing the recipes. Unvalidated.
        """
        flat = flatten_settings(values)
        recipe = parse_setting("recipe", flat.get("recipe", DEFAULT_RECIPE))
        groups: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
        top: dict[str, Any] = {"recipe": recipe}
        for key, value in {**recipe_settings(recipe), **flat}.items():
            parsed = parse_setting(key, value)
            group, field, _ = FLAT_KEYS[key]
            if group:
                groups[group][field] = parsed
            else:
                top[field] = parsed
        return cls(**{group: GROUPS[group](**fields) for group, fields in groups.items()}, **top)

    def replace(self, **settings: Any) -> "TrainConfig":
        """A copy with some flat settings changed (``replace(epochs=3, output="x")``).

        Every other setting keeps its value: ``replace(recipe=...)`` changes the name only, not the values.
        """
        return TrainConfig.from_settings({**self.flat(), **settings})

    # ---- views ------------------------------------------------------------------------------

    def flat(self) -> dict[str, Any]:
        """``{flat key: value}`` of every setting."""
        out: dict[str, Any] = {}
        for key, (group, field, _) in FLAT_KEYS.items():
            out[key] = getattr(getattr(self, group), field) if group else getattr(self, field)
        return out

    def flat_params(self) -> dict[str, str]:
        """The config as MLflow params: flat keys, lists joined by commas."""
        return {key: ",".join(value) if isinstance(value, tuple) else str(value) for key, value in self.flat().items()}

    def to_dict(self) -> dict[str, Any]:
        """Grouped, JSON-ready (what ``config.json`` holds)."""
        return {**{group: dataclasses.asdict(getattr(self, group)) for group in GROUPS}, "seed": self.seed,
                "recipe": self.recipe}

    def sites(self) -> list[tuple[str, str, str]]:
        """``[(role, name, path), ...]`` for train, val and each test site."""
        specs = [("train", self.data.train_site), ("val", self.data.val_site)]
        specs += [("test", spec) for spec in self.data.test_sites]
        out = []
        for role, spec in specs:
            name, _, path = spec.partition("=")
            out.append((role, name, path))
        return out

    def reference_site_names(self) -> list[str]:
        """Sites whose images feed the histogram-matching pool: train and val unless named."""
        if self.data.reference_sites:
            return list(self.data.reference_sites)
        return [name for role, name, _ in self.sites() if role in ("train", "val")]

    def defining_settings(self) -> dict[str, str]:
        """The settings that define the run (everything that can change a number), as text."""
        params = self.flat_params()
        for role, name, path in self.sites():
            key = "train_site" if role == "train" else "val_site" if role == "val" else None
            if key:
                params[key] = f"{name}={os.path.abspath(path)}"
        params["test_sites"] = ",".join(f"{name}={os.path.abspath(path)}"
                                        for role, name, path in self.sites() if role == "test")
        return {key: value for key, value in params.items() if key not in NOT_DEFINING}

    def default_output(self) -> str:
        """``runs/<train site>-seed<seed>-<8 hex digits of the defining settings>``: one folder per run."""
        text = json.dumps(self.defining_settings(), sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        train_name = self.sites()[0][1] or "run"
        return str(Path("runs") / f"{train_name}-seed{self.seed}-{digest}")

    # ---- checking ---------------------------------------------------------------------------

    def validate(self, *, check_folders: bool = True) -> "TrainConfig":
        """Raise ValueError naming the first bad setting; return self."""
        from datasets.sites import parse_site_spec

        data, model, trainer, runtime = self.data, self.model, self.trainer, self.runtime
        if not data.train_site or not data.val_site:
            raise ValueError("a training site and a validation site are required "
                             "(--train-site NAME=PATH --val-site NAME=PATH, or --demo)")
        parsed = [parse_site_spec(spec) for spec in (data.train_site, data.val_site, *data.test_sites)]
        names = [name for name, _ in parsed]
        check_unique_site_names(list(zip(["--train-site", "--val-site", *["--test-site"] * len(data.test_sites)],
                                         (data.train_site, data.val_site, *data.test_sites))))
        if check_folders:
            for name, path in parsed:
                if name != "synthetic" and not Path(path).is_dir():
                    if Path(path).exists():
                        raise ValueError(f"site {name!r}: {path!r} is a file, not a folder")
                    raise ValueError(f"site {name!r}: folder {path!r} does not exist")
        at_least_one = {"epochs": trainer.epochs, "batch_size": trainer.batch_size,
                        "dense_units": model.dense_units, "steps_per_execution": runtime.steps_per_execution,
                        "bootstrap_resamples": self.evaluation.bootstrap_resamples,
                        "max_pixels": data.max_pixels, "cpu_replicas": runtime.cpu_replicas,
                        "early_stopping_patience": trainer.early_stopping_patience,
                        "reduce_lr_patience": trainer.reduce_lr_patience}
        for key, value in at_least_one.items():
            if value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}")
        if data.min_class_images < 0:
            raise ValueError(f"min_class_images must be at least 0, got {data.min_class_images}")
        if self.evaluation.gradcam_examples < 0:
            raise ValueError(f"gradcam_examples must be at least 0, got {self.evaluation.gradcam_examples}")
        if not 32 <= data.image_size <= 1024:
            raise ValueError(f"image_size must be between 32 and 1024, got {data.image_size}")
        if model.weights not in ("imagenet", "none"):
            if not Path(model.weights).exists():
                raise ValueError(f"weights must be 'imagenet', 'none' or an existing file, got {model.weights!r}")
            check_keras_file(model.weights, "weights", "model.weights.h5")
        if model.backbone == "resnet50" and model.freeze_until and model.freeze_until not in RESNET50_LAYERS:
            raise ValueError(f"freeze_until {model.freeze_until!r} is not a layer of ResNet50 (e.g. "
                             f"{RESNET50_FREEZE_UNTIL}, conv2_block3_out, conv4_block6_out; '' freezes nothing)")
        if runtime.gpus < -1:
            raise ValueError(f"gpus must be -1 (all visible) or a number of GPUs >= 0, got {runtime.gpus}")
        if not -1 <= data.audit_threshold_bits <= 128:
            raise ValueError(f"audit_threshold_bits must be -1 (built-in, {DEFAULT_THRESHOLD_BITS}) or in "
                             f"[0, 128], got {data.audit_threshold_bits}")
        if not self.tracking.experiment.strip():
            raise ValueError("experiment must be a non-empty MLflow experiment name")
        check_tracking_uri(self.tracking.tracking_uri)
        for key, folder in (("output", runtime.output), ("cache_dir", data.cache_dir)):
            if folder and Path(folder).exists() and not Path(folder).is_dir():
                raise ValueError(f"{key} {folder!r} is a file, not a folder")
        choices = {"leakage": (data.leakage, LEAKAGE_POLICIES),
                   "threshold_method": (self.evaluation.threshold_method, THRESHOLD_METHODS),
                   "input_normalization": (model.input_normalization, INPUT_NORMALIZATIONS),
                   "backbone": (model.backbone, BACKBONES),
                   "class_weighting": (trainer.class_weighting, CLASS_WEIGHTINGS),
                   "test_time_augmentation": (self.evaluation.test_time_augmentation, TEST_TIME_AUGMENTATIONS),
                   "mixed_precision": (runtime.mixed_precision, SWITCHES),
                   "jit_compile": (runtime.jit_compile, SWITCHES)}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
        for key in ("learning_rate", "min_learning_rate"):
            if not getattr(trainer, key) > 0:
                raise ValueError(f"{key} must be positive, got {getattr(trainer, key)}")
        fractions = {"label_smoothing": trainer.label_smoothing, "dropout": model.dropout,
                     "reduce_lr_factor": trainer.reduce_lr_factor, "crop_margin": data.crop_margin}
        for key, value in fractions.items():
            if not 0 <= value < 1:
                raise ValueError(f"{key} must be in [0, 1), got {value}")
        if not 0 <= self.evaluation.target_sensitivity <= 1:
            raise ValueError(f"target_sensitivity must be in [0, 1], got {self.evaluation.target_sensitivity}")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}; got {self.recipe!r}")
        if RECIPES[self.recipe].get("weights") == "none" and model.weights != "none":
            raise ValueError(f"recipe {self.recipe} trains from scratch (weights none), got weights "
                             f"{model.weights!r}: leave --weights out, or use --recipe {DEFAULT_RECIPE} "
                             "(the default) with pretrained weights")
        if model.input_normalization == "per_image" and model.weights != "none":
            raise ValueError("input_normalization per_image is for --weights none: ImageNet weights "
                             "expect the imagenet centring")
        if model.backbone != "resnet50" and model.weights != "none":
            raise ValueError(f"backbone {model.backbone} has no pretrained weights: use --weights none")
        if runtime.cpu_replicas > 1 and runtime.gpus > 0:
            raise ValueError("cpu_replicas is for machines without GPUs; do not combine it with --gpus")
        unknown = [name for name in data.reference_sites if name not in names]
        if unknown:
            raise ValueError(f"reference_sites {unknown} are not sites of this run {names}")
        register = self.tracking.register_model
        if register and (register != register.strip() or any(c in register for c in "/:'\"")):
            raise ValueError(f"register_model {register!r}: a registered model name has no '/', ':', quotes "
                             "or surrounding spaces")
        if register and not self.tracking.log_model:
            raise ValueError("register_model needs log_model=true (the logged model is what is registered)")
        self.tracking.new_run_tags()
        self.augment.validate()
        return self


def from_scratch_note(config: TrainConfig) -> str:
    """The console note for a ResNet50 trained from scratch under the seed recipe; '' for any other run."""
    if config.recipe != DEFAULT_RECIPE or config.model.weights != "none" or config.model.backbone != "resnet50":
        return ""
    return ("note: the seed recipe barely learns from scratch (--weights none) on a few hundred images; "
            "--recipe from-scratch (ResNet50) or --recipe small-cnn applies the settings measured to work "
            "(README, Training)")


def check_unique_site_names(options: Sequence[tuple[str, str]]) -> None:
    """``[(option, "NAME=PATH"), ...]`` of every site option of one command together.

    Raises ValueError naming each site name given more than once and the options that gave it.
    """
    given: dict[str, list[str]] = {}
    for option, spec in options:
        given.setdefault(spec.partition("=")[0], []).append(f"{option} {spec}")
    repeated = {name: where for name, where in given.items() if len(where) > 1}
    if repeated:
        details = "; ".join(f"{name} ({', '.join(where)})" for name, where in sorted(repeated.items()))
        raise ValueError(f"site names must be unique; given more than once: {details}")


def uri_scheme(uri: str) -> str:
    """The store type of an MLflow URI: ``''`` for a plain path, ``postgresql`` for ``postgresql+psycopg2://``."""
    if uri in ("databricks", "databricks-uc", "uc"):
        return uri
    scheme = urlparse(uri).scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter: a path
        return ""
    return scheme.partition("+")[0] if scheme.startswith(("postgresql", "mysql", "mssql", "sqlite")) else scheme


def _plugin_schemes(group: str = "mlflow.tracking_store") -> tuple[str, ...]:
    """Schemes that installed MLflow plugins register (entry points; nothing is imported)."""
    from importlib.metadata import entry_points

    return tuple(entry.name for entry in entry_points(group=group))


def check_tracking_uri(uri: str, what: str = "tracking_uri", schemes: Sequence[str] = TRACKING_URI_SCHEMES) -> str:
    """Raise ValueError unless ``uri`` is an MLflow store URI of one of ``schemes``; returns ``uri``.

    Accepted: '' (the default store), a folder path or ``file:`` URI (an MLflow file store; not a
    file), ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (not a folder), ``postgresql``,
    ``mysql``, ``mssql`` (``+driver`` allowed), ``http(s)://HOST[:PORT]``, ``databricks[://PROFILE]``,
    and the schemes of installed MLflow plugins. Checked from the text and the local file system only:
    no connection is made and nothing is created.
    """
    if not uri:
        return uri
    scheme = uri_scheme(uri)
    allowed = tuple(schemes)
    if scheme not in allowed and scheme not in _plugin_schemes():
        shown = ", ".join(f"{name}:" if name else "a folder path" for name in allowed)
        raise ValueError(f"{what} {uri!r}: unknown scheme {scheme!r}; MLflow stores are {shown} "
                         "(e.g. sqlite:///mlflow.db, http://127.0.0.1:5000, ./mlruns)")
    parsed = urlparse(uri)
    if scheme in ("", "file"):
        folder = Path(parsed.path if scheme == "file" else uri).expanduser()
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{what} {uri!r}: {str(folder)!r} is a file, not a folder (an MLflow file store is "
                             "a folder; a SQLite store is given as sqlite:///FILE.db)")
        if file_store_refused():
            raise ValueError(f"{what} {uri!r} is a folder (file) store, which this MLflow refuses unless "
                             "MLFLOW_ALLOW_FILE_STORE=true is set: use a database such as sqlite:///mlflow.db "
                             "(`mlflow migrate-filestore` copies an existing folder store into one), or set "
                             "MLFLOW_ALLOW_FILE_STORE=true")
    elif scheme == "sqlite":
        _, separator, rest = uri.partition(":///")
        database = rest.partition("?")[0]
        if parsed.netloc or not separator or database in ("", ":memory:"):
            raise ValueError(f"{what} {uri!r} is not a SQLite store URI: expected sqlite:///relative/path.db "
                             "or sqlite:////absolute/path.db")
        database_path = Path(database)
        if database_path.is_dir():
            raise ValueError(f"{what} {uri!r}: {database!r} is a folder, not a database file")
        blocking = next((folder for folder in database_path.parents if folder.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise ValueError(f"{what} {uri!r}: {str(blocking)!r} is a file, not a folder")
    elif scheme in ("http", "https"):
        try:
            port_ok = parsed.port is None or parsed.port > 0
        except ValueError:
            port_ok = False
        if not parsed.hostname or not port_ok:
            raise ValueError(f"{what} {uri!r} needs a host and an optional port, e.g. http://127.0.0.1:5000")
    elif scheme in ("postgresql", "mysql", "mssql") and not parsed.netloc:
        raise ValueError(f"{what} {uri!r} needs a server, e.g. {scheme}://USER@HOST/DATABASE")
    return uri


def file_store_refused(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the installed MLflow refuses folder (file) stores: MLflow releases that define
    ``MLFLOW_ALLOW_FILE_STORE`` raise when one is opened, unless that variable is true."""
    from mlflow import environment_variables

    if not hasattr(environment_variables, "MLFLOW_ALLOW_FILE_STORE"):
        return False
    return environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() not in ("true", "1")


def check_keras_file(path: str, what: str, member: str) -> None:
    """Raise ValueError unless ``path`` is a readable file Keras loads: HDF5 (``.h5``, ``.hdf5``,
    ``.weights.h5``; checked by its signature) or a ``.keras`` zip archive holding ``member``
    (``model.weights.h5`` for weights, ``config.json`` for a model).

    Reads the file's header (and a zip's directory) only: nothing is decoded or built.
    """
    import zipfile

    file = Path(path)
    if file.is_dir():
        raise ValueError(f"{what} {path!r} is a folder, not a file")
    suffix = file.suffix.lower()
    if suffix not in (".h5", ".hdf5", ".keras"):
        raise ValueError(f"{what} {path!r}: unsupported file type {suffix or '(none)'!r}; Keras loads "
                         ".keras archives and HDF5 files (.h5, .hdf5, .weights.h5)")
    try:
        with open(file, "rb") as handle:
            if suffix == ".keras":
                if not zipfile.is_zipfile(handle):
                    raise ValueError(f"{what} {path!r} is not a .keras file (not a zip archive)")
                with zipfile.ZipFile(handle) as archive:
                    if member not in archive.namelist():
                        raise ValueError(f"{what} {path!r} is a zip archive without {member}: not a .keras file")
                return
            size = file.stat().st_size
            offsets = [0] + [512 * 2 ** power for power in range(12) if 512 * 2 ** power + 8 <= size]
            for offset in offsets:  # the HDF5 superblock may follow a user block of 512 * 2**k bytes
                handle.seek(offset)
                if handle.read(8) == HDF5_SIGNATURE:
                    return
    except zipfile.BadZipFile as error:
        raise ValueError(f"{what} {path!r} is a damaged zip archive: {error}") from None
    except OSError as error:
        raise ValueError(f"{what} {path!r} cannot be read: {error.strerror or error}") from None
    raise ValueError(f"{what} {path!r} is not an HDF5 file (no HDF5 signature); expected Keras weights "
                     "saved as .h5 / .weights.h5, or a .keras archive")


def read_config_file(path: str) -> dict[str, Any]:
    """A YAML or JSON config file as a mapping; ValueError naming the file and the problem.

    YAML scalars are read as text (``yaml.BaseLoader``) and parsed by each setting's type.
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"config file {path!r} cannot be read: {error}") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"config file {path!r} is not valid JSON: {error}") from None
    else:
        import yaml

        try:
            data = yaml.load(text, Loader=yaml.BaseLoader) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"config file {path!r} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of settings, got {type(data).__name__}")
    return data


def check_tracking_environment(uri: str) -> None:
    """With no ``--tracking-uri``, ``$MLFLOW_TRACKING_URI`` (the store used then) must be an MLflow store URI."""
    if not uri and os.environ.get("MLFLOW_TRACKING_URI"):
        check_tracking_uri(os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI")


def demo_settings(folder: Path) -> dict[str, Any]:
    """Settings of ``train --demo``: three synthetic sites (written into ``folder``), small and fast."""
    return {
        "train_site": f"synth_a={folder / 'synth_a'}", "val_site": f"synth_b={folder / 'synth_b'}",
        "test_sites": [f"synth_c={folder / 'synth_c'}"],
        "image_size": 48, "epochs": 15, "batch_size": 32, "weights": "none", "learning_rate": 1e-3,
        "bootstrap_resamples": 500, "experiment": "brainmri-demo",
    }


def parse_override(text: str) -> tuple[str, str]:
    """``--set KEY=VALUE`` -> ``(key, value text)``; the value is parsed later by the setting's type.

    Raises ValueError when there is no ``=`` or no key.
    """
    key, separator, raw = text.partition("=")
    if not separator or not key.strip():
        raise ValueError(f"--set {text!r} must be KEY=VALUE")
    return key.strip(), raw.strip()


def layered_config(config_file: str | None, flags: Mapping[str, Any], overrides: Sequence[str], *,
                   demo_folder: Path | None = None, write_demo: bool = True) -> TrainConfig:
    """Defaults < recipe < config file < demo settings < ``flags`` < ``overrides``; all checked before any work.

    ``flags``: settings given on the command line, by flat key; ``overrides``: ``KEY=VALUE`` texts (``--set``).
    ``demo_folder``: where the demo's sites go (:func:`demo_settings`), None without ``--demo``. The recipe
    is the one named by the highest of these layers that names one; its values sit just above the defaults.

    Checked first: every setting, the site folders (their class folders listed, no image read; the
    demo's own sites excepted), the tracking URI or ``$MLFLOW_TRACKING_URI`` and a weights file's
    header. Only then are the demo's sites written (unless ``write_demo`` is False). Raises ValueError
    (or TypeError for a setting of the wrong type).
    """
    from datasets.sites import check_site_folder

    demo = demo_folder is not None
    values: dict[str, Any] = flatten_settings(read_config_file(config_file)) if config_file else {}
    if demo:
        values.update(demo_settings(demo_folder))
    values.update(flags)
    values.update(flatten_settings(dict(parse_override(text) for text in overrides)))
    config = TrainConfig.from_settings(values).validate(check_folders=not demo)
    demo_paths = {str(demo_folder / name) for name in ("synth_a", "synth_b", "synth_c")} if demo else set()
    for _, name, path in config.sites():
        if path not in demo_paths:
            check_site_folder(name, path)
    check_tracking_environment(config.tracking.tracking_uri)
    if demo and write_demo:
        from datasets.synthetic import write_demo_sites

        write_demo_sites(demo_folder, images_per_class=150, size=96)
        config.validate()
    if not config.runtime.output:
        config = config.replace(output=config.default_output())
    return config
