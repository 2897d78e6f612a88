"""The schedule (hand-computed sequences), the train state file and the checkpoint store."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from training.config import TrainerConfig
from training.state import (CheckpointStore, Schedule, StateError, TrainState, advance_schedule, changed_settings,
                            stop_reason)

TRAINER = TrainerConfig(epochs=20, learning_rate=1.0, early_stopping_patience=3, reduce_lr_patience=2,
                        reduce_lr_factor=0.5, min_learning_rate=0.1)


def run_schedule(aucs, trainer=TRAINER):
    """Per epoch: (learning rate used, improved, best epoch, wait, lr_wait); and the stop reason."""
    schedule, rows = Schedule(learning_rate=trainer.learning_rate), []
    for epoch, auc in enumerate(aucs, 1):
        used = schedule.learning_rate
        schedule = advance_schedule(schedule, epoch, auc, trainer)
        rows.append((used, schedule.improved, schedule.best_epoch, schedule.wait, schedule.lr_wait))
        if stop_reason(schedule, epoch, trainer):
            return rows, stop_reason(schedule, epoch, trainer), schedule
    return rows, "", schedule


@pytest.mark.parametrize("aucs, expected, reason", [
    # improve, improve, tie (no gain), worse -> cut, improve, three without gain -> cut after two, stop after three
    ([0.6, 0.7, 0.7, 0.65, 0.8, 0.8, 0.8, 0.8, 0.9],
     [(1.0, True, 1, 0, 0), (1.0, True, 2, 0, 0), (1.0, False, 2, 1, 1), (1.0, False, 2, 2, 0),
      (0.5, True, 5, 0, 0), (0.5, False, 5, 1, 1), (0.5, False, 5, 2, 0), (0.25, False, 5, 3, 1)],
     "early stop: no validation AUC gain for 3 epochs"),
    # a gain of 1e-7 is no gain; NaN never improves
    ([0.5, 0.5000001, math.nan],
     [(1.0, True, 1, 0, 0), (1.0, False, 1, 1, 1), (1.0, False, 1, 2, 0)], ""),
    # steady gains: never cut, never stopped early
    ([0.1 * k for k in range(1, 6)], [(1.0, True, k, 0, 0) for k in range(1, 6)], ""),
])
def test_schedule_sequences(aucs, expected, reason):
    rows, stopped, _ = run_schedule(aucs)
    assert rows == expected
    assert stopped == reason


def test_learning_rate_never_goes_below_the_minimum():
    trainer = TrainerConfig(learning_rate=1.0, reduce_lr_patience=1, reduce_lr_factor=0.2, min_learning_rate=0.05,
                            early_stopping_patience=10)
    rows, _, schedule = run_schedule([0.9, 0.1, 0.1, 0.1, 0.1], trainer)
    assert [row[0] for row in rows] == [1.0, 1.0, 0.2, 0.05, 0.05]
    assert schedule.learning_rate == 0.05


def test_the_epoch_limit_stops_training():
    schedule = Schedule(best_auc=0.9, best_epoch=15, learning_rate=1.0)
    assert stop_reason(schedule, 14, TrainerConfig(epochs=15)) == ""
    assert stop_reason(schedule, 15, TrainerConfig(epochs=15)) == "reached 15 epochs"


def test_changed_settings_names_each_difference():
    assert changed_settings({"seed": "0", "epochs": "3"}, {"seed": "1", "epochs": "3", "crop": "False"}) == \
        ["crop: (not set) -> False", "seed: 0 -> 1"]
    assert changed_settings({"a": "1"}, {"a": "1"}) == []


def state_example() -> TrainState:
    return TrainState(run_id="abc", fingerprint={"seed": "0"}, replicas=1,
                      schedule=Schedule(best_auc=0.75, best_epoch=2, wait=1, lr_wait=1, learning_rate=2e-4),
                      epoch=3, step=4, loss_sum=1.2345678901234567, loss_steps=4, checkpoint="ckpt-e3-s4",
                      history=[{"epoch": 1, "val_auc": 0.5}])


def test_state_round_trips_exactly(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.read_state() is None
    store.write_state(state_example())
    assert store.read_state() == state_example()
    assert not list((tmp_path / "backup").glob(".*tmp"))


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],                                  # truncated
    lambda text: "",                                                      # empty
    lambda text: json.dumps({"run_id": "abc"}),                           # keys missing
    lambda text: text.replace('"training"', '"sleeping"'),                # unknown phase
    lambda text: "\x00\xff" * 10,                                          # binary garbage
])
def test_a_damaged_state_file_is_named_with_the_way_out(tmp_path, damage):
    store = CheckpointStore(tmp_path)
    store.write_state(state_example())
    store.state_path.write_text(damage(store.state_path.read_text()), errors="surrogateescape")
    with pytest.raises(StateError) as caught:
        store.read_state()
    message = str(caught.value)
    assert str(store.state_path) in message and "delete" in message and "another --output" in message


@pytest.mark.slow
def test_checkpoints_hold_the_dropout_generator_and_only_the_latest_is_kept(tmp_path):
    import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1)(keras.layers.Dropout(0.5, seed=1)(inputs))
    model = keras.Model(inputs, outputs)
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    store = CheckpointStore(tmp_path)
    data = np.ones((8, 4), np.float32)
    model(data, training=True)  # advances the dropout generator
    store.save("ckpt-e1", model, optimizer, (np.arange(3, dtype=np.float32), np.ones(3, np.float32)))
    expected = np.asarray(model(data, training=True))  # the next masks after the checkpoint
    model(data, training=True)
    scores = store.restore("ckpt-e1", model, optimizer)
    np.testing.assert_array_equal(np.asarray(model(data, training=True)), expected)
    np.testing.assert_array_equal(scores[0], np.arange(3))
    store.save("ckpt-e2", model, optimizer)
    store.prune("ckpt-e2")
    assert sorted(path.name for path in (tmp_path / "backup").iterdir()) == \
        ["ckpt-e2.data-00000-of-00001", "ckpt-e2.index"]
    with pytest.raises(StateError, match="ckpt-e1.index is damaged or incomplete"):
        store.restore("ckpt-e1", model, optimizer)
