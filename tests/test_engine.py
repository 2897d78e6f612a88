"""The training engine in-process: NaN handling, idempotent finish, damaged state, one run per config."""
from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from training import loop
from training.config import TrainConfig
from training.faults import EXIT_NAN
from training.state import StateError
from training.tracking import Tracker


def tiny_config(synthetic_sites, folder, **changes) -> TrainConfig:
    settings = {"train_site": f"synth_a={synthetic_sites['synth_a']}",
                "val_site": f"synth_b={synthetic_sites['synth_b']}",
                "test_sites": [f"synth_c={synthetic_sites['synth_c']}"],
                "image_size": 32, "batch_size": 16, "epochs": 2, "weights": "none", "dense_units": 16,
                "backbone": "small_cnn", "min_class_images": 10,
                "bootstrap_resamples": 100, "log_model": False, "gradcam_examples": 1,
                "output": str(folder / "run"), "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
                "experiment": "engine", **changes}
    return TrainConfig.from_settings(settings).validate()


def runs_of(config: TrainConfig):
    client = mlflow.tracking.MlflowClient(config.tracking.tracking_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    return client, (client.search_runs([experiment.experiment_id]) if experiment else [])


class SimulatedKill(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler sees it."""


@pytest.mark.slow
def test_injected_nan_loss_fails_the_run_with_its_reason(tmp_path, synthetic_sites, monkeypatch):
    real = loop.steps.make_train_chunk

    def nan_after_first_step(*args, **kwargs):
        chunk, calls = real(*args, **kwargs), []

        def train_chunk(iterator, steps):
            losses, probabilities, labels = chunk(iterator, steps)
            calls.append(1)
            return (losses * np.nan if len(calls) == 2 else losses), probabilities, labels

        return train_chunk

    monkeypatch.setattr(loop.steps, "make_train_chunk", nan_after_first_step)
    config = tiny_config(synthetic_sites, tmp_path)
    assert loop.run_training(config) == EXIT_NAN
    _, runs = runs_of(config)
    assert [run.info.status for run in runs] == ["FAILED"]
    assert runs[0].data.tags["failure_reason"] == "loss became NaN at epoch 1, step 2"
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.slow
def test_finish_is_idempotent_and_a_finished_run_is_left_alone(tmp_path, synthetic_sites, monkeypatch, capsys):
    config = tiny_config(synthetic_sites, tmp_path, log_model=True)
    # Killed while the results are written, after the model and the evaluation metrics: the run stays RUNNING.
    log_artifact = Tracker.log_artifact
    with monkeypatch.context() as patch:
        patch.setattr(Tracker, "log_artifact", lambda self, path, artifact_path=None: (_ for _ in ()).throw(
            SimulatedKill()) if str(path).endswith("summary.json") else log_artifact(self, path, artifact_path))
        patch.setattr(Tracker, "end", lambda self, status: None)
        patch.setattr(Tracker, "set_tags", lambda self, tags: None)
        with pytest.raises(SimulatedKill):
            loop.run_training(config)
    client, (run,) = runs_of(config)
    assert run.info.status == "RUNNING" and "test_synth_c_auc" in run.data.metrics
    state = json.loads((tmp_path / "run" / "backup" / "state.json").read_text())
    assert state["phase"] == "evaluating"
    assert loop.run_training(config) == 0  # the same command again
    client, (run,) = runs_of(config)
    assert run.info.status == "FINISHED"
    final = [key for key in run.data.metrics if key.startswith(("val_synth", "test_synth"))] + ["threshold"]
    assert len(final) > 40
    assert all(len(client.get_metric_history(run.info.run_id, key)) == 1 for key in final)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")] == [1, 2]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert run.data.metrics["test_synth_c_auc"] == pytest.approx(summary["sites"]["synth_c"]["auc"])
    # Finished: once more logs nothing and keeps the status and end time.
    capsys.readouterr()
    assert loop.run_training(config) == 0
    assert "this run already finished" in capsys.readouterr().err
    _, (again,) = runs_of(config)
    assert (again.info.status, again.info.end_time, again.data.metrics) == \
        (run.info.status, run.info.end_time, run.data.metrics)
    # Other settings into the same folder: refused, naming what differs.
    with pytest.raises(StateError, match=r"seed: 0 -> 1; .*|.*seed: 0 -> 1"):
        loop.run_training(config.replace(seed=1))
    with pytest.raises(StateError, match="leakage: purge-train -> report-only"):
        loop.run_training(config.replace(leakage="report-only"))
    # Damaged state: a clear error naming the file; the finished MLflow run is not touched.
    state_path = tmp_path / "run" / "backup" / "state.json"
    state_path.write_text(state_path.read_text()[:40])
    with pytest.raises(StateError, match=rf"{state_path} is damaged or incomplete .* delete"):
        loop.run_training(config)
    _, (after,) = runs_of(config)
    assert (after.info.status, after.info.end_time) == (run.info.status, run.info.end_time)


@pytest.mark.slow
def test_a_damaged_checkpoint_is_named(tmp_path, synthetic_sites, monkeypatch):
    config = tiny_config(synthetic_sites, tmp_path, epochs=3)
    with monkeypatch.context() as patch:  # stop for good after epoch 1
        real_prune = loop.CheckpointStore.prune

        def prune_then_die(self, keep):
            real_prune(self, keep)
            if keep == "ckpt-e1":
                raise SimulatedKill()

        patch.setattr(loop.CheckpointStore, "prune", prune_then_die)
        patch.setattr(Tracker, "end", lambda self, status: None)
        patch.setattr(Tracker, "set_tags", lambda self, tags: None)
        with pytest.raises(SimulatedKill):
            loop.run_training(config)
    data_file, = (tmp_path / "run" / "backup").glob("ckpt-e1.data-*")
    data_file.write_bytes(data_file.read_bytes()[:1000])
    with pytest.raises(StateError, match=r"ckpt-e1.index is damaged or incomplete"):
        loop.run_training(config)
    _, (run,) = runs_of(config)
    assert run.info.status == "RUNNING"  # the error came before the run was reopened


@pytest.mark.slow
def test_a_failure_before_training_leaves_nothing_in_the_way(tmp_path, synthetic_sites):
    config = tiny_config(synthetic_sites, tmp_path, batch_size=64)  # 48 training images: not one batch
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        loop.run_training(config)
    assert not (tmp_path / "run" / "backup" / "state.json").exists()
    assert runs_of(config)[1] == []
    fixed = config.replace(batch_size=16, epochs=1)  # the corrected command, same folder
    assert loop.run_training(fixed) == 0
    _, (run,) = runs_of(fixed)
    assert run.info.status == "FINISHED" and run.data.params["batch_size"] == "16"


def test_a_stop_signal_while_loading_exits_for_requeue_and_leaves_nothing(tmp_path, synthetic_sites, monkeypatch):
    import os
    import signal

    import datasets.cache

    from training.faults import EXIT_REQUEUE

    real = datasets.cache.load_site

    def load_site_signalled(name, root, params, *, cache_dir=None, progress=None, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # what SLURM sends before the time limit
        progress(0, 48)  # the decoding progress callback checks for it
        return real(name, root, params, cache_dir=cache_dir, **kwargs)

    monkeypatch.setattr(datasets.cache, "load_site", load_site_signalled)
    config = tiny_config(synthetic_sites, tmp_path)
    previous = signal.getsignal(signal.SIGTERM)
    assert loop.run_training(config) == EXIT_REQUEUE
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
    assert not (tmp_path / "run" / "backup" / "state.json").exists()
    assert runs_of(config)[1] == []


def test_predict_step_averages_a_seed_ensemble():
    """A list of models is one predictor: the mean of their probabilities, per image, in input order."""
    import keras

    from training.cluster import choose_strategy
    from training.steps import make_predict_step, predict_site

    def scaled_mean(scale):  # probability = scale * mean pixel / 255, a different value per image
        inputs = keras.Input((8, 8, 1))
        outputs = keras.layers.Lambda(lambda x: scale * keras.ops.mean(x, axis=(1, 2)) / 255.0)(inputs)
        return keras.Model(inputs, outputs)

    images = np.random.default_rng(0).integers(0, 256, (7, 8, 8), dtype=np.uint8)
    cluster = choose_strategy()
    scores = predict_site(cluster, make_predict_step(cluster, [scaled_mean(0.2), scaled_mean(1.0)]), images, 4)
    expected = 0.6 * images.reshape(7, -1).mean(axis=1) / 255.0
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    single = predict_site(cluster, make_predict_step(cluster, scaled_mean(1.0)), images, 4)
    np.testing.assert_allclose(single, expected / 0.6, rtol=1e-5)


# ----------------------------------------------------------------------------- classes after the leakage policy

ALTERNATIVES = {"dedupe-train": (40, 45), "purge-eval": (50, 50), "report-only": (50, 50)}


@pytest.mark.parametrize("after, minimum, message", [
    ((7, 345), 50, r"keeps 7 no-tumour images after the leakage policy purge-train \(before: 50 no tumour, 50 "
                   r"tumour; after: 7 no tumour, 345 tumour\), fewer than min_class_images=50"),
    ((0, 30), 0, "keeps 0 no-tumour images"),  # an empty class stops the run even with no minimum
    ((45, 9), 10, "keeps 9 tumour images"),
])
def test_a_class_below_the_minimum_stops_the_run_naming_the_policies_that_keep_more(after, minimum, message):
    with pytest.raises(ValueError, match=message) as error:
        loop.check_training_classes("br35h", "purge-train", (50, 50), after, minimum, ALTERNATIVES)
    text = str(error.value)
    assert "dedupe-train (40 no tumour, 45 tumour); purge-eval (50 no tumour, 50 tumour); report-only" in text
    assert "--leakage" in text and "--set min_class_images=N" in text


@pytest.mark.parametrize("after, minimum, warnings", [
    ((50, 50), 50, 0),
    ((20, 100), 10, 0),  # exactly 20 %: no warning
    ((19, 100), 10, 1),
    ((100, 3), 0, 1),
])
def test_lopsided_classes_get_one_warning_line(after, minimum, warnings):
    lines = loop.check_training_classes("br35h", "purge-train", (100, 100), after, minimum, ALTERNATIVES)
    assert len(lines) == warnings
    if warnings:
        assert lines[0].startswith("warning: the training set after the leakage policy purge-train is lopsided")
        assert f"{after[0]} no tumour, {after[1]} tumour" in lines[0] and "class_weighting=balanced" in lines[0]


def test_no_policy_keeps_more_says_so():
    with pytest.raises(ValueError, match="No leakage policy keeps more"):
        loop.check_training_classes("tiny", "report-only", (8, 30), (8, 30), 10,
                                    {"purge-train": (8, 20), "dedupe-train": (8, 30), "purge-eval": (8, 30)})


@pytest.mark.parametrize("scores, expected", [
    ([0.3, 0.3, 0.3], "all 3 validation scores are equal (0.3"),
    ([1.0, 1.0], "all 2 validation scores are equal (1:"),
    ([0.2, 0.7], None),
    ([], None),
])
def test_constant_validation_scores_are_explained(scores, expected):
    note = loop.constant_scores_note(np.array(scores, np.float32))
    assert note == expected if expected is None else expected in note


def test_min_class_images_is_a_validated_setting_that_keeps_the_run_folder():
    assert TrainConfig().data.min_class_images == 50
    with pytest.raises(ValueError, match="min_class_images must be at least 0"):
        TrainConfig.from_settings({"train_site": "a=.", "val_site": "b=.", "min_class_images": -1}).validate(
            check_folders=False)
    base = TrainConfig.from_settings({"train_site": "a=x", "val_site": "b=y"})
    assert base.replace(min_class_images=5).default_output() == base.default_output()


@pytest.mark.slow
def test_a_test_site_holding_the_training_sites_no_tumour_images_stops_purge_train(tmp_path, synthetic_sites):
    import shutil

    copies = tmp_path / "copies"  # a test site whose no-tumour class came from the training site
    shutil.copytree(synthetic_sites["synth_a"] / "no", copies / "no")
    shutil.copytree(synthetic_sites["synth_c"] / "yes", copies / "yes")
    config = tiny_config(synthetic_sites, tmp_path, test_sites=[f"copies={copies}"], epochs=1, gradcam_examples=0)
    with pytest.raises(ValueError) as error:
        loop.run_training(config)
    text = str(error.value)
    assert "training site synth_a keeps 0 no-tumour images after the leakage policy purge-train" in text
    assert "(before: 24 no tumour, 24 tumour; after: 0 no tumour, " in text
    for policy in ("dedupe-train", "purge-eval", "report-only"):
        assert f"{policy} (2" in text  # each keeps (about) all 24 no-tumour images
    assert not (tmp_path / "run" / "backup" / "state.json").exists() and not (tmp_path / "run" / "audit.json").exists()
    assert runs_of(config)[1] == []
    fixed = config.replace(leakage="purge-eval")  # the corrected command, same folder
    assert loop.run_training(fixed) == 0
    _, (run,) = runs_of(fixed)
    assert run.info.status == "FINISHED" and run.data.params["leakage"] == "purge-eval"
