"""Shortcut audit: can a site's labels be predicted without looking at the brain?

Public brain-MRI collections assemble tumour and no-tumour images from
different sources, so file facts (size, JPEG quality, colour channels) and
global image statistics (brightness, sharpness, noise) can separate the
classes by themselves. A cross-site AUC that such numbers already reach says
little about anatomy. This module measures that, in two parts:

1. :func:`image_features`: a handful of numbers per file (:data:`FEATURE_NAMES`),
   computed from the file's bytes, its decoded grey image and its brain box.
   The crop cache computes them while it decodes each file and stores them
   beside the crops (``features.npy``), so they cost no second decode.
2. Pure functions on arrays: the AUC of each feature alone
   (:func:`feature_aucs`), a small classifier on all features fit on the
   training site and applied to another (:func:`shortcut_baseline`) or
   cross-validated within one site (:func:`cross_validated_auc`), how well the
   features tell the sites apart (:func:`site_separability`), all of it
   together (:func:`shortcut_audit`) and a console table
   (:func:`format_shortcut_table`).

Conventions: ``features`` is float64 (N, F) with the columns of
:data:`FEATURE_NAMES`; NaN marks a feature that does not apply (the JPEG
quality of a PNG). ``labels`` is int (N,) in {0, 1}, 1 = tumour. AUCs are in
[0, 1]; confidence intervals are 95 % stratified bootstrap percentile
intervals (``eval.metrics``, numpy only). Everything is deterministic for a
given ``seed``. scikit-learn is imported only by the classifier functions.
"""
from __future__ import annotations

import math
import struct
from typing import Mapping, Sequence

import cv2
import numpy as np

from datasets.validation import image_format, jpeg_segments
from eval.metrics import bootstrap_aucs, roc_auc

#: Columns of a feature row, in order. See :func:`image_features` for each one.
FEATURE_NAMES: tuple[str, ...] = (
    "width",
    "height",
    "aspect",
    "bytes_per_pixel",
    "jpeg_quality",
    "bit_depth",
    "channels",
    "mean_intensity",
    "intensity_sd",
    "sharpness",
    "noise",
    "border_fraction",
)

#: The classifier of :func:`shortcut_baseline`, :func:`cross_validated_auc` and
#: :func:`site_separability` unless told otherwise (see :func:`make_classifier`).
DEFAULT_CLASSIFIER = "boosting"
CLASSIFIERS = ("logistic", "boosting")

#: IJG (libjpeg) base luminance quantisation table, ITU-T T.81 Annex K.1, natural (row) order.
IJG_LUMINANCE_TABLE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
], np.int64)

#: Position in natural order of each coefficient in the zig-zag order a DQT segment uses.
JPEG_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
], np.int64)

#: Immerkær's noise kernel: the difference of two Laplacians, blind to planes and ramps.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)

_JPEG_FRAME_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


# ----------------------------------------------------------------------------- file facts


def jpeg_luminance_table(data: bytes) -> np.ndarray | None:
    """The first JPEG quantisation table with id 0 (luminance), or None.

    Returns:
        int64 (64,) quantiser steps in zig-zag order (1..65535), as stored in
        the DQT segment; None for a file without one (not a JPEG, or damaged).
    """
    if image_format(data) != "jpeg":
        return None
    for marker, payload in jpeg_segments(data):
        if marker != 0xDB:
            continue
        position = 0
        while position < len(payload):
            precision, table_id = payload[position] >> 4, payload[position] & 0x0F
            size = 128 if precision else 64
            body = payload[position + 1:position + 1 + size]
            if len(body) < size:
                return None
            if table_id == 0:
                values = np.frombuffer(body, ">u2" if precision else np.uint8)
                return values.astype(np.int64)
            position += 1 + size
    return None


def ijg_quantisation_table(quality: int, *, baseline: bool = True) -> np.ndarray:
    """The IJG luminance table libjpeg writes for ``quality`` (1..100), int64 (64,) in zig-zag order.

    libjpeg's ``jpeg_quality_scaling``: scale = 5000 / q for q < 50, else
    200 - 2 q (percent); each step = (base * scale + 50) // 100, at least 1
    and at most 255 for baseline (8-bit) tables.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    table = np.clip((IJG_LUMINANCE_TABLE * scale + 50) // 100, 1, 255 if baseline else 32767)
    return table[JPEG_ZIGZAG]


_IJG_TABLES = {baseline: np.stack([ijg_quantisation_table(q, baseline=baseline) for q in range(1, 101)])
               for baseline in (True, False)}


def jpeg_quality(data: bytes) -> float:
    """Estimated IJG quality (1..100) of a JPEG file, NaN when the file is not a JPEG.

    Inverts libjpeg's scaling of the Annex K luminance table: the quality whose
    IJG table is closest to the file's luminance table (sum of absolute step
    differences; ties go to the lower quality). Exact for files written by
    libjpeg (OpenCV, PIL, most cameras and converters), as ImageMagick's
    ``identify -verbose`` estimate is; for other encoders (Photoshop,
    JPEGmini) it is the nearest IJG quality. A JPEG without a readable
    luminance table gives NaN.
    """
    table = jpeg_luminance_table(data)
    if table is None:
        return math.nan
    candidates = _IJG_TABLES[bool(table.max() <= 255)]
    errors = np.abs(candidates - table[None, :]).sum(axis=1)
    return float(np.argmin(errors) + 1)


def stored_sample_format(data: bytes) -> tuple[float, float]:
    """``(bit_depth, channels)`` as the file header stores them; NaN for what the header does not say.

    bit_depth is bits per sample (8, 16, ...; 1/2/4 for low-depth PNG grey);
    channels is 1 grey, 2 grey + alpha, 3 colour, 4 colour + alpha:

    - PNG (IHDR): colour type 0 grey, 2 RGB, 4 grey + alpha, 6 RGBA; a palette
      (type 3) counts as colour (3, or 4 with a ``tRNS`` transparency chunk)
      with 8-bit palette entries.
    - JPEG (start of frame): sample precision and number of components (1
      grey, 3 YCbCr, 4 CMYK/YCCK).
    - BMP: 8 bits per sample; 24-bit 3, 32-bit 4 and palette (<= 8 bit) 3 channels.
    - TIFF: BitsPerSample and SamplesPerPixel of the first directory.
    """
    kind = image_format(data)
    try:
        if kind == "png" and data[12:16] == b"IHDR":
            depth, colour_type = data[24], data[25]
            if colour_type == 3:
                transparency = b"tRNS" in data[33:data.find(b"IDAT")] if b"IDAT" in data else False
                return 8.0, 4.0 if transparency else 3.0
            channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour_type)
            return float(depth), float(channels) if channels else math.nan
        if kind == "jpeg":
            for marker, payload in jpeg_segments(data):
                if marker in _JPEG_FRAME_MARKERS and len(payload) >= 6:
                    return float(payload[0]), float(payload[5])
            return math.nan, math.nan
        if kind == "bmp":
            if struct.unpack("<I", data[14:18])[0] == 12:
                bits = struct.unpack("<H", data[24:26])[0]
            else:
                bits = struct.unpack("<H", data[28:30])[0]
            return 8.0, 4.0 if bits == 32 else 3.0
        if kind == "tiff":
            return _tiff_sample_format(data)
    except (struct.error, IndexError):
        return math.nan, math.nan
    return math.nan, math.nan


def _tiff_sample_format(data: bytes) -> tuple[float, float]:
    order = "<" if data.startswith(b"II") else ">"
    offset = struct.unpack(order + "I", data[4:8])[0]
    entries = struct.unpack(order + "H", data[offset:offset + 2])[0]
    depth, channels = math.nan, 1.0
    for index in range(entries):
        start = offset + 2 + 12 * index
        tag, kind, count = struct.unpack(order + "HHI", data[start:start + 8])
        if tag not in (258, 277):
            continue
        if kind == 3 and count <= 2:  # SHORT values stored in the entry itself
            value = struct.unpack(order + "H", data[start + 8:start + 10])[0]
        elif kind == 3:  # BitsPerSample of several samples: an offset to the SHORTs
            pointer = struct.unpack(order + "I", data[start + 8:start + 12])[0]
            value = struct.unpack(order + "H", data[pointer:pointer + 2])[0]
        else:
            value = struct.unpack(order + "I", data[start + 8:start + 12])[0]
        if tag == 258:
            depth = float(value)
        else:
            channels = float(value)
    return depth, channels


# ----------------------------------------------------------------------------- pixel statistics


def sharpness(grey: np.ndarray) -> float:
    """Variance of the Laplacian (``cv2.Laplacian``, ksize 1: the 4-neighbour kernel), population variance.

    The ksize-1 Laplacian of a uint8 image lies in -1020..1020, so it is
    computed exactly in int16 and its variance by ``cv2.meanStdDev`` (in
    double): the same value as ``cv2.Laplacian(grey, cv2.CV_64F).var()``,
    in about half the time.

    Args:
        grey: (H, W) uint8 image at its original size.

    Returns:
        A float >= 0 (grey levels squared); 0 for a constant image.
    """
    _, deviation = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_16S, ksize=1))
    return float(deviation[0, 0]) ** 2


def noise_sigma(grey: np.ndarray) -> float:
    """Standard deviation of additive Gaussian noise, Immerkær's fast estimate (1996).

    sigma = sqrt(pi / 2) / (6 (W - 2) (H - 2)) * sum |grey * M| over the
    interior, with M the 3x3 difference of two Laplacians, which cancels
    constant areas and linear ramps. Edges add to it, so on a real scan it
    measures noise plus fine texture. One 3x3 filter, exact in int16 (the
    response of a uint8 image lies in -4080..4080): about 1.5 ms per megapixel.

    Args:
        grey: (H, W) uint8 image.

    Returns:
        A float >= 0 in grey levels; 0 for a constant image; NaN when the
        image is smaller than 3x3.
    """
    height, width = grey.shape
    if height < 3 or width < 3:
        return math.nan
    response = cv2.filter2D(grey, cv2.CV_16S, _NOISE_KERNEL, borderType=cv2.BORDER_REPLICATE)
    total = cv2.norm(response[1:-1, 1:-1], cv2.NORM_L1)
    return math.sqrt(math.pi / 2.0) * total / (6.0 * (width - 2) * (height - 2))


def image_features(data: bytes, grey: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Shortcut features of one file: float64 (len(FEATURE_NAMES),), in the order of :data:`FEATURE_NAMES`.

    Args:
        data: the file's bytes.
        grey: its decoded (H, W) uint8 grey image at the original size
            (``datasets.validation.decode_image_bytes``).
        box: the brain crop box ``(x0, y0, x1, y1)``, half-open, in pixels of
            ``grey``, with ``0 <= x0 <= x1 <= W`` and ``0 <= y0 <= y1 <= H``.

    Features (NaN only where stated):
        width, height: pixels of the original image (>= 1).
        aspect: width / height (> 0).
        bytes_per_pixel: file bytes / (width * height) (> 0; ~0.05..0.5
            for JPEG slices, ~0.3..4 for PNG).
        jpeg_quality: estimated IJG quality 1..100 (:func:`jpeg_quality`);
            NaN for non-JPEG files.
        bit_depth: bits per sample as stored (8, 16, ...), channels: 1 grey,
            2 grey + alpha, 3 colour, 4 colour + alpha, both read from the
            header (:func:`stored_sample_format`), NaN if the header does not say.
        mean_intensity, intensity_sd: mean and standard deviation of ``grey``
            (0..255, 0..127.5; sd 0 for a constant image).
        sharpness: variance of the Laplacian of ``grey`` (:func:`sharpness`, >= 0).
        noise: Immerkær's noise sigma of ``grey`` (:func:`noise_sigma`, >= 0;
            NaN below 3x3).
        border_fraction: fraction of the image area outside ``box``, in
            [0, 1]; 0 when the box is the whole image, 1 for an empty box.

    Raises:
        ValueError: ``grey`` is not a non-empty 2-D uint8 array, or ``box``
            is not four integers inside the image with x0 <= x1, y0 <= y1.
    """
    grey = np.asarray(grey)
    if grey.ndim != 2 or grey.dtype != np.uint8 or grey.size == 0:
        raise ValueError(f"grey must be a non-empty (H, W) uint8 image, got {grey.dtype} {grey.shape}")
    height, width = grey.shape
    if len(box) != 4:
        raise ValueError(f"box must be (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height):
        raise ValueError(f"box {tuple(box)} is not inside a {width}x{height} image with x0 <= x1 and y0 <= y1")
    pixels = float(width * height)
    bit_depth, channels = stored_sample_format(data)
    mean, sd = cv2.meanStdDev(grey)
    values = (
        float(width),
        float(height),
        width / height,
        len(data) / pixels,
        jpeg_quality(data),
        bit_depth,
        channels,
        float(mean[0, 0]),
        float(sd[0, 0]),
        sharpness(grey),
        noise_sigma(grey),
        1.0 - (x1 - x0) * (y1 - y0) / pixels,
    )
    return np.array(values, np.float64)


# ----------------------------------------------------------------------------- analysis helpers


def _check_features(features, labels=None, *, name: str = "features") -> tuple[np.ndarray, np.ndarray | None]:
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, F) array, got shape {features.shape}")
    if np.isinf(features).any():
        raise ValueError(f"{name} must be finite or NaN (found inf)")
    if labels is None:
        return features, None
    labels = np.asarray(labels)
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels must have shape ({features.shape[0]},), got {labels.shape}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, found {np.unique(labels[~np.isin(labels, (0, 1))])[:5].tolist()}")
    return features, labels.astype(np.int64)


def _feature_names(count: int, names: Sequence[str] | None) -> list[str]:
    if names is None:
        names = FEATURE_NAMES if count == len(FEATURE_NAMES) else [f"feature_{i}" for i in range(count)]
    names = list(names)
    if len(names) != count:
        raise ValueError(f"{len(names)} feature names for {count} feature columns")
    return names


def _missing_ranked_lowest(column: np.ndarray) -> np.ndarray:
    """NaN replaced by a value below every finite value (all NaNs tied)."""
    finite = np.isfinite(column)
    if finite.all():
        return column
    low = column[finite].min() - 1.0 if finite.any() else 0.0
    return np.where(finite, column, low)


def _auc_with_ci(labels: np.ndarray, scores: np.ndarray, *, n_resamples: int, seed: int,
                 flip: bool = False) -> dict:
    """AUC of ``scores`` (or of ``-scores`` when ``flip``) and its 95 % bootstrap percentile interval."""
    auc = roc_auc(labels, scores)
    if math.isnan(auc):
        return {"auc": math.nan, "ci": [math.nan, math.nan]}
    aucs = bootstrap_aucs(labels, scores, n_resamples=n_resamples, seed=seed)
    if flip:
        auc, aucs = 1.0 - auc, 1.0 - aucs
    low, high = np.quantile(aucs, [0.025, 0.975])
    return {"auc": float(auc), "ci": [float(low), float(high)]}


def feature_aucs(features, labels, *, n_resamples: int = 1000, seed: int = 0,
                 names: Sequence[str] | None = None) -> dict[str, dict]:
    """The AUC of each feature alone as a tumour score, oriented so 0.5 is useless and 1.0 perfect.

    Args:
        features: float (N, F); NaN allowed.
        labels: int (N,) in {0, 1}.
        n_resamples: stratified bootstrap resamples for the CI (>= 1).
        seed: bootstrap seed.
        names: F column names; default :data:`FEATURE_NAMES` when F matches.

    Returns:
        ``{name: {"auc", "ci": [low, high], "direction", "missing"}}``: ``auc``
        is max(a, 1 - a) for the raw AUC a, in [0.5, 1]; ``direction`` is
        ``"higher means tumour"`` when a >= 0.5, else ``"lower means tumour"``;
        ``ci`` is the 2.5 / 97.5 percentile of the bootstrap AUCs in that
        same direction (fixed on the full data, so an uninformative feature
        gets an interval around 0.5, below 0.5 included); ``missing`` counts
        NaN values. NaN ranks below every finite value, all NaNs tied: "not
        a JPEG" is then itself a usable value, as it is for a model. A
        constant (or all-NaN) feature has AUC 0.5. With one class only,
        ``auc`` and ``ci`` are NaN.

    Note: the direction is chosen on the data it is scored on, so a feature
    with no information scores slightly above 0.5 (about 0.5 + 0.46 / sqrt(N)
    on average for N balanced images); judge it by its interval.
    """
    features, labels = _check_features(features, labels)
    names = _feature_names(features.shape[1], names)
    result: dict[str, dict] = {}
    for column, name in enumerate(names):
        values = features[:, column]
        scores = _missing_ranked_lowest(values)
        raw = roc_auc(labels, scores)
        flip = not math.isnan(raw) and raw < 0.5
        entry = _auc_with_ci(labels, scores, n_resamples=n_resamples, seed=seed, flip=flip)
        entry["direction"] = "lower means tumour" if flip else "higher means tumour"
        entry["missing"] = int(np.isnan(values).sum())
        result[name] = entry
    return result


def _signed_log(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


def make_classifier(kind: str = DEFAULT_CLASSIFIER, *, seed: int = 0):
    """A fresh scikit-learn pipeline for the shortcut features.

    ``"logistic"``: signed log1p of every feature (sizes, bytes and
    sharpness span orders of magnitude), NaN -> the training median plus a
    missing-indicator column, standardised, L2 logistic regression (C = 1,
    balanced class weights).
    ``"boosting"``: HistGradientBoostingClassifier (100 trees of depth 3,
    learning rate 0.1, no early stopping, balanced class weights, NaN handled
    natively); ``seed`` is its random_state.

    Choice of the default (``"boosting"``), measured on the shared data
    (BR35H 3,000, NAV 253, MOS Testing 1,311 images; seed 0):

    ==============================================  ========  ========
    AUC                                             logistic  boosting
    ==============================================  ========  ========
    fit on all BR35H, applied to NAV                0.792     0.974
    fit on all BR35H, applied to MOS                0.674     0.920
    fit on the 431 leak-free BR35H, applied to NAV  0.569     0.810
    fit on the 431 leak-free BR35H, applied to MOS  0.421     0.548
    5-fold CV within BR35H                          0.858     0.981
    5-fold CV within NAV                            0.862     0.882
    5-fold CV within MOS                            0.993     0.999
    site classifier, balanced accuracy (chance 1/3) 0.652     0.822
    whole :func:`shortcut_audit`, one thread        2 s       16 s
    ==============================================  ========  ========

    The audit is a warning light: it must not understate what a learner can
    get from these numbers, and a CNN is far more flexible than either
    model. The boosted trees find more everywhere, need no choice of
    transform (they only use the order of each feature), take NaN natively,
    and do not flip sign when another site's sizes lie outside the training
    range (the logistic model scores MOS 0.421, below chance, from the
    leak-free BR35H images). The price is time, still well under a minute.
    The logistic model stays available for readable coefficients.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    if kind == "logistic":
        return make_pipeline(
            FunctionTransformer(_signed_log),
            SimpleImputer(strategy="median", add_indicator=True),
            StandardScaler(),
            LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000),
        )
    if kind == "boosting":
        return HistGradientBoostingClassifier(max_iter=100, max_depth=3, learning_rate=0.1,
                                              early_stopping=False, class_weight="balanced",
                                              random_state=seed)
    raise ValueError(f"unknown classifier {kind!r}: use one of {CLASSIFIERS}")


def _one_thread():
    """Run scikit-learn (OpenMP, BLAS) on one thread: on 2 cores shared with another process the
    boosted trees' OpenMP threads wait for each other (an audit took 72 s with two threads, 18 s
    with one); on these small arrays one thread is faster even on idle cores."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _fit_predict(classifier: str, seed: int, train_features: np.ndarray, train_labels: np.ndarray,
                 test_features: np.ndarray) -> np.ndarray:
    """Fit on the training rows, return class probabilities (M, K) of the test rows, K = classes in training.

    Columns that are NaN on every training row (the JPEG quality of a site of
    PNGs) are dropped first: no model can learn from them. With no column
    left, every test row gets the class frequencies of the training rows.
    """
    usable = ~np.isnan(train_features).all(axis=0)
    classes, counts = np.unique(train_labels, return_counts=True)
    if not usable.any():
        return np.tile(counts / counts.sum(), (test_features.shape[0], 1))
    with _one_thread():
        model = make_classifier(classifier, seed=seed).fit(train_features[:, usable], train_labels)
        probabilities = model.predict_proba(test_features[:, usable])
    columns = np.searchsorted(classes, model.classes_)
    ordered = np.zeros((test_features.shape[0], classes.size))
    ordered[:, columns] = probabilities
    return ordered


def _check_classifier(classifier: str) -> None:
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}: use one of {CLASSIFIERS}")


def _both_classes(labels: np.ndarray, what: str) -> None:
    if labels.size == 0 or labels.min() == labels.max():
        raise ValueError(f"{what} needs both classes, got {int(labels.sum())} tumour and "
                         f"{int((labels == 0).sum())} no-tumour images")


def shortcut_baseline_scores(train_features, train_labels, eval_features, *, seed: int = 0,
                             classifier: str = DEFAULT_CLASSIFIER) -> np.ndarray:
    """Per-image tumour probabilities of the shortcut baseline: fit on the training site, applied to images.

    The scores behind :func:`shortcut_baseline`, for measuring the baseline
    on any subset of an evaluation site beside the model.

    Args:
        train_features: float (N, F), NaN allowed; train_labels: int (N,) in {0, 1}, both classes.
        eval_features: float (M, F), same F.

    Returns:
        float64 (M,) in [0, 1]; empty for M = 0. Same seed, same scores.

    Raises:
        ValueError: bad shapes or labels, different feature counts, or one
            class only in the training site.
    """
    _check_classifier(classifier)
    train_features, train_labels = _check_features(train_features, train_labels, name="train_features")
    eval_features, _ = _check_features(eval_features, name="eval_features")
    if train_features.shape[1] != eval_features.shape[1]:
        raise ValueError(f"train and eval features differ in columns: {train_features.shape[1]} != "
                         f"{eval_features.shape[1]}")
    _both_classes(train_labels, "the shortcut baseline's training site")
    if eval_features.shape[0] == 0:
        return np.zeros(0, np.float64)
    return _fit_predict(classifier, seed, train_features, train_labels, eval_features)[:, 1].astype(np.float64)


def shortcut_baseline(train_features, train_labels, eval_features, eval_labels, *, n_resamples: int = 1000,
                      seed: int = 0, classifier: str = DEFAULT_CLASSIFIER) -> dict:
    """AUC on an evaluation site of a classifier on the shortcut features fit on the training site.

    What a model could score on the evaluation site without anatomy, if it
    learned these numbers on the training site.

    Args:
        train_features: float (N, F), NaN allowed; train_labels: int (N,) in {0, 1}, both classes.
        eval_features: float (M, F); eval_labels: int (M,) in {0, 1}.
        n_resamples, seed: bootstrap of the evaluation AUC (the model is fit once).
        classifier: see :func:`make_classifier`.

    Returns:
        ``{"auc", "ci": [low, high]}``, not oriented (below 0.5 means the
        training site's shortcut points the other way on the evaluation
        site); NaN when the evaluation site has one class.

    Raises:
        ValueError: bad shapes or labels, different feature counts, or one
            class only in the training site.
    """
    _check_classifier(classifier)
    train_features, train_labels = _check_features(train_features, train_labels, name="train_features")
    eval_features, eval_labels = _check_features(eval_features, eval_labels, name="eval_features")
    if train_features.shape[1] != eval_features.shape[1]:
        raise ValueError(f"train and eval features differ in columns: {train_features.shape[1]} != "
                         f"{eval_features.shape[1]}")
    _both_classes(train_labels, "the shortcut baseline's training site")
    if eval_features.shape[0] == 0:
        return {"auc": math.nan, "ci": [math.nan, math.nan]}
    scores = shortcut_baseline_scores(train_features, train_labels, eval_features, seed=seed, classifier=classifier)
    return _auc_with_ci(eval_labels, scores, n_resamples=n_resamples, seed=seed)


def _out_of_fold_scores(features: np.ndarray, labels: np.ndarray, folds: int, seed: int,
                        classifier: str) -> np.ndarray:
    """Out-of-fold P(class 1) of a binary target, or class probabilities (N, K) for several classes."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    classes = np.unique(labels)
    scores = np.zeros((labels.shape[0], classes.size))
    for train_rows, test_rows in splitter.split(features, labels):
        scores[test_rows] = _fit_predict(classifier, seed, features[train_rows], labels[train_rows],
                                         features[test_rows])
    return scores


def cross_validated_auc(features, labels, *, folds: int = 5, seed: int = 0, n_resamples: int = 1000,
                        classifier: str = DEFAULT_CLASSIFIER) -> dict:
    """AUC of the shortcut classifier fit on a site itself, by stratified k-fold.

    How much of one site's labels the shortcut features explain. The
    out-of-fold scores of all folds are pooled into one AUC, with a bootstrap
    CI over images.

    Degenerate data: the number of folds is min(folds, images of the rarer
    class); with fewer than 2 images of either class there is nothing to
    cross-validate and ``auc`` and ``ci`` are NaN (``"folds": 0``).

    Returns:
        ``{"auc", "ci": [low, high], "folds"}``.

    Raises:
        ValueError: bad shapes or labels, or ``folds`` < 2.
    """
    _check_classifier(classifier)
    features, labels = _check_features(features, labels)
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    rarer = int(min(labels.sum(), (labels == 0).sum())) if labels.size else 0
    used = min(folds, rarer)
    if used < 2:
        return {"auc": math.nan, "ci": [math.nan, math.nan], "folds": 0}
    scores = _out_of_fold_scores(features, labels, used, seed, classifier)[:, 1]
    return {**_auc_with_ci(labels, scores, n_resamples=n_resamples, seed=seed), "folds": used}


def site_separability(features_by_site: Mapping[str, np.ndarray], *, folds: int = 5, seed: int = 0,
                      n_resamples: int = 1000, classifier: str = DEFAULT_CLASSIFIER) -> dict:
    """How well the shortcut features tell the sites apart.

    Args:
        features_by_site: ``{site: float (N_site, F)}``, at least two sites,
            same F; a site with fewer than 2 images is left out.

    Returns:
        ``{"sites": [...], "balanced_accuracy", "chance", "folds", "pairwise":
        {"a vs b": {"auc", "ci", "folds"}}}``: the cross-validated (stratified
        by site, ``folds`` or the smallest site's size if less) balanced
        accuracy of one classifier naming the site of each image (chance =
        1 / number of sites), and for each pair of sites the cross-validated
        AUC of telling b from a (:func:`cross_validated_auc` with label 1 =
        site b). High values mean the sites differ in ways the features see:
        scanner, export, size, brightness.

    Raises:
        ValueError: fewer than two usable sites or feature counts that differ.
    """
    from sklearn.metrics import balanced_accuracy_score

    _check_classifier(classifier)
    checked = {name: _check_features(values, name=f"features of {name}")[0]
               for name, values in features_by_site.items()}
    checked = {name: values for name, values in checked.items() if values.shape[0] >= 2}
    if len(checked) < 2:
        raise ValueError(f"site separability needs at least two sites with 2 or more images, got {sorted(checked)}")
    widths = {values.shape[1] for values in checked.values()}
    if len(widths) != 1:
        raise ValueError(f"sites differ in feature columns: {sorted(widths)}")
    names = list(checked)
    stacked = np.concatenate([checked[name] for name in names])
    site_index = np.concatenate([np.full(checked[name].shape[0], index) for index, name in enumerate(names)])
    used = min(folds, min(values.shape[0] for values in checked.values()))
    probabilities = _out_of_fold_scores(stacked, site_index, used, seed, classifier)
    accuracy = balanced_accuracy_score(site_index, probabilities.argmax(axis=1))
    pairwise = {}
    for first in range(len(names)):
        for second in range(first + 1, len(names)):
            a, b = checked[names[first]], checked[names[second]]
            pair_labels = np.concatenate([np.zeros(a.shape[0], np.int64), np.ones(b.shape[0], np.int64)])
            pairwise[f"{names[first]} vs {names[second]}"] = cross_validated_auc(
                np.concatenate([a, b]), pair_labels, folds=folds, seed=seed, n_resamples=n_resamples,
                classifier=classifier)
    return {"sites": names, "balanced_accuracy": float(accuracy), "chance": 1.0 / len(names),
            "folds": used, "pairwise": pairwise}


def json_ready(value):
    """``value`` with plain floats/ints/str/lists/dicts only (numpy scalars converted), NaN as None."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value


def shortcut_audit(sites: Mapping[str, tuple[np.ndarray, np.ndarray]], train_site: str, *,
                   n_resamples: int = 1000, seed: int = 0, folds: int = 5,
                   classifier: str = DEFAULT_CLASSIFIER, names: Sequence[str] | None = None) -> dict:
    """The whole shortcut audit of several sites, JSON-ready.

    Args:
        sites: ``{site: (features float (N, F), labels int (N,) in {0, 1})}``.
        train_site: the site the model is trained on; the baseline is fit on
            it and applied to every other site.
        n_resamples, seed, folds, classifier: as in the functions below.
        names: feature column names (default :data:`FEATURE_NAMES`).

    Returns:
        ``{"features": [...], "classifier", "train_site", "n_resamples",
        "seed", "sites": {site: {"images", "tumour", "feature_auc":
        :func:`feature_aucs`, "cross_validated": :func:`cross_validated_auc`,
        "baseline": :func:`shortcut_baseline` (other sites only)}},
        "site_separability": :func:`site_separability` (None with fewer
        than two sites)}`` with plain Python numbers, NaN as None.

    Give the training site as the model sees it (for example after the
    leakage policy): on these sites a classifier on file facts recognises a
    copied image as readily as it learns a shortcut, so the baseline from all
    of BR35H (NAV 0.97) is much higher than from its 431 leak-free images
    (NAV 0.81).

    Raises:
        ValueError: ``train_site`` not among ``sites``, one class only in
            it, or bad arrays.
    """
    _check_classifier(classifier)
    if train_site not in sites:
        raise ValueError(f"train site {train_site!r} is not among the sites {sorted(sites)}")
    checked = {name: _check_features(features, labels, name=f"features of {name}")
               for name, (features, labels) in sites.items()}
    widths = {features.shape[1] for features, _ in checked.values()}
    if len(widths) != 1:
        raise ValueError(f"sites differ in feature columns: {sorted(widths)}")
    names = _feature_names(widths.pop(), names)
    train_features, train_labels = checked[train_site]
    report: dict = {"features": names, "classifier": classifier, "train_site": train_site,
                    "n_resamples": n_resamples, "seed": seed, "sites": {}}
    for name, (features, labels) in checked.items():
        entry = {
            "images": int(labels.shape[0]),
            "tumour": int(labels.sum()),
            "feature_auc": feature_aucs(features, labels, n_resamples=n_resamples, seed=seed, names=names),
            "cross_validated": cross_validated_auc(features, labels, folds=folds, seed=seed,
                                                   n_resamples=n_resamples, classifier=classifier),
        }
        if name != train_site:
            entry["baseline"] = shortcut_baseline(train_features, train_labels, features, labels,
                                                  n_resamples=n_resamples, seed=seed, classifier=classifier)
        report["sites"][name] = entry
    usable = {name: features for name, (features, _) in checked.items() if features.shape[0] >= 2}
    report["site_separability"] = site_separability(usable, folds=folds, seed=seed, n_resamples=n_resamples,
                                                    classifier=classifier) if len(usable) >= 2 else None
    return json_ready(report)


def _cell(entry: Mapping | None) -> str:
    if not entry or entry.get("auc") is None or (isinstance(entry["auc"], float) and math.isnan(entry["auc"])):
        return "-"
    low, high = entry["ci"]
    if low is None or high is None:
        return f"{entry['auc']:.3f}"
    return f"{entry['auc']:.3f} [{low:.2f}, {high:.2f}]"


def format_shortcut_table(result: Mapping) -> str:
    """A console table of :func:`shortcut_audit`'s result.

    Rows: each feature (its oriented AUC and 95 % CI; ``+`` higher means
    tumour, ``-`` lower means tumour), then the baseline fit on the training
    site and the within-site cross-validated AUC; columns: sites. The
    strongest single feature of each site is marked ``*``. Below: the site
    separability.
    """
    sites = list(result["sites"])
    train = result.get("train_site", "")
    disjoint = any("baseline_source_disjoint" in entry for entry in result["sites"].values())
    labels = list(result["features"]) + [f"baseline (fit on {train})"]
    labels += [f"  on images with no copy in {train}"] if disjoint else []
    labels += ["cross-validated on the site"]
    columns: dict[str, list[str]] = {}
    for site in sites:
        entry = result["sites"][site]
        aucs = entry["feature_auc"]
        values = {name: aucs[name]["auc"] for name in result["features"] if aucs[name]["auc"] is not None}
        best = max(values, key=values.get) if values else None
        cells = []
        for name in result["features"]:
            sign = "+" if aucs[name]["direction"].startswith("higher") else "-"
            mark = "*" if name == best else " "
            cells.append(f"{_cell(aucs[name])} {sign}{mark}")
        cells.append("(train site)" if site == train else _cell(entry.get("baseline")))
        if disjoint:
            part = entry.get("baseline_source_disjoint")
            cells.append("" if site == train else f"{_cell(part)} ({part['images'] if part else 0})")
        cells.append(_cell(entry["cross_validated"]))
        columns[site] = cells
    first = max(len(label) for label in labels)
    widths = {site: max(len(site), *(len(cell) for cell in columns[site])) for site in sites}
    header = " " * first + "  " + "  ".join(f"{site:<{widths[site]}}" for site in sites)
    counts = " " * first + "  " + "  ".join(
        f"{str(result['sites'][site]['images']) + ' images':<{widths[site]}}" for site in sites)
    lines = [header, counts]
    for row, label in enumerate(labels):
        lines.append(f"{label:<{first}}  " + "  ".join(f"{columns[site][row]:<{widths[site]}}" for site in sites))
    lines.append("AUC [95% CI]; + higher / - lower value means tumour; * strongest single feature of the site")
    separability = result.get("site_separability")
    if separability:
        lines.append(f"site classifier from these features: balanced accuracy "
                     f"{separability['balanced_accuracy']:.3f} (chance {separability['chance']:.3f})")
        for pair, entry in separability["pairwise"].items():
            lines.append(f"  {pair}: AUC {_cell(entry)}")
    return "\n".join(lines)
