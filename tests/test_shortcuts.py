"""Shortcut audit: per-file features with known answers, single-feature AUCs, the feature classifiers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.shortcuts import (
    CLASSIFIERS,
    FEATURE_NAMES,
    cross_validated_auc,
    feature_aucs,
    format_shortcut_table,
    image_features,
    jpeg_quality,
    noise_sigma,
    sharpness,
    shortcut_audit,
    shortcut_baseline,
    site_separability,
    stored_sample_format,
)
from datasets.validation import decode_image_bytes

COLUMN = {name: index for index, name in enumerate(FEATURE_NAMES)}


def textured(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur((rng.random((height, width)) * 255).astype(np.uint8), (5, 5), 0)
    cv2.circle(image, (width // 2, height // 2), min(height, width) // 3, 220, -1)
    return image


def encode(image: np.ndarray, extension: str, *params: int) -> bytes:
    ok, buffer = cv2.imencode(extension, image, list(params))
    assert ok
    return buffer.tobytes()


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95, 100])
@pytest.mark.parametrize("colour", [False, True])
def test_jpeg_quality_round_trip(quality, colour):
    image = textured()
    if colour:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    data = encode(image, ".jpg", cv2.IMWRITE_JPEG_QUALITY, quality)
    assert abs(jpeg_quality(data) - quality) <= 1


def test_jpeg_quality_is_nan_for_other_formats():
    assert math.isnan(jpeg_quality(encode(textured(), ".png")))
    assert math.isnan(jpeg_quality(encode(textured(), ".bmp")))
    assert math.isnan(jpeg_quality(b"not an image"))


@pytest.mark.parametrize("make, extension, expected", [
    (lambda image: image, ".png", (8, 1)),
    (lambda image: cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), ".png", (8, 3)),
    (lambda image: cv2.cvtColor(image, cv2.COLOR_GRAY2BGRA), ".png", (8, 4)),
    (lambda image: image.astype(np.uint16) * 250, ".png", (16, 1)),
    (lambda image: image, ".jpg", (8, 1)),
    (lambda image: cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), ".jpg", (8, 3)),
    (lambda image: cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), ".tiff", (8, 3)),
])
def test_bit_depth_and_channels_come_from_the_header(make, extension, expected):
    assert stored_sample_format(encode(make(textured()), extension)) == expected


def test_features_of_a_synthetic_image_have_known_values():
    image = np.zeros((80, 120), np.uint8)
    image[:, 60:] = 200  # half black, half 200: mean 100, sd 100
    data = encode(image, ".png")
    features = image_features(data, image, (10, 20, 50, 60))
    assert features.shape == (len(FEATURE_NAMES),) and features.dtype == np.float64
    expected = {"width": 120, "height": 80, "aspect": 1.5, "bytes_per_pixel": len(data) / 9600,
                "bit_depth": 8, "channels": 1, "mean_intensity": 100, "intensity_sd": 100,
                "border_fraction": 1 - 40 * 40 / 9600}
    for name, value in expected.items():
        assert features[COLUMN[name]] == pytest.approx(value), name
    assert math.isnan(features[COLUMN["jpeg_quality"]])


@pytest.mark.parametrize("box, fraction", [((0, 0, 64, 48), 0.0), ((0, 0, 32, 48), 0.5), ((5, 5, 5, 40), 1.0)])
def test_border_fraction(box, fraction):
    image = textured(48, 64)
    assert image_features(b"", image, box)[COLUMN["border_fraction"]] == pytest.approx(fraction)


def test_blurred_image_is_less_sharp():
    image = textured()
    assert sharpness(image) == pytest.approx(cv2.Laplacian(image, cv2.CV_64F, ksize=1).var(), rel=1e-12)
    assert sharpness(cv2.GaussianBlur(image, (9, 9), 3)) < 0.5 * sharpness(image)


@pytest.mark.parametrize("sigma", [3.0, 8.0, 20.0])
def test_noise_estimate_of_added_gaussian_noise(sigma):
    rng = np.random.default_rng(1)
    ramp = np.add.outer(np.linspace(60, 120, 256), np.linspace(0, 40, 256))  # planes and ramps cancel
    image = np.clip(np.round(ramp + rng.normal(0, sigma, ramp.shape)), 0, 255).astype(np.uint8)
    assert noise_sigma(image) == pytest.approx(sigma, rel=0.15)


def test_degenerate_images():
    constant = np.full((40, 40), 7, np.uint8)
    features = image_features(b"", constant, (0, 0, 40, 40))
    assert features[COLUMN["intensity_sd"]] == 0 and features[COLUMN["sharpness"]] == 0
    assert features[COLUMN["noise"]] == 0 and features[COLUMN["border_fraction"]] == 0
    assert math.isnan(features[COLUMN["bit_depth"]]) and math.isnan(features[COLUMN["channels"]])
    tiny = image_features(b"", np.array([[3]], np.uint8), (0, 0, 1, 1))
    assert tiny[COLUMN["width"]] == 1 and math.isnan(tiny[COLUMN["noise"]])


@pytest.mark.parametrize("grey, box", [
    (np.zeros((10, 10), np.float32), (0, 0, 10, 10)),
    (np.zeros((10, 10, 3), np.uint8), (0, 0, 10, 10)),
    (np.zeros((0, 10), np.uint8), (0, 0, 0, 0)),
    (np.zeros((10, 10), np.uint8), (0, 0, 11, 10)),
    (np.zeros((10, 10), np.uint8), (5, 0, 4, 10)),
    (np.zeros((10, 10), np.uint8), (0, 0, 10)),
])
def test_bad_input_is_a_value_error(grey, box):
    with pytest.raises(ValueError):
        image_features(b"", grey, box)


def test_features_match_the_validation_decoder_on_a_jpeg():
    image = textured()
    data = encode(image, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 80)
    grey = decode_image_bytes(data)
    features = image_features(data, grey, (0, 0, grey.shape[1], grey.shape[0]))
    assert features[COLUMN["jpeg_quality"]] == 80 and features[COLUMN["channels"]] == 1


# ----------------------------------------------------------------------------- single-feature AUC


def labels_and_noise(count: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], count // 2)
    return labels, rng.normal(size=count)


def test_feature_aucs_are_oriented_with_intervals():
    labels, noise = labels_and_noise()
    features = np.column_stack([labels, 1 - labels, noise, np.full(labels.shape, 3.0)])
    result = feature_aucs(features, labels, n_resamples=200, names=["equal", "opposite", "random", "constant"])
    table = {  # name: (auc low, auc high, direction)
        "equal": (1.0, 1.0, "higher means tumour"),
        "opposite": (1.0, 1.0, "lower means tumour"),
        "random": (0.5, 0.6, None),
        "constant": (0.5, 0.5, "higher means tumour"),
    }
    for name, (low, high, direction) in table.items():
        entry = result[name]
        assert low <= entry["auc"] <= high, name
        assert entry["ci"][0] <= entry["auc"] <= entry["ci"][1], name
        if direction:
            assert entry["direction"] == direction, name
    assert result["random"]["ci"][0] < 0.5 < result["random"]["ci"][1]
    assert result["constant"]["ci"] == [0.5, 0.5]


def test_nan_ranks_below_every_value():
    labels = np.repeat([0, 1], 50)
    values = np.where(labels == 1, np.nan, np.arange(100.0))  # missing exactly for tumours
    result = feature_aucs(values[:, None], labels, n_resamples=50, names=["quality"])["quality"]
    assert result["auc"] == 1.0 and result["direction"] == "lower means tumour" and result["missing"] == 50
    all_missing = feature_aucs(np.full((100, 1), np.nan), labels, n_resamples=50, names=["q"])["q"]
    assert all_missing["auc"] == 0.5


def test_feature_aucs_one_class_and_bad_input():
    assert math.isnan(feature_aucs(np.ones((5, 1)), np.ones(5, int), names=["x"])["x"]["auc"])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        feature_aucs(np.ones((3, 1)), np.array([0, 1, 2]), names=["x"])
    with pytest.raises(ValueError, match="2-D"):
        feature_aucs(np.ones(3), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="names"):
        feature_aucs(np.ones((3, 2)), np.array([0, 1, 1]), names=["x"])


# ----------------------------------------------------------------------------- classifiers


def synthetic_site(count: int, *, separating: bool, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], count // 2)
    features = rng.normal(size=(count, 4)) + shift
    if separating:
        features[:, 1] += 4.0 * labels
    features[rng.random(count) < 0.1, 2] = np.nan  # like the JPEG quality of a PNG
    return np.abs(features) + 1.0 if separating else features, labels


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_baseline_and_cross_validation(classifier):
    train = synthetic_site(200, separating=True, seed=0)
    evaluation = synthetic_site(200, separating=True, seed=1)
    assert shortcut_baseline(*train, *evaluation, n_resamples=100, classifier=classifier)["auc"] > 0.95
    assert cross_validated_auc(*train, n_resamples=100, classifier=classifier)["auc"] > 0.95
    train = synthetic_site(200, separating=False, seed=0)
    evaluation = synthetic_site(200, separating=False, seed=1)
    none = shortcut_baseline(*train, *evaluation, n_resamples=100, classifier=classifier)
    assert abs(none["auc"] - 0.5) < 0.15 and none["ci"][0] <= none["auc"] <= none["ci"][1]
    assert abs(cross_validated_auc(*train, n_resamples=100, classifier=classifier)["auc"] - 0.5) < 0.15


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_a_feature_missing_on_every_training_row_is_ignored(classifier):
    train, evaluation = synthetic_site(100, separating=True, seed=0), synthetic_site(100, separating=True, seed=1)
    train[0][:, 2] = np.nan  # a training site of PNGs: no JPEG quality at all
    assert shortcut_baseline(*train, *evaluation, n_resamples=50, classifier=classifier)["auc"] > 0.95
    nothing = np.full_like(train[0], np.nan)
    assert shortcut_baseline(nothing, train[1], *evaluation, n_resamples=50, classifier=classifier)["auc"] == 0.5


def test_same_seed_same_numbers():
    train, evaluation = synthetic_site(120, separating=False, seed=0), synthetic_site(120, separating=False, seed=1)
    first = shortcut_baseline(*train, *evaluation, n_resamples=100, seed=3)
    assert first == shortcut_baseline(*train, *evaluation, n_resamples=100, seed=3)
    assert cross_validated_auc(*train, seed=3, n_resamples=50) == cross_validated_auc(*train, seed=3, n_resamples=50)


@pytest.mark.parametrize("positives, folds_used", [(3, 3), (1, 0), (0, 0)])
def test_cross_validation_with_few_images_of_a_class(positives, folds_used):
    labels = np.array([1] * positives + [0] * 20)
    features = np.random.default_rng(0).normal(size=(labels.size, 3)) + 3.0 * labels[:, None]
    result = cross_validated_auc(features, labels, folds=5, n_resamples=50)
    assert result["folds"] == folds_used
    assert math.isnan(result["auc"]) == (folds_used == 0)


def test_baseline_bad_input():
    features, labels = synthetic_site(40, separating=True, seed=0)
    with pytest.raises(ValueError, match="both classes"):
        shortcut_baseline(features, np.zeros(40, int), features, labels)
    with pytest.raises(ValueError, match="columns"):
        shortcut_baseline(features, labels, features[:, :2], labels)
    with pytest.raises(ValueError, match="unknown classifier"):
        shortcut_baseline(features, labels, features, labels, classifier="forest")
    with pytest.raises(ValueError, match="folds"):
        cross_validated_auc(features, labels, folds=1)


def test_site_separability():
    same = site_separability({"a": synthetic_site(100, separating=False, seed=0)[0],
                              "b": synthetic_site(100, separating=False, seed=1)[0]}, n_resamples=50)
    assert abs(same["balanced_accuracy"] - 0.5) < 0.15 and abs(same["pairwise"]["a vs b"]["auc"] - 0.5) < 0.15
    apart = site_separability({"a": synthetic_site(100, separating=False, seed=0)[0],
                               "b": synthetic_site(60, separating=False, seed=1, shift=5.0)[0],
                               "c": synthetic_site(60, separating=False, seed=2, shift=-5.0)[0]}, n_resamples=50)
    assert apart["balanced_accuracy"] > 0.95 and apart["chance"] == pytest.approx(1 / 3)
    assert set(apart["pairwise"]) == {"a vs b", "a vs c", "b vs c"}
    assert all(entry["auc"] > 0.95 for entry in apart["pairwise"].values())
    with pytest.raises(ValueError, match="two sites"):
        site_separability({"a": np.ones((10, 2))})


def test_shortcut_audit_is_json_ready_and_tabulates():
    width = len(FEATURE_NAMES)
    rng = np.random.default_rng(0)

    def site(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat([0, 1], count // 2)
        features = np.random.default_rng(seed).normal(size=(count, width)) + 10.0
        features[:, COLUMN["sharpness"]] -= 3.0 * labels  # tumour images blurrier
        features[:, COLUMN["bit_depth"]] = 8.0
        features[rng.random(count) < 0.2, COLUMN["jpeg_quality"]] = np.nan
        return features, labels

    result = shortcut_audit({"train": site(80, 0), "test": site(60, 1)}, "train", n_resamples=50,
                            classifier="logistic")
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result
    assert result["features"] == list(FEATURE_NAMES)
    assert "baseline" not in result["sites"]["train"] and result["sites"]["test"]["baseline"]["auc"] > 0.9
    sharp = result["sites"]["test"]["feature_auc"]["sharpness"]
    assert sharp["auc"] > 0.9 and sharp["direction"] == "lower means tumour"
    table = format_shortcut_table(result)
    assert "sharpness" in table and "baseline (fit on train)" in table and "(train site)" in table
    sharp_line = next(line for line in table.splitlines() if line.startswith("sharpness"))
    assert sharp_line.count("*") == 2
    with pytest.raises(ValueError, match="train site"):
        shortcut_audit({"a": site(20, 0)}, "b")


def test_real_mos_images_separate_by_sharpness(data_dir: Path):
    labels, rows = [], []
    for folder, label in (("notumor", 0), ("glioma", 1), ("meningioma", 1)):
        paths = sorted((data_dir / "mos" / "Testing" / folder).glob("*.jpg"))
        for path in paths[: 20 if label == 0 else 10]:
            data = path.read_bytes()
            grey = decode_image_bytes(data)
            rows.append(image_features(data, grey, (0, 0, grey.shape[1], grey.shape[0])))
            labels.append(label)
    result = feature_aucs(np.array(rows), np.array(labels), n_resamples=200)["sharpness"]
    assert result["auc"] > 0.8 and result["direction"] == "lower means tumour"


def test_baseline_scores_are_the_baseline_and_seeded():
    from datasets.shortcuts import shortcut_baseline, shortcut_baseline_scores

    rng = np.random.default_rng(3)
    labels = np.tile([0, 1], 60)
    features = rng.normal(size=(120, 4))
    features[:, 2] += 1.5 * labels
    scores = shortcut_baseline_scores(features[:80], labels[:80], features[80:], seed=1)
    assert scores.shape == (40,) and scores.dtype == np.float64 and ((0 <= scores) & (scores <= 1)).all()
    np.testing.assert_array_equal(scores, shortcut_baseline_scores(features[:80], labels[:80], features[80:], seed=1))
    from eval.metrics import roc_auc
    baseline = shortcut_baseline(features[:80], labels[:80], features[80:], labels[80:], seed=1, n_resamples=50)
    assert baseline["auc"] == pytest.approx(roc_auc(labels[80:], scores))
    assert shortcut_baseline_scores(features[:80], labels[:80], features[:0]).shape == (0,)


def test_audit_of_one_site_has_no_separability():
    from datasets.shortcuts import shortcut_audit

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    result = shortcut_audit({"only": (rng.normal(size=(40, 12)), labels)}, "only", n_resamples=20)
    assert result["site_separability"] is None and "baseline" not in result["sites"]["only"]
