"""Binary classification metrics for cross-site evaluation, in plain numpy.

Conventions used everywhere in this module:

- ``labels`` is an int array of shape (N,) with values in {0, 1}
  (1 = tumour, 0 = no tumour); booleans are accepted.
- ``scores`` is a float array of shape (N,), higher meaning "more tumour";
  finite values are required. Calibration functions also need scores in
  [0, 1] (sigmoid outputs).
- A threshold is a score value: an image is predicted positive when
  ``score >= threshold``.
- Quantities that are undefined for the data at hand (AUC with one class,
  sensitivity without positives, PPV without predicted positives, ...) are
  returned as ``nan`` rather than raising, so a site with a single class or
  an empty leak-free subset still gets a report. Input that is wrong
  (shapes, label values, non-finite scores) raises ``ValueError``.
"""
from __future__ import annotations

import math

import numpy as np

#: Memory bound for the vectorised bootstrap: elements per working array.
BOOTSTRAP_CHUNK_ELEMENTS = 1 << 21


def check_labels_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``labels`` and ``scores``.

    Returns:
        (labels int64 (N,) in {0, 1}, scores float64 (N,) finite).

    Raises:
        ValueError: if shapes differ or are not 1-D, labels are not 0/1 or
            scores are not finite.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(
            f"labels and scores must be 1-D, got shapes {labels.shape} and {scores.shape}"
        )
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"labels and scores differ in length: {labels.shape[0]} != {scores.shape[0]}"
        )
    if labels.size and not np.isin(labels, (0, 1)).all():
        bad = np.unique(labels[~np.isin(labels, (0, 1))])[:5]
        raise ValueError(f"labels must be 0 or 1, found {bad.tolist()}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (found nan or inf)")
    return labels.astype(np.int64), scores


def _check_probabilities(scores: np.ndarray) -> None:
    if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
        raise ValueError(
            f"calibration needs scores in [0, 1], got range [{scores.min()}, {scores.max()}]"
        )


def _safe_divide(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else math.nan


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (N,), tied values sharing their average rank.

    Returns a float64 array (N,); ``[10, 20, 20, 30]`` gives ``[1, 2.5, 2.5, 4]``.
    """
    values = np.asarray(values)
    count = values.shape[0]
    if count == 0:
        return np.zeros(0, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    group_start = np.empty(count, dtype=bool)
    group_start[0] = True
    group_start[1:] = sorted_values[1:] != sorted_values[:-1]
    group_id = np.cumsum(group_start) - 1
    starts = np.flatnonzero(group_start)
    ends = np.append(starts[1:], count)
    ranks = np.empty(count, dtype=np.float64)
    ranks[order] = ((starts + ends + 1) / 2.0)[group_id]
    return ranks


def roc_auc(labels, scores) -> float:
    """Exact area under the ROC curve (Mann-Whitney U statistic).

    AUC = P(score of a random positive > score of a random negative), a tie
    counting 1/2. Computed from average ranks in O(N log N).

    Args:
        labels: int (N,) in {0, 1}.
        scores: float (N,), finite.

    Returns:
        AUC in [0, 1], or ``nan`` when only one class (or nothing) is present.
    """
    labels, scores = check_labels_scores(labels, scores)
    positives = int(labels.sum())
    negatives = labels.shape[0] - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = average_ranks(scores)
    rank_sum = ranks[labels == 1].sum()
    u_statistic = rank_sum - positives * (positives + 1) / 2.0
    return float(u_statistic / (positives * negatives))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve with one point per distinct score.

    Args:
        labels: int (N,) in {0, 1}.
        scores: float (N,), finite.

    Returns:
        ``(fpr, tpr, thresholds)``, each float64 (K + 1,) for K distinct
        scores. ``thresholds`` is decreasing and starts with ``+inf`` (nothing
        predicted positive, the point (0, 0)); point i predicts positive when
        ``score >= thresholds[i]``. ``tpr`` is all ``nan`` when there are no
        positives and ``fpr`` all ``nan`` when there are no negatives.
    """
    labels, scores = check_labels_scores(labels, scores)
    positives = int(labels.sum())
    negatives = labels.shape[0] - positives
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    last_of_group = np.append(np.flatnonzero(np.diff(sorted_scores) != 0), labels.shape[0] - 1)
    last_of_group = last_of_group[last_of_group >= 0]
    true_positives = np.cumsum(sorted_labels)[last_of_group]
    false_positives = last_of_group + 1 - true_positives
    thresholds = np.concatenate([[np.inf], sorted_scores[last_of_group]])
    true_positives = np.concatenate([[0], true_positives]).astype(np.float64)
    false_positives = np.concatenate([[0], false_positives]).astype(np.float64)
    tpr = true_positives / positives if positives else np.full_like(true_positives, np.nan)
    fpr = false_positives / negatives if negatives else np.full_like(false_positives, np.nan)
    return fpr, tpr, thresholds


def bootstrap_aucs(labels, scores, *, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """AUCs of ``n_resamples`` stratified bootstrap resamples, vectorised.

    Positives and negatives are resampled separately with replacement,
    keeping their counts. Scores are replaced by dense integer codes so that
    each resample's AUC is a histogram count: for every resampled positive,
    the number of resampled negatives with a lower code plus half those with
    the same code. Resamples are processed in chunks of at most
    :data:`BOOTSTRAP_CHUNK_ELEMENTS` elements per array; there is no Python
    loop over single resamples.

    Returns:
        float64 (n_resamples,) AUCs, all ``nan`` when only one class is present.
    """
    labels, scores = check_labels_scores(labels, scores)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    positives = int(labels.sum())
    negatives = labels.shape[0] - positives
    if positives == 0 or negatives == 0:
        return np.full(n_resamples, np.nan)
    _, codes = np.unique(scores, return_inverse=True)
    codes = codes.reshape(-1)
    distinct = int(codes.max()) + 1
    positive_codes = codes[labels == 1]
    negative_codes = codes[labels == 0]
    chunk = max(1, BOOTSTRAP_CHUNK_ELEMENTS // (2 * distinct + positives + negatives))
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        sampled_positive = positive_codes[rng.integers(0, positives, size=(rows, positives))]
        sampled_negative = negative_codes[rng.integers(0, negatives, size=(rows, negatives))]
        row_offsets = (np.arange(rows) * distinct)[:, None]
        negative_histogram = np.bincount(
            (sampled_negative + row_offsets).ravel(), minlength=rows * distinct
        ).reshape(rows, distinct)
        negatives_below = np.cumsum(negative_histogram, axis=1) - negative_histogram
        wins = np.take_along_axis(negatives_below, sampled_positive, axis=1).sum(axis=1)
        ties = np.take_along_axis(negative_histogram, sampled_positive, axis=1).sum(axis=1)
        aucs[start : start + rows] = (wins + 0.5 * ties) / (positives * negatives)
    return aucs


def bootstrap_auc_ci(
    labels, scores, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile confidence interval of the AUC by stratified bootstrap.

    Deterministic for a given ``seed``. See :func:`bootstrap_aucs`.

    Args:
        labels: int (N,) in {0, 1}.
        scores: float (N,), finite.
        n_resamples: number of bootstrap resamples (>= 1).
        level: coverage in (0, 1), e.g. 0.95 for the 2.5 and 97.5 percentiles.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        ``(low, high)``, both ``nan`` when only one class is present.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    aucs = bootstrap_aucs(labels, scores, n_resamples=n_resamples, seed=seed)
    if np.isnan(aucs).any():
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(aucs, [tail, 1.0 - tail])
    return float(low), float(high)


def choose_threshold(
    labels, scores, *, method: str = "youden", target_sensitivity: float = 0.9
) -> float:
    """Choose a decision threshold. Call this on VALIDATION data only.

    The threshold is one of the observed scores; apply it to any other data
    as ``predicted positive = score >= threshold``.

    Methods:
        ``"youden"``: maximise Youden's J = sensitivity + specificity - 1 =
            tpr - fpr over the observed scores. Ties (within 1e-12) go to the
            highest threshold, i.e. the fewest predicted positives.
        ``"sensitivity"``: the highest threshold whose sensitivity is at
            least ``target_sensitivity``.

    Raises:
        ValueError: unknown method, target outside (0, 1], or the data lack
            the classes the method needs (both for youden, positives for
            sensitivity).
    """
    labels, scores = check_labels_scores(labels, scores)
    positives = int(labels.sum())
    negatives = labels.shape[0] - positives
    fpr, tpr, thresholds = roc_curve(labels, scores)
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if method == "youden":
        if positives == 0 or negatives == 0:
            raise ValueError(
                "youden threshold needs both classes in the validation data, "
                f"got {positives} positives and {negatives} negatives"
            )
        youden = tpr - fpr
        best = int(np.flatnonzero(youden >= youden.max() - 1e-12)[0])
        return float(thresholds[best])
    if method == "sensitivity":
        if not 0.0 < target_sensitivity <= 1.0:
            raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
        if positives == 0:
            raise ValueError("sensitivity threshold needs positives in the validation data")
        best = int(np.flatnonzero(tpr >= target_sensitivity - 1e-12)[0])
        return float(thresholds[best])
    raise ValueError(f"unknown threshold method {method!r}: use 'youden' or 'sensitivity'")


def binary_metrics(labels, scores, threshold: float) -> dict:
    """Confusion counts and rates at ``threshold`` (positive: score >= threshold).

    Returns:
        ``{"sensitivity", "specificity", "accuracy", "balanced_accuracy",
        "ppv", "npv", "confusion": {"tp", "fp", "tn", "fn"}}``. Rates are
        floats, ``nan`` when undefined: sensitivity without positives,
        specificity without negatives, balanced accuracy when either of those
        is nan, PPV without predicted positives, NPV without predicted
        negatives, accuracy without images.
    """
    labels, scores = check_labels_scores(labels, scores)
    predicted = scores >= threshold
    positive = labels == 1
    true_positive = int(np.sum(predicted & positive))
    false_positive = int(np.sum(predicted & ~positive))
    true_negative = int(np.sum(~predicted & ~positive))
    false_negative = int(np.sum(~predicted & positive))
    sensitivity = _safe_divide(true_positive, true_positive + false_negative)
    specificity = _safe_divide(true_negative, true_negative + false_positive)
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "accuracy": _safe_divide(true_positive + true_negative, labels.shape[0]),
        "balanced_accuracy": (sensitivity + specificity) / 2.0,
        "ppv": _safe_divide(true_positive, true_positive + false_positive),
        "npv": _safe_divide(true_negative, true_negative + false_negative),
        "confusion": {
            "tp": true_positive,
            "fp": false_positive,
            "tn": true_negative,
            "fn": false_negative,
        },
    }


def reliability_curve(
    labels, scores, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reliability (calibration) curve over equal-width score bins on [0, 1].

    Bin i covers ``[i / n_bins, (i + 1) / n_bins)``; a score of exactly 1
    falls in the last bin.

    Returns:
        ``(bin_centres, mean_predicted, fraction_positive, counts)``, each
        (n_bins,): float64, float64 (nan for empty bins), float64 (nan for
        empty bins), int64.
    """
    labels, scores = check_labels_scores(labels, scores)
    _check_probabilities(scores)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    bins = np.clip(np.floor(scores * n_bins).astype(np.int64), 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    score_sums = np.bincount(bins, weights=scores, minlength=n_bins)
    positive_sums = np.bincount(bins, weights=labels.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(counts > 0, score_sums / counts, np.nan)
        fraction_positive = np.where(counts > 0, positive_sums / counts, np.nan)
    bin_centres = (np.arange(n_bins) + 0.5) / n_bins
    return bin_centres, mean_predicted, fraction_positive, counts.astype(np.int64)


def expected_calibration_error(labels, scores, n_bins: int = 10) -> float:
    """Expected calibration error over equal-width bins, weighted by bin count.

    ECE = sum over non-empty bins of (count / N) * |mean score - fraction
    positive|. Scores must be probabilities in [0, 1].

    Returns:
        ECE in [0, 1], ``nan`` when there are no images.
    """
    _, mean_predicted, fraction_positive, counts = reliability_curve(labels, scores, n_bins)
    total = counts.sum()
    if total == 0:
        return math.nan
    filled = counts > 0
    gaps = np.abs(mean_predicted[filled] - fraction_positive[filled])
    return float(np.sum(counts[filled] / total * gaps))


def subclass_rates(labels, scores, subclasses, threshold: float) -> dict[str, dict]:
    """Per-subclass rates at ``threshold``.

    Each subclass must hold a single label. Tumour subclasses (label 1) get
    ``detection_rate`` (sensitivity within the subclass), no-tumour
    subclasses (label 0) get ``specificity``.

    Args:
        labels: int (N,) in {0, 1}.
        scores: float (N,).
        subclasses: str (N,), e.g. ``"glioma"`` or ``"notumor"``.
        threshold: positive means ``score >= threshold``.

    Returns:
        ``{subclass: {"images", "label", "predicted_positive", and
        "detection_rate" or "specificity"}}``, tumour subclasses first, each
        group in alphabetical order.

    Raises:
        ValueError: lengths differ or a subclass mixes labels.
    """
    labels, scores = check_labels_scores(labels, scores)
    subclasses = np.asarray(subclasses, dtype=str)
    if subclasses.shape != labels.shape:
        raise ValueError(
            f"subclasses must have shape {labels.shape}, got {subclasses.shape}"
        )
    predicted = scores >= threshold
    rates = {}
    for name in np.unique(subclasses):
        members = subclasses == name
        member_labels = np.unique(labels[members])
        if member_labels.size != 1:
            raise ValueError(f"subclass {name!r} mixes labels 0 and 1")
        label = int(member_labels[0])
        images = int(members.sum())
        predicted_positive = int(predicted[members].sum())
        entry = {"images": images, "label": label, "predicted_positive": predicted_positive}
        if label == 1:
            entry["detection_rate"] = predicted_positive / images
        else:
            entry["specificity"] = (images - predicted_positive) / images
        rates[str(name)] = entry
    return dict(sorted(rates.items(), key=lambda item: (-item[1]["label"], item[0])))


def site_metrics(
    labels,
    scores,
    subclasses,
    threshold: float,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
    level: float = 0.95,
) -> dict:
    """Everything reported for one site at a fixed (validation) threshold.

    Returns:
        ``{"images", "positives", "negatives", "auc", "auc_ci": [low, high],
        "auc_ci_level", "n_resamples", "threshold", "sensitivity",
        "specificity", "accuracy", "balanced_accuracy", "ppv", "npv",
        "confusion", "ece", "ece_bins", "subclasses"}``. Works for a site with one class
        or no images: the undefined entries are ``nan``.
    """
    labels, scores = check_labels_scores(labels, scores)
    positives = int(labels.sum())
    low, high = bootstrap_auc_ci(labels, scores, n_resamples=n_resamples, level=level, seed=seed)
    result = {
        "images": int(labels.shape[0]),
        "positives": positives,
        "negatives": int(labels.shape[0] - positives),
        "auc": roc_auc(labels, scores),
        "auc_ci": [low, high],
        "auc_ci_level": float(level),
        "n_resamples": int(n_resamples),
        "threshold": float(threshold),
    }
    result.update(binary_metrics(labels, scores, threshold))
    result["ece"] = expected_calibration_error(labels, scores, n_bins)
    result["ece_bins"] = int(n_bins)
    result["subclasses"] = subclass_rates(labels, scores, subclasses, threshold)
    return result
