"""Acquisition randomisation as batched, seeded TensorFlow graph ops.

One op per family of :mod:`augment.acquisition` (the NumPy oracles), taking
the same explicit per-image parameters, plus :func:`sample_acquisition_params`,
which draws those parameters from an :class:`AugmentConfig` and a ``[2]``
seed, and :func:`acquisition_batch`, which applies the enabled families to a
batch in :data:`augment.acquisition.FAMILY_ORDER`:

1. ``downsample``: area shrink by a factor and bilinear enlarge back;
2. ``blur``: Gaussian blur;
3. ``sharpen``: unsharp mask;
4. ``bias_field``: smooth multiplicative field (cubic polynomial in the exponent);
5. ``contrast``: contrast around the foreground mean, black kept black;
6. ``gamma``: intensity curve ``255 (x / 255) ** gamma``;
7. ``noise``: additive Gaussian noise;
8. ``jpeg``: JPEG encoding and decoding at a random quality, as DCT math in the graph.

Each family is applied to each image with its own probability, and its
output is clipped to [0, 255]. Images a family does not select are passed
on bit for bit; a family with probability 0 adds nothing to the graph, so
with every family off :func:`acquisition_batch` returns its input tensor.
Every family draws from its own stream of the seed, so switching one family
on or off never changes what another draws. Same seed and images, same
output.

The batch size may be unknown until run time. Resolution, blur, sharpening
and JPEG work on the selected images only (a gather, one batched op, a
scatter); bias field, contrast, gamma and noise run in one XLA-compiled
pass over the batch in which each image branches to the families that
selected it. So the cost of a family grows with its probability.

Noise: every batch draws one standard-normal field of the image size, and
each image reads it cyclically shifted by its own random offset (any of the
``H * W`` shifts). So every image gets independent N(0, 1) values per pixel
at the cost of one field per batch; two noisy images of one batch carry
shifted copies of the same pattern. Noise is added everywhere, background
included.

JPEG: :func:`jpeg_reencode_tf` computes baseline greyscale JPEG (8x8 DCT,
libjpeg's quality-scaled luminance table, rounding) in floating point.
libjpeg's integer DCT rounds a few near-tie coefficients the other way; the
tests measure the difference to OpenCV / PIL (on 224 px brain crops at most
1.9 % of the pixels differ by more than one grey level, where the
re-encoding itself changes pixels by 0.8 to 7 levels on average).
:func:`jpeg_reencode_libjpeg_tf` runs libjpeg itself per image
(``tf.map_fn``; equal to OpenCV and PIL bit for bit) for checks; it is slower.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from augment.acquisition import (
    BIAS_FIELD_ORDER,
    BIAS_FIELD_TERMS,
    FAMILY_ORDER,
    FOREGROUND_LEVEL,
    JPEG_BLOCK,
    JPEG_LUMINANCE_TABLE,
    JPEG_TIE_MARGIN,
    dct_matrix,
    gaussian_kernel,
)
from augment.config import AugmentConfig

#: Index of each family's stream in ``stateless_split(seed, len(FAMILY_ORDER))``.
SEED_STREAMS = {family: index for index, family in enumerate(FAMILY_ORDER)}
#: Families applied by the XLA intensity pass, in order.
INTENSITY_FAMILIES = ("bias_field", "contrast", "gamma", "noise")


def _images(images) -> tf.Tensor:
    """(B, H, W, C) uint8 or float tensor -> float32; ValueError for another rank."""
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
    return tf.cast(images, tf.float32)


def _per_image(values) -> tf.Tensor:
    """(B,) -> (B, 1, 1, 1) float32 for broadcasting over pixels."""
    return tf.cast(values, tf.float32)[:, None, None, None]


def _clip(values: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(values, 0.0, 255.0)


# ----------------------------------------------------------------------------- intensity


def adjust_gamma_tf(images, gamma) -> tf.Tensor:
    """``255 * (x / 255) ** gamma`` per image, as :func:`augment.acquisition.adjust_gamma`.

    Args:
        images: (B, H, W, C) grey levels in [0, 255] (uint8 or float).
        gamma: (B,) positive exponents.

    Returns:
        (B, H, W, C) float32 in [0, 255]; 0 and 255 stay fixed.
    """
    values = _clip(_images(images))
    scaled = values * (1.0 / 255.0)
    # exp(gamma * log(x)) is three times faster than pow under XLA on a CPU; 0 stays 0.
    powered = tf.exp(_per_image(gamma) * tf.math.log(tf.maximum(scaled, 1e-30)))
    return _clip(tf.where(values > 0, 255.0 * powered, 0.0))


def contrast_centre_tf(images) -> tf.Tensor:
    """(B,) mean of each image's pixels above FOREGROUND_LEVEL (of all pixels where there are none)."""
    values = _images(images)
    foreground = tf.cast(values > FOREGROUND_LEVEL, tf.float32)
    count = tf.reduce_sum(foreground, axis=[1, 2, 3])
    foreground_mean = tf.reduce_sum(values * foreground, axis=[1, 2, 3]) / tf.maximum(count, 1.0)
    return tf.where(count > 0, foreground_mean, tf.reduce_mean(values, axis=[1, 2, 3]))


def adjust_contrast_tf(images, factor) -> tf.Tensor:
    """Contrast scaled around the foreground mean with black kept black (:func:`augment.acquisition.adjust_contrast`).

    Args:
        images: (B, H, W, C) grey levels in [0, 255].
        factor: (B,) factors in [0, 2]; 1 is the identity.

    Returns:
        (B, H, W, C) float32 in [0, 255].
    """
    values = _images(images)
    centre = _per_image(contrast_centre_tf(values))
    ramp = tf.minimum(1.0, values / tf.maximum(centre, 1e-30))
    changed = values + ramp * (_per_image(factor) - 1.0) * (values - centre)
    return _clip(tf.where(centre > 0, changed, values))


def bias_field_tf(height, width, coefficients, strength) -> tf.Tensor:
    """(B, H, W) float32 fields ``exp(strength * p / sum|c|)``, as :func:`augment.acquisition.bias_field`.

    Args:
        height, width: image size (ints or scalar int tensors).
        coefficients: (B, 9) coefficients of the monomials
            :data:`augment.acquisition.BIAS_FIELD_TERMS`.
        strength: (B,) strengths >= 0.
    """
    coefficients = tf.cast(coefficients, tf.float32)
    strength = tf.cast(strength, tf.float32)

    def axis(size) -> tf.Tensor:
        size = tf.cast(size, tf.int32)
        steps = tf.cast(tf.range(size), tf.float32)
        spread = steps * (2.0 / tf.cast(tf.maximum(size - 1, 1), tf.float32)) - 1.0
        return tf.where(size > 1, spread, tf.zeros_like(spread))

    powers = tf.range(BIAS_FIELD_ORDER + 1, dtype=tf.float32)
    rows = tf.pow(axis(height)[:, None], powers)  # (H, order + 1)
    columns = tf.pow(axis(width)[:, None], powers)  # (W, order + 1)
    positions = tf.constant([[i, j] for i, j in BIAS_FIELD_TERMS], tf.int32)
    batch = tf.shape(coefficients)[0]
    matrix = tf.scatter_nd(
        tf.concat([tf.repeat(tf.range(batch), len(BIAS_FIELD_TERMS))[:, None],
                   tf.tile(positions, [batch, 1])], axis=1),
        tf.reshape(coefficients, [-1]),
        tf.stack([batch, BIAS_FIELD_ORDER + 1, BIAS_FIELD_ORDER + 1]),
    )
    polynomial = tf.einsum("hi,bij,wj->bhw", rows, matrix, columns)
    total = tf.reduce_sum(tf.abs(coefficients), axis=1)
    scale = tf.where(total > 0, strength / tf.maximum(total, 1e-30), 0.0)
    return tf.exp(scale[:, None, None] * polynomial)


def apply_bias_field_tf(images, coefficients, strength) -> tf.Tensor:
    """Multiply each image (every channel) by its bias field and clip: 0 stays 0.

    Args:
        images: (B, H, W, C) grey levels in [0, 255].
        coefficients: (B, 9); strength: (B,) >= 0 (0 is the identity).

    Returns:
        (B, H, W, C) float32 in [0, 255].
    """
    values = _images(images)
    shape = tf.shape(values)
    return _clip(values * bias_field_tf(shape[1], shape[2], coefficients, strength)[..., None])


def add_noise_tf(images, sigma, standard_normal) -> tf.Tensor:
    """``x + sigma * standard_normal`` per image, clipped (:func:`augment.acquisition.add_noise`).

    Args:
        images: (B, H, W, C) grey levels in [0, 255].
        sigma: (B,) standard deviations in grey levels, >= 0.
        standard_normal: (B, H, W, C) unit-variance noise.

    Returns:
        (B, H, W, C) float32 in [0, 255].
    """
    return _clip(_images(images) + _per_image(sigma) * tf.cast(standard_normal, tf.float32))


def shifted_noise_tf(field, offsets) -> tf.Tensor:
    """(B, H, W, C) noise: ``field`` cyclically shifted per image.

    Image ``b`` reads ``field[(y + offsets[b, 0]) % H, (x + offsets[b, 1]) % W]``.

    Args:
        field: (H, W, C) float32 standard-normal field.
        offsets: (B, 2) int32 row and column shifts in [0, H) and [0, W).
    """
    field = tf.convert_to_tensor(field, tf.float32)
    offsets = tf.cast(offsets, tf.int32)
    shape = tf.shape(field)
    rows = (tf.range(shape[0])[None, :] + offsets[:, :1]) % shape[0]  # (B, H)
    columns = (tf.range(shape[1])[None, :] + offsets[:, 1:]) % shape[1]  # (B, W)
    return tf.gather(tf.gather(field, rows), columns, axis=2, batch_dims=1)


# ----------------------------------------------------------------------------- filters


def _blur_weights(sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """(K, 2 radius + 1) normalised Gaussians, each cut at its own ``ceil(3 sigma)`` (sigma 0: a delta)."""
    sigma = tf.cast(sigma, tf.float32)[:, None]
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)[None, :]
    own = tf.math.ceil(3.0 * sigma)
    safe = tf.maximum(sigma, 1e-30)
    gauss = tf.where(tf.abs(offsets) <= own, tf.exp(-tf.square(offsets) / (2.0 * tf.square(safe))), 0.0)
    weights = tf.where(sigma > 0, gauss, tf.cast(tf.equal(offsets, 0.0), tf.float32))
    return weights / tf.reduce_sum(weights, axis=1, keepdims=True)


def _check_radius(images: tf.Tensor, radius: int) -> None:
    for axis in (1, 2):
        side = images.shape[axis]
        if side is not None and radius >= side:
            raise ValueError(f"a blur radius of {radius} px needs images larger than {radius} px, got {side}")


def _separable_blur(values: tf.Tensor, kernels: tf.Tensor, radius: int) -> tf.Tensor:
    """Blur each image of (B, H, W, C) float32 ``values`` with its own (2 radius + 1,) kernel, mirrored borders.

    ``kernels`` is (2 radius + 1, B). The images become the channels of one
    image, so one depthwise convolution per axis filters the whole batch
    (a channel-last depthwise convolution vectorises over channels).
    """
    if radius == 0:
        return values * kernels[0][:, None, None, None]
    shape = tf.shape(values)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    stacked = tf.reshape(tf.transpose(values, [1, 2, 0, 3]), [1, height, width, batch * channels])
    kernels = tf.repeat(kernels, channels, axis=1)  # (2r + 1, B * C)
    padded = tf.pad(stacked, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    vertical = tf.nn.depthwise_conv2d(padded, kernels[:, None, :, None], [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(vertical, kernels[None, :, :, None], [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(blurred, [height, width, batch, channels]), [2, 0, 1, 3])


def gaussian_blur_tf(images, sigma, max_sigma: float) -> tf.Tensor:
    """Gaussian blur with a sigma per image (:func:`augment.acquisition.gaussian_blur`).

    Each image's kernel is cut at its own radius ``ceil(3 sigma)``; the
    batch is filtered as one separable depthwise convolution (images as
    channels) of radius ``ceil(3 max_sigma)``; borders are mirrored without
    repeating the edge pixel.

    Args:
        images: (B, H, W, C) grey levels in [0, 255], sides above the radius.
        sigma: (B,) sigmas in pixels, in [0, max_sigma] (0: identity).
        max_sigma: Python float, the largest sigma (sets the kernel size).

    Returns:
        (B, H, W, C) float32 in [0, 255].
    """
    values = _images(images)
    radius = int(math.ceil(float(np.float32(3.0) * np.float32(max_sigma))))
    _check_radius(values, radius)
    return _clip(_separable_blur(values, tf.transpose(_blur_weights(sigma, radius)), radius))


def unsharp_mask_tf(images, amount, sigma: float) -> tf.Tensor:
    """``x + amount * (x - blur(x, sigma))`` per image, clipped (:func:`augment.acquisition.unsharp_mask`).

    Args:
        images: (B, H, W, C) grey levels in [0, 255].
        amount: (B,) amounts >= 0 (0: identity).
        sigma: Python float > 0, the blur of the mask (one kernel for the batch).

    Returns:
        (B, H, W, C) float32 in [0, 255].
    """
    values = _images(images)
    kernel = gaussian_kernel(float(sigma))
    radius = len(kernel) // 2
    _check_radius(values, radius)
    kernels = tf.tile(tf.constant(kernel, tf.float32)[:, None], tf.stack([1, tf.shape(values)[0]]))
    blurred = _separable_blur(values, kernels, radius)
    return _clip(values + _per_image(amount) * (values - blurred))


# ----------------------------------------------------------------------------- resolution


def reduced_size_tf(size, factor) -> tf.Tensor:
    """(B,) int32 ``max(1, floor(size / factor + 0.5))`` in float32, as :func:`augment.acquisition.reduced_size`."""
    size = tf.cast(size, tf.float32)
    return tf.cast(tf.maximum(tf.floor(size / tf.cast(factor, tf.float32) + 0.5), 1.0), tf.int32)


def downsample_upsample_tf(images, factor) -> tf.Tensor:
    """Area shrink by ``factor`` and bilinear enlarge back, per image (:func:`augment.acquisition.downsample_upsample`).

    ``tf.image.resize`` ("area", then "bilinear" with half-pixel centres)
    per image under ``tf.map_fn``, as every image has its own coarse size.

    Args:
        images: (B, H, W, C) grey levels in [0, 255].
        factor: (B,) factors >= 1 (1: identity).

    Returns:
        (B, H, W, C) float32 in [0, 255].
    """
    values = _images(images)
    shape = tf.shape(values)
    heights = reduced_size_tf(shape[1], factor)
    widths = reduced_size_tf(shape[2], factor)

    def one(arguments):
        image, height, width = arguments
        small = tf.image.resize(image, tf.stack([height, width]), method="area")
        return tf.image.resize(small, shape[1:3], method="bilinear")

    resampled = tf.map_fn(one, (values, heights, widths),
                          fn_output_signature=tf.TensorSpec(values.shape[1:], tf.float32))
    return _clip(resampled)


# ----------------------------------------------------------------------------- JPEG


def jpeg_quantization_tables_tf(quality) -> tf.Tensor:
    """(B, 8, 8) float32 libjpeg luminance tables for (B,) int qualities in [1, 100].

    Same as :func:`augment.acquisition.jpeg_quantization_table`.
    """
    quality = tf.clip_by_value(tf.cast(quality, tf.int32), 1, 100)
    scale = tf.where(quality < 50, 5000 // quality, 200 - 2 * quality)
    base = tf.constant(JPEG_LUMINANCE_TABLE, tf.int32)
    table = tf.clip_by_value((base[None] * scale[:, None, None] + 50) // 100, 1, 255)
    return tf.cast(table, tf.float32)


def _round_half_away(values: tf.Tensor) -> tf.Tensor:
    """Round half away from zero, ties taken within JPEG_TIE_MARGIN (as the NumPy oracle)."""
    return tf.sign(values) * tf.floor(tf.abs(values) + (0.5 + JPEG_TIE_MARGIN))


def jpeg_reencode_tf(images, quality, dtype=tf.float32) -> tf.Tensor:
    """Baseline greyscale JPEG encode + decode per image, as DCT math in the graph.

    Same steps as :func:`augment.acquisition.jpeg_reencode` (levels rounded,
    edge padding to 8x8 blocks, DCT, quantisation, inverse, rounding);
    channels are separate grey images. Each 1-D DCT is one
    ``(N, 8) x (8, 8)`` matrix product over all blocks of the batch, which
    is fast with or without XLA. Roundings within
    :data:`augment.acquisition.JPEG_TIE_MARGIN` of a tie count as the tie,
    so in float64 the result equals the NumPy oracle, and in float32 (the
    default, 2.5 times faster on a CPU) about 1 pixel in 100,000 differs
    from it, by one grey level.

    Args:
        images: (B, H, W, C) grey levels in [0, 255].
        quality: (B,) int qualities in [1, 100].
        dtype: tf.float64 or tf.float32, the precision of the transforms.

    Returns:
        (B, H, W, C) float32 whole grey levels in [0, 255].
    """
    values = _images(images)
    shape = tf.shape(values)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    block = JPEG_BLOCK
    padded_height = (height + block - 1) // block * block
    padded_width = (width + block - 1) // block * block
    rows, columns = padded_height // block, padded_width // block
    levels = tf.cast(_clip(tf.round(values)), dtype)
    # Repeat the last row and column up to whole blocks, as libjpeg does (nothing to do at multiples of 8).
    if values.shape[1] is None or values.shape[1] % block:
        levels = tf.gather(levels, tf.minimum(tf.range(padded_height), height - 1), axis=1)
    if values.shape[2] is None or values.shape[2] % block:
        levels = tf.gather(levels, tf.minimum(tf.range(padded_width), width - 1), axis=2)
    if values.shape[3] == 1:
        planes = tf.reshape(levels, [batch, 1, padded_height, padded_width]) - 128.0
    else:
        planes = tf.transpose(levels, [0, 3, 1, 2]) - 128.0  # (B, C, Hp, Wp)
    dct = tf.constant(dct_matrix(), dtype)

    def along_last(array: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
        """``array[..., j] -> sum_j array[..., j] * matrix[k, j]`` for a last axis of 8."""
        return tf.reshape(tf.matmul(tf.reshape(array, [-1, block]), matrix, transpose_b=True), tf.shape(array))

    # Rows of 8 pixels along x: (B, C, Hp, Wp / 8, 8) -> horizontal frequencies v.
    horizontal = along_last(tf.reshape(planes, [batch, channels, padded_height, columns, block]), dct)
    # Bring the 8 rows of a block last: (B, C, Hp / 8, Wp / 8, v, 8) -> vertical frequencies u.
    stacked = tf.transpose(tf.reshape(horizontal, [batch, channels, rows, block, columns, block]), [0, 1, 2, 4, 5, 3])
    coefficients = along_last(stacked, dct)  # (B, C, Hp / 8, Wp / 8, v, u)
    table = tf.cast(tf.transpose(jpeg_quantization_tables_tf(quality), [0, 2, 1]), dtype)[:, None, None, None]
    quantized = _round_half_away(coefficients / table) * table
    vertical = along_last(quantized, tf.transpose(dct))  # (B, C, Hp / 8, Wp / 8, v, y)
    unstacked = tf.reshape(tf.transpose(vertical, [0, 1, 2, 5, 3, 4]), [batch, channels, padded_height, columns, block])
    decoded = along_last(unstacked, tf.transpose(dct))  # (B, C, Hp, Wp / 8, x)
    decoded = tf.cast(tf.clip_by_value(tf.floor(decoded + (128.5 + JPEG_TIE_MARGIN)), 0.0, 255.0), tf.float32)
    decoded = tf.reshape(decoded, [batch, channels, padded_height, padded_width])[:, :, :height, :width]
    if values.shape[3] == 1:
        return tf.reshape(decoded, shape)
    return tf.transpose(decoded, [0, 2, 3, 1])


def jpeg_reencode_libjpeg_tf(images, quality) -> tf.Tensor:
    """JPEG encode + decode by libjpeg, one image at a time (``tf.map_fn``); for checks.

    ``EncodeJpegVariableQuality`` then ``decode_jpeg`` with the accurate
    integer IDCT: equal to OpenCV's and PIL's round trip. Several times
    slower than :func:`jpeg_reencode_tf`.

    Args:
        images: (B, H, W, C) grey levels in [0, 255], C = 1 or 3.
        quality: (B,) int qualities in [1, 100].

    Returns:
        (B, H, W, C) float32 whole grey levels.
    """
    values = _images(images)
    levels = tf.cast(_clip(tf.round(values)), tf.uint8)
    channels = values.shape[3]
    if channels not in (1, 3):
        raise ValueError(f"libjpeg encodes 1 or 3 channels, got {channels}")

    def one(arguments):
        image, image_quality = arguments
        encoded = tf.raw_ops.EncodeJpegVariableQuality(images=image, quality=image_quality)
        return tf.io.decode_jpeg(encoded, channels=channels, dct_method="INTEGER_ACCURATE")

    decoded = tf.map_fn(one, (levels, tf.cast(quality, tf.int32)),
                        fn_output_signature=tf.TensorSpec(levels.shape[1:], tf.uint8))
    return tf.cast(decoded, tf.float32)


# ----------------------------------------------------------------------------- sampling


def _check_seed(seed) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer or seed.shape.rank != 1 or seed.shape[0] not in (None, 2):
        raise ValueError(f"seed must be an integer tensor of shape [2], got {seed.dtype.name} {seed.shape}")
    return seed if seed.dtype in (tf.int32, tf.int64) else tf.cast(seed, tf.int64)


def sample_acquisition_params(seed, batch_size, config: AugmentConfig, height, width,
                              channels=1) -> dict[str, tf.Tensor]:
    """Draw every family's per-image parameters from ``config`` and a stateless seed.

    Family ``f`` uses row ``SEED_STREAMS[f]`` of ``stateless_split(seed, 8)``,
    split again into a stream for the coin, one for the value and one for
    extra draws (bias coefficients, noise field and shifts). Where an image
    is not selected (and for a family with probability 0) its parameter is
    the neutral one.

    Args:
        seed: int32/int64 tensor of shape [2].
        batch_size: B (int or scalar int tensor).
        config: augmentation settings.
        height, width, channels: image size (ints or scalar int tensors).

    Returns:
        Dict of tensors: ``{family}_applied`` (B,) bool for every family;
        ``downsample_factor`` (B,) >= 1; ``blur_sigma`` (B,); ``sharpen_amount``
        (B,); ``bias_field_coefficients`` (B, 9) in [-1, 1] and
        ``bias_field_strength`` (B,); ``contrast_factor`` (B,); ``gamma`` (B,);
        ``noise_sigma`` (B,), ``noise_field`` (H, W, C) standard normal (zeros
        when noise is off) and ``noise_offset`` (B, 2) int32; ``jpeg_quality``
        (B,) int32 in [low, high].
    """
    seed = _check_seed(seed)
    streams = tf.random.experimental.stateless_split(seed, num=len(FAMILY_ORDER))
    batch = tf.cast(batch_size, tf.int32)
    shape = tf.reshape(batch, [1])
    params: dict[str, tf.Tensor] = {}

    def family_seeds(family: str) -> tf.Tensor:
        return tf.random.experimental.stateless_split(streams[SEED_STREAMS[family]], num=3)

    def coin(family: str) -> tf.Tensor:
        probability = float(getattr(config, f"{family}_probability"))
        if probability <= 0:
            return tf.zeros(shape, tf.bool)
        return tf.random.stateless_uniform(shape, family_seeds(family)[0]) < probability

    def value(family: str, name: str, low: float, high: float, neutral: float) -> None:
        applied = params[f"{family}_applied"]
        if float(getattr(config, f"{family}_probability")) <= 0:
            params[name] = tf.fill(shape, tf.constant(neutral, tf.float32))
            return
        drawn = tf.random.stateless_uniform(shape, family_seeds(family)[1], minval=low, maxval=high)
        params[name] = tf.where(applied, drawn, neutral)

    for family in FAMILY_ORDER:
        params[f"{family}_applied"] = coin(family)
    value("downsample", "downsample_factor", config.downsample_factor_low, config.downsample_factor_high, 1.0)
    value("blur", "blur_sigma", config.blur_sigma_low, config.blur_sigma_high, 0.0)
    value("sharpen", "sharpen_amount", config.sharpen_amount_low, config.sharpen_amount_high, 0.0)
    value("bias_field", "bias_field_strength", config.bias_field_strength_low, config.bias_field_strength_high, 0.0)
    value("contrast", "contrast_factor", config.contrast_low, config.contrast_high, 1.0)
    value("gamma", "gamma", config.gamma_low, config.gamma_high, 1.0)
    value("noise", "noise_sigma", config.noise_sigma_low, config.noise_sigma_high, 0.0)

    terms = len(BIAS_FIELD_TERMS)
    if config.bias_field_probability > 0:
        params["bias_field_coefficients"] = tf.random.stateless_uniform(
            tf.stack([batch, terms]), family_seeds("bias_field")[2], minval=-1.0, maxval=1.0)
    else:
        params["bias_field_coefficients"] = tf.zeros(tf.stack([batch, terms]), tf.float32)

    height, width, channels = (tf.cast(size, tf.int32) for size in (height, width, channels))
    if config.noise_probability > 0:
        field_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(family_seeds("noise")[2], 2))
        params["noise_field"] = tf.random.stateless_normal(tf.stack([height, width, channels]), field_seed)
        params["noise_offset"] = tf.random.stateless_uniform(
            tf.stack([batch, 2]), offset_seed, minval=0, maxval=2**31 - 1, dtype=tf.int32
        ) % tf.stack([height, width])
    else:
        params["noise_field"] = tf.zeros(tf.stack([height, width, channels]), tf.float32)
        params["noise_offset"] = tf.zeros(tf.stack([batch, 2]), tf.int32)

    if config.jpeg_probability > 0:
        quality = tf.random.stateless_uniform(shape, family_seeds("jpeg")[1], minval=config.jpeg_quality_low,
                                              maxval=config.jpeg_quality_high + 1, dtype=tf.int32)
    else:
        quality = tf.fill(shape, tf.constant(100, tf.int32))
    params["jpeg_quality"] = quality
    return params


# ----------------------------------------------------------------------------- the batch


def _on_selected(images: tf.Tensor, applied: tf.Tensor, operation, *parameters: tf.Tensor) -> tf.Tensor:
    """``operation`` on the selected images only (gather, op, scatter); the others pass unchanged."""
    selected = tf.cast(tf.where(applied)[:, 0], tf.int32)

    def changed() -> tf.Tensor:
        chosen = [tf.gather(parameter, selected) for parameter in parameters]
        output = operation(tf.gather(images, selected), *chosen)
        return tf.tensor_scatter_nd_update(images, selected[:, None], output)

    return tf.cond(tf.size(selected) > 0, changed, lambda: images)


@tf.function(jit_compile=True, reduce_retracing=True)
def _intensity_pass_xla(images, applied, coefficients, strength, contrast, gamma, noise_sigma, noise_field,
                        noise_offset, enabled):
    """Bias field, contrast, gamma and noise in one XLA pass, each image branching per family.

    Args:
        images: (B, H, W, C) float32 in [0, 255].
        applied: (B, 4) bool, the selections of :data:`INTENSITY_FAMILIES`.
        coefficients (B, 9), strength, contrast, gamma, noise_sigma (B,) float32;
        noise_field (H, W, C) float32; noise_offset (B, 2) int32.
        enabled: tuple of 4 Python bools: families left out of the graph when False.

    Returns:
        (B, H, W, C) float32 in [0, 255].
    """
    shape = tf.shape(images)
    height, width = shape[1], shape[2]

    def shifted_field(offset: tf.Tensor) -> tf.Tensor:
        # Gathers, not a slice: XLA would compile a slice anew for every offset value.
        rows = (tf.range(height) + offset[0]) % height
        columns = (tf.range(width) + offset[1]) % width
        return tf.gather(tf.gather(noise_field, rows), columns, axis=1)

    def one(arguments):
        (image, image_applied, image_coefficients, image_strength, image_contrast, image_gamma, image_sigma,
         image_offset) = arguments
        value = image[None]
        steps = {
            "bias_field": lambda v: apply_bias_field_tf(v, image_coefficients[None], image_strength[None]),
            "contrast": lambda v: adjust_contrast_tf(v, image_contrast[None]),
            "gamma": lambda v: adjust_gamma_tf(v, image_gamma[None]),
            "noise": lambda v: add_noise_tf(v, image_sigma[None], shifted_field(image_offset)[None]),
        }
        for index, family in enumerate(INTENSITY_FAMILIES):
            if enabled[index]:
                value = tf.cond(image_applied[index], lambda v=value, f=family: steps[f](v), lambda v=value: v)
        return value[0]

    return tf.map_fn(one, (images, applied, coefficients, strength, contrast, gamma, noise_sigma, noise_offset),
                     fn_output_signature=tf.float32)


def acquisition_batch(images, config: AugmentConfig, seed) -> tf.Tensor:
    """Apply the enabled acquisition families to a batch, in :data:`augment.acquisition.FAMILY_ORDER`.

    Args:
        images: (B, H, W, C) float32 (or uint8) grey levels in [0, 255]; B may
            be unknown until run time.
        config: augmentation settings (validated here); families with
            probability 0 are left out.
        seed: int32/int64 tensor of shape [2]; the same seed and images give
            the same output.

    Returns:
        (B, H, W, C) float32 in [0, 255]. With every acquisition probability 0
        the input itself (cast to float32).
    """
    config.validate()
    values = _images(images)
    if not config.has_acquisition:
        return values
    seed = _check_seed(seed)
    shape = tf.shape(values)
    params = sample_acquisition_params(seed, shape[0], config, shape[1], shape[2], shape[3])
    if config.downsample_probability > 0:
        values = _on_selected(values, params["downsample_applied"], downsample_upsample_tf,
                              params["downsample_factor"])
    if config.blur_probability > 0:
        values = _on_selected(values, params["blur_applied"],
                              lambda sub, sigma: gaussian_blur_tf(sub, sigma, config.blur_sigma_high),
                              params["blur_sigma"])
    if config.sharpen_probability > 0:
        values = _on_selected(values, params["sharpen_applied"],
                              lambda sub, amount: unsharp_mask_tf(sub, amount, config.sharpen_sigma),
                              params["sharpen_amount"])
    enabled = tuple(bool(getattr(config, f"{family}_probability") > 0) for family in INTENSITY_FAMILIES)
    if any(enabled):
        applied = tf.stack([params[f"{family}_applied"] for family in INTENSITY_FAMILIES], axis=1)
        values = _intensity_pass_xla(
            values, applied, params["bias_field_coefficients"], params["bias_field_strength"],
            params["contrast_factor"], params["gamma"], params["noise_sigma"], params["noise_field"],
            params["noise_offset"], enabled)
    if config.jpeg_probability > 0:
        values = _on_selected(values, params["jpeg_applied"], jpeg_reencode_tf, params["jpeg_quality"])
    return values


def acquisition_seed(step_seed) -> tf.Tensor:
    """The acquisition seed of a batch: row 3 of ``stateless_split(step_seed, 4)``.

    :func:`augment.tf_ops.augment_batch` uses rows 0 to 2 of the same split
    (``stateless_split(seed, 3)`` gives the first three rows of it), so the
    acquisition draws are independent of the geometry and matching draws.
    """
    return tf.random.experimental.stateless_split(_check_seed(step_seed), num=4)[3]
