"""NumPy reference implementations of the augmentation building blocks.

These are slow-but-clear oracles for the TensorFlow versions in
:mod:`augment.tf_ops`, and fast enough for previews and albumentations.

Histogram matching follows ``skimage.exposure.match_histograms`` exactly for
uint8 images: the source quantile of every grey level is mapped through
``np.interp`` on the quantiles of the reference's *occurring* grey levels.
skimage returns those interpolated values as float64 (single channel) or
truncates them into uint8 (per channel with ``channel_axis``); here they are
rounded to the nearest grey level, so results equal ``np.rint`` of skimage's
float output and differ from its multi-channel output by at most 1.

Matching is done on the head's foreground by default (``region="foreground"``,
:data:`augment.config.HISTOGRAM_MATCH_REGIONS`): both histograms count only
the pixels inside each image's own :func:`foreground_levels` range, and
every other pixel of the source keeps its grey level. The foreground is a
function of the grey level alone (``lower < level <= upper``), so it is
one per-image rule that :mod:`augment.tf_ops` applies identically inside
its lookup tables. ``region="whole"`` matches whole images (background
included), as before.

Geometry uses pixel-centre coordinates: pixel ``(row, column)`` sits at
``x = column, y = row``, the image centre at ``((W - 1) / 2, (H - 1) / 2)``.
"""
from __future__ import annotations

import numpy as np

from augment.config import HISTOGRAM_MATCH_REGIONS

NUMBER_OF_LEVELS = 256

# The foreground of an image for histogram matching: grey levels in (lower, upper], see foreground_levels.
#: The lower threshold is at least this: a black background and its compression noise lie at or below it.
FOREGROUND_MIN_LEVEL = 10
#: Width of the border strip that measures the background, in percent of the shorter side (at least 1 px).
BORDER_STRIP_PERCENT = 3
#: Strip pixels from 1 to this level can be a grey background; it also caps the lower threshold.
BACKGROUND_CEILING = 64
#: Strip pixels from this level up can be a bright bar or frame; the upper threshold stays at or above it - 1.
BAR_FLOOR = 192
#: A background or bar must cover at least 1 / this of the strip to be measured.
STRIP_SHARE_DIVISOR = 8
#: A flat background or bar ends this many median absolute deviations (MAD) plus 1 from its median ...
FLAT_MADS = 3
#: ... and is flat when its MAD is at most this many grey levels.
MAX_FLAT_MAD = 5
#: Thresholds of ``region="whole"``: every level is in (-1, 255].
WHOLE_IMAGE_LEVELS = (-1, 255)


def _check_uint8(name: str, array: np.ndarray) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise ValueError(f"{name} must be a uint8 numpy array, got {getattr(array, 'dtype', type(array))}")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")


def check_histogram_match_region(region: str) -> None:
    """Raise ValueError unless ``region`` is one of :data:`augment.config.HISTOGRAM_MATCH_REGIONS`."""
    if region not in HISTOGRAM_MATCH_REGIONS:
        raise ValueError(f"histogram-matching region must be one of {HISTOGRAM_MATCH_REGIONS}, got {region!r}")


def border_strip_width(height: int, width: int) -> int:
    """Width in pixels of the background strip: :data:`BORDER_STRIP_PERCENT` % of the shorter side, rounded, >= 1."""
    return max(1, (BORDER_STRIP_PERCENT * min(height, width) + 50) // 100)


def border_histograms(images: np.ndarray) -> np.ndarray:
    """Histograms of the pixels within :func:`border_strip_width` of the image border, each pixel once.

    Args:
        images: (B, H, W, C) uint8.

    Returns:
        (B * C, 256) int64 counts, row ``b * C + c`` for image ``b``, channel ``c``.
    """
    batch, height, width, channels = images.shape
    strip = border_strip_width(height, width)
    bottom, right = max(strip, height - strip), max(strip, width - strip)
    parts = [images[:, :strip], images[:, bottom:], images[:, strip:bottom, :strip], images[:, strip:bottom, right:]]
    pixels = np.concatenate([part.reshape(batch, -1, channels) for part in parts], axis=1)
    index = (np.arange(batch)[:, None, None] * channels + np.arange(channels)) * NUMBER_OF_LEVELS + pixels
    counts = np.bincount(index.ravel(), minlength=batch * channels * NUMBER_OF_LEVELS)
    return counts.reshape(batch * channels, NUMBER_OF_LEVELS).astype(np.int64)


def _flat_part(counts: np.ndarray, strip_totals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, MAD and flatness of the pixels counted in (K, 256) ``counts``, in whole grey levels.

    Returns:
        ``(median, mad, flat)``, each (K,): the smallest level whose
        cumulative count reaches half, the smallest ``d`` such that half the
        pixels lie within ``d`` levels of it, and whether those pixels are at
        least 1 / :data:`STRIP_SHARE_DIVISOR` of ``strip_totals`` (K,) with a
        MAD of at most :data:`MAX_FLAT_MAD`.
    """
    levels = np.arange(NUMBER_OF_LEVELS)
    total = counts.sum(axis=1, keepdims=True)
    safe_total = np.maximum(total, 1)
    cumulative = np.cumsum(counts, axis=1)
    median = np.sum(2 * cumulative < safe_total, axis=1)
    # Pixels within d levels of the median, for every d: cumulative[m + d] - cumulative[m - d - 1].
    upper = np.take_along_axis(cumulative, np.minimum(median[:, None] + levels, NUMBER_OF_LEVELS - 1), axis=1)
    below_index = median[:, None] - levels - 1
    below = np.where(below_index >= 0, np.take_along_axis(cumulative, np.maximum(below_index, 0), axis=1), 0)
    mad = np.sum(2 * (upper - below) < safe_total, axis=1)
    flat = (total[:, 0] > 0) & (STRIP_SHARE_DIVISOR * total[:, 0] >= strip_totals) & (mad <= MAX_FLAT_MAD)
    return median, mad, flat


def foreground_levels(border_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image grey levels ``(lower, upper]`` of the head (the foreground), from the border strip.

    Only the grey level decides, so the rule fits in a 256-entry table. The
    border strip (:func:`border_histograms`) is the corners and edges of a
    crop, where the background and anything the crop kept beside the head
    lie; the head touches it at a few points only.

    * ``lower`` is :data:`FOREGROUND_MIN_LEVEL` (a black background and its
      compression noise lie at or below it), raised above a grey background
      (a scan whose background is not black, padded with black to a square
      by the crop): the strip's pixels from 1 to :data:`BACKGROUND_CEILING`
      (0 is the padding), when flat and with a median above the minimum
      level, give ``lower = min(median + FLAT_MADS * mad + 1, BACKGROUND_CEILING)``.
    * ``upper`` is 255, lowered below a bright bar or frame the crop kept
      (side bars, white borders): the strip's pixels from :data:`BAR_FLOOR`
      up, when flat, give ``upper = max(median - FLAT_MADS * mad - 1, BAR_FLOOR - 1)``.

    "Flat" is :func:`_flat_part`: at least 1 / :data:`STRIP_SHARE_DIVISOR` of
    the strip and a median absolute deviation of at most
    :data:`MAX_FLAT_MAD`. Head pixels as dark as such a background (dark CSF)
    or as bright as such a bar count as background too. Integers only, so
    :func:`augment.tf_ops.foreground_levels_tf` gives the same levels exactly.

    Args:
        border_counts: (K, 256) non-negative integer histograms of border strips.

    Returns:
        ``(lower, upper)``: (K,) int64 each, ``lower`` in
        [FOREGROUND_MIN_LEVEL, BACKGROUND_CEILING] and ``upper`` in
        [BAR_FLOOR - 1, 255]; a pixel is foreground when ``lower < level <= upper``.
    """
    counts = np.asarray(border_counts, dtype=np.int64)
    levels = np.arange(NUMBER_OF_LEVELS)
    strip_totals = counts.sum(axis=1)
    dark_median, dark_mad, dark_flat = _flat_part(
        np.where((levels >= 1) & (levels <= BACKGROUND_CEILING), counts, 0), strip_totals)
    grey = dark_flat & (dark_median > FOREGROUND_MIN_LEVEL)
    lower = np.where(grey, np.minimum(dark_median + FLAT_MADS * dark_mad + 1, BACKGROUND_CEILING),
                     FOREGROUND_MIN_LEVEL)
    bright_median, bright_mad, bar = _flat_part(np.where(levels >= BAR_FLOOR, counts, 0), strip_totals)
    upper = np.where(bar, np.maximum(bright_median - FLAT_MADS * bright_mad - 1, BAR_FLOOR - 1),
                     NUMBER_OF_LEVELS - 1)
    return lower.astype(np.int64), upper.astype(np.int64)


def region_levels(images: np.ndarray, region: str = "foreground") -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W, C) uint8 -> ``(lower, upper)``, (B * C,) int64 each: :func:`foreground_levels`, or (-1, 255)."""
    check_histogram_match_region(region)
    if region == "whole":
        rows = images.shape[0] * images.shape[3]
        return tuple(np.full(rows, level, dtype=np.int64) for level in WHOLE_IMAGE_LEVELS)
    return foreground_levels(border_histograms(images))


def foreground_mask(image: np.ndarray, region: str = "foreground") -> np.ndarray:
    """The pixels histogram matching counts and changes.

    Args:
        image: (H, W) or (H, W, C) uint8.
        region: ``"foreground"`` (pixels whose level is in the image's
            :func:`foreground_levels` range, per channel) or ``"whole"``
            (every pixel).

    Returns:
        bool array shaped like ``image``; all False for an image without a
        foreground (e.g. black, or a flat grey).
    """
    _check_uint8("image", image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    image_3d = image[..., None] if image.ndim == 2 else image
    lower, upper = region_levels(image_3d[None], region)
    return ((image_3d > lower) & (image_3d <= upper)).reshape(image.shape)


def _inside(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """(K,) ranges -> (K, 256) bool: level in ``(lower, upper]``."""
    levels = np.arange(NUMBER_OF_LEVELS)
    return (levels > np.asarray(lower)[:, None]) & (levels <= np.asarray(upper)[:, None])


def foreground_histograms(counts: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """(K, 256) histograms with every level outside its row's ``(lower, upper]`` (K,) set to 0."""
    return np.where(_inside(lower, upper), np.asarray(counts, dtype=np.int64), 0)


def foreground_matching_tables(
    source_counts: np.ndarray, reference_counts: np.ndarray, source_lower: np.ndarray, source_upper: np.ndarray
) -> np.ndarray:
    """:func:`batched_matching_tables` of foreground histograms, identity outside the foreground.

    Args:
        source_counts: (K, 256) foreground histograms of the sources
            (:func:`foreground_histograms`; may be all zero).
        reference_counts: (K, 256) foreground histograms of the references
            (may be all zero).
        source_lower, source_upper: (K,) the sources' foreground ranges
            (-1 and 255 for whole images).

    Returns:
        (K, 256) float64 tables in [0, 255]: levels outside the source's
        range map to themselves; a row whose source or reference has no
        foreground pixel is the identity (the image is left unchanged).
    """
    source_counts = np.asarray(source_counts, dtype=np.int64)
    reference_counts = np.asarray(reference_counts, dtype=np.int64)
    usable = (source_counts.sum(axis=1) > 0) & (reference_counts.sum(axis=1) > 0)
    # Rows without a foreground get a one-pixel stand-in so that the tables exist; they are replaced below.
    stand_in = np.zeros(NUMBER_OF_LEVELS, np.int64)
    stand_in[-1] = 1
    tables = batched_matching_tables(np.where(usable[:, None], source_counts, stand_in),
                                     np.where(usable[:, None], reference_counts, stand_in))
    matched = usable[:, None] & _inside(source_lower, source_upper)
    return np.where(matched, tables, np.arange(NUMBER_OF_LEVELS, dtype=np.float64))


def matching_table(source_counts: np.ndarray, reference_counts: np.ndarray) -> np.ndarray:
    """Grey-level mapping that gives a source histogram the reference's CDF.

    Args:
        source_counts: (256,) non-negative integer histogram of the source.
        reference_counts: (256,) non-negative integer histogram of the
            reference; at least one count must be positive.

    Returns:
        (256,) float64 table in [0, 255]: entry ``v`` is the matched value of
        grey level ``v`` (skimage's ``_match_cumulative_cdf`` semantics).
    """
    source_counts = np.asarray(source_counts, dtype=np.int64)
    reference_counts = np.asarray(reference_counts, dtype=np.int64)
    if source_counts.sum() <= 0 or reference_counts.sum() <= 0:
        raise ValueError("histograms must contain at least one pixel")
    source_quantiles = np.cumsum(source_counts) / source_counts.sum()
    reference_levels = np.nonzero(reference_counts)[0]
    reference_quantiles = np.cumsum(reference_counts[reference_levels]) / reference_counts.sum()
    return np.interp(source_quantiles, reference_quantiles, reference_levels.astype(np.float64))


def match_histograms_uint8(image: np.ndarray, reference: np.ndarray, region: str = "foreground") -> np.ndarray:
    """Match an image's histogram to a reference's, per channel.

    Args:
        image: (H, W) or (H, W, C) uint8.
        reference: uint8 with the same number of dimensions and channels as
            ``image``; its height and width may differ.
        region: ``"foreground"`` (default): only the pixels of
            :func:`foreground_mask` count, in both images, and only those of
            the image change; ``"whole"``: every pixel.

    Returns:
        uint8 array shaped like ``image``: on the region's pixels ``np.rint``
        of ``skimage.exposure.match_histograms`` (float result) of the
        image's region pixels to the reference's region pixels, on each
        channel; every other pixel unchanged. A channel whose image or
        reference region is empty (a black or flat image) is unchanged. With
        ``"whole"``, a constant reference gives a constant image.
    """
    _check_uint8("image", image)
    _check_uint8("reference", reference)
    check_histogram_match_region(region)
    if image.ndim not in (2, 3) or image.ndim != reference.ndim:
        raise ValueError(
            f"image and reference must both be (H, W) or (H, W, C), got {image.shape} and {reference.shape}"
        )
    if image.ndim == 3 and image.shape[2] != reference.shape[2]:
        raise ValueError(f"channel counts differ: image {image.shape[2]}, reference {reference.shape[2]}")
    image_3d = image[..., None] if image.ndim == 2 else image
    reference_3d = reference[..., None] if reference.ndim == 2 else reference
    source_mask = foreground_mask(image_3d, region)
    reference_mask = foreground_mask(reference_3d, region)
    matched = image_3d.copy()
    for channel in range(image_3d.shape[2]):
        source = image_3d[..., channel]
        source_pixels = source[source_mask[..., channel]]
        reference_pixels = reference_3d[..., channel][reference_mask[..., channel]]
        if source_pixels.size == 0 or reference_pixels.size == 0:
            continue
        table = matching_table(
            np.bincount(source_pixels, minlength=NUMBER_OF_LEVELS),
            np.bincount(reference_pixels, minlength=NUMBER_OF_LEVELS),
        )
        mapped = np.rint(table).astype(np.uint8)[source]
        matched[..., channel] = np.where(source_mask[..., channel], mapped, source)
    return matched.reshape(image.shape)


def batched_matching_tables(source_counts: np.ndarray, reference_counts: np.ndarray) -> np.ndarray:
    """:func:`matching_table` for many histogram pairs at once, without ``np.interp``.

    This is the algorithm :mod:`augment.tf_ops` runs in the graph. With the
    source CDF ``S`` (N pixels) and reference CDF ``R`` (M pixels) as integer
    cumulative counts, the quantile comparison ``S/N >= R/M`` is done exactly
    as ``S*M >= R*N``. For source level ``v`` with quantile ``q``:
    ``upper`` = first level with ``R/M > q``; ``lower`` = first level whose
    cumulative count equals ``R[upper - 1]`` (the last *occurring* reference
    level at or below ``q``); the result is the linear interpolation between
    them, exactly as ``np.interp`` computes it. Below the first occurring
    level the result is that level, at ``q = 1`` the last occurring level.

    Args:
        source_counts: (K, 256) integer histograms, each with a positive sum.
        reference_counts: (K, 256) integer histograms, each with a positive sum.

    Returns:
        (K, 256) float64 tables in [0, 255], equal to :func:`matching_table`
        row by row.
    """
    source_cdf = np.cumsum(np.asarray(source_counts, dtype=np.int64), axis=1)
    reference_cdf = np.cumsum(np.asarray(reference_counts, dtype=np.int64), axis=1)
    source_total = source_cdf[:, -1:]
    reference_total = reference_cdf[:, -1:]
    if np.any(source_total <= 0) or np.any(reference_total <= 0):
        raise ValueError("histograms must contain at least one pixel")
    levels = NUMBER_OF_LEVELS
    # upper[k, v] = number of reference levels l with R[l]/M <= S[v]/N.
    scaled_source = source_cdf * reference_total
    scaled_reference = reference_cdf * source_total
    upper = np.sum(scaled_reference[:, None, :] <= scaled_source[:, :, None], axis=2)
    lower_cumulative = np.take_along_axis(reference_cdf, np.maximum(upper - 1, 0), axis=1)
    lower_cumulative = np.where(upper > 0, lower_cumulative, 0)
    lower = np.sum(reference_cdf[:, None, :] < lower_cumulative[:, :, None], axis=2)
    upper_cumulative = np.take_along_axis(reference_cdf, np.minimum(upper, levels - 1), axis=1)

    quantile = source_cdf / source_total
    lower_quantile = lower_cumulative / reference_total
    upper_quantile = upper_cumulative / reference_total
    gap = np.where(upper_quantile > lower_quantile, upper_quantile - lower_quantile, 1.0)
    slope = (upper - lower) / gap
    inside = slope * (quantile - lower_quantile) + lower

    last_level = np.sum(reference_cdf < reference_total, axis=1, keepdims=True)
    table = np.where(lower_cumulative == 0, upper, inside)
    return np.where(upper >= levels, last_level, table).astype(np.float64)


def match_histograms_batch(images: np.ndarray, references: np.ndarray, region: str = "foreground") -> np.ndarray:
    """:func:`match_histograms_uint8` for a batch, vectorised over images.

    Args:
        images: (B, H, W) or (B, H, W, C) uint8.
        references: uint8, same rank and B (and C) as ``images``; height and
            width may differ. ``references[i]`` is the reference of ``images[i]``.
        region: ``"foreground"`` or ``"whole"``, as in :func:`match_histograms_uint8`.

    Returns:
        uint8 array shaped like ``images``, equal to
        ``match_histograms_uint8(images[i], references[i], region)`` for every i.
    """
    _check_uint8("images", images)
    _check_uint8("references", references)
    check_histogram_match_region(region)
    if images.ndim not in (3, 4) or images.ndim != references.ndim:
        raise ValueError(
            f"images and references must both be (B, H, W) or (B, H, W, C), "
            f"got {images.shape} and {references.shape}"
        )
    if images.shape[0] != references.shape[0]:
        raise ValueError(f"batch sizes differ: {images.shape[0]} images, {references.shape[0]} references")
    if images.ndim == 4 and images.shape[3] != references.shape[3]:
        raise ValueError(f"channel counts differ: images {images.shape[3]}, references {references.shape[3]}")
    images_4d = images[..., None] if images.ndim == 3 else images
    references_4d = references[..., None] if references.ndim == 3 else references
    batch, _, _, channels = images_4d.shape
    levels = NUMBER_OF_LEVELS
    row_offset = (np.arange(batch)[:, None, None, None] * channels + np.arange(channels)) * levels
    source_index = row_offset + images_4d
    reference_index = row_offset + references_4d
    rows = batch * channels
    source_counts = np.bincount(source_index.ravel(), minlength=rows * levels).reshape(rows, levels)
    reference_counts = np.bincount(reference_index.ravel(), minlength=rows * levels).reshape(rows, levels)
    source_lower, source_upper = region_levels(images_4d, region)
    tables = foreground_matching_tables(
        foreground_histograms(source_counts, source_lower, source_upper),
        foreground_histograms(reference_counts, *region_levels(references_4d, region)),
        source_lower,
        source_upper,
    )
    return np.rint(tables).astype(np.uint8).ravel()[source_index].reshape(images.shape)


def affine_matrices(
    rotation,
    shift_x,
    shift_y,
    zoom,
    shear,
    flip_h,
    flip_v,
    height: int,
    width: int,
) -> np.ndarray:
    """Output-to-input pixel mappings of flip, rotation, shear, zoom and shift.

    The forward (input to output) map about the centre ``c`` is
    ``out = c + t + Z @ Sh @ R @ F @ (in - c)`` with ``F`` the flips,
    ``R = [[cos a, sin a], [-sin a, cos a]]`` (positive ``a`` turns the
    content counter-clockwise on screen, as ``cv2.getRotationMatrix2D``),
    ``Sh = [[1, tan s], [0, 1]]``, ``Z = zoom * I`` and ``t`` the shift.
    This returns its inverse, which a resampler needs.

    Args:
        rotation: degrees, scalar or (B,).
        shift_x: horizontal shift as a fraction of ``width`` (positive moves
            content right), scalar or (B,).
        shift_y: vertical shift as a fraction of ``height`` (positive moves
            content down), scalar or (B,).
        zoom: content scale factor (> 0; 2 doubles the content's size).
        shear: degrees, in (-90, 90).
        flip_h: flip left-right (bool), scalar or (B,).
        flip_v: flip up-down (bool), scalar or (B,).
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        (B, 3, 3) float64 matrices ``m`` with ``[x_in, y_in, 1] = m @ [x_out, y_out, 1]``.
    """
    arrays = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(value, dtype=np.float64)) for value in
          (rotation, shift_x, shift_y, zoom, shear, flip_h, flip_v))
    )
    rotation, shift_x, shift_y, zoom, shear, flip_h, flip_v = arrays
    if np.any(zoom <= 0):
        raise ValueError("zoom must be positive")
    if np.any(np.abs(shear) >= 90):
        raise ValueError("shear must be in (-90, 90) degrees")
    angle = np.deg2rad(rotation)
    cos, sin = np.cos(angle), np.sin(angle)
    shear_tan = np.tan(np.deg2rad(shear))
    flip_x = np.where(flip_h != 0, -1.0, 1.0)
    flip_y = np.where(flip_v != 0, -1.0, 1.0)
    # Inverse of Z @ Sh @ R @ F = F @ R(-a) @ Sh^-1 @ Z^-1, written out.
    inverse_zoom = 1.0 / zoom
    a00 = flip_x * cos * inverse_zoom
    a01 = flip_x * (-cos * shear_tan - sin) * inverse_zoom
    a10 = flip_y * sin * inverse_zoom
    a11 = flip_y * (-sin * shear_tan + cos) * inverse_zoom
    centre_x = (width - 1) / 2.0
    centre_y = (height - 1) / 2.0
    source_x = centre_x + shift_x * width
    source_y = centre_y + shift_y * height
    matrices = np.zeros((rotation.shape[0], 3, 3), dtype=np.float64)
    matrices[:, 0, 0] = a00
    matrices[:, 0, 1] = a01
    matrices[:, 0, 2] = centre_x - a00 * source_x - a01 * source_y
    matrices[:, 1, 0] = a10
    matrices[:, 1, 1] = a11
    matrices[:, 1, 2] = centre_y - a10 * source_x - a11 * source_y
    matrices[:, 2, 2] = 1.0
    return matrices


def apply_affine_numpy(images: np.ndarray, matrices: np.ndarray, fill_value: float = 0.0) -> np.ndarray:
    """Bilinear resampling through output-to-input matrices (reference resampler).

    Pixels are read at ``m @ [x, y, 1]``; neighbours outside the image count
    as ``fill_value``, so edges blend into the fill the way
    ``ImageProjectiveTransformV3`` (bilinear, constant fill) does.

    Args:
        images: (B, H, W) or (B, H, W, C), any real dtype.
        matrices: (B, 3, 3) from :func:`affine_matrices`.
        fill_value: value of pixels outside the input.

    Returns:
        float64 array shaped like ``images``.
    """
    images = np.asarray(images)
    matrices = np.asarray(matrices, dtype=np.float64)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (B, H, W) or (B, H, W, C), got shape {images.shape}")
    if matrices.shape != (images.shape[0], 3, 3):
        raise ValueError(f"matrices must have shape {(images.shape[0], 3, 3)}, got {matrices.shape}")
    images_4d = (images[..., None] if images.ndim == 3 else images).astype(np.float64)
    batch, height, width, _ = images_4d.shape
    padded = np.pad(images_4d, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=fill_value)
    rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    output = np.empty_like(images_4d)
    for index in range(batch):
        m = matrices[index]
        x = m[0, 0] * columns + m[0, 1] * rows + m[0, 2]
        y = m[1, 0] * columns + m[1, 1] * rows + m[1, 2]
        x0 = np.floor(x)
        y0 = np.floor(y)
        weight_x = (x - x0)[..., None]
        weight_y = (y - y0)[..., None]
        # Padded index i + 1 is pixel i; anything further out is fill.
        x0p = np.clip(x0 + 1, 0, width + 1).astype(np.int64)
        x1p = np.clip(x0 + 2, 0, width + 1).astype(np.int64)
        y0p = np.clip(y0 + 1, 0, height + 1).astype(np.int64)
        y1p = np.clip(y0 + 2, 0, height + 1).astype(np.int64)
        image = padded[index]
        top = (1 - weight_x) * image[y0p, x0p] + weight_x * image[y0p, x1p]
        bottom = (1 - weight_x) * image[y1p, x0p] + weight_x * image[y1p, x1p]
        output[index] = (1 - weight_y) * top + weight_y * bottom
    return output.reshape(images.shape)
