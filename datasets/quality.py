"""Data-quality review of a site: images that are probably not brain MRI, and candidate label errors.

Two kinds of candidates, both for a person to review (nothing is removed here):

* ``not_mri``: slices that look like CT, not MRI (:func:`not_mri_scores`).
  On a CT slice in a brain window the skull is the brightest structure: a
  thick ring, clipped flat at the top of the grey scale, that touches the
  brain directly, around fairly uniform mid-grey tissue. On T1/T2/FLAIR the
  cortical bone is dark; the bright outer ring, where there is one, is scalp
  fat: thinner, peaked rather than flat, uneven around the head and
  separated from the brain by the dark skull.
* ``label_issue``: images whose given label disagrees with out-of-sample
  tumour probabilities, ranked with cleanlab (:func:`label_issues`). The
  probabilities come either from a cheap classifier cross-validated on the
  site itself (:func:`cross_validated_probabilities`) or from a trained model.

:func:`quality_review` puts both into one JSON-ready dict per site,
:func:`write_quality_outputs` writes ``quality_review.csv`` and a captioned
montage per site, and :func:`sensitivity_mask` gives the images not flagged,
for an extra, clearly labelled "without flagged images" metrics row.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np

from datasets.phash import DEFAULT_THRESHOLD_BITS, duplicate_groups, near_duplicate_pairs
from datasets.records import Sample, check_site_name

# ---------------------------------------------------------------- not-MRI (CT-like) score

#: Images with :func:`not_mri_scores` at or above this are flagged ``not_mri``.
#: The score is the fraction of rays through the head whose outer profile looks
#: like CT bone. Set on the 4,564 shared crops at 128 px, with 51 brain-CT
#: slices found by eye: every CT slice there scores >= 0.29 (21 of 72 rays),
#: every MRI slice <= 0.27 (19 rays); the threshold sits between. Measured at
#: 128 px only (on 224 px crops scored as they are, the same threshold also
#: flags 4 MRI slices; at 96 px it misses 5 CT slices), so crops of any other
#: size are resized to :data:`NOT_MRI_SIDE` before scoring: 224 px crops
#: resized so flag 48 of the 51 CT slices and no MRI slice.
NOT_MRI_THRESHOLD = 0.28
#: Side the crops are resized to (INTER_AREA) before :func:`not_mri_scores`.
NOT_MRI_SIDE = 128

#: Rays cast from the head's centroid.
RAYS = 72
#: Sampling step along each ray, in pixels.
RAY_STEP = 0.5
#: Pixels of the blurred crop above this grey level are head (background is near 0).
HEAD_THRESHOLD = 20
#: The outer ring is looked for within this fraction of the head radius from the edge.
RING_BAND = 0.18
#: Ring peak minus brain level must reach this fraction of (255 - brain level).
RING_CONTRAST = 0.45
#: The flat top (within 15 % of the contrast below the peak) must be at least
#: this fraction of the ring's width at half contrast: bone is clipped flat, fat is peaked.
RING_FLATNESS = 0.6
#: The ring's width at half contrast must be at least this fraction of the head radius.
RING_THICKNESS = 0.07
#: Just inside the ring (a window of 0.055 head radii) the profile may dip below
#: the brain level (next 0.15 head radii) by at most this fraction of the ring contrast.
RING_GAP = 0.25
#: A ray's peak must reach this fraction of the 90th percentile of all peaks (an even ring).
RING_EVENNESS = 0.85
#: Brain level: median of head pixels deeper than this fraction of the head radius.
INTERIOR_DEPTH = 0.3

NOT_MRI_DESCRIPTION = (
    f"fraction of {RAYS} rays from the head centroid whose outer profile is CT bone: a ring within "
    f"{RING_BAND:.2f} head radii of the edge, brighter than the brain by >= {RING_CONTRAST:.2f} of the "
    f"headroom, flat-topped (>= {RING_FLATNESS:.2f}), >= {RING_THICKNESS:.2f} radii thick, no dark gap "
    f"before the brain (<= {RING_GAP:.2f} of the contrast), even around the head (>= {RING_EVENNESS:.2f} "
    f"of the 90th-percentile peak), not at the image border; flagged at >= {NOT_MRI_THRESHOLD}"
)


def _check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"{name} must be (N, S, S), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {images.dtype}")
    if images.shape[1] < 32:
        raise ValueError(f"{name} must be at least 32 px on a side, got {images.shape[1]}")
    return images


def _head_mask(image: np.ndarray) -> np.ndarray:
    """(S, S) bool: the largest bright component of the crop, holes filled."""
    foreground = (cv2.GaussianBlur(image, (3, 3), 0) > HEAD_THRESHOLD).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    if count < 2:
        return foreground.astype(bool)
    largest = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    flooded = np.pad(largest, 1)
    cv2.floodFill(flooded, None, (0, 0), 1)
    return largest.astype(bool) | (flooded[1:-1, 1:-1] == 0)


def _run_length(inside: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Length of the run of True containing ``position`` on each row, and the index just after it."""
    length = inside.shape[1]
    index = np.arange(length)[None, :]
    after = (index >= position[:, None]) & ~inside
    end = np.where(after.any(1), after.argmax(1), length)
    before = (index <= position[:, None]) & ~inside
    start = np.where(before.any(1), length - 1 - np.argmax(before[:, ::-1], 1), -1)
    return end - start - 1, end


def _not_mri_score(image: np.ndarray) -> float:
    """CT-likeness of one (S, S) uint8 crop, in [0, 1]."""
    mask = _head_mask(image)
    if mask.sum() < 0.05 * mask.size:
        return 0.0
    # distance to the nearest non-head pixel, counting the outside of the image as background
    depth = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    radius = float(depth.max())
    if radius < 5:
        return 0.0
    pixels = image.astype(np.float32)
    brain = float(np.median(pixels[mask & (depth > INTERIOR_DEPTH * radius)]))
    height, width = image.shape
    rows, columns = np.nonzero(mask)
    centre_y, centre_x = rows.mean(), columns.mean()
    angles = np.linspace(0, 2 * np.pi, RAYS, endpoint=False)
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]

    # head edge on each ray: the farthest head pixel from the centroid
    radii = np.arange(0, np.hypot(height, width), RAY_STEP)[None, :]
    x, y = np.rint(centre_x + cos * radii).astype(int), np.rint(centre_y + sin * radii).astype(int)
    in_image = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    inside = in_image & mask[np.clip(y, 0, height - 1), np.clip(x, 0, width - 1)]
    last = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], 1)
    edge = np.where(inside.any(1), radii[0, last], 0.0)
    edge_x, edge_y = centre_x + cos[:, 0] * edge, centre_y + sin[:, 0] * edge
    off_border = (edge_x > 1) & (edge_x < width - 2) & (edge_y > 1) & (edge_y < height - 2)

    # profiles from the edge inward
    samples = int(np.ceil(0.6 * radius / RAY_STEP)) + 1
    inward = np.clip(edge[:, None] - np.arange(samples)[None, :] * RAY_STEP, 0, None)
    map_x = (centre_x + cos * inward).astype(np.float32)
    map_y = (centre_y + sin * inward).astype(np.float32)
    profiles = cv2.remap(pixels, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    band = max(3, int(RING_BAND * radius / RAY_STEP))
    peak = profiles[:, :band].max(1)
    position = profiles[:, :band].argmax(1)
    contrast = peak - brain
    half_width, ring_end = _run_length(profiles >= (peak - 0.5 * contrast)[:, None], position)
    flat_width, _ = _run_length(profiles >= (peak - 0.15 * contrast)[:, None], position)

    gap_window = max(2, int(round(0.055 * radius / RAY_STEP)))
    brain_window = max(4, int(round(0.15 * radius / RAY_STEP)))
    steps = np.arange(gap_window + brain_window)[None, :]
    after = np.clip(ring_end[:, None] + steps, 0, samples - 1)
    following = np.take_along_axis(profiles, after, 1)
    gap = following[:, :gap_window].min(1)
    beyond = (ring_end + gap_window + brain_window) > samples
    brain_after = np.where(beyond, brain, np.median(following[:, gap_window:], 1))

    bone = (
        off_border
        & (contrast >= RING_CONTRAST * max(255.0 - brain, 1.0))
        & (flat_width >= RING_FLATNESS * half_width)
        & (half_width * RAY_STEP >= RING_THICKNESS * radius)
        & (brain_after - gap <= RING_GAP * np.maximum(contrast, 1.0))
        & (peak >= RING_EVENNESS * np.percentile(peak, 90))
    )
    return float(bone.mean())


def not_mri_scores(images: np.ndarray) -> np.ndarray:
    """CT-likeness of brain crops; higher = more CT-like.

    Rays are cast from the head's centroid; on each, the intensity profile
    from the head's edge inward is tested for CT bone (see the ``RING_*``
    constants and ``NOT_MRI_DESCRIPTION``). The score is the fraction of rays
    that pass; flag at :data:`NOT_MRI_THRESHOLD`. Images on a white
    background or without a head score 0.

    Args:
        images: (N, S, S) uint8 crops (S >= 32), background near 0; scored
            at :data:`NOT_MRI_SIDE` px (resized when S differs).

    Returns:
        (N,) float64 in [0, 1].
    """
    images = _check_images(images)
    if images.shape[1] != NOT_MRI_SIDE:
        images = np.stack([cv2.resize(image, (NOT_MRI_SIDE, NOT_MRI_SIDE), interpolation=cv2.INTER_AREA)
                           for image in images]) if len(images) else images
    return np.array([_not_mri_score(image) for image in images], np.float64)


# ---------------------------------------------------------------- out-of-sample probabilities

#: Side the crops are resized to before the HOG features.
HOG_SIDE = 128
#: HOG cell side in pixels, orientation bins (unsigned gradients), 2x2-cell blocks.
HOG_CELL = 8
HOG_BINS = 9
#: Inverse regularisation of the logistic regression (chosen by grouped CV AUC on BR35H).
LOGISTIC_C = 0.001

CLASSIFIER_DESCRIPTION = (
    f"HOG ({HOG_SIDE} px, {HOG_CELL} px cells, {HOG_BINS} bins, 2x2 blocks) + standardised "
    f"logistic regression (C={LOGISTIC_C})"
)


def hog_features(images: np.ndarray, *, chunk: int = 256) -> np.ndarray:
    """Histogram-of-oriented-gradients features of crops resized to ``HOG_SIDE``.

    Central-difference gradients, unsigned orientations in ``HOG_BINS`` bins
    with linear interpolation, ``HOG_CELL``-pixel cells, overlapping 2x2-cell
    blocks normalised with L2-Hys (clip 0.2).

    Args:
        images: (N, S, S) uint8.
        chunk: images processed at a time (bounds memory).

    Returns:
        (N, D) float32 with D = (HOG_SIDE / HOG_CELL - 1)^2 * 4 * HOG_BINS (8,100).
    """
    images = _check_images(images)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    cells_per_side = HOG_SIDE // HOG_CELL
    features = []
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        if part.shape[1] != HOG_SIDE:
            part = np.stack([cv2.resize(image, (HOG_SIDE, HOG_SIDE), interpolation=cv2.INTER_AREA)
                             for image in part])
        pixels = part.astype(np.float32)
        gradient_x = np.zeros_like(pixels)
        gradient_y = np.zeros_like(pixels)
        gradient_x[:, :, 1:-1] = pixels[:, :, 2:] - pixels[:, :, :-2]
        gradient_y[:, 1:-1, :] = pixels[:, 2:, :] - pixels[:, :-2, :]
        magnitude = np.hypot(gradient_x, gradient_y)
        orientation = np.arctan2(gradient_y, gradient_x) * (HOG_BINS / np.pi) % HOG_BINS
        lower = np.floor(orientation)
        upper_weight = magnitude * (orientation - lower)
        lower_weight = magnitude - upper_weight
        lower = lower.astype(np.int8) % HOG_BINS
        upper = (lower + 1) % HOG_BINS
        count = len(part)
        cells = np.empty((count, cells_per_side, cells_per_side, HOG_BINS), np.float32)
        for bin_index in range(HOG_BINS):
            votes = np.where(lower == bin_index, lower_weight, 0) + np.where(upper == bin_index, upper_weight, 0)
            cells[..., bin_index] = votes.reshape(count, cells_per_side, HOG_CELL, cells_per_side,
                                                  HOG_CELL).sum((2, 4))
        blocks = np.concatenate([cells[:, :-1, :-1], cells[:, 1:, :-1], cells[:, :-1, 1:], cells[:, 1:, 1:]], -1)
        blocks /= np.sqrt((blocks ** 2).sum(-1, keepdims=True) + 1e-6)
        np.minimum(blocks, 0.2, out=blocks)
        blocks /= np.sqrt((blocks ** 2).sum(-1, keepdims=True) + 1e-6)
        features.append(blocks.reshape(count, -1))
    if not features:
        return np.zeros((0, (cells_per_side - 1) ** 2 * 4 * HOG_BINS), np.float32)
    return np.concatenate(features)


def _check_labels(labels: Any, count: int | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be (N,), got shape {labels.shape}")
    if count is not None and len(labels) != count:
        raise ValueError(f"labels must have one entry per image ({count}), got {len(labels)}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got values {sorted(set(labels.tolist()))[:5]}")
    if len(np.unique(labels)) < 2:
        raise ValueError("labels must contain both classes (0 and 1)")
    return labels.astype(np.int64)


def duplicate_group_ids(hashes: np.ndarray, *, threshold_bits: int = DEFAULT_THRESHOLD_BITS) -> np.ndarray:
    """(N,) int64 near-duplicate group ids of one site's (N, W) uint64 perceptual hashes.

    The same grouping as the leakage audit; pass it as ``groups`` to
    :func:`cross_validated_probabilities` so copies of one scan share a fold.
    """
    hashes = np.asarray(hashes)
    if hashes.ndim != 2 or hashes.dtype != np.uint64:
        raise ValueError(f"hashes must be (N, W) uint64, got shape {hashes.shape} and {hashes.dtype}")
    first, second, _ = near_duplicate_pairs(hashes, threshold=threshold_bits)
    return duplicate_groups(len(hashes), first, second)


def cross_validated_probabilities(images: np.ndarray, labels: Any, *, folds: int = 5, seed: int = 0,
                                  groups: Any = None) -> np.ndarray:
    """Out-of-sample tumour probabilities from a cheap classifier cross-validated on the site itself.

    The classifier is :data:`CLASSIFIER_DESCRIPTION`; each image is scored by
    the model of the fold that did not see it. Without ``groups`` the folds
    are stratified by label. A site that repeats scans (BR35H: 817
    near-duplicate groups in 3,000 files at the audit's threshold) then has
    copies of a test image in the training folds, which inflates the
    probabilities and hides label errors (BR35H CV AUC 0.987 ungrouped,
    0.922 grouped); pass ``groups`` (e.g. :func:`duplicate_group_ids`) and
    every group stays in one fold (``StratifiedGroupKFold``).

    Args:
        images: (N, S, S) uint8 crops.
        labels: (N,) 0/1, both classes, each at least ``folds`` times.
        folds: number of folds, >= 2.
        seed: seed of the fold assignment (the fit itself is deterministic).
        groups: optional (N,) group ids; images of one group share a fold.

    Returns:
        (N,) float64 probabilities of the tumour class, in [0, 1].
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images = _check_images(images)
    labels = _check_labels(labels, len(images))
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    smallest = int(np.bincount(labels, minlength=2).min())
    if smallest < folds:
        raise ValueError(f"each class needs at least {folds} images for {folds} folds; the smaller has {smallest}")
    features = hog_features(images)
    if groups is None:
        splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(features, labels)
    else:
        groups = np.asarray(groups)
        if groups.shape != labels.shape:
            raise ValueError(f"groups must be (N,) like labels, got shape {groups.shape}")
        distinct = len(np.unique(groups))
        if distinct < folds:
            raise ValueError(f"groups must have at least {folds} distinct ids for {folds} folds, got {distinct}")
        splits = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(
            features, labels, groups)
    probabilities = np.full(len(labels), np.nan)
    for train, test in splits:
        if len(np.unique(labels[train])) < 2:
            raise ValueError("a training fold holds one class only; use fewer folds or coarser groups")
        model = make_pipeline(StandardScaler(), LogisticRegression(C=LOGISTIC_C, max_iter=3000))
        model.fit(features[train], labels[train])
        probabilities[test] = model.predict_proba(features[test])[:, 1]
    return probabilities


# ---------------------------------------------------------------- label issues (cleanlab)


def _check_probabilities(probabilities: Any, count: int) -> np.ndarray:
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.shape != (count,):
        raise ValueError(f"probabilities must be ({count},), got shape {probabilities.shape}")
    if not np.isfinite(probabilities).all() or probabilities.min() < 0 or probabilities.max() > 1:
        raise ValueError("probabilities must be finite and in [0, 1]")
    return probabilities


def label_issues(labels: Any, probabilities: Any, *, keys: Sequence[str]) -> list[dict]:
    """Candidate label errors, most suspicious first (cleanlab, self-confidence ranking).

    ``cleanlab.filter.find_label_issues`` on the two-column ``pred_probs``
    ``[1 - p, p]`` picks the images, ranked by ``self_confidence`` (the
    probability of the given label); ``cleanlab.rank.get_label_quality_scores``
    gives each a label-quality score in [0, 1] (low = suspicious).

    Args:
        labels: (N,) given labels, 0/1, both classes present.
        probabilities: (N,) out-of-sample tumour probabilities in [0, 1].
        keys: N sample keys, in the same order.

    Returns:
        One dict per candidate: ``key``, ``label``, ``probability_of_label``,
        ``rank`` (1 = most suspicious) and ``label_quality``.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = _check_labels(labels)
    probabilities = _check_probabilities(probabilities, len(labels))
    keys = list(keys)
    if len(keys) != len(labels):
        raise ValueError(f"keys must have one entry per label ({len(labels)}), got {len(keys)}")
    pred_probs = np.column_stack([1.0 - probabilities, probabilities])
    ranked = find_label_issues(labels, pred_probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    quality = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    return [{"key": keys[index], "label": int(labels[index]),
             "probability_of_label": float(pred_probs[index, labels[index]]), "rank": rank,
             "label_quality": float(quality[index])}
            for rank, index in enumerate(np.asarray(ranked, np.int64).tolist(), start=1)]


# ---------------------------------------------------------------- the review


def quality_review(site_name: str, samples: Sequence[Sample], images: np.ndarray, probabilities: Any, *,
                   probability_source: str) -> dict:
    """Both reviews of one site as a JSON-ready dict.

    Args:
        site_name: the site's name.
        samples: N sample records (``key``, ``relative_path``, ``label``, ``subclass``).
        images: (N, S, S) uint8 crops in sample order.
        probabilities: (N,) out-of-sample tumour probabilities.
        probability_source: where the probabilities come from, e.g.
            ``"cross-validated " + CLASSIFIER_DESCRIPTION`` or ``"trained model"``.

    Returns:
        ``site``, ``images``, ``probability_source``, ``not_mri_rule``,
        ``not_mri_threshold``, ``note``, ``counts`` (``not_mri``,
        ``label_issue``, ``both``, ``flagged``: images with either flag) and
        the lists ``not_mri`` (by decreasing score) and ``label_issues`` (by
        rank). Every entry has ``key``, ``relative_path``, ``label``,
        ``subclass``, ``reason`` (``"not_mri"`` or ``"label_issue"``),
        ``score`` (CT-likeness, or cleanlab's label quality: low = suspicious)
        and ``rank``; label issues also ``probability_of_label``.
    """
    check_site_name(site_name)
    if not isinstance(probability_source, str) or not probability_source.strip():
        raise ValueError("probability_source must be a non-empty string, e.g. 'trained model'")
    images = _check_images(images)
    samples = list(samples)
    if len(samples) != len(images):
        raise ValueError(f"samples ({len(samples)}) and images ({len(images)}) must have the same length")
    labels = np.array([sample.label for sample in samples], np.int64)
    probabilities = _check_probabilities(probabilities, len(samples))
    by_key = {sample.key: sample for sample in samples}
    if len(by_key) != len(samples):
        raise ValueError("sample keys must be unique")

    def entry(sample: Sample, reason: str, score: float, rank: int) -> dict:
        return {"key": sample.key, "relative_path": sample.relative_path, "label": int(sample.label),
                "subclass": sample.subclass, "reason": reason, "score": round(float(score), 6), "rank": rank}

    scores = not_mri_scores(images)
    flagged = np.nonzero(scores >= NOT_MRI_THRESHOLD)[0]
    flagged = flagged[np.argsort(-scores[flagged], kind="stable")]
    not_mri = [entry(samples[index], "not_mri", scores[index], rank)
               for rank, index in enumerate(flagged.tolist(), start=1)]
    issues = []
    for issue in label_issues(labels, probabilities, keys=[sample.key for sample in samples]):
        row = entry(by_key[issue["key"]], "label_issue", issue["label_quality"], issue["rank"])
        row["probability_of_label"] = round(issue["probability_of_label"], 6)
        issues.append(row)
    not_mri_keys, issue_keys = {row["key"] for row in not_mri}, {row["key"] for row in issues}
    return {
        "site": site_name,
        "images": len(samples),
        "probability_source": probability_source,
        "not_mri_rule": NOT_MRI_DESCRIPTION,
        "not_mri_threshold": NOT_MRI_THRESHOLD,
        "note": "candidates for a person to review; nothing was removed",
        "counts": {"not_mri": len(not_mri), "label_issue": len(issues), "both": len(not_mri_keys & issue_keys),
                   "flagged": len(not_mri_keys | issue_keys)},
        "not_mri": not_mri,
        "label_issues": issues,
    }


def _site_reviews(review: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """One site review (has ``site``) or a mapping of site name -> review, as a list."""
    if not isinstance(review, Mapping):
        raise ValueError(f"review must be a dict from quality_review (or a dict of them), got {type(review).__name__}")
    reviews = [review] if "site" in review else list(review.values())
    for one in reviews:
        if not isinstance(one, Mapping) or not {"site", "not_mri", "label_issues"} <= set(one):
            raise ValueError("review must be a dict from quality_review, or a dict of site name -> such dicts")
    return reviews


def sensitivity_mask(keys: Sequence[str], review: Mapping[str, Any]) -> np.ndarray:
    """(N,) bool: True for images NOT flagged (neither ``not_mri`` nor ``label_issue``).

    For an extra, clearly labelled "without flagged images" metrics row; keys
    the review does not mention count as not flagged. ``review`` is one site's
    :func:`quality_review` or a dict of them by site.
    """
    flagged = {row["key"] for one in _site_reviews(review) for row in [*one["not_mri"], *one["label_issues"]]}
    return np.array([key not in flagged for key in keys], bool)


#: CSV columns of ``quality_review.csv``.
CSV_COLUMNS = ("site", "key", "relative_path", "label", "subclass", "reason", "score", "rank")

_WHITE = (255, 255, 255)
_ORANGE = (255, 170, 0)
_CYAN = (0, 220, 255)


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = max(1, limit // 3)
    return text[:head] + ".." + text[-(limit - head - 2):]


def quality_montage(review: Mapping[str, Any], images_by_key: Callable[[str], np.ndarray], *,
                    max_tiles: int = 48, tile: int = 160, columns: int = 6) -> np.ndarray:
    """A captioned picture of one site's candidates, for a person to review.

    ``not_mri`` candidates come first (orange captions), then label issues by
    rank (cyan). Under each tile: the key (shortened), the given label and
    subclass, the reason and the score. A title line says what the picture is
    and that nothing was removed.

    Args:
        review: one site's :func:`quality_review`.
        images_by_key: returns the (H, W) grey or (H, W, 3) RGB uint8 image of a key.
        max_tiles: most tiles shown, >= 1.
        tile: side of each tile in pixels, >= 128.
        columns: tiles per row, >= 1.

    Returns:
        (H, W, 3) uint8 RGB with ``n`` tiles shown, ``c = min(columns, n)``
        columns, ``line = round(15 * tile / 160)``: W = max(c * (tile + 6) + 6, 720),
        H = 4 * (line + 4) + 8 + ceil(n / c) * (tile + 3 * line + 12) + 6.
    """
    from brain_crop import resize_square

    if max_tiles < 1 or columns < 1:
        raise ValueError(f"max_tiles and columns must be >= 1, got {max_tiles} and {columns}")
    if tile < 128:
        raise ValueError(f"tile must be >= 128 px, got {tile}")
    (review,) = _site_reviews(review)
    rows_shown = [*review["not_mri"], *review["label_issues"]][:max_tiles]
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.38 * tile / 160, 1
    line = int(round(15 * tile / 160))
    caption, gap = 3 * line + 6, 6
    count = max(1, len(rows_shown))
    columns = min(columns, count)
    grid_rows = -(-count // columns)
    width = max(columns * (tile + gap) + gap, 720)
    counts = review["counts"]
    source = review["probability_source"]
    source = source if len(source) <= 90 else source[:88] + ".."
    titles = (
        f"{review['site']}: data-quality candidates for a person to review - nothing was removed",
        f"{counts['not_mri']} not-MRI (CT-like, orange), {counts['label_issue']} label-issue candidates (cyan); "
        f"showing {len(rows_shown)}",
        f"not_mri score >= {review['not_mri_threshold']}; label_issue score = cleanlab label quality",
        f"probabilities: {source}",
    )
    widest = max(cv2.getTextSize(text, font, 1.0, thickness)[0][0] for text in titles)
    title_scale = min(scale, (width - 2 * gap) / widest)
    title_line = line + 4
    title_height = len(titles) * title_line + 8
    montage = np.zeros((title_height + grid_rows * (tile + caption + gap) + gap, width, 3), np.uint8)
    for number, text in enumerate(titles, start=1):
        cv2.putText(montage, text, (gap, number * title_line), font, title_scale, _WHITE, thickness, cv2.LINE_AA)
    if not rows_shown:
        cv2.putText(montage, "no candidates", (gap, title_height + tile // 2), font, scale, _WHITE, thickness,
                    cv2.LINE_AA)
        return montage
    max_chars = max(10, int(tile / (19 * scale)))
    for index, row in enumerate(rows_shown):
        top = title_height + (index // columns) * (tile + caption + gap)
        left = gap + (index % columns) * (tile + gap)
        image = np.asarray(images_by_key(row["key"]))
        if image.ndim == 3:
            image = cv2.cvtColor(image[..., :3].astype(np.uint8), cv2.COLOR_RGB2GRAY)
        if image.ndim != 2 or image.size == 0:
            raise ValueError(f"image of {row['key']!r} must be (H, W) or (H, W, 3), got shape {image.shape}")
        montage[top:top + tile, left:left + tile] = cv2.cvtColor(resize_square(image.astype(np.uint8), tile),
                                                                 cv2.COLOR_GRAY2RGB)
        colour = _ORANGE if row["reason"] == "not_mri" else _CYAN
        texts = (_shorten(row["key"], max_chars), f"label {row['label']} ({row['subclass']})",
                 f"{row['reason']} #{row['rank']} {row['score']:.3f}")
        for number, text in enumerate(texts, start=1):
            cv2.putText(montage, _shorten(text, max_chars), (left + 2, top + tile + number * line), font, scale,
                        colour, thickness, cv2.LINE_AA)
    return montage


def write_quality_outputs(review: Mapping[str, Any], images_by_key: Callable[[str], np.ndarray],
                          output_dir: str | Path, *, max_tiles: int = 48, tile: int = 160) -> list[Path]:
    """``quality_review.csv`` and one ``quality_<site>.png`` montage per site into ``output_dir``.

    Args:
        review: one site's :func:`quality_review`, or a dict of them by site name.
        images_by_key: returns the (H, W) or (H, W, 3) uint8 image of a sample key.
        output_dir: folder, created if missing.
        max_tiles, tile: see :func:`quality_montage`.

    Returns:
        The paths written: the CSV first, then the montages in site order. The
        CSV has one row per candidate (an image flagged for both reasons has
        two) with columns :data:`CSV_COLUMNS`.
    """
    reviews = _site_reviews(review)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path = output_dir / "quality_review.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for one in reviews:
            for row in [*one["not_mri"], *one["label_issues"]]:
                writer.writerow([one["site"], row["key"], row["relative_path"], row["label"], row["subclass"],
                                 row["reason"], f"{row['score']:.6f}", row["rank"]])
    paths = [csv_path]
    for one in reviews:
        site = check_site_name(one["site"])
        picture = quality_montage(one, images_by_key, max_tiles=max_tiles, tile=tile)
        path = output_dir / f"quality_{site}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
            raise ValueError(f"could not write {path}")
        paths.append(path)
    return paths


def cross_validated_review(site: Any, *, seed: int = 0, threshold_bits: int = DEFAULT_THRESHOLD_BITS) -> dict:
    """:func:`quality_review` of a loaded site (``CachedSite``) with probabilities cross-validated on it.

    Folds are grouped by the site's near-duplicate groups, so copies of one
    scan never sit on both sides of a fold. A site with fewer than two images
    of a class gets the not-MRI review only (no label-issue candidates).
    """
    labels = np.asarray(site.labels, np.int64)
    counts = np.bincount(labels, minlength=2)
    if counts.min() < 2:
        review = quality_review(site.name, site.samples, site.images, np.where(labels == 1, 1.0, 0.0),
                                probability_source="none (a class has fewer than 2 images)")
        review["label_issues"], review["counts"]["label_issue"] = [], 0
        review["counts"]["both"] = 0
        review["counts"]["flagged"] = review["counts"]["not_mri"]
        return review
    groups = duplicate_group_ids(site.hashes, threshold_bits=threshold_bits)
    folds = int(min(5, counts.min(), len(np.unique(groups))))
    probabilities = cross_validated_probabilities(site.images, labels, folds=max(folds, 2), seed=seed, groups=groups)
    return quality_review(site.name, site.samples, site.images, probabilities,
                          probability_source=f"cross-validated on the site ({max(folds, 2)} folds grouped by "
                                             f"near-duplicates): {CLASSIFIER_DESCRIPTION}")


def format_quality_table(reviews: Mapping[str, Mapping[str, Any]]) -> str:
    """Console lines: per site the images, not-MRI flags, label-issue candidates and where the probabilities came from."""
    width = max([4, *(len(name) for name in reviews)])
    lines = [f"{'site':<{width}}  {'images':>6}  {'not MRI':>7}  {'label?':>6}  probabilities"]
    for name, review in reviews.items():
        counts = review["counts"]
        lines.append(f"{name:<{width}}  {review['images']:>6}  {counts['not_mri']:>7}  {counts['label_issue']:>6}  "
                     f"{review['probability_source'].split(':')[0]}")
    lines.append("candidates for a person to review (quality_review.csv, quality_<site>.png); nothing was removed")
    return "\n".join(lines)
