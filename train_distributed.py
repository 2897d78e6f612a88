"""Train a brain-MRI tumour classifier on one site, select on another, test on the rest.

    python train_distributed.py train --demo
    python train_distributed.py train --train-site br35h=data/br35h --val-site nav=data/nav \\
        --test-site mos=data/mos --weights none --image-size 128 --epochs 12
    python train_distributed.py audit --site br35h=... --site nav=... --site mos=... --output audit/
    python train_distributed.py evaluate --model runs/x/model.keras --site mos=... --output eval/

This file wires the packages together: the click CLI, the one frozen config,
the distribution strategy, the ResNet50 model, the training loop with exact
validation AUC, fault handling and MLflow tracking. Pixels come from
``datasets`` (crop cache, audit), ``augment`` (tf.data + in-graph
augmentation) and numbers from ``eval``.

The loop is a custom ``strategy.run`` step on a Keras 3 model: one code path
for the default strategy (CPU), MirroredStrategy (GPUs of one node) and
MultiWorkerMirroredStrategy (SLURM nodes), since Keras 3 ``model.fit`` fails
under MultiWorkerMirroredStrategy.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click
import numpy as np

import datasets as _datasets_package

if not getattr(_datasets_package, "BRAINMRI_DATASETS", False):
    raise ImportError(
        f"'import datasets' found {getattr(_datasets_package, '__file__', '?')}, not this project's package "
        "(the Hugging Face 'datasets' package shadows it). Install this project in its own virtualenv; "
        "see README, 'A note on the name datasets'.")

from augment.config import AugmentConfig
from datasets.audit import LEAKAGE_POLICIES
from datasets.records import check_site_name

#: Exit status after SIGTERM/SIGUSR1: state was saved, the job should be requeued.
EXIT_REQUEUE = 3
#: Exit status when the loss became NaN.
EXIT_NAN = 4
THRESHOLD_METHODS = ("youden", "sensitivity")
RESNET50_FREEZE_UNTIL = "conv3_block4_out"
INPUT_NORMALIZATIONS = ("imagenet", "per_image")
# Test-time augmentation: the image axes of (B, S, S, 1) batches each view flips; () is the image itself.
TEST_TIME_FLIPS = {"none": [()], "flips": [(), (2,), (1,), (1, 2)]}
TEST_TIME_AUGMENTATIONS = tuple(TEST_TIME_FLIPS)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Built once by the CLI, validated, saved and logged."""

    train_site: str = ""
    val_site: str = ""
    test_sites: tuple[str, ...] = ()
    output: str = "runs/latest"
    epochs: int = 15
    batch_size: int = 100
    image_size: int = 224
    weights: str = "imagenet"
    leakage: str = "purge-train"
    seed: int = 0
    tracking_uri: str = ""
    experiment: str = "brainmri"
    run_name: str = ""
    learning_rate: float = 2e-4
    label_smoothing: float = 0.01
    dense_units: int = 512
    dropout: float = 0.5
    freeze_until: str = RESNET50_FREEZE_UNTIL
    early_stopping_patience: int = 5
    reduce_lr_factor: float = 0.2
    reduce_lr_patience: int = 2
    min_learning_rate: float = 1e-7
    crop: bool = True
    crop_margin: float = 0.0
    cache_dir: str = ""
    max_pixels: int = 50_000_000
    audit_threshold_bits: int = -1
    reference_sites: tuple[str, ...] = ()
    threshold_method: str = "youden"
    target_sensitivity: float = 0.9
    bootstrap_resamples: int = 1000
    gpus: int = -1
    mixed_precision: str = "auto"
    jit_compile: str = "auto"
    steps_per_execution: int = 1
    log_model: bool = True
    input_normalization: str = "imagenet"
    class_weighting: str = "none"
    gradcam_examples: int = 2
    test_time_augmentation: str = "none"
    augment: AugmentConfig = AugmentConfig()

    def sites(self) -> list[tuple[str, str, str]]:
        """``[(role, name, path), ...]`` for train, val and each test site."""
        out = []
        for role, spec in [("train", self.train_site), ("val", self.val_site)] + [("test", t) for t in self.test_sites]:
            name, _, path = spec.partition("=")
            out.append((role, name, path))
        return out

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first bad setting; return self."""
        from datasets.sites import parse_site_spec

        if not self.train_site or not self.val_site:
            raise ValueError("a training site and a validation site are required "
                             "(--train-site NAME=PATH --val-site NAME=PATH, or --demo)")
        parsed = [parse_site_spec(spec) for spec in (self.train_site, self.val_site, *self.test_sites)]
        names = [name for name, _ in parsed]
        for name, path in parsed:
            if name != "synthetic" and not Path(path).is_dir():
                raise ValueError(f"site {name!r}: folder {path!r} does not exist")
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique, got {names}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "dense_units": self.dense_units,
                    "steps_per_execution": self.steps_per_execution,
                    "bootstrap_resamples": self.bootstrap_resamples, "max_pixels": self.max_pixels}
        for key, value in positive.items():
            if value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}")
        if not 32 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be between 32 and 1024, got {self.image_size}")
        if self.weights not in ("imagenet", "none") and not Path(self.weights).is_file():
            raise ValueError(f"weights must be 'imagenet', 'none' or an existing file, got {self.weights!r}")
        if self.leakage not in LEAKAGE_POLICIES:
            raise ValueError(f"leakage must be one of {LEAKAGE_POLICIES}, got {self.leakage!r}")
        if self.threshold_method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold_method must be one of {THRESHOLD_METHODS}, got {self.threshold_method!r}")
        for key in ("learning_rate", "min_learning_rate"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        for key in ("label_smoothing", "dropout", "target_sensitivity", "reduce_lr_factor", "crop_margin"):
            if not 0 <= getattr(self, key) < 1 and not (key == "target_sensitivity" and getattr(self, key) == 1):
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if self.early_stopping_patience < 1 or self.reduce_lr_patience < 1:
            raise ValueError("patience values must be at least 1")
        if self.input_normalization not in INPUT_NORMALIZATIONS:
            raise ValueError(f"input_normalization must be one of {INPUT_NORMALIZATIONS}, "
                             f"got {self.input_normalization!r}")
        if self.class_weighting not in ("none", "balanced"):
            raise ValueError(f"class_weighting must be none or balanced, got {self.class_weighting!r}")
        if self.input_normalization == "per_image" and self.weights != "none":
            raise ValueError("input_normalization per_image is for --weights none: ImageNet weights "
                             "expect the imagenet centring")
        if self.test_time_augmentation not in TEST_TIME_AUGMENTATIONS:
            raise ValueError(f"test_time_augmentation must be one of {TEST_TIME_AUGMENTATIONS}, "
                             f"got {self.test_time_augmentation!r}")
        for key in ("mixed_precision", "jit_compile"):
            if getattr(self, key) not in ("auto", "on", "off"):
                raise ValueError(f"{key} must be auto, on or off, got {getattr(self, key)!r}")
        unknown = [name for name in self.reference_sites if name not in names]
        if unknown:
            raise ValueError(f"reference_sites {unknown} are not sites of this run {names}")
        self.augment.validate()
        return self

    def reference_site_names(self) -> list[str]:
        """Sites whose images feed the histogram-matching pool: train and val unless named."""
        if self.reference_sites:
            return list(self.reference_sites)
        return [name for role, name, _ in self.sites() if role in ("train", "val")]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat_params(self) -> dict[str, str]:
        """The config as flat MLflow params (``augment.rotation_degrees`` style keys)."""
        flat: dict[str, str] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                for inner, inner_value in value.items():
                    flat[f"{key}.{inner}"] = str(inner_value)
            else:
                flat[key] = ",".join(value) if isinstance(value, (list, tuple)) else str(value)
        return flat

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a (possibly partial) dict, e.g. a config file. Unknown keys are errors."""
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(fields)}")
        values = dict(values)
        if isinstance(values.get("augment"), dict):
            augment_fields = {field.name for field in dataclasses.fields(AugmentConfig)}
            bad = sorted(set(values["augment"]) - augment_fields)
            if bad:
                raise ValueError(f"unknown augment keys {bad}; known keys: {sorted(augment_fields)}")
            defaults = AugmentConfig()
            values["augment"] = AugmentConfig(**{key: coerce(f"augment.{key}", value, getattr(defaults, key))
                                                 for key, value in values["augment"].items()})
        for key in ("test_sites", "reference_sites"):
            if key in values:
                values[key] = tuple([values[key]] if isinstance(values[key], str) else values[key])
        values = {key: coerce(key, value, getattr(cls, key)) for key, value in values.items()}
        return cls(**values)


def coerce(key: str, value: Any, default: Any) -> Any:
    """``value`` converted to the type of the setting's default; ValueError naming the key."""
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, (bool, int)) and not isinstance(value, float):
            return bool(value)
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if isinstance(default, (int, float, str)) and not isinstance(value, (dict, list, tuple)):
        try:
            converted = type(default)(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a {type(default).__name__}, got {value!r}") from None
        if isinstance(default, int) and isinstance(value, float) and converted != value:
            raise ValueError(f"{key} must be a whole number, got {value!r}")
        return converted
    return value


def read_config_file(path: str) -> dict[str, Any]:
    """A YAML or JSON config file as a dict."""
    text = Path(path).read_text()
    if path.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of settings")
    return data


# --------------------------------------------------------------------------------------------
# Console output
# --------------------------------------------------------------------------------------------

def say(message: str, *, chief: bool = True) -> None:
    """Print a progress line (only on the chief worker)."""
    if chief:
        click.echo(message, err=True)


def progress_printer(label: str, chief: bool = True):
    """A ``progress(done, total)`` callback printing about ten lines per task."""
    state = {"last": -1, "start": time.time()}

    def progress(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if chief and (tenth != state["last"] or done == total) and total:
            state["last"] = tenth
            elapsed = time.time() - state["start"]
            click.echo(f"  {label}: {done}/{total} images ({elapsed:.1f} s)", err=True)

    return progress


def load_sites(specs: Sequence[tuple[str, str]], config_like: Any, *, chief: bool = True) -> dict:
    """Load (validate, crop, cache) each ``(name, path)`` site; print bad-file summaries."""
    from datasets.cache import CropParams, load_site
    from datasets.validation import format_bad_file_summary

    params = CropParams(image_size=config_like.image_size, margin=config_like.crop_margin,
                        crop=config_like.crop, max_pixels=config_like.max_pixels)
    sites = {}
    for name, path in specs:
        start = time.time()
        site = load_site(name, path, params, cache_dir=config_like.cache_dir or None,
                         progress=progress_printer(f"cropping {name}", chief))
        source = "cache" if site.cache_hit else "decoded"
        say(f"site {name}: {len(site.samples)} images ({int(site.labels.sum())} tumour), "
            f"{len(site.bad_files)} skipped, {source} in {time.time() - start:.1f} s", chief=chief)
        for bad in site.bad_files:
            say(f"  {bad.message()}", chief=chief and len(site.bad_files) <= 20)
        for line in format_bad_file_summary(name, site.bad_files):
            say(line, chief=chief)
        sites[name] = site
    return sites


def run_audit_on(sites: dict, threshold_bits: int):
    from datasets.audit import AuditSite, run_audit
    from datasets.phash import DEFAULT_THRESHOLD_BITS

    threshold = DEFAULT_THRESHOLD_BITS if threshold_bits < 0 else threshold_bits
    return run_audit([AuditSite(name, site.samples, site.hashes, len(site.bad_files))
                      for name, site in sites.items()], threshold_bits=threshold)


def write_audit_outputs(result, sites: dict, output: Path) -> list[Path]:
    """``audit.json``, ``audit_pairs.png`` and ``bad_files.json`` into ``output``."""
    import cv2

    from datasets.audit import audit_pairs_montage

    output.mkdir(parents=True, exist_ok=True)
    paths = [output / "audit.json", output / "audit_pairs.png", output / "bad_files.json"]
    paths[0].write_text(json.dumps(result.to_json(), indent=1))
    index = {sample.key: (site, row) for site in sites.values() for row, sample in enumerate(site.samples)}

    def load(key: str) -> np.ndarray:
        site, row = index[key]
        return site.images[row]

    montage = audit_pairs_montage(result, load)
    cv2.imwrite(str(paths[1]), cv2.cvtColor(montage, cv2.COLOR_RGB2BGR))
    bad = {name: [dataclasses.asdict(b) for b in site.bad_files] for name, site in sites.items()}
    paths[2].write_text(json.dumps(bad, indent=1))
    return paths


# --------------------------------------------------------------------------------------------
# Distribution, model, tracking
# --------------------------------------------------------------------------------------------

def resolve_tracking_uri(uri: str = "") -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working folder."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


@dataclasses.dataclass
class Cluster:
    """Where this process stands in the job."""

    strategy: Any
    name: str
    replicas: int
    workers: int
    worker_index: int
    is_chief: bool
    devices: list[str]


def visible_gpu_count() -> int:
    """GPUs this process may use, counted without starting CUDA.

    ``CUDA_VISIBLE_DEVICES`` when set (its entries that are indices or GPU/MIG
    UUIDs), else the ``GPU`` lines of ``nvidia-smi --list-gpus``, else 0 (no
    driver: a CPU node).
    """
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [entry.strip() for entry in visible.split(",")]
        return sum(entry.isdigit() or entry.startswith(("GPU-", "MIG-")) for entry in entries)
    try:
        listing = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def slurm_cluster_resolver(port_base: int):
    """The workers of this ``srun`` step: one per task, on port ``port_base`` + its index on its node.

    Each worker uses the GPUs visible to it (``CUDA_VISIBLE_DEVICES`` as SLURM
    set it; none on a CPU node), so tasks sharing a node need their own GPUs
    (``--gpus-per-task``). TensorFlow's SlurmClusterResolver only supplies the
    addresses: its GPU handling calls nvidia-smi (absent on CPU nodes) and
    cannot give a task zero GPUs.
    """
    import tensorflow as tf

    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))
    addresses = tf.distribute.cluster_resolver.SlurmClusterResolver(
        port_base=port_base, gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False)
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        addresses.cluster_spec(), task_type=addresses.task_type, task_id=addresses.task_id,
        num_accelerators={"GPU": visible_gpu_count()}, rpc_layer="grpc")


def choose_strategy(gpus: int = -1) -> Cluster:
    """MultiWorkerMirrored with TF_CONFIG or several SLURM tasks, Mirrored on GPUs, default on CPU."""
    import tensorflow as tf

    slurm_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))
    in_slurm_step = "SLURM_STEP_ID" in os.environ and "SLURM_PROCID" in os.environ
    if "TF_CONFIG" in os.environ or (in_slurm_step and slurm_tasks > 1):
        resolver = None
        if "TF_CONFIG" not in os.environ:
            resolver = slurm_cluster_resolver(int(os.environ.get("BRAINMRI_PORT_BASE", "8888")))
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                             communication_options=options)
        resolver = strategy.cluster_resolver
        spec = resolver.cluster_spec().as_dict()
        task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
        is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in spec)
        workers = sum(len(v) for k, v in spec.items() if k in ("chief", "worker"))
        return Cluster(strategy, "MultiWorkerMirroredStrategy", strategy.num_replicas_in_sync, workers,
                       task_id + (1 if task_type == "worker" and "chief" in spec else 0), is_chief,
                       [d.name for d in tf.config.list_logical_devices()])
    physical = tf.config.list_physical_devices("GPU")
    count = len(physical) if gpus < 0 else min(gpus, len(physical))
    if count >= 1:
        strategy = tf.distribute.MirroredStrategy(devices=[f"/gpu:{i}" for i in range(count)])
        name = "MirroredStrategy"
    else:
        strategy = tf.distribute.get_strategy()
        name = "default"
    return Cluster(strategy, name, strategy.num_replicas_in_sync, 1, 0, True,
                   [d.name for d in tf.config.list_logical_devices()])


_CUSTOM_OBJECTS: dict = {}


def custom_objects() -> dict:
    """The project's Keras layers (defined on first use, so importing this file needs no Keras)."""
    if not _CUSTOM_OBJECTS:
        import keras

        @keras.saving.register_keras_serializable(package="brainmri")
        class PerImageStandardization(keras.layers.Layer):
            """(B, H, W, C) -> the same, each image to zero mean and unit standard deviation (float32)."""

            def __init__(self, **kwargs):
                kwargs.setdefault("dtype", "float32")
                super().__init__(**kwargs)

            def call(self, images):
                images = keras.ops.cast(images, "float32")
                mean = keras.ops.mean(images, axis=(1, 2, 3), keepdims=True)
                deviation = keras.ops.std(images, axis=(1, 2, 3), keepdims=True)
                return (images - mean) / (deviation + 1e-3)

        _CUSTOM_OBJECTS["PerImageStandardization"] = PerImageStandardization
    return _CUSTOM_OBJECTS


def build_model(config: TrainConfig):
    """ResNet50 (no top) + GlobalMaxPooling -> Dense relu -> BatchNorm -> Dropout -> Dense sigmoid.

    Input: (S, S, 1) float32 grey levels in [0, 255]; repeated to RGB and centred
    as ResNet50's ImageNet weights expect. Output: (1,) float32 tumour probability.
    """
    import keras

    weights = config.weights
    backbone_weights = "imagenet" if weights == "imagenet" else None
    inputs = keras.Input((config.image_size, config.image_size, 1), name="image")
    x = keras.layers.Concatenate(name="grey_to_rgb")([inputs, inputs, inputs])
    if config.input_normalization == "per_image":
        x = custom_objects()["PerImageStandardization"](name="per_image_standardization")(x)
    else:
        x = keras.layers.Normalization(mean=[103.939, 116.779, 123.68], variance=[1.0, 1.0, 1.0],
                                       name="imagenet_centre")(x)
    try:
        backbone = keras.applications.ResNet50(include_top=False, weights=backbone_weights,
                                               input_shape=(config.image_size, config.image_size, 3))
    except Exception as error:  # offline node without the Keras cache
        raise RuntimeError(
            "could not load ImageNet weights for ResNet50 (offline node?). Stage them in the Keras cache "
            "(~/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5) or pass "
            f"--weights PATH; cause: {error}") from error
    if weights not in ("imagenet", "none"):
        backbone.load_weights(weights)
    if weights != "none" and config.freeze_until:
        names = [layer.name for layer in backbone.layers]
        if config.freeze_until not in names:
            raise ValueError(f"freeze_until layer {config.freeze_until!r} is not in ResNet50")
        for layer in backbone.layers[: names.index(config.freeze_until) + 1]:
            layer.trainable = False
    x = backbone(x)
    x = keras.layers.GlobalMaxPooling2D(name="global_max_pool")(x)
    x = keras.layers.Dense(config.dense_units, activation="relu", name="dense")(x)
    x = keras.layers.BatchNormalization(name="dense_bn")(x)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="tumour_probability")(x)
    return keras.Model(inputs, outputs, name="brainmri_resnet50")


def system_facts(cluster: Cluster) -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "strategy": cluster.name, "replicas": str(cluster.replicas),
            "workers": str(cluster.workers), "devices": ",".join(cluster.devices),
            "gpus": str(len(tf.config.list_physical_devices("GPU")))}


class StopRequested:
    """Set by SIGTERM/SIGUSR1 (SLURM's warning before the time limit or preemption)."""

    def __init__(self) -> None:
        self.signal_name = ""

    def __call__(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self)


def write_json_atomic(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=1, default=str))
    os.replace(temporary, path)


class Tracker:
    """MLflow logging on the chief only; every call is a no-op elsewhere."""

    def __init__(self, enabled: bool, tracking_uri: str, experiment: str):
        self.enabled = enabled
        self.run_id = ""
        if enabled:
            import warnings

            import mlflow

            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
            warnings.filterwarnings("ignore", message=".*Integer columns in Python cannot represent missing.*")

            self.mlflow = mlflow
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_experiment(experiment)

    def start(self, run_id: str, run_name: str) -> str:
        if self.enabled:
            run = self.mlflow.start_run(run_id=run_id or None, run_name=None if run_id else (run_name or None))
            self.run_id = run.info.run_id
        return self.run_id

    def logged_steps(self, key: str) -> set[int]:
        if not self.enabled:
            return set()
        client = self.mlflow.tracking.MlflowClient()
        return {m.step for m in client.get_metric_history(self.run_id, key)}

    def __getattr__(self, name: str):
        if name.startswith("log_") or name in ("set_tag", "set_tags", "end_run"):
            if not self.__dict__.get("enabled"):
                return lambda *args, **kwargs: None
            return getattr(self.__dict__["mlflow"], name)
        raise AttributeError(name)


def log_dataset_inputs(tracker: Tracker, sites: dict, roles: dict[str, str]) -> None:
    """Each site as an MLflow dataset input (name, path, image count, digest)."""
    if not tracker.enabled:
        return
    import pandas as pd

    for name, site in sites.items():
        frame = pd.DataFrame({"relative_path": [s.relative_path for s in site.samples],
                              "label": [s.label for s in site.samples],
                              "subclass": [s.subclass for s in site.samples],
                              "sha256": [s.sha256 for s in site.samples]})
        dataset = tracker.mlflow.data.from_pandas(frame, source=site.root, name=name, targets="label",
                                                  digest=site.digest())
        for attempt in range(5):
            try:
                tracker.log_input(dataset, context=roles[name])
                break
            except tracker.mlflow.exceptions.MlflowException as error:
                # Two runs registering the same dataset at once: the loser's insert violates the
                # unique (experiment, name, digest) key; once the winner's row exists, logging works.
                if "UNIQUE constraint" not in str(error) or attempt == 4:
                    raise
                time.sleep(0.5 + attempt)


def leaked_flags(eval_site, train_hashes: np.ndarray, threshold_bits: int) -> np.ndarray:
    """(N,) bool: which images of ``eval_site`` have a near-duplicate among ``train_hashes``."""
    from datasets.phash import near_duplicate_pairs

    flags = np.zeros(len(eval_site.samples), bool)
    if len(train_hashes) and len(eval_site.samples):
        rows, _, _ = near_duplicate_pairs(eval_site.hashes, train_hashes, threshold=threshold_bits)
        flags[rows] = True
    return flags


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

class NanLossError(RuntimeError):
    pass


def make_step_functions(config: TrainConfig, cluster: Cluster, model, optimizer, use_xla: bool,
                        class_weights: Sequence[float] = (1.0, 1.0)):
    """Distributed train and predict functions over iterators of per-replica batches.

    ``class_weights`` multiplies the loss of no-tumour (index 0) and tumour (1) images.
    """
    import keras
    import tensorflow as tf

    class_weights = tf.constant(class_weights, tf.float32)

    strategy = cluster.strategy
    global_batch = config.batch_size

    def replica_train_step(images, labels):
        with tf.GradientTape() as tape:
            probabilities = tf.cast(model(images, training=True), tf.float32)
            per_example = keras.losses.binary_crossentropy(labels[:, None], probabilities,
                                                           label_smoothing=config.label_smoothing)
            per_example *= tf.gather(class_weights, tf.cast(labels, tf.int32))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss, probabilities[:, 0], labels

    replica_train_step = tf.function(replica_train_step, jit_compile=use_xla)

    @tf.function
    def train_chunk(iterator, steps):
        losses = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
        probabilities = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
        labels = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
        for index in tf.range(steps):
            loss, probs, batch_labels = strategy.run(replica_train_step, args=next(iterator))
            losses = losses.write(index, strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None))
            probabilities = probabilities.write(index, strategy.gather(probs, axis=0))
            labels = labels.write(index, strategy.gather(batch_labels, axis=0))
        return losses.stack(), probabilities.concat(), labels.concat()

    @tf.function
    def agree(flag):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(flag)), axis=None)

    return train_chunk, make_predict_step(cluster, model, config.test_time_augmentation), agree


def predict_site(cluster: Cluster, predict_step, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities (N,) float32 for every image, gathered from every replica in input order."""
    from augment.pipeline import eval_dataset

    per_replica = batch_size // cluster.replicas
    steps_holder = {}

    def dataset_fn(context):
        dataset, steps = eval_dataset(images, np.zeros(len(images)), per_replica_batch=per_replica,
                                      global_batch=batch_size, pipeline_id=context.input_pipeline_id,
                                      num_pipelines=context.num_input_pipelines)
        steps_holder["steps"] = steps
        return dataset

    distributed = cluster.strategy.distribute_datasets_from_function(dataset_fn)
    iterator = iter(distributed)
    scores = np.zeros(len(images), np.float32)
    for _ in range(steps_holder["steps"]):
        probs, _, indices = predict_step(iterator)
        indices = indices.numpy()
        keep = indices >= 0
        scores[indices[keep]] = probs.numpy()[keep]
    return scores


def run_training(config: TrainConfig) -> int:
    """The whole job; returns the process exit status."""
    import tensorflow as tf

    cluster = choose_strategy(config.gpus)
    chief = cluster.is_chief
    output = Path(config.output)
    backup = output / "backup"
    stop = StopRequested()
    stop.install()
    import keras

    keras.utils.set_random_seed(config.seed)
    if chief:
        backup.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output / "config.json", config.to_dict())
    state_path = backup / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    tracker = Tracker(chief, resolve_tracking_uri(config.tracking_uri), config.experiment)
    run_file = backup / "run.json"
    run_id = json.loads(run_file.read_text())["run_id"] if run_file.exists() else ""
    tracker.start(run_id, config.run_name)
    if chief and not run_id:
        write_json_atomic(run_file, {"run_id": tracker.run_id})
    try:
        return _train(config, cluster, tracker, state, stop, output, backup)
    except NanLossError as error:
        tracker.set_tag("failure_reason", str(error))
        tracker.end_run(status="FAILED")
        say(f"error: {error}", chief=chief)
        return EXIT_NAN
    except BaseException as error:
        if isinstance(error, SystemExit) and error.code in (0, EXIT_REQUEUE):
            raise
        tracker.set_tag("failure_reason", f"{type(error).__name__}: {error}"[:5000])
        tracker.end_run(status="FAILED")
        raise


def _train(config: TrainConfig, cluster: Cluster, tracker: Tracker, state: dict, stop: StopRequested,
           output: Path, backup: Path) -> int:
    import keras
    import tensorflow as tf

    from augment.pipeline import train_dataset
    from augment.preview import augment_preview_montage
    from datasets.audit import apply_leakage_policy
    from datasets.phash import DEFAULT_THRESHOLD_BITS
    from eval.metrics import roc_auc

    chief = cluster.is_chief
    strategy = cluster.strategy
    resumed = bool(state)
    if config.batch_size % cluster.replicas:
        raise ValueError(f"batch size {config.batch_size} is not divisible by the {cluster.replicas} replicas")
    say(f"strategy {cluster.name}: {cluster.replicas} replica(s) on {cluster.workers} worker(s); "
        f"global batch {config.batch_size}", chief=chief)
    if resumed:
        say(f"resuming run {tracker.run_id or state.get('run_id')} at epoch {state['epoch'] + 1}, "
            f"step {state['step']}", chief=chief)
    else:
        tracker.log_params(config.flat_params())
        tracker.set_tags({f"system.{k}": v for k, v in system_facts(cluster).items()})

    # Data: validate, crop, cache; audit; leakage policy.
    roles = {name: role for role, name, _ in config.sites()}
    try:
        sites = load_sites([(name, path) for _, name, path in config.sites()], config, chief=chief)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    threshold_bits = DEFAULT_THRESHOLD_BITS if config.audit_threshold_bits < 0 else config.audit_threshold_bits
    audit_result = run_audit_on(sites, threshold_bits)
    train_name = next(name for name, role in roles.items() if role == "train")
    eval_names = [name for name, role in roles.items() if role != "train"]
    kept, removed = apply_leakage_policy(audit_result, {n: s.samples for n, s in sites.items()},
                                         policy=config.leakage, train_site=train_name, eval_sites=eval_names)
    if chief:
        audit_paths = write_audit_outputs(audit_result, sites, output)
    for name, site in list(sites.items()):
        keep_keys = {sample.key for sample in kept[name]}
        sites[name] = site.subset([i for i, s in enumerate(site.samples) if s.key in keep_keys])
    say(f"leakage policy {config.leakage}: removed " +
        ", ".join(f"{name} {count}" for name, count in removed.items()), chief=chief)
    train_site = sites[train_name]
    if chief:
        np.savez(output / "train_hashes.npz", keys=np.array([s.key for s in train_site.samples]),
                 hashes=train_site.hashes, threshold_bits=threshold_bits)
        if not resumed:
            for path in audit_paths:
                tracker.log_artifact(str(path), artifact_path="audit")
            tracker.log_metrics({f"leakage_removed_{name}": count for name, count in removed.items()})
            tracker.log_metrics({f"images_{name}": len(site.samples) for name, site in sites.items()})
            log_dataset_inputs(tracker, sites, roles)

    reference_names = [name for name in config.reference_site_names() if name != train_name] or \
        config.reference_site_names()
    pool = np.concatenate([sites[name].images for name in reference_names]) if reference_names else None
    say(f"histogram-matching pool: {', '.join(reference_names)} ({0 if pool is None else len(pool)} images)",
        chief=chief)
    if chief and not resumed:
        tracker.log_params({"reference_pool_sites": ",".join(reference_names),
                            "reference_pool_images": 0 if pool is None else len(pool)})
        rng = np.random.default_rng(config.seed)
        preview = augment_preview_montage(train_site.images[rng.choice(len(train_site.images), 4, replace=False)],
                                          pool if pool is not None else train_site.images, config.augment,
                                          seed=config.seed)
        import cv2

        cv2.imwrite(str(output / "augment_preview.png"), cv2.cvtColor(preview, cv2.COLOR_RGB2BGR))
        tracker.log_artifact(str(output / "augment_preview.png"))

    # Model, optimizer, checkpoint.
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    mixed = config.mixed_precision == "on" or (config.mixed_precision == "auto" and on_gpu)
    use_xla = config.jit_compile == "on" or (config.jit_compile == "auto" and on_gpu)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    with strategy.scope():
        model = build_model(config)
        optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
        if mixed:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    best_checkpoint = tf.train.Checkpoint(model=model)
    write_root = backup if chief else backup / f"worker-{cluster.worker_index}"
    if resumed:
        checkpoint.read(str(backup / state["checkpoint"])).expect_partial()
    else:
        state = {"run_id": tracker.run_id, "epoch": 0, "step": 0, "best_auc": -1.0, "best_epoch": 0,
                 "wait": 0, "lr_wait": 0, "learning_rate": config.learning_rate, "history": [],
                 "loss_sum": 0.0, "loss_steps": 0, "checkpoint": ""}
    optimizer.learning_rate.assign(state["learning_rate"])
    class_weights = (1.0, 1.0)
    if config.class_weighting == "balanced":
        counts = np.bincount(train_site.labels, minlength=2).astype(float)
        class_weights = tuple(float(v) for v in counts.sum() / (2 * np.maximum(counts, 1)))
        say(f"class weights (no tumour, tumour): {class_weights[0]:.3f}, {class_weights[1]:.3f}", chief=chief)
    train_chunk, predict_step, agree = make_step_functions(config, cluster, model, optimizer, use_xla,
                                                           class_weights)
    say(f"model {model.name}: {model.count_params():,} parameters, mixed precision {'on' if mixed else 'off'}, "
        f"XLA {'on' if use_xla else 'off'}", chief=chief)

    def save_state(step: int, name: str) -> None:
        write_root.mkdir(parents=True, exist_ok=True)
        checkpoint.write(str(write_root / name))
        state["step"] = step
        state["checkpoint"] = name
        if chief:
            write_json_atomic(backup / "state.json", state)
            # state.json now names the new checkpoint: older ones are dead weight (hundreds of MB each).
            for path in backup.glob("ckpt-*"):
                if not path.name.startswith(f"{name}."):
                    path.unlink(missing_ok=True)
        else:
            import shutil

            shutil.rmtree(write_root, ignore_errors=True)

    # Metrics already in MLflow (a run killed between logging and saving) are not logged twice.
    logged = tracker.logged_steps("val_auc")
    for record in state["history"]:
        if record["epoch"] not in logged:
            tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])

    images, labels = train_site.images, train_site.labels
    per_replica = config.batch_size // cluster.replicas
    steps_per_epoch = len(images) // config.batch_size
    if steps_per_epoch < 1:
        raise click.UsageError(f"training site has {len(images)} images, fewer than one batch of {config.batch_size}")
    val_name = next(name for name, role in roles.items() if role == "val")
    val_site = sites[val_name]
    multi_worker = cluster.workers > 1
    step_options = dict(per_replica_batch=per_replica, seed=config.seed, augment=config.augment,
                        reference_pool=pool)
    local_replicas = cluster.replicas // cluster.workers

    while state["epoch"] < config.epochs and state["wait"] < config.early_stopping_patience:
        epoch, start_step = state["epoch"], state["step"]

        def dataset_fn(context):
            dataset = train_dataset(images, labels, epoch=epoch, pipeline_id=context.input_pipeline_id,
                                    num_pipelines=context.num_input_pipelines, **step_options)
            return dataset.skip(start_step * local_replicas)

        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
        epoch_start = time.time()
        step, seen = start_step, 0
        probabilities, truths = [], []
        while step < steps_per_epoch:
            chunk = min(config.steps_per_execution, steps_per_epoch - step)
            losses, probs, batch_labels = train_chunk(iterator, tf.constant(chunk))
            losses = losses.numpy()
            if not np.all(np.isfinite(losses)):
                raise NanLossError(f"loss became NaN at epoch {epoch + 1}, step {step + 1}")
            state["loss_sum"] += float(losses.sum())
            state["loss_steps"] += len(losses)
            probabilities.append(probs.numpy())
            truths.append(batch_labels.numpy())
            step += chunk
            seen += chunk * config.batch_size
            requested = bool(stop.signal_name)
            if multi_worker:
                requested = int(agree(tf.constant(int(requested))).numpy()) > 0
            if requested:
                save_state(step, f"ckpt-e{epoch}-s{step}")
                say(f"{stop.signal_name or 'stop'} received: state saved at epoch {epoch + 1}, step {step}; "
                    f"exiting with status {EXIT_REQUEUE} for requeue", chief=chief)
                tracker.set_tag("requeued", "true")
                tracker.end_run(status="KILLED")
                return EXIT_REQUEUE
        train_seconds = time.time() - epoch_start
        val_scores = predict_site(cluster, predict_step, val_site.images, config.batch_size)
        val_auc = roc_auc(val_site.labels, val_scores)
        epoch_seconds = time.time() - epoch_start
        train_probs, train_truth = np.concatenate(probabilities), np.concatenate(truths)
        record = {"epoch": epoch + 1, "train_loss": state["loss_sum"] / max(state["loss_steps"], 1),
                  "train_auc": roc_auc(train_truth.astype(int), train_probs), "val_auc": val_auc,
                  "learning_rate": float(state["learning_rate"]),
                  "epoch_seconds": epoch_seconds,
                  "images_per_second": seen / max(train_seconds, 1e-9)}
        state["history"].append(record)
        improved = val_auc > state["best_auc"] + 1e-6
        if improved:
            state.update(best_auc=val_auc, best_epoch=epoch + 1, wait=0, lr_wait=0)
            best_root = write_root / "best"
            best_checkpoint.write(str(best_root / "weights"))
        else:
            state["wait"] += 1
            state["lr_wait"] += 1
            if state["lr_wait"] >= config.reduce_lr_patience:
                state["learning_rate"] = max(state["learning_rate"] * config.reduce_lr_factor,
                                             config.min_learning_rate)
                optimizer.learning_rate.assign(state["learning_rate"])
                state["lr_wait"] = 0
        state.update(epoch=epoch + 1, loss_sum=0.0, loss_steps=0)
        save_state(0, f"ckpt-e{epoch + 1}")
        tracker.log_metrics({k: v for k, v in record.items() if k != "epoch" and np.isfinite(v)}, step=epoch + 1)
        say(f"epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.4f} train AUC "
            f"{record['train_auc']:.3f} val {val_name} AUC {val_auc:.4f}{' *' if improved else ''} "
            f"lr {record['learning_rate']:.2g} {epoch_seconds:.0f} s "
            f"({record['images_per_second']:.0f} img/s)", chief=chief)
    if state["wait"] >= config.early_stopping_patience:
        say(f"early stop: no validation AUC gain for {config.early_stopping_patience} epochs", chief=chief)

    best_checkpoint.read(str(backup / "best" / "weights")).expect_partial()
    say(f"restored best weights of epoch {state['best_epoch']} (val AUC {state['best_auc']:.4f})", chief=chief)
    summary = evaluate_and_report(config, cluster, tracker, model, predict_step, sites, roles, output,
                                  train_site.hashes, threshold_bits)
    summary.update(epochs_run=state["epoch"], best_epoch=state["best_epoch"], mlflow_run_id=tracker.run_id,
                   model_path=str(output / "model.keras"), removed=removed)
    summary["sites"][train_name] = {"role": "train", "images": len(train_site.samples),
                                    "removed_by_leakage_policy": removed.get(train_name, 0),
                                    "bad_files": len(train_site.bad_files)}
    if chief:
        model.save(output / "model.keras")
        write_json_atomic(output / "summary.json", summary)
        tracker.log_artifact(str(output / "summary.json"))
        tracker.log_artifact(str(output / "config.json"))
        tracker.log_metrics({"epochs_run": state["epoch"], "best_epoch": state["best_epoch"]})
        if config.log_model:
            log_model(tracker, model, val_site.images[:2])
        tracker.end_run(status="FINISHED")
        say(f"done: {output / 'summary.json'}  (MLflow run {tracker.run_id})")
    return 0


def log_model(tracker: Tracker, model, example_images: np.ndarray) -> None:
    """The final model (MLflow Keras flavour) with its signature and an input example."""
    if not tracker.enabled:
        return
    import tempfile

    from mlflow.models import infer_signature

    example = example_images[..., None].astype(np.float32)
    signature = infer_signature(example, np.asarray(model(example, training=False)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model"
        path.mkdir()  # mlflow.keras writes the input example before it creates the folder
        tracker.mlflow.keras.save_model(model, str(path), signature=signature, input_example=example)
        tracker.log_artifacts(str(path), artifact_path="model")


def evaluate_and_report(config: TrainConfig, cluster: Cluster, tracker: Tracker, model, predict_step,
                        sites: dict, roles: dict[str, str], output: Path, train_hashes: np.ndarray,
                        threshold_bits: int, threshold: float | None = None) -> dict:
    """Predict every val/test site, choose the threshold on val, write the report, log it."""
    from eval.gradcam import grad_cam, gradcam_montage, select_gradcam_examples
    from eval.report import (PredictionRow, evaluate_sites, mlflow_metric_names, threshold_from_validation,
                             write_report)

    rows = []
    scores_by_site = {}
    for name, role in roles.items():
        if role == "train":
            continue
        site = sites[name]
        scores = predict_site(cluster, predict_step, site.images, config.batch_size)
        scores_by_site[name] = scores
        leaked = leaked_flags(site, train_hashes, threshold_bits)
        rows += [PredictionRow(site=name, role=role, relative_path=s.relative_path, label=s.label,
                               subclass=s.subclass, score=float(score), leaked=bool(flag))
                 for s, score, flag in zip(site.samples, scores, leaked)]
    if threshold is None:
        threshold = threshold_from_validation(rows, method=config.threshold_method,
                                              target_sensitivity=config.target_sensitivity)
    results = evaluate_sites(rows, threshold, n_resamples=config.bootstrap_resamples, seed=config.seed)
    summary = {"threshold": threshold, "threshold_method": config.threshold_method, "sites": {}}
    for name, values in results.items():
        summary["sites"][name] = {**values, "role": roles[name]}
    if not cluster.is_chief:
        return summary
    gradcam = {}
    for name, scores in scores_by_site.items():
        site = sites[name]
        picks = select_gradcam_examples(site.labels, scores, threshold, per_kind=config.gradcam_examples,
                                        seed=config.seed)
        order = [i for kind in ("tp", "fp", "tn", "fn") for i in picks.get(kind, [])]
        if not order:
            continue
        titles = [f"{kind} {scores[i]:.2f}" for kind in ("tp", "fp", "tn", "fn") for i in picks.get(kind, [])]
        heatmaps = grad_cam(model, site.images[order][..., None].astype(np.float32))
        gradcam[name] = gradcam_montage(site.images[order], heatmaps, titles)
    run_info = {"mlflow_run_id": tracker.run_id, "train_site": config.train_site, "weights": config.weights,
                "image_size": config.image_size, "leakage": config.leakage}
    paths = write_report(output, rows, results, threshold=threshold,
                         title="Cross-site evaluation", run_info=run_info, gradcam=gradcam)
    for path in paths:
        tracker.log_artifact(str(path), artifact_path="report")
    tracker.log_metrics(mlflow_metric_names(results))
    tracker.log_metric("threshold", threshold)
    return summary


def evaluate_saved_model(model_path: str, specs: Sequence[tuple[str, str]], *, val_name: str,
                         threshold: float | None, train_hashes: str | None, output: Path, tracking_uri: str,
                         experiment: str, cache_dir: str, seed: int,
                         test_time_augmentation: str | None = None) -> dict:
    """``evaluate``: any saved model on any sites, with the same report."""
    import keras

    model = keras.models.load_model(model_path, custom_objects=custom_objects())
    model_dir = Path(model_path).parent
    image_size = int(model.inputs[0].shape[1])
    saved_config = {}
    if (model_dir / "config.json").exists():
        saved_config = json.loads((model_dir / "config.json").read_text())
    if threshold is None and not val_name:
        if not (model_dir / "summary.json").exists():
            raise ValueError("no --threshold, no --val-site and no summary.json next to the model")
        threshold = json.loads((model_dir / "summary.json").read_text())["threshold"]
    if test_time_augmentation is None:
        test_time_augmentation = saved_config.get("test_time_augmentation", "none")
    config = TrainConfig(image_size=image_size, cache_dir=cache_dir, seed=seed,
                         test_time_augmentation=test_time_augmentation,
                         crop=saved_config.get("crop", True), crop_margin=saved_config.get("crop_margin", 0.0),
                         batch_size=32, output=str(output))
    sites = load_sites(specs, config)
    hashes_file = Path(train_hashes) if train_hashes else model_dir / "train_hashes.npz"
    train_hashes, bits = np.zeros((0, 1), np.uint64), 0
    if hashes_file.exists():
        stored = np.load(hashes_file)
        train_hashes, bits = stored["hashes"], int(stored["threshold_bits"])
    cluster = choose_strategy()
    roles = {name: ("val" if name == val_name else "test") for name, _ in specs}
    tracker = Tracker(bool(experiment), resolve_tracking_uri(tracking_uri), experiment or "brainmri")
    tracker.start("", f"evaluate-{Path(model_path).parent.name}"
                      + ("" if test_time_augmentation == "none" else f"-tta-{test_time_augmentation}"))
    tracker.log_params({"model_path": model_path, "test_time_augmentation": test_time_augmentation})
    predict_step = make_predict_step(cluster, model, test_time_augmentation)
    output.mkdir(parents=True, exist_ok=True)
    summary = evaluate_and_report(config, cluster, tracker, model, predict_step, sites, roles, output,
                                  train_hashes, bits, threshold)
    summary.update(model_path=model_path, mlflow_run_id=tracker.run_id,
                   test_time_augmentation=test_time_augmentation)
    write_json_atomic(output / "summary.json", summary)
    tracker.log_artifact(str(output / "summary.json"))
    tracker.end_run(status="FINISHED")
    return summary


def make_predict_step(cluster: Cluster, model, test_time_augmentation: str = "none"):
    """A tf.function: next batch of an eval iterator -> gathered (probabilities, labels, indices).

    ``test_time_augmentation="flips"`` averages the probabilities of the image and its
    left-right, up-down and both-ways flips (the training augmentation flips both ways).
    """
    import tensorflow as tf

    strategy = cluster.strategy
    flip_axes = TEST_TIME_FLIPS[test_time_augmentation]

    def replica_predict(images, labels, indices):
        views = [tf.reverse(images, axis=list(axes)) if axes else images for axes in flip_axes]
        probabilities = [tf.cast(model(view, training=False), tf.float32)[:, 0] for view in views]
        return tf.add_n(probabilities) / len(probabilities), labels, indices

    @tf.function
    def predict_step(iterator):
        probs, labels, indices = strategy.run(replica_predict, args=next(iterator))
        return (strategy.gather(probs, axis=0), strategy.gather(labels, axis=0),
                strategy.gather(indices, axis=0))

    return predict_step


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def _site_option_values(values: Sequence[str]) -> list[tuple[str, str]]:
    from datasets.sites import parse_site_spec

    try:
        return [parse_site_spec(value) for value in values]
    except ValueError as error:
        raise click.UsageError(str(error)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Train a brain-MRI tumour classifier on one site and measure how it carries to others."""


@cli.command()
@click.option("--site", "site_specs", multiple=True, required=True, metavar="NAME=PATH",
              help="A site folder; repeat for each site.")
@click.option("--output", type=click.Path(file_okay=False), default="audit", show_default=True)
@click.option("--image-size", type=click.IntRange(32, 1024), default=224, show_default=True,
              help="Crop size of the cache the hashes are computed on.")
@click.option("--threshold-bits", type=int, default=-1, help="Hamming distance threshold (default: built-in).")
@click.option("--cache-dir", default="", help="Crop cache folder (default $BRAINMRI_CACHE or ~/.cache/brainmri).")
@click.option("--no-crop", is_flag=True, help="Hash whole images instead of brain crops.")
def audit(site_specs, output, image_size, threshold_bits, cache_dir, no_crop) -> None:
    """Find near-duplicate images within and across sites (leakage audit)."""
    from datasets.audit import format_audit_table

    specs = _site_option_values(site_specs)
    settings = TrainConfig(image_size=image_size, cache_dir=cache_dir, crop=not no_crop)
    try:
        sites = load_sites(specs, settings)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    result = run_audit_on(sites, threshold_bits)
    paths = write_audit_outputs(result, sites, Path(output))
    click.echo(format_audit_table(result))
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


@cli.command("preview-crop")
@click.option("--site", "site_spec", required=True, metavar="NAME=PATH")
@click.option("--output", type=click.Path(dir_okay=False), default="crop_preview.png", show_default=True)
@click.option("--count", type=click.IntRange(1, 200), default=24, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def preview_crop(site_spec, output, count, seed) -> None:
    """Write a PNG montage of originals with their brain crop boxes."""
    import cv2

    from brain_crop import crop_preview_montage, find_brain_box
    from datasets.sites import open_site
    from datasets.validation import ImageRejected, read_image_file

    (name, path), = _site_option_values([site_spec])
    try:
        candidates, _ = open_site(name, path).list_files()
    except ValueError as error:
        raise click.UsageError(str(error)) from None
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
    montage = crop_preview_montage(images, boxes, titles)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(output, cv2.cvtColor(montage, cv2.COLOR_RGB2BGR))
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
@click.option("--cache-dir", default="")
def preview_augment(site_spec, reference_specs, output, image_size, count, seed, config_file, cache_dir) -> None:
    """Write a PNG of originals, augmented variants and histogram-matched examples."""
    import cv2

    from augment.preview import augment_preview_montage

    specs = _site_option_values([site_spec, *reference_specs])
    try:
        augment_config = AugmentConfig(**(read_config_file(config_file).get("augment", {}) if config_file else {}))
        augment_config.validate()
        settings = TrainConfig(image_size=image_size, cache_dir=cache_dir)
        sites = load_sites(specs, settings)
    except (ValueError, TypeError) as error:
        raise click.UsageError(str(error)) from None
    images = list(sites.values())[0].images
    rng = np.random.default_rng(seed)
    chosen = images[np.sort(rng.choice(len(images), min(count, len(images)), replace=False))]
    pool = np.concatenate([site.images for site in list(sites.values())[1:]]) if reference_specs else None
    montage = augment_preview_montage(chosen, pool, augment_config, seed=seed)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(output, cv2.cvtColor(montage, cv2.COLOR_RGB2BGR))
    click.echo(f"wrote {output}")


TRAIN_OPTION_KEYS = {
    "epochs": "epochs", "batch_size": "batch_size", "image_size": "image_size", "weights": "weights",
    "leakage": "leakage", "seed": "seed", "tracking_uri": "tracking_uri", "experiment": "experiment",
    "output": "output", "gpus": "gpus", "run_name": "run_name", "cache_dir": "cache_dir",
}


@cli.command()
@click.option("--train-site", metavar="NAME=PATH", help="Training site.")
@click.option("--val-site", metavar="NAME=PATH", help="Validation site (model and threshold selection).")
@click.option("--test-site", "test_sites", multiple=True, metavar="NAME=PATH", help="Test site; repeatable.")
@click.option("--output", type=click.Path(file_okay=False), default="runs/latest", show_default=True)
@click.option("--epochs", type=click.IntRange(1, 10_000), default=15, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=100, show_default=True, help="Global batch.")
@click.option("--image-size", type=click.IntRange(32, 1024), default=224, show_default=True)
@click.option("--weights", default="imagenet", show_default=True, help="imagenet, none, or a weights file.")
@click.option("--leakage", type=click.Choice(LEAKAGE_POLICIES), default="purge-train", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tracking-uri", default="", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, "
                                                 "else sqlite:///mlflow.db in the working folder).")
@click.option("--experiment", default="brainmri", show_default=True)
@click.option("--run-name", default="", help="MLflow run name (default: generated).")
@click.option("--gpus", type=int, default=-1, help="GPUs to use on this node (-1: all visible).")
@click.option("--cache-dir", default="", help="Crop cache folder (default $BRAINMRI_CACHE or ~/.cache/brainmri).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML or JSON file of settings; flags given on the command line override it.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set augment.histogram_match_probability=0 (repeatable).")
@click.option("--demo", is_flag=True, help="Train on three built-in synthetic sites (no download, a few minutes).")
@click.pass_context
def train(ctx: click.Context, config_file, overrides, demo, test_sites, train_site, val_site, **flags) -> None:
    """Train on one site, select on another, evaluate on the test sites; track in MLflow."""
    config = build_train_config(ctx, config_file, overrides, demo, train_site, val_site, test_sites, flags)
    sys.exit(run_training(config))


def _parse_override(text: str) -> tuple[str, Any]:
    key, separator, raw = text.partition("=")
    if not separator:
        raise click.UsageError(f"--set {text!r} must be KEY=VALUE")
    import yaml

    return key.strip(), yaml.safe_load(raw)


def build_train_config(ctx: click.Context, config_file, overrides, demo, train_site, val_site, test_sites,
                       flags: dict) -> TrainConfig:
    """Config file < demo defaults < command-line flags < --set; validated once."""
    values: dict[str, Any] = {}
    try:
        if config_file:
            values.update(read_config_file(config_file))
        if demo:
            values.update(demo_settings(values.get("output") or flags["output"]))
        for key, field in TRAIN_OPTION_KEYS.items():
            if ctx.get_parameter_source(key) != click.core.ParameterSource.DEFAULT or field not in values:
                values[field] = flags[key]
        if train_site:
            values["train_site"] = train_site
        if val_site:
            values["val_site"] = val_site
        if test_sites:
            values["test_sites"] = list(test_sites)
        augment_values = dict(values.pop("augment", {}) or {})
        for text in overrides:
            key, value = _parse_override(text)
            if key.startswith("augment."):
                augment_values[key.split(".", 1)[1]] = value
            else:
                values[key] = value
        values["augment"] = augment_values
        return TrainConfig.from_dict(values).validate()
    except (ValueError, TypeError) as error:
        raise click.UsageError(str(error)) from None


def demo_settings(output: str) -> dict[str, Any]:
    """Settings of ``train --demo``: three synthetic sites written next to the output folder."""
    from datasets.synthetic import write_demo_sites

    sites = write_demo_sites(Path(output) / "demo_data", images_per_class=150, size=96)
    paths = {name: str(path) for name, path in sites.items()}
    return {
        "train_site": f"synth_a={paths['synth_a']}",
        "val_site": f"synth_b={paths['synth_b']}",
        "test_sites": [f"synth_c={paths['synth_c']}"],
        "image_size": 48, "epochs": 15, "batch_size": 32, "weights": "none", "learning_rate": 1e-3,
        "bootstrap_resamples": 500, "experiment": "brainmri-demo",
    }


@cli.command()
@click.option("--model", "model_path", required=True, type=click.Path(exists=True), help="A saved model.keras.")
@click.option("--site", "site_specs", multiple=True, required=True, metavar="NAME=PATH", help="Repeatable.")
@click.option("--val-site", "val_name", default="", help="Name of the --site used to choose the threshold.")
@click.option("--threshold", type=float, default=None, help="Decision threshold (default: from the model's run).")
@click.option("--train-hashes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="train_hashes.npz of the training run, to mark leaked images (default: next to the model).")
@click.option("--output", type=click.Path(file_okay=False), default="evaluation", show_default=True)
@click.option("--tracking-uri", default="")
@click.option("--experiment", default="", help="Log the evaluation as an MLflow run of this experiment.")
@click.option("--cache-dir", default="")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tta", "test_time_augmentation", type=click.Choice(TEST_TIME_AUGMENTATIONS), default=None,
              help="Test-time augmentation: 'flips' averages the four flips of each image "
                   "(default: as the model's run did, else none).")
def evaluate(model_path, site_specs, val_name, threshold, train_hashes, output, tracking_uri, experiment,
             cache_dir, seed, test_time_augmentation) -> None:
    """Evaluate a saved model on any sites and write the report."""
    specs = _site_option_values(site_specs)
    if val_name and val_name not in [name for name, _ in specs]:
        raise click.UsageError(f"--val-site {val_name!r} is not one of the --site names")
    try:
        summary = evaluate_saved_model(model_path, specs, val_name=val_name, threshold=threshold,
                                       train_hashes=train_hashes, output=Path(output), tracking_uri=tracking_uri,
                                       experiment=experiment, cache_dir=cache_dir, seed=seed,
                                       test_time_augmentation=test_time_augmentation)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    for name, values in summary["sites"].items():
        click.echo(f"{name}: AUC {values['auc']:.3f} [{values['auc_ci'][0]:.3f}, {values['auc_ci'][1]:.3f}]")
    click.echo(f"wrote {output}/report.html")


@cli.command()
@click.option("--experiment", required=True)
@click.option("--tracking-uri", default="")
@click.option("--output", type=click.Path(file_okay=False), default="compare", show_default=True)
def compare(experiment, tracking_uri, output) -> None:
    """Runs-by-sites table of AUC with confidence intervals from MLflow."""
    from eval.compare import collect_runs, comparison_table, format_markdown_table, write_comparison

    runs = collect_runs(experiment, resolve_tracking_uri(tracking_uri))
    if not runs:
        raise click.UsageError(f"experiment {experiment!r} has no runs")
    rows = comparison_table(runs)
    click.echo(format_markdown_table(rows))
    paths = write_comparison(rows, Path(output))
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


def ablation_variants(varies: Sequence[str], mode: str) -> list[tuple[str, list[str]]]:
    """``["leakage=report-only,purge-train", ...]`` -> ``[(name, ["--set", "k=v", ...]), ...]``.

    ``one-at-a-time``: a base run (the train arguments as given) plus one run per
    other value of each key; ``grid``: every combination.
    """
    import itertools

    axes = []
    for text in varies:
        key, separator, values = text.partition("=")
        choices = [value for value in values.split(",") if value != ""]
        if not separator or not key or len(choices) < 1:
            raise click.UsageError(f"--vary {text!r} must be KEY=VALUE1,VALUE2")
        axes.append((key, choices))
    if mode == "grid":
        combos = list(itertools.product(*[[(key, value) for value in values] for key, values in axes]))
    else:
        combos = [()] + [((key, value),) for key, values in axes for value in values]
    variants, seen = [], set()
    for combo in combos:
        name = ",".join(f"{key.split('.')[-1]}={value}" for key, value in combo) or "base"
        if name not in seen:
            seen.add(name)
            variants.append((name, [part for key, value in combo for part in ("--set", f"{key}={value}")]))
    return variants


def parse_named_variant(text: str) -> tuple[str, list[str]]:
    """``"report-only: leakage=report-only epochs=6"`` -> ``("report-only", ["--set", "leakage=...", ...])``."""
    name, separator, body = text.partition(":")
    name = name.strip()
    settings = body.split()
    if not separator or not name or not settings or any("=" not in item or item.startswith("=")
                                                        for item in settings):
        raise click.UsageError(f"--variant {text!r} must be 'NAME: KEY=VALUE [KEY=VALUE ...]'")
    if not all(character.isalnum() or character in "-_.=" for character in name):
        raise click.UsageError(f"--variant name {name!r} may hold letters, digits and - _ . = only")
    return name, [part for item in settings for part in ("--set", item)]


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--output", type=click.Path(file_okay=False), default="ablation", show_default=True)
@click.option("--vary", "varies", multiple=True, metavar="KEY=V1,V2",
              help="A config key and the values to try, e.g. leakage=report-only,purge-train; repeatable.")
@click.option("--variant", "named_variants", multiple=True, metavar="'NAME: KEY=V KEY=V'",
              help="A run that changes several keys together, e.g. 'report-only: leakage=report-only "
                   "epochs=6' (same number of optimizer steps); repeatable, runs after the --vary runs.")
@click.option("--mode", type=click.Choice(["one-at-a-time", "grid"]), default="one-at-a-time", show_default=True)
@click.option("--title", default="Cross-site results", show_default=True)
@click.argument("train_arguments", nargs=-1, type=click.UNPROCESSED)
def ablate(output, varies, named_variants, mode, title, train_arguments) -> None:
    """Run ``train`` once per variant and write RESULTS.md and results.json.

    Everything after the options is passed to ``train`` (sites, epochs, --set ...). Example:

    \b
        train_distributed.py ablate --output abl --vary leakage=report-only --vary crop=false
        -- --train-site br35h=... --val-site nav=... --test-site mos=... --weights none
    """
    import shlex
    import subprocess

    from eval.results import results_markdown

    arguments = [a for a in train_arguments if a != "--"]
    if any(a in ("--output", "--run-name") or a.startswith(("--output=", "--run-name=")) for a in arguments):
        raise click.UsageError("ablate sets --output and --run-name of each run itself")
    variants = ablation_variants(varies, mode)
    taken = {name for name, _ in variants}
    for name, extra in map(parse_named_variant, named_variants):
        if name in taken:
            raise click.UsageError(f"--variant name {name!r} is used twice")
        taken.add(name)
        variants.append((name, extra))
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (name, extra) in enumerate(variants, 1):
        folder = root / f"{index:02d}-{name.replace('=', '-').replace(',', '_')}"
        command = [sys.executable, str(Path(__file__).resolve()), "train", *arguments, *extra,
                   "--output", str(folder), "--run-name", name]
        shown = shlex.join(["python", "train_distributed.py", "train", *arguments, *extra, "--output", str(folder),
                            "--run-name", name])
        click.echo(f"[{index}/{len(variants)}] {name}: {shown}", err=True)
        start = time.time()
        status = subprocess.call(command)
        if status != 0:
            raise click.ClickException(f"run {name!r} failed with status {status}; see its output above")
        summary = json.loads((folder / "summary.json").read_text())
        entries.append({"name": name, "command": shown, "seconds": time.time() - start, "summary": summary})
        write_json_atomic(root / "results.json", entries)
        (root / "RESULTS.md").write_text(results_markdown(entries, title=title))
    click.echo((root / "RESULTS.md").read_text())


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; anything but loopback needs --allow-remote.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="TCP port (0: a free one).")
@click.option("--backend-store-uri", default="sqlite:///mlflow.db", show_default=True,
              help="Runs database: the store that training writes to by default in this folder.")
@click.option("--artifacts-destination", default="./mlartifacts", show_default=True,
              help="Folder (or URI) where the server keeps reports and models of runs logged through it.")
@click.option("--allow-remote", is_flag=True,
              help="Allow a non-loopback --host. MLflow has no authentication: anyone who can reach the port "
                   "can read and delete every run.")
def ui(host, port, backend_store_uri, artifacts_destination, allow_remote) -> None:
    """Serve the MLflow UI and tracking API on this machine until Ctrl-C."""
    import warnings

    from eval.mlflow_server import check_host, log_tail, serve_until_stopped, start_server

    try:
        check_host(host, allow_remote)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"starting MLflow server on {backend_store_uri} (artifacts: {artifacts_destination}) ...", err=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            server = start_server(host, port, backend_store_uri, artifacts_destination, allow_remote)
        except ValueError as error:
            raise click.UsageError(str(error)) from None
        except RuntimeError as error:
            raise click.ClickException(str(error)) from None
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)
    click.echo(f"MLflow UI: {server.url}")
    click.echo(f"log training to it with: --tracking-uri {server.url}")
    click.echo(f"server log: {server.log_path}; Ctrl-C stops the server", err=True)
    if not serve_until_stopped(server):
        raise click.ClickException(f"the MLflow server exited by itself (code {server.returncode}); "
                                   f"last lines of {server.log_path}:\n{log_tail(server.log_path)}")


if __name__ == "__main__":
    cli()
