"""Find the head in a brain-MRI slice and crop to it.

Two recipes, chosen by ``version`` (:data:`CROP_VERSION` = 2 by default; 1
is kept so both can be measured in one run, see
``benchmarks/bench_crop_quality.py``).

Version 1 starts from the classic "crop brain contour" recipe (Gaussian
blur, threshold at 45, a small erosion then dilation to drop specks, the
largest external contour, the box of its extreme points) with two changes:

* Threshold ``min(threshold, otsu)``, where ``otsu`` is Otsu's threshold of
  the blurred image with its brightest 1 % clipped (so burnt-in text and
  bright specks cannot pull it up): on ordinary scans Otsu is above 45 and
  the classic value is used unchanged; on dark scans Otsu falls between the
  black background and the dim head, so they are not cut.
* Largest group instead of largest piece: at the threshold, T2 and FLAIR
  slices fall apart into many pieces (dark white matter, a dark skull band
  between scalp and brain), and the erosion wipes out thin bright skull
  rims, so the largest contour alone often covers half a brain. Every piece
  left after the erosion/dilation is grown by ``reach_fraction`` (4 %) of
  the image's longer side; pieces whose grown areas touch form one group;
  the group with the most pixels is the head; and the box spans every
  above-threshold pixel inside that grown group (thin rims included).

Version 2 keeps all of that and fixes three failures measured on the shared
BR35H, NAV and MOS images:

* Noisy backgrounds (e.g. speckle at grey 45-55): the threshold adapts to
  the background. Its median and robust spread are measured on a strip
  along the image border (:func:`background_level`) and the threshold is
  raised to ``median + 4 x spread`` where that is above the classic level,
  at most halfway from the background to Otsu's threshold (a dim head stays
  above it) and never below the classic level, so dim scans are cut no
  more than before and clean black backgrounds give exactly version 1's
  level (:func:`adaptive_threshold`).
* Frame lines, banners and side bars at the image edges, which version 1
  merged with a head near the edge: removed from the thresholded mask
  before the head is grouped (:func:`remove_edge_artefacts`); they are
  flat (one grey level along their length), a head cut by the edge is not.
* Burnt-in letters, labels and speckle near the head: after grouping, a
  small piece (at most 2 % of the head's area and 20 % of its side) whose
  centre lies outside the convex hull of the head's body and that stays
  apart from it at a lower (hysteresis) threshold is dropped before the
  extreme points are taken. Letters sit on a black background and stay
  apart; the fragments of a dim scalp ring join up below the threshold and
  are kept.

Measured on all 4,564 shared images (``python benchmarks/bench_crop_quality.py``;
numbers in ``benchmarks/results/crop_quality.json`` and README).

Everything here is pure: images in, numbers out, no file I/O.
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

FLAG_OK = "ok"
FLAG_BLANK = "blank"
FLAG_NO_CONTOUR = "no_contour"
FLAG_TOUCHES_BORDER = "touches_border"
FLAGS = (FLAG_OK, FLAG_BLANK, FLAG_NO_CONTOUR, FLAG_TOUCHES_BORDER)

#: Blurred images whose max - min is below this are "blank" (near-constant).
MIN_CONTRAST = 10

#: The crop recipe :func:`find_brain_box` uses by default. Caches of crops
#: include it in their key, so crops of an older recipe are never reused.
CROP_VERSION = 2
#: Every recipe :func:`find_brain_box` can run (1: the previous one).
CROP_VERSIONS = (1, 2)

# Settings of version 2.
#: Width of the border strip whose dark pixels measure the background (fraction of the shorter side).
BORDER_STRIP_FRACTION = 0.03
#: At least this fraction of the strip must be at or below Otsu's threshold to measure it.
MIN_BACKGROUND_FRACTION = 0.25
#: Noise floor = background median + this many robust standard deviations.
NOISE_SPREAD_FACTOR = 4.0
#: A background spread (grey levels) above this is not noise and leaves the threshold alone.
MAX_NOISE_SPREAD = 10.0
#: Pieces lying entirely this close to one side (fraction of the shorter side) are frame lines, ticks or
#: squeezed letters.
EDGE_BAND_FRACTION = 0.025
#: Depth from each side searched for frame lines and banners joined to the head (fraction of the shorter side).
EDGE_ZONE_FRACTION = 0.075
#: A row (column) is a line when this fraction of its length is above the threshold ...
LINE_COVER = 0.8
#: ... and flat: its 10th..90th percentile range is at most this many grey levels (also for side bars).
FLAT_SPREAD = 30
#: A line's last flat row is at most this many rows before its end (the 5x5 blur spreads it).
LINE_SPREAD_ROWS = 3
#: A side bar runs along at least this fraction of its side ...
BAR_MIN_LENGTH = 0.5
#: ... is at most this fraction of the image deep ...
BAR_MAX_WIDTH = 0.35
#: ... and fills at least this fraction of its box.
BAR_MIN_FILL = 0.9
#: Pieces of the head group with this fraction of the largest piece's area form its body.
BODY_FRACTION = 0.1
#: A detached piece is small with at most this fraction of the body's area ...
SATELLITE_AREA_FRACTION = 0.02
#: ... and at most this fraction of the body's longer side.
SATELLITE_EXTENT_FRACTION = 0.2


class CropBox(NamedTuple):
    """A half-open pixel box ``image[y0:y1, x0:x1]`` plus how it was found.

    ``flag`` is one of :data:`FLAGS`: ``"ok"``; ``"blank"`` (near-constant
    image, box = whole image); ``"no_contour"`` (nothing survived the
    threshold and morphology, box = whole image); ``"touches_border"`` (the
    head touches the image border, so part of it may lie outside the image;
    the box is still the head's box, the flag only informs).
    """

    x0: int
    y0: int
    x1: int
    y1: int
    flag: str = FLAG_OK

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def to_grey(image: np.ndarray) -> np.ndarray:
    """Return a (H, W) uint8 view/copy of a (H, W), (H, W, 1) or (H, W, 3) uint8 image.

    Three-channel input is taken as RGB and converted with ``cv2.cvtColor``.
    Raises ValueError for any other shape or dtype.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    if image.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image has an empty side: shape {image.shape}")
    return image


def blur(grey: np.ndarray, blur_size: int) -> np.ndarray:
    """Gaussian blur with a ``blur_size`` square kernel (odd, >= 1; 1 = no blur)."""
    if blur_size < 1 or blur_size % 2 == 0:
        raise ValueError(f"blur_size must be an odd integer >= 1, got {blur_size}")
    if blur_size == 1:
        return grey
    return cv2.GaussianBlur(grey, (blur_size, blur_size), 0)


def effective_threshold(blurred: np.ndarray, threshold: int) -> int:
    """Return ``min(threshold, otsu)`` (see the module docstring).

    ``otsu`` is Otsu's threshold of ``blurred`` with values above its 99th
    percentile clipped to it (unless the image below that percentile is
    flat, i.e. spans less than :data:`MIN_CONTRAST` levels).

    Args:
        blurred: (H, W) uint8 image, already blurred.
        threshold: the classic fixed threshold, 0..254.

    Returns:
        An int threshold; pixels strictly above it are foreground.
    """
    # Bright specks, vessels and burnt-in text (under 1 % of the pixels) would
    # pull Otsu's threshold above a dim head, so they are clipped first.
    # When everything but that 1 % is flat (a tiny object), nothing is clipped.
    ceiling = np.percentile(blurred, 99).astype(np.uint8)
    if int(ceiling) - int(blurred.min()) >= MIN_CONTRAST:
        blurred = np.minimum(blurred, ceiling)
    otsu, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return int(min(threshold, otsu))


def foreground_mask(image: np.ndarray, threshold: int = 45, blur_size: int = 5) -> np.ndarray:
    """Return the (H, W) bool mask of pixels above a fixed ``threshold`` after blur.

    This is the plain definition of "foreground" used to judge crops; it does
    not apply the Otsu adjustment or the morphology of :func:`find_brain_box`.
    """
    return blur(to_grey(image), blur_size) > threshold


def _check_box_arguments(threshold: int, morphology_iterations: int, reach_fraction: float,
                         version: int) -> None:
    if not 0 <= threshold <= 254:
        raise ValueError(f"threshold must be in 0..254, got {threshold}")
    if morphology_iterations < 0:
        raise ValueError(f"morphology_iterations must be >= 0, got {morphology_iterations}")
    if not 0 <= reach_fraction <= 1:
        raise ValueError(f"reach_fraction must be in [0, 1], got {reach_fraction}")
    if version not in CROP_VERSIONS:
        raise ValueError(f"crop version must be one of {CROP_VERSIONS}, got {version!r}")


def find_brain_box(
    image: np.ndarray,
    *,
    threshold: int = 45,
    blur_size: int = 5,
    morphology_iterations: int = 2,
    reach_fraction: float = 0.04,
    version: int = CROP_VERSION,
) -> CropBox:
    """Find the box around the head of an MRI slice (see the module docstring).

    Args:
        image: (H, W) or (H, W, 3) RGB uint8 image, values 0..255.
        threshold: fixed threshold of the classic recipe, 0..254. Version 1
            uses ``min(threshold, otsu)`` so dark scans are not cut; version 2
            raises that to the background noise level where the background
            is noisy (:func:`adaptive_threshold`).
        blur_size: odd Gaussian kernel side, 1 disables the blur.
        morphology_iterations: 3x3 erosions, then as many dilations, that
            remove specks, thin lines and text before the head is chosen.
        reach_fraction: how far, as a fraction of the image's longer side,
            pieces are grown before grouping; 0 keeps only the largest
            piece, as the classic recipe does.
        version: the recipe, one of :data:`CROP_VERSIONS`: 2 (the default,
            :data:`CROP_VERSION`) adds the adaptive threshold, the removal of
            frame lines, banners and side bars at the image edges and of
            small bright pieces detached from the head; 1 is the previous
            recipe, kept so that both can be measured side by side.

    Returns:
        A :class:`CropBox` inside the image. Never raises for degenerate
        images: near-constant ones give the whole image flagged ``"blank"``,
        ones with nothing left after threshold and morphology give the whole
        image flagged ``"no_contour"``.
    """
    _check_box_arguments(threshold, morphology_iterations, reach_fraction, version)
    grey = to_grey(image)
    height, width = grey.shape
    blurred = blur(grey, blur_size)
    if int(blurred.max()) - int(blurred.min()) < MIN_CONTRAST:
        return CropBox(0, 0, width, height, FLAG_BLANK)
    if version == 1:
        return _find_brain_box_v1(blurred, threshold, morphology_iterations, reach_fraction)
    return _find_brain_box_v2(grey, blurred, threshold, morphology_iterations, reach_fraction)


def _group_head(raw: np.ndarray, morphology_iterations: int, reach_fraction: float) -> np.ndarray | None:
    """Clean ``raw`` and return the (H, W) uint8 0/1 mask of its head group, or None if nothing is left.

    Every piece left after the erosion/dilation is grown by ``reach`` pixels;
    pieces whose grown areas touch form one group; the group with the most
    cleaned pixels is the head; the mask holds every pixel of ``raw`` inside
    that grown group, thin skull rims included.
    """
    height, width = raw.shape
    cleaned = raw
    if morphology_iterations > 0:
        cleaned = cv2.erode(raw, None, iterations=morphology_iterations)
        cleaned = cv2.dilate(cleaned, None, iterations=morphology_iterations)
    if not cleaned.any():
        return None
    reach = round(reach_fraction * max(height, width))
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * reach + 1, 2 * reach + 1))
    grouped = cv2.dilate(cleaned, kernel) if reach > 0 else cleaned
    count, labels = cv2.connectedComponents(grouped, connectivity=8)
    sizes = np.bincount(labels[cleaned > 0], minlength=count)
    sizes[0] = 0
    return ((labels == sizes.argmax()) & (raw > 0)).astype(np.uint8)


def _box_with_flag(x0: int, y0: int, x1: int, y1: int, height: int, width: int) -> CropBox:
    touches = x0 == 0 or y0 == 0 or x1 == width or y1 == height
    return CropBox(int(x0), int(y0), int(x1), int(y1), FLAG_TOUCHES_BORDER if touches else FLAG_OK)


def _find_brain_box_v1(blurred: np.ndarray, threshold: int, morphology_iterations: int,
                       reach_fraction: float) -> CropBox:
    """Version 1: ``min(threshold, otsu)``, morphology, the head group's box."""
    height, width = blurred.shape
    level = effective_threshold(blurred, threshold)
    raw = (blurred > level).astype(np.uint8)
    head = _group_head(raw, morphology_iterations, reach_fraction)
    if head is None:
        return CropBox(0, 0, width, height, FLAG_NO_CONTOUR)
    x0, y0, box_width, box_height = cv2.boundingRect(head)
    return _box_with_flag(x0, y0, x0 + box_width, y0 + box_height, height, width)


def _find_brain_box_v2(grey: np.ndarray, blurred: np.ndarray, threshold: int, morphology_iterations: int,
                       reach_fraction: float) -> CropBox:
    """Version 2: adaptive threshold, edge artefacts removed, detached pieces dropped."""
    height, width = blurred.shape
    levels = adaptive_threshold(blurred, threshold)
    above = (blurred > levels.level).astype(np.uint8)
    raw = remove_edge_artefacts(above, grey)
    head = _group_head(raw, morphology_iterations, reach_fraction)
    if head is None:
        return CropBox(0, 0, width, height, FLAG_NO_CONTOUR)
    low_mask = None
    if levels.low < levels.level:
        # The hysteresis mask: pixels above the lower level, without the edge artefacts.
        low_mask = ((blurred > levels.low) & ~((above > 0) & (raw == 0))).astype(np.uint8)
    return _box_without_detached_pieces(head, low_mask)


class Threshold(NamedTuple):
    """The grey levels version 2 thresholds at (pixels strictly above are foreground).

    ``level`` finds the head; ``low`` (<= ``level``) is the hysteresis level
    that decides whether a small piece outside the head is attached to it
    (see the module docstring); ``otsu`` is the clipped Otsu threshold;
    ``background`` and ``spread`` are the median and robust spread of the
    border strip's background, or None where no background was seen.
    """

    level: int
    low: int
    otsu: int
    background: float | None
    spread: float | None


def _histogram(values: np.ndarray) -> np.ndarray:
    """(256,) float64 histogram of a uint8 array (any shape, may be empty)."""
    if values.size == 0:
        return np.zeros(256)
    return cv2.calcHist([np.ascontiguousarray(values)], [0], None, [256], [0, 256]).ravel().astype(np.float64)


def _histogram_quantile(histogram: np.ndarray, quantile: float) -> int:
    """The smallest grey level at which the cumulative histogram reaches ``quantile`` of its total."""
    cumulative = np.cumsum(histogram)
    return int(np.searchsorted(cumulative, quantile * cumulative[-1]))


def _otsu_from_histogram(histogram: np.ndarray) -> int:
    """Otsu's threshold of a (256,) histogram: the t maximising the between-class variance of <= t and > t."""
    levels = np.arange(histogram.size, dtype=np.float64)
    total = histogram.sum()
    below = np.cumsum(histogram)
    above = total - below
    mass_below = np.cumsum(histogram * levels)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mass_below * total - mass_below[-1] * below) ** 2 / (below * above)
    between[~np.isfinite(between)] = -1.0
    return int(np.argmax(between))


def background_level(blurred: np.ndarray, otsu: int) -> tuple[float, float] | None:
    """Median and robust spread of the image's background, from a strip along its border.

    The strip is :data:`BORDER_STRIP_FRACTION` of the shorter side wide on
    every side; only its pixels at or below ``otsu`` count (the head, where
    it reaches the border, is above Otsu's threshold). The spread is
    1.4826 x the median absolute deviation (the standard deviation for
    Gaussian noise).

    Args:
        blurred: (H, W) uint8 image, already blurred.
        otsu: Otsu's threshold of the image, 0..255.

    Returns:
        ``(median, spread)`` in grey levels, or None when fewer than
        :data:`MIN_BACKGROUND_FRACTION` of the strip's pixels are at or below
        ``otsu`` (the head fills the border: no background to measure).
    """
    height, width = blurred.shape
    strip = max(1, round(BORDER_STRIP_FRACTION * min(height, width)))
    histogram = (_histogram(blurred[:strip]) + _histogram(blurred[height - strip:])
                 + _histogram(blurred[strip:height - strip, :strip])
                 + _histogram(blurred[strip:height - strip, width - strip:]))
    total = histogram.sum()
    dark = histogram[:otsu + 1]
    if total == 0 or dark.sum() < MIN_BACKGROUND_FRACTION * total:
        return None
    median = _histogram_quantile(dark, 0.5)
    deviations = np.abs(np.arange(otsu + 1) - median)
    deviation_histogram = np.bincount(deviations, weights=dark, minlength=otsu + 1)
    spread = 1.4826 * _histogram_quantile(deviation_histogram, 0.5)
    return float(median), float(spread)


def adaptive_threshold(blurred: np.ndarray, threshold: int = 45) -> Threshold:
    """Version 2's threshold: the classic ``min(threshold, otsu)``, raised above a noisy background.

    ``otsu`` is Otsu's threshold with the brightest 1 % clipped (as in
    :func:`effective_threshold`). The background's median ``b`` and spread
    ``s`` come from :func:`background_level`. Where the background is noisy,
    the level is raised to the noise floor ``b + NOISE_SPREAD_FACTOR * s``,
    at most to ``(b + otsu) // 2`` so a dim head stays above it; it is never
    lowered below the classic value (dim scans stay uncut, clean black
    backgrounds give exactly the classic level). A spread above
    :data:`MAX_NOISE_SPREAD` is not background noise (the strip crosses the
    head or a gradient) and changes nothing.

    Args:
        blurred: (H, W) uint8 image, already blurred.
        threshold: the classic fixed threshold, 0..254.

    Returns:
        A :class:`Threshold`. Its ``low`` level is the noise floor where the
        background was measured and clean enough (at least halfway between
        ``b`` and ``level``), else ``level // 2``.
    """
    histogram = _histogram(blurred)
    ceiling = _histogram_quantile(histogram, 0.99)
    lowest = int(np.flatnonzero(histogram)[0])
    if ceiling - lowest >= MIN_CONTRAST:
        histogram = histogram.copy()
        histogram[ceiling] += histogram[ceiling + 1:].sum()
        histogram[ceiling + 1:] = 0
    otsu = _otsu_from_histogram(histogram)
    level = min(threshold, otsu)
    measured = background_level(blurred, otsu)
    if measured is None:
        return Threshold(level, level // 2, otsu, None, None)
    median, spread = measured
    low = level // 2
    if spread <= MAX_NOISE_SPREAD:
        floor = int(np.ceil(median + NOISE_SPREAD_FACTOR * spread))
        level = max(level, min(floor, int(median + otsu) // 2))
        low = max(min(floor, level), int(median + level) // 2)
    return Threshold(level, min(low, level), otsu, median, spread)


def _is_flat(values: np.ndarray) -> bool:
    """True when the 10th..90th percentile range of ``values`` is at most :data:`FLAT_SPREAD` grey levels."""
    low, high = np.percentile(values, [10, 90])
    return bool(high - low <= FLAT_SPREAD)


def remove_edge_artefacts(mask: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """Clear frame lines, banners, side bars and edge specks from a thresholded mask.

    Three kinds of pieces are removed (``band`` = :data:`EDGE_BAND_FRACTION`
    of the shorter side, ``zone`` = :data:`EDGE_ZONE_FRACTION` of it):

    * pieces (external contours) lying entirely within ``band`` of one side:
      frame lines, ruler ticks and letters squeezed against the edge;
    * side bars: pieces touching a side, at least :data:`BAR_MIN_LENGTH` of
      it long, at most :data:`BAR_MAX_WIDTH` of the image deep, filling at
      least :data:`BAR_MIN_FILL` of their box, and flat (:data:`FLAT_SPREAD`);
    * frame lines and banners joined to the head: within ``zone`` of a side,
      rows (columns) covered along at least :data:`LINE_COVER` of their
      length; where such rows end (the next row inwards is not covered) and
      one of the last :data:`LINE_SPREAD_ROWS` is flat along its length,
      everything from the side to that end is cleared (the blur spreads a
      thin line over a few rows of mixed grey levels). A head cut by the
      image edge is not flat, and it widens inwards rather than ending, so
      it is kept.

    Flatness is judged on the unblurred image, where a burnt-in line or bar
    has nearly one grey level and anatomy has texture.

    Args:
        mask: (H, W) uint8 0/1 mask (pixels above the threshold).
        grey: the (H, W) uint8 image before the blur.

    Returns:
        A new (H, W) uint8 0/1 mask; ``mask`` is not modified.
    """
    height, width = mask.shape
    mask = mask.copy()
    # One row more than the zone, to see whether the innermost line is followed by a gap.
    zone = min(max(3, round(EDGE_ZONE_FRACTION * min(height, width))), height // 2, width // 2)
    for side in ("top", "bottom", "left", "right"):
        # Views ordered from the side inwards, rows along the side.
        if side == "top":
            rows, values = mask[:zone + 1], grey[:zone + 1]
        elif side == "bottom":
            rows, values = mask[height - zone - 1:][::-1], grey[height - zone - 1:][::-1]
        elif side == "left":
            rows, values = mask[:, :zone + 1].T, grey[:, :zone + 1].T
        else:
            rows, values = mask[:, width - zone - 1:].T[::-1], grey[:, width - zone - 1:].T[::-1]
        if zone < 1 or rows.size == 0:
            continue
        covered = rows.mean(axis=1) >= LINE_COVER
        # A line ends where the next row inwards is not covered; the blur spreads it over
        # a few rows of mixed grey levels, so one of its last LINE_SPREAD_ROWS rows must
        # be flat. A head cut by the edge is not flat, and it widens inwards.
        ends = np.flatnonzero(covered[:zone] & ~covered[1:zone + 1])
        for end in ends[::-1]:
            last = range(end, max(end - LINE_SPREAD_ROWS, -1), -1)
            if any(covered[row] and _is_flat(values[row][rows[row] > 0]) for row in last):
                rows[:end + 1] = 0
                break

    band = max(2, round(EDGE_BAND_FRACTION * min(height, width)))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    for contour in contours:
        x, y, piece_width, piece_height = cv2.boundingRect(contour)
        x1, y1 = x + piece_width, y + piece_height
        drop = x1 <= band or y1 <= band or x >= width - band or y >= height - band
        if not drop:
            vertical = ((x == 0 or x1 == width) and piece_height >= BAR_MIN_LENGTH * height
                        and piece_width <= BAR_MAX_WIDTH * width)
            horizontal = ((y == 0 or y1 == height) and piece_width >= BAR_MIN_LENGTH * width
                          and piece_height <= BAR_MAX_WIDTH * height)
            drop = ((vertical or horizontal)
                    and cv2.contourArea(contour) >= BAR_MIN_FILL * piece_width * piece_height
                    and _is_flat(grey[y:y1, x:x1]))
        if drop:
            cv2.drawContours(mask, [contour], -1, 0, thickness=-1)
    return mask


def _box_without_detached_pieces(head: np.ndarray, low_mask: np.ndarray | None) -> CropBox:
    """The box of ``head`` without small pieces detached from its body.

    The body is every external contour of ``head`` with at least
    :data:`BODY_FRACTION` of the largest one's area. A piece that reaches
    outside the body's box is dropped when it is small (at most
    :data:`SATELLITE_AREA_FRACTION` of the body's area and
    :data:`SATELLITE_EXTENT_FRACTION` of its longer side), its centre lies
    outside the body's convex hull, and, in ``low_mask`` (the image above
    the lower hysteresis level), it does not belong to a piece of at least
    :data:`BODY_FRACTION` of the body's area: letters and labels sit on a
    black background and stay apart, the fragments of a dim scalp ring join
    up below the threshold and are kept.

    Args:
        head: (H, W) uint8 0/1 mask of the head group, not empty.
        low_mask: (H, W) uint8 0/1 mask above the lower level, or None
            (no hysteresis: every small outside piece counts as detached).
    """
    height, width = head.shape
    contours, _ = cv2.findContours(head, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rects = np.array([cv2.boundingRect(contour) for contour in contours]).reshape(-1, 4)
    keep = np.ones(len(contours), bool)
    if len(contours) > 1:
        areas = np.array([cv2.contourArea(contour) for contour in contours])
        body = areas >= BODY_FRACTION * areas.max()
        body_rects = rects[body]
        bx0, by0 = body_rects[:, 0].min(), body_rects[:, 1].min()
        bx1, by1 = (body_rects[:, 0] + body_rects[:, 2]).max(), (body_rects[:, 1] + body_rects[:, 3]).max()
        outside = ~body & ((rects[:, 0] < bx0) | (rects[:, 1] < by0)
                           | (rects[:, 0] + rects[:, 2] > bx1) | (rects[:, 1] + rects[:, 3] > by1))
        if outside.any():
            hull = cv2.convexHull(np.concatenate([contours[index] for index in np.flatnonzero(body)]))
            body_area = areas[body].sum()
            body_side = max(bx1 - bx0, by1 - by0)
            low_labels = low_areas = None
            for index in np.flatnonzero(outside):
                x, y, piece_width, piece_height = (int(value) for value in rects[index])
                small = (areas[index] <= SATELLITE_AREA_FRACTION * body_area
                         and max(piece_width, piece_height) <= SATELLITE_EXTENT_FRACTION * body_side)
                if not small:
                    continue
                centre = (x + piece_width / 2, y + piece_height / 2)
                if cv2.pointPolygonTest(hull, centre, False) >= 0:
                    continue
                if low_mask is not None:
                    if low_labels is None:
                        _, low_labels, low_stats, _ = cv2.connectedComponentsWithStats(low_mask, connectivity=8)
                        low_areas = low_stats[:, cv2.CC_STAT_AREA]
                    point_x, point_y = contours[index][0, 0]
                    if low_areas[low_labels[point_y, point_x]] >= BODY_FRACTION * body_area:
                        continue
                keep[index] = False
    kept = rects[keep]
    x0, y0 = kept[:, 0].min(), kept[:, 1].min()
    x1, y1 = (kept[:, 0] + kept[:, 2]).max(), (kept[:, 1] + kept[:, 3]).max()
    return _box_with_flag(x0, y0, x1, y1, height, width)


def expand_box(box: CropBox, margin: int | float, height: int, width: int) -> CropBox:
    """Grow ``box`` by ``margin`` on every side, clipped to a (height, width) image.

    Args:
        box: the box to grow.
        margin: pixels when ``margin >= 1`` (rounded to an int), or a fraction
            of the box's own side when ``0 < margin < 1`` (the x margin is
            ``round(margin * box.width)``, the y margin ``round(margin * box.height)``).
            0 leaves the box as it is (still clipped).
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        The grown box, same flag, with ``0 <= x0 < x1 <= width`` and
        ``0 <= y0 < y1 <= height``.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if 0 < margin < 1:
        margin_x, margin_y = round(margin * box.width), round(margin * box.height)
    else:
        margin_x = margin_y = int(round(margin))
    x0 = min(max(box.x0 - margin_x, 0), width - 1)
    y0 = min(max(box.y0 - margin_y, 0), height - 1)
    x1 = max(min(box.x1 + margin_x, width), x0 + 1)
    y1 = max(min(box.y1 + margin_y, height), y0 + 1)
    return CropBox(int(x0), int(y0), int(x1), int(y1), box.flag)


def resize_square(image: np.ndarray, size: int, *, keep_aspect: bool = True) -> np.ndarray:
    """Resize a (H, W) uint8 image to (size, size).

    With ``keep_aspect`` the image is first padded with zeros (black) to a
    centred square, so anatomy is not stretched; otherwise it is stretched.
    ``cv2.INTER_AREA`` is used when shrinking both sides, ``cv2.INTER_LINEAR``
    otherwise.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if keep_aspect:
        height, width = image.shape
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        image = cv2.copyMakeBorder(
            image, top, side - height - top, left, side - width - left,
            cv2.BORDER_CONSTANT, value=0,
        )
    height, width = image.shape
    if (height, width) == (size, size):
        return np.ascontiguousarray(image).copy()
    shrinking = height >= size and width >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def crop_brain(
    image: np.ndarray,
    size: int,
    *,
    margin: float = 0,
    threshold: int = 45,
    keep_aspect: bool = True,
    version: int = CROP_VERSION,
) -> tuple[np.ndarray, CropBox]:
    """Crop an MRI slice to the head and resize it to a square.

    Args:
        image: (H, W) or (H, W, 3) RGB uint8 image, values 0..255.
        size: output side in pixels.
        margin: extra border around the found box (see :func:`expand_box`).
        threshold: see :func:`find_brain_box`.
        keep_aspect: pad the crop with black to a square before resizing
            (default) instead of stretching it.
        version: the crop recipe (see :func:`find_brain_box`).

    Returns:
        ``(crop, box)``: crop is (size, size) uint8 greyscale, values 0..255;
        box is the (expanded) box that was cut out of the input. Blank and
        contour-less images are not rejected: the whole image is resized.
    """
    grey = to_grey(image)
    height, width = grey.shape
    box = find_brain_box(grey, threshold=threshold, version=version)
    box = expand_box(box, margin, height, width)
    crop = resize_square(grey[box.y0:box.y1, box.x0:box.x1], size, keep_aspect=keep_aspect)
    return crop, box


def foreground_mass_kept(
    image: np.ndarray, box: CropBox, threshold: int = 45, blur_size: int = 5, border_fraction: float = 0.0
) -> float:
    """Fraction of the foreground mass of ``image`` that lies inside ``box``.

    Foreground = pixels above ``threshold`` after blur (:func:`foreground_mask`);
    mass = sum of their original intensities. With ``border_fraction > 0``
    pixels closer than ``round(border_fraction * min(H, W))`` to the image
    border are not counted (frames, banners and edge labels live there);
    the definition does not depend on how the box was found, so boxes of
    different recipes can be compared with it.

    Args:
        image: (H, W) or (H, W, 3) RGB uint8 image.
        box: the box to judge.
        threshold: foreground threshold, 0..254.
        blur_size: odd Gaussian kernel side.
        border_fraction: in [0, 0.5).

    Returns:
        A float in [0, 1]; 1.0 when the image has no foreground at all.
    """
    if not 0 <= border_fraction < 0.5:
        raise ValueError(f"border_fraction must be in [0, 0.5), got {border_fraction}")
    grey = to_grey(image)
    foreground = foreground_mask(grey, threshold, blur_size)
    border = round(border_fraction * min(grey.shape))
    if border > 0:
        inner = np.zeros_like(foreground)
        inner[border:-border, border:-border] = True
        foreground &= inner
    mass = np.where(foreground, grey, 0).astype(np.float64)
    total = mass.sum()
    if total == 0:
        return 1.0
    return float(mass[box.y0:box.y1, box.x0:box.x1].sum() / total)


def area_fraction_removed(box: CropBox, height: int, width: int) -> float:
    """Fraction of a (height, width) image's area that lies outside ``box``, in [0, 1)."""
    return 1.0 - (box.width * box.height) / float(height * width)
