"""The grouped config: values parsed by the setting's type, flat and grouped files, the run's fingerprint."""
from __future__ import annotations

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
