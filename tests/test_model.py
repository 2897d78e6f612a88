"""The model: head, frozen layers, input normalisation, saving with the project's layers."""
from __future__ import annotations

import numpy as np
import pytest

from training.config import TrainConfig
from training.model import build_model, custom_objects


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig.from_settings({"image_size": 32, "weights": "none", "dense_units": 8, **changes})


def tiny_model(**changes):
    config = tiny_config(**changes)
    return build_model(config.model, config.data.image_size)


def test_head_matches_the_seed_recipe():
    model = tiny_model()
    names = [layer.name for layer in model.layers]
    assert names[-5:] == ["global_max_pool", "dense", "dense_bn", "dropout", "tumour_probability"]
    assert model.get_layer("dropout").rate == 0.5
    assert model.output_shape == (None, 1) and model.input_shape == (None, 32, 32, 1)
    assert model.get_layer("tumour_probability").dtype_policy.name == "float32"
    # with --weights none nothing is frozen (frozen random filters learn nothing)
    assert all(layer.trainable for layer in model.get_layer("resnet50").layers)


@pytest.mark.parametrize("normalization", ["imagenet", "per_image"])
def test_input_normalisation_and_round_trip(tmp_path, normalization):
    import keras

    model = tiny_model(input_normalization=normalization)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype(np.float32)
    before = np.asarray(model(images, training=False))
    assert before.shape == (2, 1) and np.all((before >= 0) & (before <= 1))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, custom_objects=custom_objects())
    np.testing.assert_allclose(np.asarray(loaded(images, training=False)), before, atol=1e-6)


def test_per_image_standardisation_ignores_scanner_gain():
    layer = custom_objects()["PerImageStandardization"]()
    images = np.random.default_rng(1).uniform(0, 100, (1, 8, 8, 3)).astype(np.float32)
    first, second = np.asarray(layer(images)), np.asarray(layer(images * 2.0 + 10.0))
    np.testing.assert_allclose(first, second, atol=1e-3)
    assert abs(first.mean()) < 1e-5 and abs(first.std() - 1) < 1e-3


@pytest.mark.parametrize("changes, message", [
    ({"input_normalization": "zscore"}, "input_normalization"),
    ({"class_weighting": "inverse"}, "class_weighting"),
    ({"input_normalization": "per_image", "weights": "imagenet"}, "per_image"),
    ({"test_time_augmentation": "rotations"}, "test_time_augmentation"),
])
def test_model_settings_are_validated(changes, message, synthetic_sites):
    config = tiny_config(train_site=f"a={synthetic_sites['synth_a']}", val_site=f"b={synthetic_sites['synth_b']}",
                         **changes)
    with pytest.raises(ValueError, match=message):
        config.validate()


@pytest.mark.parametrize("mode, views", [("none", [()]), ("flips", [(), (2,), (1,), (1, 2)])])
def test_test_time_augmentation_averages_the_flips(mode, views):
    import keras

    from training.cluster import choose_strategy
    from training.steps import make_predict_step, predict_site

    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(2, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(hidden))
    model = keras.Model(inputs, outputs)  # not flip-invariant: the dense weights see positions
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    cluster = choose_strategy(gpus=0)
    scores = predict_site(cluster, make_predict_step(cluster, model, mode), images, batch_size=4)
    batch = images[..., None].astype(np.float32)
    expected = np.mean([model.predict(np.flip(batch, axis=axes) if axes else batch, verbose=0)[:, 0]
                        for axes in views], axis=0)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    if mode == "flips":
        plain = model.predict(batch, verbose=0)[:, 0]
        assert np.abs(scores - plain).max() > 1e-4


def test_a_saved_model_loads_in_a_fresh_process_that_imports_the_model_module(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    model = tiny_model(input_normalization="per_image")
    images = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 1)).astype(np.float32)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "images.npy", images)
    code = ("import sys, numpy as np, keras; sys.path.insert(0, sys.argv[1]); import training.model; "
            "m = keras.models.load_model(sys.argv[2]); "
            "print(repr(np.asarray(m(np.load(sys.argv[3]), training=False))[:, 0].tolist()))")
    result = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parents[1]),
                             str(tmp_path / "model.keras"), str(tmp_path / "images.npy")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = eval(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(loaded, np.asarray(model(images, training=False))[:, 0], atol=1e-6)


def test_small_cnn_backbone():
    model = tiny_model(backbone="small_cnn")
    names = [layer.name for layer in model.layers]
    assert names[-5:] == ["global_max_pool", "dense", "dense_bn", "dropout", "tumour_probability"]
    assert sum(name.startswith("cnn_block") and name.endswith(("conv1", "conv2")) for name in names) == 8
    assert model.get_layer("cnn_block4_pool").output.shape[1:] == (2, 2, 128)  # 32 px / 16
    features = sum(int(np.prod(w.shape)) for w in model.weights
                   if w.path.startswith("cnn_block") and "moving" not in w.path)
    assert features == 294_000  # 293,040 convolution weights (3*16*9 + 16*16*9 + ... + 128*128*9) + 960 BatchNorm
    scores = np.asarray(model(np.zeros((2, 32, 32, 1), np.float32), training=False))
    assert scores.shape == (2, 1)


@pytest.mark.parametrize("changes, message", [
    ({"backbone": "vgg16"}, "backbone must be one of resnet50, small_cnn"),
    ({"backbone": "small_cnn", "weights": "imagenet"}, "no pretrained weights"),
])
def test_backbone_settings_are_validated(changes, message, synthetic_sites):
    config = tiny_config(train_site=f"a={synthetic_sites['synth_a']}", val_site=f"b={synthetic_sites['synth_b']}",
                         **changes)
    with pytest.raises(ValueError, match=message):
        config.validate()
