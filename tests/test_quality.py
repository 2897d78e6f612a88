"""Data-quality review: the CT-like score, cross-validated probabilities, cleanlab label issues, outputs."""
from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest

from brain_crop import crop_brain
from datasets.quality import (
    CLASSIFIER_DESCRIPTION,
    CSV_COLUMNS,
    NOT_MRI_THRESHOLD,
    cross_validated_probabilities,
    duplicate_group_ids,
    hog_features,
    label_issues,
    not_mri_scores,
    quality_montage,
    quality_review,
    sensitivity_mask,
    write_quality_outputs,
)
from datasets.records import Sample
from datasets.synthetic import PROFILES, make_phantom

SIZE = 128


# ---------------------------------------------------------------- phantoms


def disc_phantom(*, ring: int, rim_width: int, interior: int, seed: int = 0, size: int = SIZE,
                 noise: float = 4.0, axes: tuple[float, float] = (0.44, 0.48)) -> np.ndarray:
    """(size, size) uint8: a uniform ``interior`` disc inside a ``rim_width``-px ring of grey ``ring``."""
    rng = np.random.default_rng(seed)
    centre = (size // 2, size // 2)
    outer = (int(axes[0] * size), int(axes[1] * size))
    inner = (outer[0] - rim_width, outer[1] - rim_width)
    image = np.zeros((size, size), np.float32)
    cv2.ellipse(image, centre, outer, 0, 0, 360, float(ring), -1)
    cv2.ellipse(image, centre, inner, 0, 0, 360, float(interior), -1)
    head = image > 0
    image[head] += rng.normal(0, noise, int(head.sum()))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def ct_phantom(seed: int = 0, *, rim_width: int = 6, interior: int = 100, axes=(0.44, 0.48)) -> np.ndarray:
    """CT-like: a saturated skull ring around uniform mid-grey brain with two dark ventricles."""
    image = disc_phantom(ring=255, rim_width=rim_width, interior=interior, seed=seed, axes=axes)
    for side in (-1, 1):
        cv2.ellipse(image, (SIZE // 2 + side * 10, SIZE // 2), (5, 14), side * 15, 0, 360, 30, -1)
    return image


@pytest.mark.parametrize("rim_width, interior, axes", [
    (6, 100, (0.44, 0.48)),
    (5, 90, (0.40, 0.48)),
    (8, 120, (0.46, 0.46)),
    (7, 60, (0.42, 0.47)),
])
def test_ct_like_phantom_scores_above_threshold(rim_width, interior, axes):
    images = np.stack([ct_phantom(seed, rim_width=rim_width, interior=interior, axes=axes) for seed in range(3)])
    scores = not_mri_scores(images)
    assert scores.dtype == np.float64 and scores.shape == (3,)
    assert (scores >= NOT_MRI_THRESHOLD).all(), scores


@pytest.mark.parametrize("ring, rim_width, interior, why", [
    (40, 5, 170, "bright interior, dark rim (T2-like)"),
    (20, 8, 140, "dark bone directly around bright tissue"),
    (150, 6, 120, "rim barely brighter than the interior"),
    (255, 1, 100, "a hairline ring is no skull"),
])
def test_mri_like_discs_score_below_threshold(ring, rim_width, interior, why):
    images = np.stack([disc_phantom(ring=ring, rim_width=rim_width, interior=interior, seed=seed) for seed in range(3)])
    assert (not_mri_scores(images) < NOT_MRI_THRESHOLD).all(), why


def test_scalp_fat_outside_dark_skull_is_not_ct():
    # T1-like: bright scalp fat ring, then dark skull, then mid-grey brain
    image = disc_phantom(ring=230, rim_width=4, interior=20, seed=1)
    cv2.ellipse(image, (SIZE // 2, SIZE // 2), (int(0.44 * SIZE) - 8, int(0.48 * SIZE) - 8), 0, 0, 360, 95, -1)
    assert not_mri_scores(image[None])[0] < NOT_MRI_THRESHOLD


@pytest.mark.parametrize("profile", ["b", "c"])
def test_synthetic_site_phantoms_score_below_threshold(profile):
    # Profiles b and c (blurred, as scanners are). Profile a draws a sharp bright skull
    # directly around the brain, which is the CT signature, and can score above.
    rng = np.random.default_rng(3)
    crops = np.stack([crop_brain(make_phantom(rng, 96, index % 2 == 0, PROFILES[profile]), SIZE)[0]
                      for index in range(12)])
    assert (not_mri_scores(crops) < NOT_MRI_THRESHOLD).all()


@pytest.mark.parametrize("image, expected", [
    (np.zeros((SIZE, SIZE), np.uint8), 0.0),                       # blank
    (np.full((SIZE, SIZE), 200, np.uint8), 0.0),                   # white background: ring is the frame
])
def test_degenerate_images_score_zero(image, expected):
    assert not_mri_scores(image[None])[0] == expected


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 64, 48), np.uint8), "must be \\(N, S, S\\)"),
    (np.zeros((64, 64), np.uint8), "must be \\(N, S, S\\)"),
    (np.zeros((1, 64, 64), np.float32), "uint8"),
    (np.zeros((1, 16, 16), np.uint8), "at least 32"),
])
def test_not_mri_scores_rejects_bad_input(images, message):
    with pytest.raises(ValueError, match=message):
        not_mri_scores(images)


# ---------------------------------------------------------------- cross-validated probabilities


def separable_set(count_per_class: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Phantoms of one profile; label 1 has tumour blobs."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(2 * count_per_class):
        tumour = index % 2 == 1
        images.append(make_phantom(rng, 64, tumour, PROFILES["a"]))
        labels.append(int(tumour))
    return np.stack(images), np.array(labels)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    positive, negative = scores[labels == 1], scores[labels == 0]
    return float(((positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])).mean())


def test_cross_validated_probabilities_separate_a_separable_set_and_are_seeded():
    images, labels = separable_set()
    first = cross_validated_probabilities(images, labels, folds=4, seed=0)
    assert first.shape == (len(labels),) and first.dtype == np.float64
    assert ((first >= 0) & (first <= 1)).all()
    assert auc(labels, first) > 0.9
    np.testing.assert_array_equal(first, cross_validated_probabilities(images, labels, folds=4, seed=0))
    assert not np.array_equal(first, cross_validated_probabilities(images, labels, folds=4, seed=1))


def test_grouped_folds_keep_copies_out_of_the_training_folds():
    images, labels = separable_set(20)
    # every image twice: without groups the copy in another fold gives the answer away
    doubled, doubled_labels = np.concatenate([images, images]), np.concatenate([labels, labels])
    groups = np.concatenate([np.arange(len(labels))] * 2)
    flipped = doubled_labels.copy()
    flipped[[0, len(labels)]] = 1 - flipped[0]  # a label error present in both copies
    grouped = cross_validated_probabilities(doubled, flipped, folds=4, groups=groups)
    # both copies of one scan are scored by the same model, which saw neither
    np.testing.assert_allclose(grouped[:len(labels)], grouped[len(labels):], atol=1e-9)


def test_duplicate_group_ids_match_the_audit_hashes():
    from datasets.phash import perceptual_hash

    images, _ = separable_set(4)
    hashes = perceptual_hash(np.concatenate([images, images[:2]]))
    groups = duplicate_group_ids(hashes)
    assert groups.shape == (10,)
    assert groups[8] == groups[0] and groups[9] == groups[1]
    with pytest.raises(ValueError, match="uint64"):
        duplicate_group_ids(np.zeros((3, 2), np.int64))


def test_hog_features_shape():
    images = np.zeros((3, 96, 96), np.uint8)
    assert hog_features(images).shape == (3, 15 * 15 * 4 * 9)
    assert hog_features(images[:0]).shape == (0, 8100)


@pytest.mark.parametrize("labels, kwargs, message", [
    (np.zeros(8, int), {}, "both classes"),
    (np.array([0, 1] * 4), {"folds": 1}, "folds must be >= 2"),
    (np.array([0, 1, 1, 1, 1, 1, 1, 1]), {"folds": 2}, "at least 2 images"),
    (np.array([0, 1, 2, 1, 0, 1, 0, 1]), {}, "0 or 1"),
    (np.array([0, 1] * 3), {}, "one entry per image"),
    (np.array([0, 1] * 4), {"folds": 2, "groups": np.zeros(8)}, "distinct ids"),
    (np.array([0, 1] * 4), {"folds": 2, "groups": np.zeros(5)}, "groups must be"),
])
def test_cross_validated_probabilities_rejects_bad_input(labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cross_validated_probabilities(np.zeros((8, 64, 64), np.uint8), labels, **kwargs)


# ---------------------------------------------------------------- label issues


def flipped_set(count: int = 100, flipped=(3, 17, 42, 66, 91), seed: int = 0):
    """Labels, clear probabilities (0.85..0.99 on the true label, 0.97..0.99 where flipped), 5 flipped labels."""
    rng = np.random.default_rng(seed)
    true = np.array([index % 2 for index in range(count)])
    confidence = rng.uniform(0.85, 0.99, count)
    confidence[list(flipped)] = rng.uniform(0.97, 0.99, len(flipped))
    probabilities = np.where(true == 1, confidence, 1 - confidence)
    labels = true.copy()
    labels[list(flipped)] = 1 - labels[list(flipped)]
    keys = [f"site/img_{index:03d}.png" for index in range(count)]
    return labels, probabilities, keys, set(flipped)


def test_label_issues_finds_flipped_labels_first():
    labels, probabilities, keys, flipped = flipped_set()
    issues = label_issues(labels, probabilities, keys=keys)
    top = issues[:len(flipped)]
    assert {keys.index(issue["key"]) for issue in top} == flipped
    assert [issue["rank"] for issue in issues] == list(range(1, len(issues) + 1))
    given = [issue["probability_of_label"] for issue in top]
    assert given == sorted(given) and max(given) < 0.2
    for issue in top:
        index = keys.index(issue["key"])
        assert issue["label"] == labels[index]
        assert issue["probability_of_label"] == pytest.approx(
            probabilities[index] if labels[index] == 1 else 1 - probabilities[index])
        assert 0 <= issue["label_quality"] < 0.2


@pytest.mark.parametrize("labels, probabilities, keys, message", [
    ([0, 1, 1], [0.1, 0.9], ["a", "b", "c"], "probabilities must be"),
    ([0, 1], [0.1, 1.5], ["a", "b"], "in \\[0, 1\\]"),
    ([0, 1], [0.1, np.nan], ["a", "b"], "finite"),
    ([0, 1], [0.1, 0.9], ["a"], "keys must have"),
    ([1, 1], [0.1, 0.9], ["a", "b"], "both classes"),
])
def test_label_issues_rejects_bad_input(labels, probabilities, keys, message):
    with pytest.raises(ValueError, match=message):
        label_issues(labels, probabilities, keys=keys)


# ---------------------------------------------------------------- review, outputs, mask


def small_site(site: str = "toy"):
    """24 images: two CT-like, the rest MRI-like discs; clear probabilities and two flipped labels."""
    images, samples, probabilities = [], [], []
    for index in range(24):
        label = index % 2
        if index in (4, 9):
            image = ct_phantom(index)
        else:
            image = disc_phantom(ring=40, rim_width=5, interior=120 + 40 * label, seed=index)
        images.append(image)
        given = 1 - label if index in (6, 13) else label
        folder = "yes" if given else "no"
        samples.append(Sample(f"/data/{site}/{folder}/{index:02d}.png", f"{folder}/{index:02d}.png", site, given,
                              "tumour" if given else "no_tumour", f"{index:064x}"))
        probabilities.append(0.92 - 0.01 * index / 24 if label else 0.08 + 0.01 * index / 24)
    return samples, np.stack(images), np.array(probabilities)


def test_quality_review_counts_and_is_json_ready():
    samples, images, probabilities = small_site()
    review = quality_review("toy", samples, images, probabilities, probability_source="trained model")
    json.dumps(review)
    assert review["site"] == "toy" and review["images"] == 24
    assert review["probability_source"] == "trained model"
    assert "nothing was removed" in review["note"]
    assert {row["key"] for row in review["not_mri"]} == {"toy/no/04.png", "toy/yes/09.png"}
    assert {row["key"] for row in review["label_issues"]} >= {"toy/yes/06.png", "toy/no/13.png"}
    assert all(row["reason"] == "not_mri" for row in review["not_mri"])
    assert all(row["reason"] == "label_issue" for row in review["label_issues"])
    flagged = {row["key"] for row in review["not_mri"]} | {row["key"] for row in review["label_issues"]}
    assert review["counts"]["flagged"] == len(flagged)
    assert review["counts"]["not_mri"] == 2
    assert review["counts"]["label_issue"] == len(review["label_issues"])
    scores = [row["score"] for row in review["not_mri"]]
    assert scores == sorted(scores, reverse=True) and min(scores) >= NOT_MRI_THRESHOLD


@pytest.mark.parametrize("change, message", [
    ({"probability_source": ""}, "probability_source"),
    ({"site_name": "Bad Name"}, "invalid site name"),
    ({"images": np.zeros((3, 64, 64), np.uint8)}, "same length"),
    ({"probabilities": np.zeros(3)}, "probabilities must be"),
])
def test_quality_review_rejects_bad_input(change, message):
    samples, images, probabilities = small_site()
    arguments = {"site_name": "toy", "samples": samples, "images": images, "probabilities": probabilities,
                 "probability_source": "trained model", **change}
    with pytest.raises(ValueError, match=message):
        quality_review(arguments.pop("site_name"), arguments.pop("samples"), arguments.pop("images"),
                       arguments.pop("probabilities"), **arguments)


def test_write_quality_outputs_writes_csv_rows_and_montages(tmp_path):
    reviews, lookup = {}, {}
    for site in ("toy", "other"):
        samples, images, probabilities = small_site(site)
        reviews[site] = quality_review(site, samples, images, probabilities,
                                       probability_source="cross-validated " + CLASSIFIER_DESCRIPTION)
        lookup.update({sample.key: image for sample, image in zip(samples, images)})
    paths = write_quality_outputs(reviews, lookup.__getitem__, tmp_path)
    assert [path.name for path in paths] == ["quality_review.csv", "quality_toy.png", "quality_other.png"]

    with open(paths[0], newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    expected = [[site, row["key"], row["relative_path"], str(row["label"]), row["subclass"], row["reason"],
                 f"{row['score']:.6f}", str(row["rank"])]
                for site, review in reviews.items() for row in [*review["not_mri"], *review["label_issues"]]]
    assert rows[1:] == expected
    assert rows[1][:2] == ["toy", "toy/no/04.png"] or rows[1][:2] == ["toy", "toy/yes/09.png"]

    shown = len(reviews["toy"]["not_mri"]) + len(reviews["toy"]["label_issues"])
    columns, line = min(6, shown), round(15 * 160 / 160)
    picture = cv2.imread(str(paths[1]))
    assert picture.shape == (4 * (line + 4) + 8 + math.ceil(shown / columns) * (160 + 3 * line + 12) + 6,
                             max(columns * 166 + 6, 720), 3)


def test_montage_of_a_site_without_candidates_says_so():
    review = {"site": "clean", "probability_source": "trained model", "not_mri_threshold": NOT_MRI_THRESHOLD,
              "counts": {"not_mri": 0, "label_issue": 0, "both": 0, "flagged": 0}, "not_mri": [], "label_issues": []}
    picture = quality_montage(review, lambda key: np.zeros((8, 8), np.uint8), tile=128)
    assert picture.shape[2] == 3 and picture.shape[1] >= 720 and picture.any()
    with pytest.raises(ValueError, match="tile must be >= 128"):
        quality_montage(review, lambda key: np.zeros((8, 8), np.uint8), tile=64)


@pytest.mark.parametrize("keys, expected", [
    (["toy/no/04.png", "toy/yes/09.png", "toy/yes/06.png", "toy/no/13.png", "toy/no/00.png", "elsewhere/x.png"],
     [False, False, False, False, True, True]),
    ([], []),
])
def test_sensitivity_mask_keeps_only_unflagged_images(keys, expected):
    samples, images, probabilities = small_site()
    review = quality_review("toy", samples, images, probabilities, probability_source="trained model")
    mask = sensitivity_mask(keys, review)
    assert mask.dtype == bool and mask.tolist() == expected
    assert sensitivity_mask(keys, {"toy": review}).tolist() == expected
    with pytest.raises(ValueError, match="quality_review"):
        sensitivity_mask(keys, {"toy": {"counts": {}}})


# ---------------------------------------------------------------- real data (a few files)

REAL_FILES = {  # relative to the data folder: (CT by eye?)
    "nav/no/N1.JPG": True,
    "mos/Testing/notumor/Te-noTr_0005.jpg": True,
    "mos/Testing/notumor/Te-no_0096.jpg": True,
    "nav/no/N16.jpg": False,
    "nav/no/19 no.jpg": False,
    "mos/Testing/notumor/Te-noTr_0003.jpg": False,
    "mos/Testing/glioma/Te-gl_0043.jpg": False,
}


def test_real_ct_slices_are_flagged_and_mri_slices_not(data_dir):
    from datasets.validation import read_image_file

    present = {name: is_ct for name, is_ct in REAL_FILES.items() if (data_dir / name).is_file()}
    if len(present) < 2:
        pytest.skip("the reviewed files are not in the data folder")
    crops = np.stack([crop_brain(read_image_file(str(data_dir / name)), SIZE)[0] for name in present])
    flagged = not_mri_scores(crops) >= NOT_MRI_THRESHOLD
    assert dict(zip(present, flagged.tolist())) == present
