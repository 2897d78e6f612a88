"""The one configuration of a training run: grouped frozen dataclasses.

``TrainConfig`` holds the groups ``data``, ``model``, ``trainer``,
``runtime``, ``tracking``, ``evaluation`` and ``augment`` plus the run's
``seed``. Every setting has one flat name that is unique across groups
(``learning_rate``, ``image_size``, ``augment.zoom``): the name used by
``--set KEY=VALUE``, config files and MLflow params. A config file may also
be grouped (``trainer: {epochs: 3}``), as ``config.json`` is written.

Values are parsed by the type of the setting, never guessed: ``run_name=no``
stays the string ``"no"``, ``seed=010`` is 10, ``epochs=2.5`` is an error.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from augment.config import AugmentConfig
from datasets.audit import LEAKAGE_POLICIES
from datasets.cache import DEFAULT_MAX_PIXELS
from datasets.phash import DEFAULT_THRESHOLD_BITS

THRESHOLD_METHODS = ("youden", "sensitivity")
INPUT_NORMALIZATIONS = ("imagenet", "per_image")
CLASS_WEIGHTINGS = ("none", "balanced")
#: Test-time augmentation: the image axes of (B, S, S, 1) batches each view flips; () is the image itself.
TEST_TIME_FLIPS: dict[str, list[tuple[int, ...]]] = {"none": [()], "flips": [(), (2,), (1,), (1, 2)]}
TEST_TIME_AUGMENTATIONS = tuple(TEST_TIME_FLIPS)
RESNET50_FREEZE_UNTIL = "conv3_block4_out"
SWITCHES = ("auto", "on", "off")


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
    leakage: str = "purge-train"
    audit_threshold_bits: int = -1  # -1: datasets.phash.DEFAULT_THRESHOLD_BITS
    reference_sites: tuple[str, ...] = ()

    @property
    def threshold_bits(self) -> int:
        """The near-duplicate Hamming threshold actually used."""
        return DEFAULT_THRESHOLD_BITS if self.audit_threshold_bits < 0 else self.audit_threshold_bits


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """ResNet50 backbone and the seed recipe's head."""

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
    """MLflow: store, experiment, run name, whether the model is logged."""

    tracking_uri: str = ""
    experiment: str = "brainmri"
    run_name: str = ""
    log_model: bool = True


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
NOT_DEFINING = frozenset({"output", "cache_dir", "run_name", "log_model", "gpus", "tracking_uri"})


def _flat_index() -> dict[str, tuple[str, str, Any]]:
    """``{flat key: (group, field, default)}``; ``augment`` fields are ``augment.<field>``."""
    index: dict[str, tuple[str, str, Any]] = {"seed": ("", "seed", 0)}
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

    # ---- building ---------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """From a flat or grouped mapping; every value parsed by its setting's type. Unvalidated."""
        groups: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
        seed = 0
        for key, value in flatten_settings(values).items():
            parsed = parse_setting(key, value)
            group, field, _ = FLAT_KEYS[key]
            if group:
                groups[group][field] = parsed
            else:
                seed = parsed
        return cls(**{group: GROUPS[group](**fields) for group, fields in groups.items()}, seed=seed)

    def replace(self, **settings: Any) -> "TrainConfig":
        """A copy with some flat settings changed (``replace(epochs=3, output="x")``)."""
        return TrainConfig.from_settings({**self.flat(), **settings})

    # ---- views ------------------------------------------------------------------------------

    def flat(self) -> dict[str, Any]:
        """``{flat key: value}`` of every setting."""
        out: dict[str, Any] = {}
        for key, (group, field, _) in FLAT_KEYS.items():
            out[key] = getattr(getattr(self, group), field) if group else self.seed
        return out

    def flat_params(self) -> dict[str, str]:
        """The config as MLflow params: flat keys, lists joined by commas."""
        return {key: ",".join(value) if isinstance(value, tuple) else str(value) for key, value in self.flat().items()}

    def to_dict(self) -> dict[str, Any]:
        """Grouped, JSON-ready (what ``config.json`` holds)."""
        return {**{group: dataclasses.asdict(getattr(self, group)) for group in GROUPS}, "seed": self.seed}

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
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique, got {names}")
        if check_folders:
            for name, path in parsed:
                if name != "synthetic" and not Path(path).is_dir():
                    what = "is a file, not a folder" if Path(path).exists() else "does not exist"
                    raise ValueError(f"site {name!r}: {path!r} {what}")
        at_least_one = {"epochs": trainer.epochs, "batch_size": trainer.batch_size,
                        "dense_units": model.dense_units, "steps_per_execution": runtime.steps_per_execution,
                        "bootstrap_resamples": self.evaluation.bootstrap_resamples,
                        "max_pixels": data.max_pixels, "cpu_replicas": runtime.cpu_replicas,
                        "early_stopping_patience": trainer.early_stopping_patience,
                        "reduce_lr_patience": trainer.reduce_lr_patience}
        for key, value in at_least_one.items():
            if value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}")
        if self.evaluation.gradcam_examples < 0:
            raise ValueError(f"gradcam_examples must be at least 0, got {self.evaluation.gradcam_examples}")
        if not 32 <= data.image_size <= 1024:
            raise ValueError(f"image_size must be between 32 and 1024, got {data.image_size}")
        if model.weights not in ("imagenet", "none") and not Path(model.weights).is_file():
            raise ValueError(f"weights must be 'imagenet', 'none' or an existing file, got {model.weights!r}")
        choices = {"leakage": (data.leakage, LEAKAGE_POLICIES),
                   "threshold_method": (self.evaluation.threshold_method, THRESHOLD_METHODS),
                   "input_normalization": (model.input_normalization, INPUT_NORMALIZATIONS),
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
        if model.input_normalization == "per_image" and model.weights != "none":
            raise ValueError("input_normalization per_image is for --weights none: ImageNet weights "
                             "expect the imagenet centring")
        if runtime.cpu_replicas > 1 and runtime.gpus > 0:
            raise ValueError("cpu_replicas is for machines without GPUs; do not combine it with --gpus")
        unknown = [name for name in data.reference_sites if name not in names]
        if unknown:
            raise ValueError(f"reference_sites {unknown} are not sites of this run {names}")
        self.augment.validate()
        return self


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
