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

Geometry uses pixel-centre coordinates: pixel ``(row, column)`` sits at
``x = column, y = row``, the image centre at ``((W - 1) / 2, (H - 1) / 2)``.
"""
from __future__ import annotations

import numpy as np

NUMBER_OF_LEVELS = 256


def _check_uint8(name: str, array: np.ndarray) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise ValueError(f"{name} must be a uint8 numpy array, got {getattr(array, 'dtype', type(array))}")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")


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


def match_histograms_uint8(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Match an image's histogram to a reference's, per channel.

    Args:
        image: (H, W) or (H, W, C) uint8.
        reference: uint8 with the same number of dimensions and channels as
            ``image``; its height and width may differ.

    Returns:
        uint8 array shaped like ``image``: ``np.rint`` of
        ``skimage.exposure.match_histograms`` (float result) on each channel.
        A constant reference gives a constant image.
    """
    _check_uint8("image", image)
    _check_uint8("reference", reference)
    if image.ndim not in (2, 3) or image.ndim != reference.ndim:
        raise ValueError(
            f"image and reference must both be (H, W) or (H, W, C), got {image.shape} and {reference.shape}"
        )
    if image.ndim == 3 and image.shape[2] != reference.shape[2]:
        raise ValueError(f"channel counts differ: image {image.shape[2]}, reference {reference.shape[2]}")
    image_3d = image[..., None] if image.ndim == 2 else image
    reference_3d = reference[..., None] if reference.ndim == 2 else reference
    matched = np.empty_like(image_3d)
    for channel in range(image_3d.shape[2]):
        source = image_3d[..., channel]
        table = matching_table(
            np.bincount(source.ravel(), minlength=NUMBER_OF_LEVELS),
            np.bincount(reference_3d[..., channel].ravel(), minlength=NUMBER_OF_LEVELS),
        )
        matched[..., channel] = np.rint(table).astype(np.uint8)[source]
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


def match_histograms_batch(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """:func:`match_histograms_uint8` for a batch, vectorised over images.

    Args:
        images: (B, H, W) or (B, H, W, C) uint8.
        references: uint8, same rank and B (and C) as ``images``; height and
            width may differ. ``references[i]`` is the reference of ``images[i]``.

    Returns:
        uint8 array shaped like ``images``, equal to
        ``match_histograms_uint8(images[i], references[i])`` for every i.
    """
    _check_uint8("images", images)
    _check_uint8("references", references)
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
    tables = np.rint(batched_matching_tables(source_counts, reference_counts)).astype(np.uint8)
    return tables.ravel()[source_index].reshape(images.shape)


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
