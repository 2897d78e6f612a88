"""Tests of eval.metrics against hand-computed examples and brute force."""
import math
import time

import numpy as np
import pytest

from eval.metrics import (
    average_ranks,
    binary_metrics,
    bootstrap_auc_ci,
    bootstrap_aucs,
    choose_threshold,
    expected_calibration_error,
    reliability_curve,
    roc_auc,
    roc_curve,
    site_metrics,
    subclass_rates,
)


def brute_force_auc(labels, scores):
    """O(n^2) pair count: wins + ties / 2 over all (positive, negative) pairs."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    positive = scores[labels == 1][:, None]
    negative = scores[labels == 0][None, :]
    return float(((positive > negative) + 0.5 * (positive == negative)).mean())


# ----------------------------------------------------------------------------- AUC


@pytest.mark.parametrize(
    "labels, scores, expected",
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),  # perfect
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),  # inverted
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),  # pairs: 0.35>0.1, 0.8>both; 0.35<0.4 -> 3/4
        ([0, 1], [0.5, 0.5], 0.5),  # one tie counts 1/2
        ([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.9], 0.875),  # (1 + 0.5) + (1 + 1) = 3.5 of 4 pairs
        ([0, 1, 1, 0, 1], [0.3, 0.3, 0.3, 0.3, 0.3], 0.5),  # all tied
        ([1, 0, 0, 0], [0.6, 0.1, 0.7, 0.6], 0.5),  # 1 win (0.1), 1 tie (0.6), 1 loss (0.7)
    ],
)
def test_roc_auc_hand_examples(labels, scores, expected):
    assert roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0], []])
def test_roc_auc_one_class_is_nan(labels):
    assert math.isnan(roc_auc(labels, np.linspace(0, 1, len(labels))))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("size", [7, 60, 301])
def test_roc_auc_matches_brute_force_with_ties(seed, size):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(0.6 * labels, 1.0), 1)  # rounding makes many ties
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_average_ranks():
    np.testing.assert_allclose(average_ranks(np.array([10, 20, 20, 30])), [1, 2.5, 2.5, 4])
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 3.0])), [3, 1, 3, 3])


@pytest.mark.parametrize(
    "labels, scores",
    [([0, 2], [0.1, 0.2]), ([0, 1], [0.1]), ([0, 1], [0.1, np.nan]), ([[0, 1]], [[0.1, 0.2]])],
)
def test_bad_input_raises(labels, scores):
    with pytest.raises(ValueError):
        roc_auc(labels, scores)


def test_roc_curve_hand_example():
    fpr, tpr, thresholds = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    # tied scores give one point
    fpr, tpr, thresholds = roc_curve([0, 1, 1], [0.5, 0.5, 0.9])
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.5])
    np.testing.assert_allclose(tpr, [0, 0.5, 1])
    np.testing.assert_allclose(fpr, [0, 0, 1])
    # trapezoid area equals the rank AUC
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.2, 0.5, 0.5, 0.9, 0.7, 0.3])
    fpr, tpr, _ = roc_curve(labels, scores)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(labels, scores))


# ----------------------------------------------------------------------------- bootstrap


def _separable_data(size, seed=0, shift=1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size)
    scores = rng.normal(shift * labels, 1.0)
    return labels, scores


def test_bootstrap_matches_loop_over_resamples():
    labels = np.array([0, 0, 0, 1, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.4, 0.4, 0.4, 0.8, 0.3, 0.2, 0.9, 0.6])
    aucs = bootstrap_aucs(labels, scores, n_resamples=50, seed=3)
    # same random draws as the vectorised code: positives then negatives, one chunk
    rng = np.random.default_rng(3)
    positive, negative = scores[labels == 1], scores[labels == 0]
    positive_index = rng.integers(0, positive.size, size=(50, positive.size))
    negative_index = rng.integers(0, negative.size, size=(50, negative.size))
    expected = [
        brute_force_auc(np.r_[np.ones(positive.size), np.zeros(negative.size)],
                        np.r_[positive[p], negative[n]])
        for p, n in zip(positive_index, negative_index)
    ]
    np.testing.assert_allclose(aucs, expected, atol=1e-12)


def test_bootstrap_ci_contains_auc_and_is_deterministic():
    labels, scores = _separable_data(400)
    auc = roc_auc(labels, scores)
    low, high = bootstrap_auc_ci(labels, scores, n_resamples=500, seed=7)
    assert low < auc < high
    assert 0.02 < high - low < 0.2
    assert bootstrap_auc_ci(labels, scores, n_resamples=500, seed=7) == (low, high)
    assert bootstrap_auc_ci(labels, scores, n_resamples=500, seed=8) != (low, high)


def test_bootstrap_ci_narrows_with_more_data():
    small = bootstrap_auc_ci(*_separable_data(100, seed=1), n_resamples=400)
    large = bootstrap_auc_ci(*_separable_data(1600, seed=1), n_resamples=400)
    assert (large[1] - large[0]) < 0.5 * (small[1] - small[0])


def test_bootstrap_ci_one_class_is_nan():
    low, high = bootstrap_auc_ci([1, 1, 1], [0.1, 0.5, 0.9], n_resamples=10)
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_is_fast():
    labels, scores = _separable_data(2000, seed=2)
    bootstrap_auc_ci(labels, scores, n_resamples=10)  # warm up
    start = time.perf_counter()
    bootstrap_auc_ci(labels, scores, n_resamples=1000)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("keyword", [{"n_resamples": 0}, {"level": 1.0}, {"level": 0.0}])
def test_bootstrap_bad_arguments(keyword):
    with pytest.raises(ValueError):
        bootstrap_auc_ci([0, 1], [0.1, 0.9], **keyword)


# ----------------------------------------------------------------------------- threshold


def test_youden_threshold_hand_example():
    # thresholds 0.9 (J=0.5-0), 0.8 (J=1-0=1), 0.3 (J=1-0.5), 0.1 (J=0)
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.3, 0.8, 0.9]
    assert choose_threshold(labels, scores) == 0.8


def test_youden_ties_go_to_highest_threshold():
    # J = 0.5 at 0.9 and again at 0.5 -> highest wins
    labels = [1, 0, 1, 0]
    scores = [0.9, 0.7, 0.5, 0.2]
    assert choose_threshold(labels, scores) == 0.9


def test_sensitivity_threshold():
    labels = [1, 1, 1, 1, 0, 0]
    scores = [0.9, 0.8, 0.6, 0.2, 0.7, 0.1]
    assert choose_threshold(labels, scores, method="sensitivity", target_sensitivity=0.75) == 0.6
    assert choose_threshold(labels, scores, method="sensitivity", target_sensitivity=1.0) == 0.2
    assert choose_threshold(labels, scores, method="sensitivity", target_sensitivity=0.5) == 0.8


@pytest.mark.parametrize(
    "labels, keyword",
    [([1, 1], {}), ([0, 0], {"method": "sensitivity"}), ([0, 1], {"method": "best"}),
     ([0, 1], {"method": "sensitivity", "target_sensitivity": 0.0})],
)
def test_threshold_bad_input(labels, keyword):
    with pytest.raises(ValueError):
        choose_threshold(labels, [0.2, 0.8], **keyword)


def test_threshold_is_chosen_on_validation_and_ignores_test_labels():
    validation_labels, validation_scores = _separable_data(200, seed=4)
    test_scores = np.random.default_rng(5).random(100)
    first_test_labels = np.random.default_rng(6).integers(0, 2, 100)
    second_test_labels = 1 - first_test_labels
    results = []
    for test_labels in (first_test_labels, second_test_labels):
        threshold = choose_threshold(validation_labels, validation_scores)
        results.append((threshold, binary_metrics(test_labels, test_scores, threshold)))
    assert results[0][0] == results[1][0]
    # the test metrics do change with the test labels, the threshold does not
    assert results[0][1]["sensitivity"] != results[1][1]["sensitivity"]


# ----------------------------------------------------------------------------- binary metrics


def test_binary_metrics_tiny_confusion():
    labels = [1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.5, 0.2, 0.5, 0.4, 0.1, 0.0]
    metrics = binary_metrics(labels, scores, 0.5)  # score == threshold is positive
    assert metrics["confusion"] == {"tp": 2, "fp": 1, "tn": 3, "fn": 1}
    assert metrics["sensitivity"] == pytest.approx(2 / 3)
    assert metrics["specificity"] == pytest.approx(3 / 4)
    assert metrics["accuracy"] == pytest.approx(5 / 7)
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert metrics["ppv"] == pytest.approx(2 / 3)
    assert metrics["npv"] == pytest.approx(3 / 4)


def test_binary_metrics_undefined_are_nan():
    metrics = binary_metrics([0, 0], [0.1, 0.2], 0.5)
    assert metrics["specificity"] == 1.0
    assert math.isnan(metrics["sensitivity"])
    assert math.isnan(metrics["balanced_accuracy"])
    assert math.isnan(metrics["ppv"])  # nothing predicted positive
    assert metrics["npv"] == 1.0


# ----------------------------------------------------------------------------- calibration


def test_ece_hand_example():
    # bin [0.1, 0.2): scores 0.1, 0.1, labels 0, 1 -> |0.1 - 0.5| = 0.4, weight 2/5
    # bin [0.8, 0.9): scores 0.8, 0.8, 0.8, labels 1, 1, 1 -> |0.8 - 1| = 0.2, weight 3/5
    labels = [0, 1, 1, 1, 1]
    scores = [0.1, 0.1, 0.8, 0.8, 0.8]
    assert expected_calibration_error(labels, scores) == pytest.approx(0.4 * 2 / 5 + 0.2 * 3 / 5)


def test_reliability_curve_bins():
    centres, mean_predicted, fraction_positive, counts = reliability_curve(
        [0, 1, 1, 0], [0.0, 0.5, 1.0, 0.55], n_bins=2
    )
    np.testing.assert_allclose(centres, [0.25, 0.75])
    np.testing.assert_array_equal(counts, [1, 3])  # 0.5 and 1.0 fall in the upper bin
    np.testing.assert_allclose(mean_predicted, [0.0, (0.5 + 1.0 + 0.55) / 3])
    np.testing.assert_allclose(fraction_positive, [0.0, 2 / 3])
    _, mean_predicted, _, counts = reliability_curve([1], [0.95], n_bins=4)
    assert counts.tolist() == [0, 0, 0, 1] and math.isnan(mean_predicted[0])


def test_ece_perfect_and_out_of_range():
    assert expected_calibration_error([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0]) == 0.0
    with pytest.raises(ValueError):
        expected_calibration_error([0, 1], [-0.1, 0.5])


# ----------------------------------------------------------------------------- subclasses, site


def test_subclass_rates():
    labels = [1, 1, 1, 1, 0, 0, 0]
    scores = [0.9, 0.2, 0.6, 0.7, 0.8, 0.1, 0.3]
    subclasses = ["glioma", "glioma", "pituitary", "meningioma", "notumor", "notumor", "notumor"]
    rates = subclass_rates(labels, scores, subclasses, 0.5)
    assert list(rates) == ["glioma", "meningioma", "pituitary", "notumor"]
    assert rates["glioma"] == {"images": 2, "label": 1, "predicted_positive": 1, "detection_rate": 0.5}
    assert rates["pituitary"]["detection_rate"] == 1.0
    assert rates["notumor"]["specificity"] == pytest.approx(2 / 3)
    assert "detection_rate" not in rates["notumor"]
    with pytest.raises(ValueError):
        subclass_rates([0, 1], [0.1, 0.9], ["mixed", "mixed"], 0.5)


def test_site_metrics_full_and_one_class():
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.4, 0.35, 0.8]
    metrics = site_metrics(labels, scores, ["notumor", "notumor", "glioma", "glioma"], 0.4,
                           n_resamples=100)
    assert metrics["images"] == 4 and metrics["positives"] == 2 and metrics["negatives"] == 2
    assert metrics["auc"] == 0.75
    assert metrics["auc_ci"][0] <= 0.75 <= metrics["auc_ci"][1]
    assert metrics["threshold"] == 0.4
    assert metrics["sensitivity"] == 0.5 and metrics["specificity"] == 0.5
    assert metrics["subclasses"]["glioma"]["detection_rate"] == 0.5

    one_class = site_metrics([1, 1], [0.3, 0.9], ["tumour", "tumour"], 0.5, n_resamples=10)
    assert math.isnan(one_class["auc"]) and math.isnan(one_class["auc_ci"][0])
    assert math.isnan(one_class["specificity"]) and one_class["sensitivity"] == 0.5

    empty = site_metrics([], [], [], 0.5, n_resamples=10)
    assert empty["images"] == 0 and math.isnan(empty["ece"]) and empty["subclasses"] == {}
