"""Explicit training state: what decides the next step, saved so that a resumed run is exact.

- ``Schedule`` and ``advance_schedule``: early stopping and learning-rate cuts
  on the validation AUC, as a pure function of the epoch's AUC.
- ``TrainState``: the schedule, the data position (epoch, step), the running
  loss, the history, the MLflow run, the run's fingerprint and its phase
  (``training`` -> ``evaluating`` -> ``finished``).
- ``CheckpointStore``: ``OUTPUT/backup/`` with ``state.json`` (written
  atomically), the latest checkpoint of every model, optimizer and
  random-generator variable, the best weights, and the training-set scores of
  an epoch interrupted in the middle.

Damaged files raise ``StateError`` (a ValueError) naming the file and the way out.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from training.config import TrainerConfig

PHASES = ("training", "evaluating", "finished")


class StateError(ValueError):
    """A saved state that cannot be used: damaged, partial, or from other settings."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Early-stopping and learning-rate state after some epochs.

    Attributes:
        best_auc: best validation AUC so far (-1 before the first epoch).
        best_epoch: 1-based epoch of ``best_auc`` (0 before the first epoch).
        wait: epochs since the last improvement (early stopping counter).
        lr_wait: epochs since the last improvement or learning-rate cut.
        learning_rate: learning rate of the next epoch.
        improved: whether the last epoch improved ``best_auc``.
    """

    best_auc: float = -1.0
    best_epoch: int = 0
    wait: int = 0
    lr_wait: int = 0
    learning_rate: float = 2e-4
    improved: bool = False


def advance_schedule(schedule: Schedule, epoch: int, val_auc: float, trainer: TrainerConfig) -> Schedule:
    """The schedule after 1-based ``epoch`` scored ``val_auc``.

    An epoch improves when its AUC beats the best by more than 1e-6 (a NaN AUC
    never improves). Without improvement ``wait`` and ``lr_wait`` grow; when
    ``lr_wait`` reaches ``reduce_lr_patience`` the learning rate is multiplied by
    ``reduce_lr_factor`` (not below ``min_learning_rate``) and ``lr_wait`` restarts.
    """
    if math.isfinite(val_auc) and val_auc > schedule.best_auc + 1e-6:
        return dataclasses.replace(schedule, best_auc=float(val_auc), best_epoch=epoch, wait=0, lr_wait=0,
                                   improved=True)
    wait, lr_wait, learning_rate = schedule.wait + 1, schedule.lr_wait + 1, schedule.learning_rate
    if lr_wait >= trainer.reduce_lr_patience:
        learning_rate = max(learning_rate * trainer.reduce_lr_factor, trainer.min_learning_rate)
        lr_wait = 0
    return dataclasses.replace(schedule, wait=wait, lr_wait=lr_wait, learning_rate=learning_rate, improved=False)


def stop_reason(schedule: Schedule, epochs_done: int, trainer: TrainerConfig) -> str:
    """Why training stops after ``epochs_done`` epochs ('' while it goes on)."""
    if schedule.wait >= trainer.early_stopping_patience:
        return f"early stop: no validation AUC gain for {trainer.early_stopping_patience} epochs"
    if epochs_done >= trainer.epochs:
        return f"reached {trainer.epochs} epochs"
    return ""


@dataclasses.dataclass
class TrainState:
    """Everything that decides what the run does next; ``state.json``.

    ``epoch`` counts finished epochs; ``step`` the optimizer steps done in the
    current epoch; ``loss_sum`` / ``loss_steps`` its running loss. ``checkpoint``
    names the latest checkpoint in the backup folder ('' = the initial model,
    rebuilt from the seed). ``fingerprint`` is what defines the run (settings
    and site content digests).
    """

    run_id: str
    fingerprint: dict[str, str]
    replicas: int
    schedule: Schedule
    phase: str = "training"
    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    loss_steps: int = 0
    checkpoint: str = ""
    setup_logged: bool = False
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainState":
        fields = {field.name for field in dataclasses.fields(cls)}
        missing = sorted(fields - set(data))
        if missing:
            raise ValueError(f"missing keys {missing}")
        values = {key: data[key] for key in fields}
        values["schedule"] = Schedule(**values["schedule"])
        state = cls(**values)
        if state.phase not in PHASES:
            raise ValueError(f"unknown phase {state.phase!r}")
        return state


def changed_settings(stored: dict[str, str], current: dict[str, str]) -> list[str]:
    """``["key: stored -> current", ...]`` for every key whose value differs (sorted)."""
    lines = []
    for key in sorted(set(stored) | set(current)):
        if stored.get(key) != current.get(key):
            lines.append(f"{key}: {stored.get(key, '(not set)')} -> {current.get(key, '(not set)')}")
    return lines


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (never half-written)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=1, default=str))
    os.replace(temporary, path)


class CheckpointStore:
    """``OUTPUT/backup/``: state.json, the latest checkpoint, the best weights.

    Only the chief keeps files; other workers of a multi-worker job write their
    (required) copy of each checkpoint into a scratch folder and delete it.
    """

    def __init__(self, output: Path, *, chief: bool = True, worker_index: int = 0):
        self.folder = Path(output) / "backup"
        self.chief = chief
        self.write_root = self.folder if chief else self.folder / f"worker-{worker_index}"
        self.state_path = self.folder / "state.json"

    def _damaged(self, path: Path, error: Exception) -> StateError:
        return StateError(
            f"{path} is damaged or incomplete ({type(error).__name__}: {str(error)[:300]}), so this run cannot "
            f"resume from it. To start the run over, delete {self.folder}; to keep it, choose another --output.")

    def read_state(self) -> TrainState | None:
        """The saved state, or None when there is none. StateError when it cannot be read."""
        if not self.state_path.exists():
            return None
        try:
            return TrainState.from_json(json.loads(self.state_path.read_text()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError, KeyError) as error:
            raise self._damaged(self.state_path, error) from None

    def write_state(self, state: TrainState) -> None:
        if self.chief:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.state_path, state.to_json())

    # ---- checkpoints ------------------------------------------------------------------------

    @staticmethod
    def _checkpoint(model, optimizer=None):
        import tensorflow as tf

        from training.model import random_state_variables

        objects = {"model": model,
                   "random_states": [variable.value for variable in random_state_variables(model)]}
        if optimizer is not None:
            objects["optimizer"] = optimizer
        return tf.train.Checkpoint(**objects)

    def save(self, name: str, model, optimizer, train_scores: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Write checkpoint ``name`` (and the epoch's training scores so far); drop older ones."""
        self.write_root.mkdir(parents=True, exist_ok=True)
        self._checkpoint(model, optimizer).write(str(self.write_root / name))
        if self.chief and train_scores is not None:
            scores_path = self.write_root / f"{name}.scores.npz"
            temporary = self.write_root / f".{name}.scores.npz"
            np.savez(temporary, probabilities=train_scores[0], labels=train_scores[1])
            os.replace(temporary, scores_path)
        if not self.chief:
            shutil.rmtree(self.write_root, ignore_errors=True)

    def prune(self, keep: str) -> None:
        """Delete every checkpoint but ``keep`` (hundreds of MB each), once state.json names ``keep``."""
        if self.chief:
            for path in self.folder.glob("ckpt-*"):
                if not path.name.startswith(f"{keep}."):
                    path.unlink(missing_ok=True)

    def restore(self, name: str, model, optimizer) -> tuple[np.ndarray, np.ndarray] | None:
        """Load checkpoint ``name`` into ``model`` and ``optimizer``; the epoch's saved training scores."""
        path = self.folder / name
        try:
            self._checkpoint(model, optimizer).read(str(path)).assert_existing_objects_matched()
        except Exception as error:  # TensorFlow raises many kinds (DataLoss, NotFound, OutOfRange, ...)
            raise self._damaged(path.with_name(f"{name}.index"), error) from None
        scores_path = self.folder / f"{name}.scores.npz"
        if not scores_path.exists():
            return None
        try:
            with np.load(scores_path) as stored:
                return stored["probabilities"], stored["labels"]
        except Exception as error:
            raise self._damaged(scores_path, error) from None

    def save_best(self, model) -> None:
        import tensorflow as tf

        tf.train.Checkpoint(model=model).write(str(self.write_root / "best" / "weights"))
        if not self.chief:
            shutil.rmtree(self.write_root, ignore_errors=True)

    def restore_best(self, model) -> None:
        import tensorflow as tf

        path = self.folder / "best" / "weights"
        try:
            tf.train.Checkpoint(model=model).read(str(path)).expect_partial().assert_existing_objects_matched()
        except Exception as error:
            raise self._damaged(path.with_name("weights.index"), error) from None
