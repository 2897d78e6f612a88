"""Training-time augmentation as TensorFlow graph ops.

Everything here is TensorFlow (no ``tf.py_function``), so it runs inside
``tf.data.Dataset.map``, inside a ``tf.function`` and on a GPU, with any
batch size (the last batch of an epoch may be smaller). Randomness comes only
from ``tf.random.stateless_*`` driven by a ``[2]`` integer seed: the same seed
gives the same batch.

Per image, :func:`augment_batch` does:

1. with probability ``histogram_match_probability``, match the histogram to a
   random image of the reference pool (other sites) and blend; by default
   (``histogram_match_region="foreground"``) only the head's pixels count, in
   the image and in the reference, and only they change;
2. multiply by a random brightness factor;
3. ONE bilinear resample for rotation, shift, zoom, shear and flips together;
4. clip to [0, 255].

Matched images keep whole grey levels: the blended mapping
``round((1 - blend) * level + blend * matched(level))`` is one 256-entry
table per image, as :func:`augment.functional.match_histograms_uint8` rounds.
The foreground is ``lower < level <= upper`` with one range per image
(:func:`foreground_levels_tf`, from the histogram of its border strip), so
it lives in that table too: levels outside the range map to themselves. The
per-pixel pass is the same for both regions; only the histograms of the
matched images (and, once, of a constant pool) are counted for it.
Brightness scales the image but never ``fill_value``: pixels from outside
the image are exactly ``fill_value`` (for pixels inside the image, scaling
before or after the bilinear resample is the same, as it is linear).

Two resamplers sample identically (to float rounding): ``"xla"`` fuses the
grey-level lookup, the resample, brightness and clipping into one
XLA-compiled pass that reads uint8 pixels (two to three times faster than
the stock op on a CPU); ``"projective"`` uses
``tf.raw_ops.ImageProjectiveTransformV3`` and needs no XLA compiler.

Flips are exact: a flip-only transform maps every output pixel centre onto an
input pixel centre (``x_in = W - 1 - x_out``, computed without rounding
error), where bilinear weights are exactly 1 and 0, so the result equals
``tf.reverse`` bit for bit.
"""
from __future__ import annotations

import math

import tensorflow as tf

from augment.config import AugmentConfig
from augment.functional import (
    BACKGROUND_CEILING,
    BAR_FLOOR,
    BORDER_STRIP_PERCENT,
    FLAT_MADS,
    FOREGROUND_MIN_LEVEL,
    MAX_FLAT_MAD,
    STRIP_SHARE_DIVISOR,
    WHOLE_IMAGE_LEVELS,
    check_histogram_match_region,
)

NUMBER_OF_LEVELS = 256


def _grey_levels(images: tf.Tensor) -> tf.Tensor:
    """uint8, or float in [0, 255] rounded and clipped, as int32 levels."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.int32)
    values = tf.clip_by_value(tf.round(tf.cast(images, tf.float32)), 0.0, 255.0)
    return tf.cast(values, tf.int32)


def _histograms(levels: tf.Tensor) -> tf.Tensor:
    """(B, H, W, C) int32 levels -> (B * C, 256) int64 counts per image and channel."""
    shape = tf.shape(levels)
    batch, channels = shape[0], shape[3]
    rows = batch * channels
    row = tf.range(batch)[:, None, None, None] * channels + tf.range(channels)
    index = tf.reshape(row * NUMBER_OF_LEVELS + levels, [-1])
    counts = tf.math.bincount(
        index, minlength=rows * NUMBER_OF_LEVELS, maxlength=rows * NUMBER_OF_LEVELS, dtype=tf.int64
    )
    return tf.reshape(counts, [rows, NUMBER_OF_LEVELS])


def _border_histograms(levels: tf.Tensor) -> tf.Tensor:
    """(B, H, W, C) int32 levels -> (B * C, 256) int64 counts of the border strip.

    The strip of :func:`augment.functional.border_histograms`: every pixel
    within ``max(1, round(3 % of the shorter side))`` of the border, once.
    """
    shape = tf.shape(levels)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    strip = tf.maximum(1, (BORDER_STRIP_PERCENT * tf.minimum(height, width) + 50) // 100)
    bottom, right = tf.maximum(strip, height - strip), tf.maximum(strip, width - strip)
    parts = [levels[:, :strip], levels[:, bottom:], levels[:, strip:bottom, :strip],
             levels[:, strip:bottom, right:]]
    pixels = tf.concat([tf.reshape(part, [batch, -1, channels]) for part in parts], axis=1)
    return _histograms(pixels[:, :, None, :])


def _flat_part_tf(counts: tf.Tensor, strip_totals: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """:func:`augment.functional._flat_part` in the graph: (K,) int32 median, int32 MAD and bool flatness."""
    levels = tf.range(NUMBER_OF_LEVELS)
    total = tf.reduce_sum(counts, axis=1, keepdims=True)
    safe_total = tf.maximum(total, 1)
    cumulative = tf.cumsum(counts, axis=1)
    median = tf.reduce_sum(tf.cast(2 * cumulative < safe_total, tf.int32), axis=1)
    # Pixels within d levels of the median, for every d: cumulative[m + d] - cumulative[m - d - 1].
    upper = tf.gather(cumulative, tf.minimum(median[:, None] + levels, NUMBER_OF_LEVELS - 1), batch_dims=1)
    below_index = median[:, None] - levels - 1
    below = tf.where(below_index >= 0, tf.gather(cumulative, tf.maximum(below_index, 0), batch_dims=1),
                     tf.zeros_like(upper))
    mad = tf.reduce_sum(tf.cast(2 * (upper - below) < safe_total, tf.int32), axis=1)
    flat = (total[:, 0] > 0) & (STRIP_SHARE_DIVISOR * total[:, 0] >= strip_totals) & (mad <= MAX_FLAT_MAD)
    return median, mad, flat


def foreground_levels_tf(border_counts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Grey-level range ``(lower, upper]`` of each row's foreground, in the graph.

    The integer rule of :func:`augment.functional.foreground_levels` (median
    and median absolute deviation of a grey background and of a bright bar
    in the border strip), so both give the same levels exactly.

    Args:
        border_counts: (K, 256) int64 border-strip histograms.

    Returns:
        ``(lower, upper)``: (K,) int32 each; a pixel is foreground when
        ``lower < level <= upper``.
    """
    counts = tf.cast(border_counts, tf.int64)
    levels = tf.range(NUMBER_OF_LEVELS)
    strip_totals = tf.reduce_sum(counts, axis=1)
    zeros = tf.zeros_like(counts)
    dark_median, dark_mad, dark_flat = _flat_part_tf(
        tf.where((levels >= 1) & (levels <= BACKGROUND_CEILING), counts, zeros), strip_totals)
    grey = dark_flat & (dark_median > FOREGROUND_MIN_LEVEL)
    lower = tf.where(grey, tf.minimum(dark_median + FLAT_MADS * dark_mad + 1, BACKGROUND_CEILING),
                     tf.fill(tf.shape(dark_median), FOREGROUND_MIN_LEVEL))
    bright_median, bright_mad, bar = _flat_part_tf(tf.where(levels >= BAR_FLOOR, counts, zeros), strip_totals)
    upper = tf.where(bar, tf.maximum(bright_median - FLAT_MADS * bright_mad - 1, BAR_FLOOR - 1),
                     tf.fill(tf.shape(bright_median), NUMBER_OF_LEVELS - 1))
    return lower, upper


def _inside(lower: tf.Tensor, upper: tf.Tensor) -> tf.Tensor:
    """(K,) ranges -> (K, 256) bool: level in ``(lower, upper]``."""
    levels = tf.range(NUMBER_OF_LEVELS)
    return (levels > lower[:, None]) & (levels <= upper[:, None])


def _region_histograms(levels: tf.Tensor, region: str) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(B, H, W, C) int32 levels -> the region's (B * C, 256) int64 counts and (B * C,) int32 ``lower``, ``upper``.

    Levels outside a row's ``(lower, upper]`` are not counted; ``"whole"``
    is (-1, 255] and counts every pixel.
    """
    counts = _histograms(levels)
    if region == "whole":
        rows = tf.shape(counts)[:1]
        return counts, tf.fill(rows, WHOLE_IMAGE_LEVELS[0]), tf.fill(rows, WHOLE_IMAGE_LEVELS[1])
    lower, upper = foreground_levels_tf(_border_histograms(levels))
    return tf.where(_inside(lower, upper), counts, tf.zeros_like(counts)), lower, upper


def foreground_matching_tables_tf(
    source_counts: tf.Tensor, reference_counts: tf.Tensor, source_lower: tf.Tensor, source_upper: tf.Tensor
) -> tf.Tensor:
    """:func:`matching_tables_tf` of region histograms, identity outside the region.

    Same as :func:`augment.functional.foreground_matching_tables`.

    Args:
        source_counts: (K, 256) int64 region histograms of the sources (may be all zero).
        reference_counts: (K, 256) int64 region histograms of the references (may be all zero).
        source_lower, source_upper: (K,) int32 the sources' ranges ((-1, 255] for whole images).

    Returns:
        (K, 256) float64 tables: levels outside the source's range map to
        themselves; a row whose source or reference region is empty is the
        identity (the image is left unchanged).
    """
    source_counts = tf.cast(source_counts, tf.int64)
    reference_counts = tf.cast(reference_counts, tf.int64)
    usable = (tf.reduce_sum(source_counts, axis=1) > 0) & (tf.reduce_sum(reference_counts, axis=1) > 0)
    # Rows without a region get a one-pixel stand-in so that the tables exist; they are replaced below.
    stand_in = tf.one_hot(NUMBER_OF_LEVELS - 1, NUMBER_OF_LEVELS, dtype=tf.int64)[None]
    tables = matching_tables_tf(tf.where(usable[:, None], source_counts, stand_in),
                                tf.where(usable[:, None], reference_counts, stand_in))
    matched = usable[:, None] & _inside(tf.cast(source_lower, tf.int32), tf.cast(source_upper, tf.int32))
    identity = tf.broadcast_to(tf.cast(tf.range(NUMBER_OF_LEVELS), tf.float64), tf.shape(tables))
    return tf.where(matched, tables, identity)


def matching_tables_tf(source_counts: tf.Tensor, reference_counts: tf.Tensor) -> tf.Tensor:
    """Histogram-matching lookup tables, skimage semantics, in the graph.

    Same algorithm as :func:`augment.functional.batched_matching_tables`:
    quantiles are compared exactly in integers and interpolated in float64
    with ``np.interp``'s formula, so the tables equal skimage's float result.

    Args:
        source_counts: (K, 256) int64 histograms, each with a positive sum.
        reference_counts: (K, 256) int64 histograms, each with a positive sum.

    Returns:
        (K, 256) float64 tables in [0, 255].
    """
    source_cdf = tf.cumsum(tf.cast(source_counts, tf.int64), axis=1)
    reference_cdf = tf.cumsum(tf.cast(reference_counts, tf.int64), axis=1)
    source_total = source_cdf[:, -1:]
    reference_total = reference_cdf[:, -1:]
    # First reference level whose quantile exceeds the source quantile.
    upper = tf.searchsorted(reference_cdf * source_total, source_cdf * reference_total, side="right")
    lower_cumulative = tf.gather(reference_cdf, tf.maximum(upper - 1, 0), batch_dims=1)
    lower_cumulative = tf.where(upper > 0, lower_cumulative, tf.zeros_like(lower_cumulative))
    # First level whose cumulative count reaches it: the last occurring level <= quantile.
    lower = tf.searchsorted(reference_cdf, lower_cumulative, side="left")
    upper_cumulative = tf.gather(reference_cdf, tf.minimum(upper, NUMBER_OF_LEVELS - 1), batch_dims=1)

    source_total_f = tf.cast(source_total, tf.float64)
    reference_total_f = tf.cast(reference_total, tf.float64)
    quantile = tf.cast(source_cdf, tf.float64) / source_total_f
    lower_quantile = tf.cast(lower_cumulative, tf.float64) / reference_total_f
    upper_quantile = tf.cast(upper_cumulative, tf.float64) / reference_total_f
    upper_f = tf.cast(upper, tf.float64)
    lower_f = tf.cast(lower, tf.float64)
    gap = tf.where(upper_quantile > lower_quantile, upper_quantile - lower_quantile, tf.ones_like(upper_quantile))
    inside = (upper_f - lower_f) / gap * (quantile - lower_quantile) + lower_f

    last_level = tf.cast(
        tf.reduce_sum(tf.cast(reference_cdf < reference_total, tf.int32), axis=1, keepdims=True), tf.float64
    )
    table = tf.where(lower_cumulative == 0, upper_f, inside)
    return tf.where(upper >= NUMBER_OF_LEVELS, tf.broadcast_to(last_level, tf.shape(table)), table)


def _lookup(tables: tf.Tensor, levels: tf.Tensor) -> tf.Tensor:
    """Apply (B * C, 256) tables to (B, H, W, C) int32 levels -> (B, H, W, C) tables' dtype."""
    shape = tf.shape(levels)
    batch, channels = shape[0], shape[3]
    row = tf.range(batch)[:, None, None, None] * channels + tf.range(channels)
    return tf.gather(tf.reshape(tables, [-1]), row * NUMBER_OF_LEVELS + levels)


def match_histograms_tf(images: tf.Tensor, references: tf.Tensor, region: str = "foreground") -> tf.Tensor:
    """Match each image's histogram to its reference's, per channel.

    Args:
        images: (B, H, W, C) uint8, or float in [0, 255] (rounded to grey
            levels first).
        references: (B, Hr, Wr, C) uint8 or float in [0, 255];
            ``references[i]`` is the reference of ``images[i]``.
        region: ``"foreground"`` (default): only pixels inside each image's
            :func:`foreground_levels_tf` range count, in both, and only the
            image's change; ``"whole"``: every pixel.

    Returns:
        (B, H, W, C) float32 in [0, 255], not rounded: for uint8 input, on
        the region's pixels, ``skimage.exposure.match_histograms``'s float
        result (single channel) of the image's region pixels to the
        reference's, to float32 precision; other pixels keep their grey
        level; an image whose own or reference region is empty is returned
        as grey levels. ``tf.round`` of it equals
        :func:`augment.functional.match_histograms_batch`.
    """
    check_histogram_match_region(region)
    images = tf.convert_to_tensor(images)
    references = tf.convert_to_tensor(references)
    if images.shape.rank != 4 or references.shape.rank != 4:
        raise ValueError(
            f"images and references must be (B, H, W, C), got shapes {images.shape} and {references.shape}"
        )
    if images.shape[3] is not None and references.shape[3] is not None and images.shape[3] != references.shape[3]:
        raise ValueError(f"channel counts differ: images {images.shape[3]}, references {references.shape[3]}")
    source_levels = _grey_levels(images)
    source_counts, source_lower, source_upper = _region_histograms(source_levels, region)
    reference_counts, _, _ = _region_histograms(_grey_levels(references), region)
    tables = foreground_matching_tables_tf(source_counts, reference_counts, source_lower, source_upper)
    return _lookup(tf.cast(tables, tf.float32), source_levels)


def sample_affine_params(seed: tf.Tensor, batch_size, config: AugmentConfig) -> dict[str, tf.Tensor]:
    """Draw per-image geometry parameters from the ranges of ``config``.

    Args:
        seed: int32/int64 tensor of shape [2] (stateless RNG seed).
        batch_size: number of images (int or scalar int tensor).
        config: augmentation settings.

    Returns:
        Dict of (B,) tensors: ``rotation`` and ``shear`` in degrees,
        ``shift_x`` / ``shift_y`` as fractions of width / height, ``zoom`` as
        the content scale factor (float32), ``flip_h`` / ``flip_v`` (bool).
        Disabled ranges give exactly 0 (or 1 for zoom, False for flips).
    """
    seeds = tf.random.experimental.stateless_split(seed, num=7)
    shape = tf.reshape(tf.cast(batch_size, tf.int32), [1])

    def symmetric(index: int, limit: float) -> tf.Tensor:
        return tf.random.stateless_uniform(shape, seeds[index], minval=-limit, maxval=limit, dtype=tf.float32)

    def coin(index: int, enabled: bool) -> tf.Tensor:
        draw = tf.random.stateless_uniform(shape, seeds[index], dtype=tf.float32) < 0.5
        return tf.logical_and(draw, enabled)

    return {
        "rotation": symmetric(0, config.rotation_degrees),
        "shift_x": symmetric(1, config.width_shift),
        "shift_y": symmetric(2, config.height_shift),
        "zoom": 1.0 + symmetric(3, config.zoom),
        "shear": symmetric(4, config.shear_degrees),
        "flip_h": coin(5, config.horizontal_flip),
        "flip_v": coin(6, config.vertical_flip),
    }


def affine_transform_matrices(
    rotation, shift_x, shift_y, zoom, shear, flip_h, flip_v, height, width
) -> tf.Tensor:
    """Projective transform vectors for ``ImageProjectiveTransformV3``.

    Same parameters and conventions as :func:`augment.functional.affine_matrices`
    (degrees, fractions of the side, content scale factor, bools), computed in
    float64 and rounded once to float32.

    Returns:
        (B, 8) float32 ``[a0, a1, a2, b0, b1, b2, 0, 0]``: output pixel
        ``(x, y)`` reads input ``(a0 x + a1 y + a2, b0 x + b1 y + b2)``.
    """
    def as_float64(value) -> tf.Tensor:
        return tf.cast(tf.convert_to_tensor(value), tf.float64)

    rotation, shift_x, shift_y, zoom, shear = (
        as_float64(value) for value in (rotation, shift_x, shift_y, zoom, shear)
    )
    angle = rotation * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    shear_tan = tf.tan(shear * (math.pi / 180.0))
    flip_x = tf.where(tf.cast(flip_h, tf.bool), -1.0, 1.0)
    flip_y = tf.where(tf.cast(flip_v, tf.bool), -1.0, 1.0)
    flip_x, flip_y = tf.cast(flip_x, tf.float64), tf.cast(flip_y, tf.float64)
    inverse_zoom = 1.0 / zoom
    a00 = flip_x * cos * inverse_zoom
    a01 = flip_x * (-cos * shear_tan - sin) * inverse_zoom
    a10 = flip_y * sin * inverse_zoom
    a11 = flip_y * (-sin * shear_tan + cos) * inverse_zoom
    height = tf.cast(height, tf.float64)
    width = tf.cast(width, tf.float64)
    centre_x = (width - 1.0) / 2.0
    centre_y = (height - 1.0) / 2.0
    source_x = centre_x + shift_x * width
    source_y = centre_y + shift_y * height
    offset_x = centre_x - a00 * source_x - a01 * source_y
    offset_y = centre_y - a10 * source_x - a11 * source_y
    zeros = tf.zeros_like(a00)
    transforms = tf.stack([a00, a01, offset_x, a10, a11, offset_y, zeros, zeros], axis=1)
    return tf.cast(transforms, tf.float32)


def _pool_histograms_once(reference_pool, region: str) -> tf.Tensor | None:
    """(R * C, 256) region histograms of a constant pool, computed once outside the graph.

    When the pool is a NumPy array or an eager tensor (the usual case: a
    fixed set of images captured by the ``Dataset.map`` function), its
    region histograms (:func:`_region_histograms`) are computed eagerly while
    tracing and enter the graph as a constant, instead of being recomputed
    for every batch. A symbolic pool (a graph input) and eager execution
    (one call, nothing to reuse) give None.
    """
    if tf.executing_eagerly():
        return None
    if isinstance(reference_pool, tf.Tensor) and tf.is_symbolic_tensor(reference_pool):
        return None
    with tf.init_scope():
        return _region_histograms(_grey_levels(tf.convert_to_tensor(reference_pool)), region)[0]


def _matched_tables_for_selection(
    images: tf.Tensor,
    reference_pool: tf.Tensor,
    pool_histograms: tf.Tensor | None,
    probability: float,
    region: str,
    seed: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Choose the images to match and compute their (unblended) lookup tables.

    Returns:
        ``selected`` (K,) int32 batch indices of the chosen images and
        ``tables`` (K, C, 256) float32: grey level -> matched value (the
        level itself outside the region, or for every level when the image
        or its reference has no pixel in the region).
    """
    batch = tf.shape(images)[0]
    channels = tf.shape(images)[3]
    pool_size = tf.shape(reference_pool)[0]
    choose_seed, pick_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    chosen = tf.random.stateless_uniform([batch], choose_seed) < probability
    chosen = tf.logical_and(chosen, pool_size > 0)
    picks = tf.random.stateless_uniform(
        [batch], pick_seed, minval=0, maxval=tf.maximum(pool_size, 1), dtype=tf.int32
    )
    # Histograms are only computed for the chosen images (about p of the batch).
    selected = tf.cast(tf.where(chosen)[:, 0], tf.int32)
    source_counts, source_lower, source_upper = _region_histograms(_grey_levels(tf.gather(images, selected)), region)
    selected_picks = tf.gather(picks, selected)
    if pool_histograms is None:
        reference_counts, _, _ = _region_histograms(_grey_levels(tf.gather(reference_pool, selected_picks)), region)
    else:
        rows = tf.reshape(selected_picks[:, None] * channels + tf.range(channels), [-1])
        reference_counts = tf.gather(pool_histograms, rows)
    tables = foreground_matching_tables_tf(source_counts, reference_counts, source_lower, source_upper)
    return selected, tf.reshape(tf.cast(tables, tf.float32), [-1, channels, NUMBER_OF_LEVELS])


def _bilinear_sample(
    values: tf.Tensor, transforms: tf.Tensor, fill_value: tf.Tensor, brightness: tf.Tensor
) -> tf.Tensor:
    """Bilinear affine resample with constant fill, times brightness (graph ops, meant for XLA).

    Output pixel ``(x, y)`` reads input ``(a0 x + a1 y + a2, b0 x + b1 y + b2)``
    (affine only: the projective terms 6 and 7 of ``transforms`` are
    ignored) with the sampling of ``ImageProjectiveTransformV3`` (BILINEAR,
    CONSTANT): neighbours outside the image count as ``fill_value``. The
    four neighbours are read in the input dtype (uint8 reads are the
    cheapest); ``brightness`` scales the image part, never the fill.
    Pixels are addressed with int32 flat indices, so
    ``B * (H + 2) * (W + 2) * C`` must stay below 2**31.

    Args:
        values: (B, H, W, C) uint8 or float32.
        transforms: (B, 8) float32.
        fill_value: scalar float32.
        brightness: (B,) float32.

    Returns:
        (B, H, W, C) float32.
    """
    shape = tf.shape(values)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    # One pixel of zeros around the image, so every neighbour read is in range.
    flat = tf.reshape(tf.pad(values, [[0, 0], [1, 1], [1, 1], [0, 0]]), [-1])
    columns = tf.cast(tf.range(width), tf.float32)[None, None, :]
    rows = tf.cast(tf.range(height), tf.float32)[None, :, None]
    a0, a1, a2, b0, b1, b2 = (transforms[:, index][:, None, None] for index in range(6))
    source_x = a0 * columns + a1 * rows + a2
    source_y = b0 * columns + b1 * rows + b2
    x0 = tf.floor(source_x)
    y0 = tf.floor(source_y)
    weight_x = source_x - x0
    weight_y = source_y - y0

    def padded_index(coordinate: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
        # Coordinate i is padded index i + 1; anything further out reads a zero of the border.
        return tf.cast(tf.clip_by_value(coordinate + 1.0, 0.0, tf.cast(size + 1, tf.float32)), tf.int32)

    def inside(coordinate: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
        return tf.cast((coordinate >= 0.0) & (coordinate <= tf.cast(size - 1, tf.float32)), tf.float32)

    left, right = padded_index(x0, width), padded_index(x0 + 1.0, width)
    top, bottom = padded_index(y0, height), padded_index(y0 + 1.0, height)
    image_start = tf.range(batch)[:, None, None] * (height + 2)
    top_row = ((image_start + top) * (width + 2))[..., None]
    bottom_row = ((image_start + bottom) * (width + 2))[..., None]
    left, right = left[..., None], right[..., None]
    channel = tf.range(channels)

    def read(row_start: tf.Tensor, column: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.gather(flat, (row_start + column) * channels + channel), tf.float32)

    top_left, top_right = read(top_row, left), read(top_row, right)
    bottom_left, bottom_right = read(bottom_row, left), read(bottom_row, right)
    weight_x, weight_y = weight_x[..., None], weight_y[..., None]
    upper = top_left + weight_x * (top_right - top_left)
    lower = bottom_left + weight_x * (bottom_right - bottom_left)
    image_part = upper + weight_y * (lower - upper)
    # Bilinear weight that fell on real pixels; the rest is fill.
    inside_x = (1.0 - weight_x) * inside(x0, width)[..., None] + weight_x * inside(x0 + 1.0, width)[..., None]
    inside_y = (1.0 - weight_y) * inside(y0, height)[..., None] + weight_y * inside(y0 + 1.0, height)[..., None]
    return brightness[:, None, None, None] * image_part + fill_value * (1.0 - inside_x * inside_y)


@tf.function(jit_compile=True, reduce_retracing=True)
def _remap_and_resample_xla(
    images: tf.Tensor,
    tables: tf.Tensor,
    matched_rows: tf.Tensor,
    brightness: tf.Tensor,
    transforms: tf.Tensor,
    fill_value: tf.Tensor,
    use_tables: bool,
    use_geometry: bool,
) -> tf.Tensor:
    """Grey-level remap, bilinear affine resample, brightness and clip, compiled by XLA.

    Args:
        images: (B, H, W, C) uint8 or float in [0, 255].
        tables: (B, C, 256) new grey level of every level, in the dtype of
            ``images`` for uint8 (else float32); used where ``matched_rows``.
        matched_rows: (B,) bool, images whose levels go through ``tables``.
        brightness: (B,) float32 intensity factors.
        transforms: (B, 8) float32 output-to-input transforms.
        fill_value: scalar float32.
        use_tables: False skips the remap.
        use_geometry: False skips the resample.

    Returns:
        (B, H, W, C) float32 in [0, 255].
    """
    values = images if images.dtype == tf.uint8 else tf.cast(images, tf.float32)
    if use_tables:
        shape = tf.shape(images)
        batch, channels = shape[0], shape[3]
        levels = _grey_levels(images)
        row = tf.range(batch)[:, None, None, None] * channels + tf.range(channels)
        remapped = tf.gather(tf.reshape(tables, [-1]), row * NUMBER_OF_LEVELS + levels)
        values = tf.where(matched_rows[:, None, None, None], tf.cast(remapped, values.dtype), values)
    if use_geometry:
        output = _bilinear_sample(values, transforms, fill_value, brightness)
    else:
        output = tf.cast(values, tf.float32) * brightness[:, None, None, None]
    return tf.clip_by_value(output, 0.0, 255.0)


RESAMPLERS = ("xla", "projective")


def _check_resampler(resampler: str) -> None:
    if resampler not in RESAMPLERS:
        raise ValueError(f"resampler must be one of {RESAMPLERS}, got {resampler!r}")


def apply_affine_tf(
    images: tf.Tensor, transforms: tf.Tensor, fill_value: float = 0.0, resampler: str = "xla"
) -> tf.Tensor:
    """Bilinear resample of a batch through (B, 8) transforms, constant fill.

    Args:
        images: (B, H, W, C) uint8 or float in [0, 255].
        transforms: (B, 8) float32 from :func:`affine_transform_matrices`.
        fill_value: value of pixels from outside the image, in [0, 255].
        resampler: ``"xla"`` or ``"projective"`` (see the module docstring).

    Returns:
        (B, H, W, C) float32 in [0, 255].
    """
    _check_resampler(resampler)
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
    transforms = tf.cast(transforms, tf.float32)
    fill = tf.constant(fill_value, tf.float32)
    batch = tf.shape(images)[0]
    if resampler == "xla":
        no_tables = tf.zeros([0, 1, NUMBER_OF_LEVELS], tf.uint8 if images.dtype == tf.uint8 else tf.float32)
        return _remap_and_resample_xla(
            images, no_tables, tf.zeros([batch], tf.bool), tf.ones([batch]), transforms, fill, False, True
        )
    return tf.clip_by_value(_projective_resample(tf.cast(images, tf.float32), transforms, fill), 0.0, 255.0)


def _projective_resample(values: tf.Tensor, transforms: tf.Tensor, fill_value: tf.Tensor) -> tf.Tensor:
    """``ImageProjectiveTransformV3``, bilinear with constant fill, float32 in and out."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=values,
        transforms=transforms,
        output_shape=tf.shape(values)[1:3],
        fill_value=fill_value,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def augment_batch(
    images: tf.Tensor,
    reference_pool: tf.Tensor | None,
    config: AugmentConfig,
    seed: tf.Tensor,
    resampler: str = "xla",
) -> tf.Tensor:
    """Augment a batch: histogram matching, brightness, one affine resample, clip.

    Args:
        images: (B, H, W, C) uint8, or float in [0, 255]; C is 1 for this
            project. B may be unknown until run time.
        reference_pool: (R, H', W', C) uint8 (or float in [0, 255]) images of
            OTHER sites to match histograms to; ``None`` or R = 0 turns
            matching off. With ``histogram_match_region="foreground"`` a
            drawn reference without foreground pixels leaves its image
            unchanged (it is not drawn again).
        config: augmentation settings (validated here).
        seed: int32/int64 tensor of shape [2], e.g. ``[run_seed, batch_index]``;
            the same seed and images give the same output.
        resampler: ``"xla"`` (default): remap, brightness, resample and clip
            compiled by XLA into one pass, the fastest on a CPU (tf.data);
            ``"projective"``: ``tf.raw_ops.ImageProjectiveTransformV3``, no XLA
            compilation (for example inside a model on a GPU without a working
            XLA toolchain). Both sample identically (to float rounding).

    Returns:
        (B, H, W, C) float32 in [0, 255]. With ``AugmentConfig.disabled()`` it
        equals the input exactly.
    """
    config.validate()
    _check_resampler(resampler)
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer or seed.shape.rank != 1 or seed.shape[0] not in (None, 2):
        raise ValueError(f"seed must be an integer tensor of shape [2], got {seed.dtype.name} {seed.shape}")
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)

    use_pool = reference_pool is not None and config.has_histogram_matching
    if use_pool:
        pool_histograms = _pool_histograms_once(reference_pool, config.histogram_match_region)
        reference_pool = tf.convert_to_tensor(reference_pool)
        if reference_pool.shape.rank != 4:
            raise ValueError(f"reference_pool must be (R, H, W, C), got shape {reference_pool.shape}")
        pool_channels, image_channels = reference_pool.shape[3], images.shape[3]
        if pool_channels is not None and image_channels is not None and pool_channels != image_channels:
            raise ValueError(f"channel counts differ: images {image_channels}, reference_pool {pool_channels}")
        use_pool = reference_pool.shape[0] != 0

    match_seed, brightness_seed, affine_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    brightness = tf.random.stateless_uniform(
        [batch], brightness_seed, minval=config.brightness_low, maxval=config.brightness_high
    )
    params = sample_affine_params(affine_seed, batch, config)
    transforms = affine_transform_matrices(height=height, width=width, **params)
    fill_value = tf.constant(config.fill_value, tf.float32)
    if use_pool:
        selected, tables = _matched_tables_for_selection(
            images, reference_pool, pool_histograms, config.histogram_match_probability,
            config.histogram_match_region, match_seed,
        )
        # Blend on the grey-level axis and round: matched images keep whole grey levels.
        levels = tf.range(NUMBER_OF_LEVELS, dtype=tf.float32)
        tables = tf.round(levels + config.histogram_match_blend * (tables - levels))

    if resampler == "xla":
        table_dtype = tf.uint8 if images.dtype == tf.uint8 else tf.float32
        if use_pool:
            indices = selected[:, None]
            full_tables = tf.scatter_nd(
                indices, tf.cast(tables, table_dtype), tf.stack([batch, channels, NUMBER_OF_LEVELS])
            )
            matched_rows = tf.scatter_nd(indices, tf.ones_like(selected, tf.bool), [batch])
        else:
            full_tables = tf.zeros([0, 1, NUMBER_OF_LEVELS], table_dtype)
            matched_rows = tf.zeros([batch], tf.bool)
        return _remap_and_resample_xla(
            images, full_tables, matched_rows, brightness, transforms, fill_value, use_pool, config.has_geometry
        )

    output = tf.cast(images, tf.float32)
    if use_pool:
        matched = _lookup(tables, _grey_levels(tf.gather(images, selected)))
        output = tf.tensor_scatter_nd_update(output, selected[:, None], matched)
    output = output * brightness[:, None, None, None]
    if config.has_geometry:
        output = _projective_resample(output, transforms, fill_value)
    return tf.clip_by_value(output, 0.0, 255.0)
