"""The grouped config: values parsed by the setting's type, flat and grouped files, the run's fingerprint."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from training.config import FLAT_KEYS, TrainConfig, flatten_settings, parse_setting, read_config_file


@pytest.mark.parametrize("key, text, expected", [
    ("run_name", "no", "no"),                 # a string stays a string (YAML would say False)
    ("run_name", "010", "010"),
    ("seed", "010", 10),                       # decimal, not octal
    ("epochs", "3", 3),
    ("epochs", "3.0", 3),
    ("epochs", "1e2", 100),
    ("learning_rate", "1e-3", 0.001),
    ("learning_rate", 2, 2.0),
    ("crop", "False", False),
    ("crop", "yes", True),
    ("log_model", "0", False),
    ("test_sites", "[a=x, b=y]", ("a=x", "b=y")),
    ("test_sites", "a=x,b=y", ("a=x", "b=y")),
    ("test_sites", ["a=x"], ("a=x",)),
    ("reference_sites", "[]", ()),
    ("augment.zoom", "0.1", 0.1),
    ("augment.vertical_flip", "off", False),
])
def test_values_are_parsed_by_the_type_of_the_setting(key, text, expected):
    assert parse_setting(key, text) == expected
    assert type(parse_setting(key, text)) is type(expected)


@pytest.mark.parametrize("key, text, message", [
    ("epochs", "2.5", "epochs must be a whole number, got '2.5'"),
    ("epochs", "[1,2]", "epochs must be a whole number, got '[1,2]'"),
    ("epochs", ["1", "2"], "epochs must be a single int, got a list"),
    ("learning_rate", "[1", "learning_rate must be a number, got '[1'"),
    ("learning_rate", "nan", "learning_rate must be a finite number"),
    ("crop", "maybe", "crop must be true or false, got 'maybe'"),
    ("test_sites", "[a=x", "test_sites must be a list like [a,b] or a,b"),
    ("nosuchkey", "1", "unknown setting 'nosuchkey'"),
    ("seed", {"a": 1}, "seed must be a single value, got a mapping"),
])
def test_bad_values_name_the_setting(key, text, message):
    with pytest.raises(ValueError) as caught:
        parse_setting(key, text)
    assert message in str(caught.value)


def test_flat_keys_are_unique_and_cover_every_group():
    groups = {group for group, _, _ in FLAT_KEYS.values()}
    assert groups == {"", "data", "model", "trainer", "runtime", "tracking", "evaluation", "augment"}
    assert FLAT_KEYS["learning_rate"][:2] == ("trainer", "learning_rate")
    assert FLAT_KEYS["augment.zoom"][:2] == ("augment", "zoom")


@pytest.mark.parametrize("values", [
    {"epochs": "3", "augment": {"zoom": "0.1"}},
    {"trainer": {"epochs": 3}, "augment.zoom": 0.1},
    {"trainer.epochs": "3", "augment": {"zoom": 0.1}},
])
def test_flat_and_grouped_settings_mean_the_same(values):
    config = TrainConfig.from_settings(values)
    assert (config.trainer.epochs, config.augment.zoom) == (3, 0.1)


@pytest.mark.parametrize("values, message", [
    ({"augment": 5}, "augment must be a mapping of settings"),
    ({"trainer": {"zoom": 1}}, "unknown trainer key 'zoom'"),
    ({"data.epochs": 1}, "unknown data key 'epochs'"),
    ({"nosuch": 1}, "unknown config keys ['nosuch']"),
])
def test_bad_files_are_named(values, message):
    with pytest.raises(ValueError) as caught:
        flatten_settings(values)
    assert message in str(caught.value)


def test_config_json_round_trips_and_old_flat_files_load(tmp_path):
    config = TrainConfig.from_settings({"epochs": 3, "test_sites": ["c=z"], "augment.zoom": 0.2, "seed": 4})
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    assert TrainConfig.from_settings(read_config_file(str(tmp_path / "config.json"))) == config
    old = {"train_site": "a=x", "epochs": 7, "crop": False, "augment": {"zoom": 0.1}, "seed": 1}  # earlier layout
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = TrainConfig.from_settings(read_config_file(str(tmp_path / "old.json")))
    assert (loaded.data.train_site, loaded.trainer.epochs, loaded.data.crop, loaded.seed) == ("a=x", 7, False, 1)
    assert config.replace(seed=5).seed == 5 and config.replace(seed=5).trainer.epochs == 3


def test_yaml_scalars_are_text_until_parsed(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("run_name: no\nseed: 010\nepochs: 3\ncrop: off\n")
    config = TrainConfig.from_settings(read_config_file(str(path)))
    assert (config.tracking.run_name, config.seed, config.trainer.epochs, config.data.crop) == ("no", 10, 3, False)


def test_the_fingerprint_and_the_default_output():
    base = TrainConfig.from_settings({"train_site": "br35h=data/br35h", "val_site": "nav=data/nav"})
    same = base.replace(output="elsewhere", run_name="x", cache_dir="/c", tracking_uri="sqlite:///y.db", gpus=2)
    assert same.defining_settings() == base.defining_settings()  # settings that do not change a number
    assert same.default_output() == base.default_output()
    assert base.defining_settings()["train_site"] == f"br35h={Path('data/br35h').resolve()}"
    output = Path(base.default_output())
    assert output.parent == Path("runs") and output.name.startswith("br35h-seed0-") and len(output.name) == 20
    for change in ({"seed": 1}, {"epochs": 3}, {"augment.zoom": 0.1}, {"leakage": "report-only"},
                   {"experiment": "other"}, {"test_sites": ["mos=data/mos"]}):
        assert base.replace(**change).default_output() != base.default_output(), change


@pytest.mark.parametrize("uri", [
    "", "sqlite:///mlflow.db", "sqlite:////tmp/somewhere/mlflow.db", "sqlite+pysqlite:///x.db", "./mlruns",
    "mlruns", "file:./mlruns", "file:///tmp/mlruns", "http://127.0.0.1:5000", "https://mlflow.example.org/path",
    "databricks", "databricks://profile", "databricks-uc", "postgresql://user@host/db",
    "postgresql+psycopg2://user@host:5432/db", "mysql://user@host/db", "mssql://user@host/db",
])
def test_tracking_uris_mlflow_opens_are_accepted(uri, tmp_path, monkeypatch):
    from training.config import check_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # folder stores: MLflow opens them only with it
    assert check_tracking_uri(uri) == uri
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize("uri", ["./mlruns", "mlruns", "file:./mlruns", "file:///tmp/mlruns"])
def test_folder_stores_this_mlflow_refuses_are_usage_errors_up_front(uri, tmp_path, monkeypatch):
    from mlflow import environment_variables

    from training.config import check_tracking_uri, file_store_refused

    if not hasattr(environment_variables, "MLFLOW_ALLOW_FILE_STORE"):
        pytest.skip("this MLflow opens folder stores without MLFLOW_ALLOW_FILE_STORE")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ValueError, match="folder \\(file\\) store, which this MLflow refuses unless "
                                         "MLFLOW_ALLOW_FILE_STORE=true is set: use a database such as sqlite"):
        check_tracking_uri(uri)
    assert file_store_refused({"MLFLOW_ALLOW_FILE_STORE": "false"})
    assert not file_store_refused({"MLFLOW_ALLOW_FILE_STORE": "TRUE"})
    assert not file_store_refused({"MLFLOW_ALLOW_FILE_STORE": "1"})


@pytest.mark.parametrize("uri, message", [
    ("bogus://x", "unknown scheme 'bogus'; MLflow stores are a folder path, file:, sqlite:"),
    ("s3://bucket/mlruns", "unknown scheme 's3'"),
    ("sqlite://x.db", "is not a SQLite store URI"),
    ("sqlite:///", "is not a SQLite store URI"),
    ("sqlite:///:memory:", "is not a SQLite store URI"),
    ("sqlite:///folder", "'folder' is a folder, not a database file"),
    ("sqlite:///afile.txt/x.db", "'afile.txt' is a file, not a folder"),
    ("afile.txt", "'afile.txt' is a file, not a folder (an MLflow file store is a folder"),
    ("file:afile.txt", "is a file, not a folder"),
    ("http://", "needs a host"),
    ("http://host:99999", "needs a host and an optional port"),
    ("postgresql:db", "needs a server"),
])
def test_bad_tracking_uris_name_the_uri_and_what_is_allowed(uri, message, tmp_path, monkeypatch):
    from training.config import check_tracking_uri

    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile.txt").write_text("x")
    with pytest.raises(ValueError) as caught:
        check_tracking_uri(uri)
    assert message in str(caught.value) and repr(uri) in str(caught.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["afile.txt", "folder"]


def test_tracking_uri_schemes_are_those_mlflow_registers():
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    from training.config import BACKEND_STORE_SCHEMES, TRACKING_URI_SCHEMES

    assert set(TRACKING_URI_SCHEMES) == set(_tracking_store_registry._registry)
    assert set(BACKEND_STORE_SCHEMES) < set(TRACKING_URI_SCHEMES)


def write_hdf5(path: Path, user_block: int = 0) -> None:
    import h5py
    import numpy as np

    with h5py.File(path, "w", userblock_size=user_block) as handle:
        handle.create_dataset("kernel", data=np.zeros((2, 2), np.float32))


def test_weight_files_keras_loads_are_accepted(tmp_path):
    import zipfile

    from training.config import check_keras_file

    write_hdf5(tmp_path / "backbone.weights.h5")
    write_hdf5(tmp_path / "legacy.hdf5", user_block=1024)  # the HDF5 signature after a user block
    with zipfile.ZipFile(tmp_path / "model.keras", "w") as archive:
        archive.writestr("config.json", "{}")
        archive.write(tmp_path / "backbone.weights.h5", "model.weights.h5")
    for name in ("backbone.weights.h5", "legacy.hdf5", "model.keras"):
        check_keras_file(str(tmp_path / name), "weights", "model.weights.h5")
    check_keras_file(str(tmp_path / "model.keras"), "model", "config.json")


@pytest.mark.parametrize("name, content, message", [
    ("text.h5", b"weights", "is not an HDF5 file (no HDF5 signature)"),
    ("empty.weights.h5", b"", "is not an HDF5 file"),
    ("weights.npy", b"\x89HDF\r\n\x1a\n", "unsupported file type '.npy'"),
    ("weights", b"\x89HDF\r\n\x1a\n", "unsupported file type '(none)'"),
    ("text.keras", b"PK? no", "is not a .keras file (not a zip archive)"),
])
def test_bad_weight_files_are_named_with_the_reason(name, content, message, tmp_path):
    from training.config import check_keras_file

    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError) as caught:
        check_keras_file(str(tmp_path / name), "weights", "model.weights.h5")
    assert message in str(caught.value) and name in str(caught.value)


@pytest.mark.parametrize("changes, message", [
    ({"freeze_until": "conv6_block1_out"}, "freeze_until 'conv6_block1_out' is not a layer of ResNet50"),
    ({"gpus": -3}, "gpus must be -1"),
    ({"audit_threshold_bits": 129}, "audit_threshold_bits must be -1"),
    ({"experiment": " "}, "experiment must be a non-empty"),
    ({"tracking_uri": "bogus://x"}, "tracking_uri 'bogus://x': unknown scheme"),
    ({"val_site": "a=y"}, "given more than once: a (--train-site a=x, --val-site a=y)"),
])
def test_settings_checked_before_any_work(changes, message):
    config = TrainConfig.from_settings({"train_site": "a=x", "val_site": "b=y", **changes})
    with pytest.raises(ValueError) as caught:
        config.validate(check_folders=False)
    assert message in str(caught.value)


@pytest.mark.slow
def test_the_resnet50_layer_names_are_those_of_keras():
    import keras

    from training.config import RESNET50_FREEZE_UNTIL, RESNET50_LAYERS

    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert RESNET50_LAYERS == {layer.name for layer in backbone.layers}
    assert RESNET50_FREEZE_UNTIL in RESNET50_LAYERS and len(RESNET50_LAYERS) == 175


# ---- recipes ----------------------------------------------------------------------------------------

SEED_VALUES = {"recipe": "seed", "weights": "imagenet", "epochs": 15, "batch_size": 100, "learning_rate": 2e-4,
               "input_normalization": "imagenet", "class_weighting": "none", "reduce_lr_patience": 2,
               "early_stopping_patience": 5, "image_size": 224}
SCRATCH_VALUES = {"recipe": "from-scratch", "weights": "none", "epochs": 40, "batch_size": 16, "learning_rate": 1e-3,
                  "input_normalization": "per_image", "class_weighting": "balanced", "reduce_lr_patience": 4,
                  "early_stopping_patience": 10, "image_size": 224}  # the recipe leaves the image size alone
SMALL_VALUES = {"recipe": "small-cnn", "weights": "none", "backbone": "small_cnn", "epochs": 30, "batch_size": 32,
                "learning_rate": 1e-3, "input_normalization": "per_image", "class_weighting": "balanced",
                "reduce_lr_patience": 3, "early_stopping_patience": 8, "image_size": 224}


@pytest.mark.parametrize("values, expected", [
    ({}, SEED_VALUES),
    ({"recipe": "seed"}, SEED_VALUES),
    ({"recipe": "from-scratch"}, SCRATCH_VALUES),
    ({"recipe": "from-scratch", "epochs": "12", "image_size": 128}, {**SCRATCH_VALUES, "epochs": 12, "image_size": 128}),
    ({"recipe": "from-scratch", "trainer": {"learning_rate": "3e-4"}}, {**SCRATCH_VALUES, "learning_rate": 3e-4}),
    ({"recipe": "seed", "weights": "none", "batch_size": 8}, {**SEED_VALUES, "weights": "none", "batch_size": 8}),
])
def test_a_recipe_sits_above_the_defaults_and_below_every_given_value(values, expected):
    flat = TrainConfig.from_settings(values).flat()
    assert {key: flat[key] for key in expected} == expected


def test_the_recipes_set_known_settings_of_the_right_type():
    from training.config import DEFAULT_RECIPE, RECIPES

    assert DEFAULT_RECIPE == "seed" and RECIPES["seed"] == {} and list(RECIPES) == ["seed", "from-scratch", "small-cnn"]
    for settings in RECIPES.values():
        for key, value in settings.items():
            assert parse_setting(key, value) == value and type(parse_setting(key, value)) is type(value)
        assert "image_size" not in settings


def test_an_unknown_recipe_lists_the_recipes():
    with pytest.raises(ValueError) as caught:
        TrainConfig.from_settings({"recipe": "bogus"})
    assert str(caught.value) == "unknown recipe 'bogus'; recipes: seed, from-scratch, small-cnn"
    with pytest.raises(ValueError) as caught:
        dataclasses.replace(TrainConfig.from_settings({"train_site": "a=x", "val_site": "b=y"}),
                            recipe="bogus").validate(check_folders=False)
    assert "recipe must be one of seed, from-scratch, small-cnn; got 'bogus'" in str(caught.value)


@pytest.mark.parametrize("weights", ["imagenet", "backbone.weights.h5"])
def test_the_from_scratch_recipe_refuses_pretrained_weights(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_hdf5(tmp_path / "backbone.weights.h5")
    config = TrainConfig.from_settings({"train_site": "a=x", "val_site": "b=y", "recipe": "from-scratch",
                                        "weights": weights, "input_normalization": "imagenet"})
    with pytest.raises(ValueError) as caught:
        config.validate(check_folders=False)
    assert f"recipe from-scratch trains from scratch (weights none), got weights {weights!r}" in str(caught.value)


def test_the_recipe_is_recorded_and_defines_the_run(tmp_path):
    base = TrainConfig.from_settings({"train_site": "br35h=data/br35h", "val_site": "nav=data/nav", "recipe": "seed",
                                      **{key: value for key, value in SCRATCH_VALUES.items() if key != "recipe"}})
    renamed = base.replace(recipe="from-scratch")  # the same values under another recipe name
    assert {key: value for key, value in renamed.flat().items() if key != "recipe"} == {
        key: value for key, value in base.flat().items() if key != "recipe"}
    assert base.defining_settings()["recipe"] == "seed" and renamed.defining_settings()["recipe"] == "from-scratch"
    assert renamed.default_output() != base.default_output()
    assert renamed.flat_params()["recipe"] == "from-scratch" and renamed.to_dict()["recipe"] == "from-scratch"
    (tmp_path / "config.json").write_text(json.dumps(renamed.to_dict()))
    assert TrainConfig.from_settings(read_config_file(str(tmp_path / "config.json"))) == renamed


def test_resuming_with_another_recipe_is_the_settings_mismatch_error(tmp_path):
    from training.loop import _check_same_run
    from training.state import Schedule, StateError, TrainState

    seed = TrainConfig.from_settings({"train_site": "a=x", "val_site": "b=y", "weights": "none"})
    scratch = seed.replace(recipe="from-scratch")
    state = TrainState(run_id="r", fingerprint=seed.defining_settings(), replicas=1, schedule=Schedule())
    _check_same_run(state, seed.defining_settings(), tmp_path)  # same recipe: resumes
    with pytest.raises(StateError) as caught:
        _check_same_run(state, scratch.defining_settings(), tmp_path)
    assert "holds a run with other settings (recipe: seed -> from-scratch)" in str(caught.value)


@pytest.mark.parametrize("values, noted", [
    ({"weights": "none"}, True),
    ({"weights": "imagenet"}, False),
    ({"recipe": "from-scratch"}, False),
    ({"weights": "none", "backbone": "small_cnn"}, False),  # the note speaks of the ResNet50 measured
])
def test_the_from_scratch_note(values, noted):
    from training.config import from_scratch_note

    note = from_scratch_note(TrainConfig.from_settings(values))
    assert bool(note) is noted
    if noted:
        assert "seed recipe barely learns from scratch" in note and "--recipe from-scratch" in note
        assert "\n" not in note


# ---- recipes through the command line: defaults < recipe < --config < demo < flags < --set ------------

@pytest.fixture
def cli_folder(tmp_path, monkeypatch):
    """A working folder with two tiny sites (never read) and two config files."""
    for site in ("site_a", "site_b"):
        for label in ("yes", "no"):
            (tmp_path / site / label).mkdir(parents=True)
            (tmp_path / site / label / "image.png").write_bytes(b"never read")
    (tmp_path / "epochs20.yaml").write_text("epochs: 20\n")
    (tmp_path / "scratch20.yaml").write_text("recipe: from-scratch\nepochs: 20\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


CLI_SITES = ["--train-site", "a=site_a", "--val-site", "b=site_b"]


def cli_config(arguments: list[str]) -> TrainConfig:
    from train_distributed import build_train_config, train

    with train.make_context("train", [*CLI_SITES, *arguments]) as ctx:
        params = ctx.params
        return build_train_config(ctx, params["config_file"], params["overrides"], params["demo"], params)


@pytest.mark.parametrize("arguments, expected", [
    ([], SEED_VALUES),
    (["--recipe", "seed"], SEED_VALUES),
    (["--recipe", "from-scratch"], SCRATCH_VALUES),
    (["--recipe", "from-scratch", "--image-size", "128"], {**SCRATCH_VALUES, "image_size": 128}),
    (["--recipe", "small-cnn", "--image-size", "128"], {**SMALL_VALUES, "image_size": 128}),
    (["--recipe", "from-scratch", "--epochs", "12"], {**SCRATCH_VALUES, "epochs": 12}),          # flag > recipe
    (["--recipe", "from-scratch", "--epochs", "15"], {**SCRATCH_VALUES, "epochs": 15}),          # even the default
    (["--recipe", "from-scratch", "--set", "learning_rate=3e-4"], {**SCRATCH_VALUES, "learning_rate": 3e-4}),
    (["--recipe", "from-scratch", "--batch-size", "32", "--set", "batch_size=8"], {**SCRATCH_VALUES, "batch_size": 8}),
    (["--recipe", "from-scratch", "--config", "epochs20.yaml"], {**SCRATCH_VALUES, "epochs": 20}),  # file > recipe
    (["--config", "scratch20.yaml"], {**SCRATCH_VALUES, "epochs": 20}),                         # the file names it
    (["--config", "scratch20.yaml", "--epochs", "5"], {**SCRATCH_VALUES, "epochs": 5}),          # flag > file
    (["--config", "scratch20.yaml", "--recipe", "seed"], {**SEED_VALUES, "epochs": 20}),        # flag names it
    (["--set", "recipe=from-scratch"], SCRATCH_VALUES),
    (["--recipe", "from-scratch", "--set", "recipe=seed"], SEED_VALUES),                        # --set names it
    (["--weights", "none"], {**SEED_VALUES, "weights": "none"}),
])
def test_the_command_line_layers_the_recipe(arguments, expected, cli_folder):
    flat = cli_config(arguments).flat()
    assert {key: flat[key] for key in expected} == expected


def test_two_commands_differing_only_in_recipe_get_two_folders(cli_folder):
    settings = [f"--set={key}={value}" for key, value in SCRATCH_VALUES.items() if key != "recipe"]
    seed, scratch = cli_config(settings), cli_config(["--recipe", "from-scratch", *settings])
    assert (seed.recipe, scratch.recipe) == ("seed", "from-scratch")
    assert seed.runtime.output != scratch.runtime.output
    assert seed.runtime.output.startswith("runs/a-seed0-") and scratch.runtime.output.startswith("runs/a-seed0-")


def test_ablate_passes_the_recipe_to_every_run(cli_folder):
    from train_distributed import check_ablation_runs
    from training.ablation import ablation_plan

    plan = ablation_plan(["recipe=from-scratch"], ["long: epochs=60"], "one-at-a-time")
    configs = check_ablation_runs(plan, [*CLI_SITES, "--weights", "none"], [])
    assert [(c.recipe, c.trainer.epochs, c.trainer.batch_size) for c in configs] == [
        ("seed", 15, 100), ("from-scratch", 40, 16), ("seed", 60, 100)]
    configs = check_ablation_runs(plan, [*CLI_SITES, "--recipe", "from-scratch", "--epochs", "12"], [0, 1])
    assert [(c.recipe, c.trainer.epochs, c.trainer.batch_size, c.seed) for c in configs] == [
        ("from-scratch", 12, 16, 0), ("from-scratch", 12, 16, 1), ("from-scratch", 12, 16, 0),
        ("from-scratch", 12, 16, 1), ("from-scratch", 60, 16, 0), ("from-scratch", 60, 16, 1)]


@pytest.mark.parametrize("arguments, noted", [
    (["--weights", "none"], True),
    (["--set", "weights=none"], True),
    (["--recipe", "from-scratch"], False),
    ([], False),
])
def test_train_prints_the_from_scratch_note_once_at_the_start(arguments, noted, cli_folder, monkeypatch):
    import sys
    import types

    from click.testing import CliRunner

    from train_distributed import cli

    started = []
    monkeypatch.setitem(sys.modules, "training.loop",  # no training: only what train says before it starts
                        types.SimpleNamespace(run_training=lambda config: started.append(config) or 0))
    result = CliRunner().invoke(cli, ["train", *CLI_SITES, *arguments])
    assert result.exit_code == 0, result.output
    assert len(started) == 1
    assert result.output.count("seed recipe barely learns from scratch") == (1 if noted else 0)
    if noted:
        assert result.output.splitlines()[0].startswith("note: the seed recipe barely learns from scratch")
