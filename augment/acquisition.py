"""Acquisition randomisation: NumPy reference implementations (the test oracles).

Copies of one scan published by different sites differ in intensity curve,
contrast, noise, blur or sharpening, resolution, coil shading and JPEG
encoding. Each function here mimics one of those differences on ONE image,
with its parameter given explicitly; :mod:`augment.acquisition_tf` has the
batched in-graph versions (same parameters, same results to float rounding)
and draws the parameters from :class:`augment.config.AugmentConfig`.

Every function takes an (H, W) or (H, W, C) array of grey levels in
[0, 255] (any real dtype) and returns float32 of the same shape, clipped to
[0, 255]. At its neutral parameter (gamma 1, contrast 1, sigma 0, amount 0,
factor 1, strength 0) each returns its input unchanged (as float32).
Black (0) stays black under the bias field, gamma, blur of a black region
and contrast; noise is added everywhere, so a black background becomes
one-sided noise after clipping (as the magnitude image of a real scanner).

The fixed order in which training applies them is :data:`FAMILY_ORDER`.
"""
from __future__ import annotations

import math

import numpy as np

#: Order in which :func:`augment.acquisition_tf.acquisition_batch` applies the families:
#: resolution and reconstruction filter, then coil shading, display window, noise, export.
FAMILY_ORDER = ("downsample", "blur", "sharpen", "bias_field", "contrast", "gamma", "noise", "jpeg")
#: Pixels above this grey level are foreground for the contrast centre.
FOREGROUND_LEVEL = 10.0
#: Degree of the bias-field polynomial.
BIAS_FIELD_ORDER = 3
#: ``(i, j)`` exponents of the bias-field monomials ``y**i * x**j``, ``1 <= i + j <= 3`` (no constant term).
BIAS_FIELD_TERMS = tuple((i, total - i) for total in range(1, BIAS_FIELD_ORDER + 1) for i in range(total + 1))
#: JPEG block side.
JPEG_BLOCK = 8
#: Margin by which a JPEG rounding counts as a tie: integer grey levels make exact ties (a flat block at
#: quality 50 has a DC coefficient of k + 1/2 steps), which libjpeg's exact integer arithmetic rounds away
#: from zero (coefficients) and up (pixels); floating point lands a hair either side, so values within this
#: margin of a tie are rounded like the tie, the same in NumPy and TensorFlow.
JPEG_TIE_MARGIN = 1e-3
#: Luminance quantisation table of the JPEG standard (Annex K), row-major, at quality 50.
JPEG_LUMINANCE_TABLE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
], dtype=np.int64)


def _as_image(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) real array -> float64 copy; ValueError otherwise."""
    array = np.asarray(image)
    if array.ndim not in (2, 3) or array.size == 0:
        raise ValueError(f"image must be a non-empty (H, W) or (H, W, C) array, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"image must hold numbers, got dtype {array.dtype}")
    return array.astype(np.float64)


def _output(values: np.ndarray) -> np.ndarray:
    return np.clip(values, 0.0, 255.0).astype(np.float32)


# ----------------------------------------------------------------------------- intensity


def adjust_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """``255 * (image / 255) ** gamma``: a scanner's or viewer's intensity curve.

    Args:
        image: (H, W[, C]) grey levels in [0, 255].
        gamma: exponent, > 0; 1 is the identity, < 1 brightens the darks,
            > 1 darkens them. 0 and 255 are fixed points.

    Returns:
        float32, same shape, in [0, 255].
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma!r}")
    values = np.clip(_as_image(image), 0.0, 255.0)
    return _output(255.0 * np.power(values / 255.0, float(gamma)))


def contrast_centre(image: np.ndarray) -> float:
    """Mean grey level of the pixels above :data:`FOREGROUND_LEVEL`; of all pixels if there are none."""
    values = _as_image(image)
    foreground = values > FOREGROUND_LEVEL
    return float(values[foreground].mean() if foreground.any() else values.mean())


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Contrast scaled by ``factor`` around the foreground mean ``m``, black kept black.

    ``out = x + min(1, x / m) * (factor - 1) * (x - m)``: at and above the
    mean this is the linear contrast change ``m + factor * (x - m)``; below
    it the change fades to nothing at 0, so the black background stays
    black (a plain linear change with factor < 1 would turn it grey). The
    curve is continuous and non-decreasing for factor in [0, 2]. ``m`` is
    :func:`contrast_centre`; an all-black image is returned unchanged.

    Args:
        image: (H, W[, C]) grey levels in [0, 255].
        factor: in [0, 2]; 1 is the identity, < 1 flattens, > 1 steepens.

    Returns:
        float32, same shape, in [0, 255].
    """
    if not 0.0 <= factor <= 2.0:
        raise ValueError(f"contrast factor must be in [0, 2], got {factor!r}")
    values = _as_image(image)
    centre = contrast_centre(values)
    if centre <= 0:
        return _output(values)
    ramp = np.minimum(1.0, values / centre)
    return _output(values + ramp * (float(factor) - 1.0) * (values - centre))


def bias_field(height: int, width: int, coefficients: np.ndarray, strength: float) -> np.ndarray:
    """Smooth multiplicative field ``exp(strength * p(y, x))``, as coil sensitivity shades a scan.

    ``p`` is the cubic polynomial ``sum_k c_k y**i_k x**j_k`` over the
    monomials :data:`BIAS_FIELD_TERMS` (no constant term), with ``y`` and
    ``x`` running linearly from -1 to 1 over the pixel rows and columns
    (0 for a side of one pixel), divided by ``sum |c_k|``. So ``|p| <= 1``
    and the field stays within ``[exp(-strength), exp(strength)]``.

    Args:
        height, width: image size, >= 1.
        coefficients: (9,) real coefficients of the monomials; all zero
            gives the field 1.
        strength: >= 0; 0 gives the field 1.

    Returns:
        (height, width) float64 field, positive.
    """
    coefficients = np.asarray(coefficients, dtype=np.float64)
    if coefficients.shape != (len(BIAS_FIELD_TERMS),):
        raise ValueError(f"coefficients must have shape ({len(BIAS_FIELD_TERMS)},), got {coefficients.shape}")
    if not strength >= 0:
        raise ValueError(f"strength must be at least 0, got {strength!r}")
    rows = np.linspace(-1.0, 1.0, height) if height > 1 else np.zeros(1)
    columns = np.linspace(-1.0, 1.0, width) if width > 1 else np.zeros(1)
    total = np.abs(coefficients).sum()
    if total == 0:
        return np.ones((height, width))
    polynomial = np.zeros((height, width))
    for coefficient, (i, j) in zip(coefficients, BIAS_FIELD_TERMS):
        polynomial += coefficient * np.outer(rows**i, columns**j)
    return np.exp(float(strength) * polynomial / total)


def apply_bias_field(image: np.ndarray, coefficients: np.ndarray, strength: float) -> np.ndarray:
    """``image * bias_field(...)`` (every channel), clipped: 0 stays 0.

    Args:
        image: (H, W[, C]) grey levels in [0, 255].
        coefficients, strength: as :func:`bias_field`.

    Returns:
        float32, same shape, in [0, 255].
    """
    values = _as_image(image)
    field = bias_field(values.shape[0], values.shape[1], coefficients, strength)
    return _output(values * (field if values.ndim == 2 else field[..., None]))


def add_noise(image: np.ndarray, sigma: float, standard_normal: np.ndarray) -> np.ndarray:
    """``image + sigma * standard_normal``, clipped: additive Gaussian noise everywhere.

    Args:
        image: (H, W[, C]) grey levels in [0, 255].
        sigma: noise standard deviation in grey levels, >= 0 (0: identity).
        standard_normal: array of the image's shape, the noise field with
            unit variance.

    Returns:
        float32, same shape, in [0, 255].
    """
    values = _as_image(image)
    noise = np.asarray(standard_normal, dtype=np.float64)
    if noise.shape != values.shape:
        raise ValueError(f"standard_normal has shape {noise.shape}, the image {values.shape}")
    if not sigma >= 0:
        raise ValueError(f"noise sigma must be at least 0, got {sigma!r}")
    return _output(values + float(sigma) * noise)


# ----------------------------------------------------------------------------- filters


def blur_radius(sigma: float) -> int:
    """Half-width of the Gaussian kernel: ``ceil(3 * sigma)`` (computed in float32), 0 for sigma 0."""
    return int(math.ceil(float(np.float32(3.0) * np.float32(sigma))))


def gaussian_kernel(sigma: float, radius: int | None = None) -> np.ndarray:
    """(2 * radius + 1,) float64 sampled Gaussian, summing to 1; sigma 0 gives ``[1]``.

    ``radius`` defaults to :func:`blur_radius`; a larger one pads with zeros.
    """
    if not sigma >= 0:
        raise ValueError(f"sigma must be at least 0, got {sigma!r}")
    own = blur_radius(sigma)
    radius = own if radius is None else radius
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    if sigma == 0:
        return (offsets == 0).astype(np.float64)
    sigma32 = float(np.float32(sigma))
    weights = np.where(np.abs(offsets) <= own, np.exp(-offsets**2 / (2.0 * sigma32**2)), 0.0)
    return weights / weights.sum()


def _filter_axis(values: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Correlate along ``axis`` with a symmetric kernel, borders mirrored without repeating the edge."""
    radius = len(kernel) // 2
    if radius == 0:
        return values * kernel[0]
    if radius >= values.shape[axis]:
        raise ValueError(f"kernel radius {radius} needs an image side above {radius}, got {values.shape[axis]}")
    pad = [(0, 0)] * values.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(values, pad, mode="reflect")
    size = values.shape[axis]
    return sum(weight * np.take(padded, np.arange(offset, offset + size), axis=axis)
               for offset, weight in enumerate(kernel))


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur, as a softer reconstruction filter or a lower-resolution scanner.

    Kernel :func:`gaussian_kernel` (radius ``ceil(3 sigma)``), borders
    mirrored without repeating the edge pixel (OpenCV's BORDER_REFLECT_101,
    so this equals ``cv2.GaussianBlur(image, (2r + 1, 2r + 1), sigma)``).

    Args:
        image: (H, W[, C]) grey levels in [0, 255]; both sides above the radius.
        sigma: in pixels, >= 0 (0: identity).

    Returns:
        float32, same shape, in [0, 255].
    """
    values = _as_image(image)
    kernel = gaussian_kernel(sigma)
    return _output(_filter_axis(_filter_axis(values, kernel, 0), kernel, 1))


def unsharp_mask(image: np.ndarray, amount: float, sigma: float) -> np.ndarray:
    """``image + amount * (image - gaussian_blur(image, sigma))``: a sharpening reconstruction filter.

    Args:
        image: (H, W[, C]) grey levels in [0, 255].
        amount: >= 0 (0: identity).
        sigma: blur of the mask in pixels, > 0.

    Returns:
        float32, same shape, in [0, 255] (overshoots at edges are clipped).
    """
    if not amount >= 0:
        raise ValueError(f"sharpening amount must be at least 0, got {amount!r}")
    values = _as_image(image)
    kernel = gaussian_kernel(sigma)
    blurred = _filter_axis(_filter_axis(values, kernel, 0), kernel, 1)
    return _output(values + float(amount) * (values - blurred))


# ----------------------------------------------------------------------------- resolution


def reduced_size(size: int, factor: float) -> int:
    """Side after shrinking by ``factor``: ``max(1, floor(size / factor + 0.5))``, computed in float32."""
    return max(1, int(np.floor(np.float32(size) / np.float32(factor) + np.float32(0.5))))


def resolution_matrix(size: int, factor: float) -> np.ndarray:
    """(size, size) float64 operator of one axis: area shrink to :func:`reduced_size`, bilinear back.

    Shrinking averages each coarse pixel over its share ``size / n`` of the
    axis (pixel ``i`` covers ``[i, i + 1)``; OpenCV's INTER_AREA); enlarging
    interpolates linearly between coarse pixel centres with half-pixel
    centres and the edges held (INTER_LINEAR). Factor 1 gives the identity.
    """
    if not factor >= 1:
        raise ValueError(f"downsampling factor must be at least 1, got {factor!r}")
    low = reduced_size(size, factor)
    scale = size / low
    starts = np.arange(low)[:, None] * scale
    pixels = np.arange(size)[None, :]
    overlap = np.clip(np.minimum(starts + scale, pixels + 1.0) - np.maximum(starts, pixels), 0.0, None)
    shrink = overlap / scale
    position = np.clip((np.arange(size) + 0.5) * (low / size) - 0.5, 0.0, low - 1.0)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, low - 1)
    weight = position - lower
    enlarge = np.zeros((size, low))
    enlarge[np.arange(size), lower] += 1.0 - weight
    enlarge[np.arange(size), upper] += weight
    return enlarge @ shrink


def downsample_upsample(image: np.ndarray, factor: float) -> np.ndarray:
    """Shrink both sides by ``factor`` (area average) and enlarge back (bilinear): a coarser acquisition.

    Equals ``cv2.resize(cv2.resize(image, (w, h), INTER_AREA), (W, H),
    INTER_LINEAR)`` on float32 with ``h, w`` from :func:`reduced_size`.

    Args:
        image: (H, W[, C]) grey levels in [0, 255].
        factor: >= 1 (1: identity; 2 halves the resolution).

    Returns:
        float32, same shape, in [0, 255].
    """
    values = _as_image(image)
    rows = resolution_matrix(values.shape[0], factor)
    columns = resolution_matrix(values.shape[1], factor)
    return _output(np.einsum("ia,ab...,jb->ij...", rows, values, columns))


# ----------------------------------------------------------------------------- JPEG


def jpeg_quantization_table(quality: int) -> np.ndarray:
    """(8, 8) int64 luminance table of libjpeg's ``jpeg_set_quality(quality, force_baseline=TRUE)``.

    Quality 1..100: scale ``5000 / q`` below 50, ``200 - 2 q`` from 50;
    entries ``(base * scale + 50) // 100`` clipped to [1, 255].
    """
    quality = int(quality)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((JPEG_LUMINANCE_TABLE * scale + 50) // 100, 1, 255)


def dct_matrix() -> np.ndarray:
    """(8, 8) float64 orthonormal DCT-II matrix ``D`` (``D @ block @ D.T`` is JPEG's forward DCT)."""
    frequencies = np.arange(JPEG_BLOCK)[:, None]
    positions = np.arange(JPEG_BLOCK)[None, :]
    matrix = np.sqrt(2.0 / JPEG_BLOCK) * np.cos((2 * positions + 1) * frequencies * np.pi / (2 * JPEG_BLOCK))
    matrix[0] /= np.sqrt(2.0)
    return matrix


def _round_half_away(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.floor(np.abs(values) + (0.5 + JPEG_TIE_MARGIN))


def jpeg_reencode(image: np.ndarray, quality: int) -> np.ndarray:
    """Baseline greyscale JPEG encoding and decoding at ``quality``, computed exactly in floating point.

    The lossy steps of libjpeg on a greyscale image: grey levels rounded to
    integers in [0, 255]; the image padded to whole 8x8 blocks by repeating
    its last row and column; each block shifted by -128, transformed by the
    2-D DCT, divided by :func:`jpeg_quantization_table` and rounded (half
    away from zero), multiplied back, inverse-transformed, shifted by +128,
    rounded (half up) and clipped; the padding cropped. Ties are taken
    within :data:`JPEG_TIE_MARGIN`. libjpeg computes the DCTs in
    integer arithmetic, so OpenCV's ``imencode``/``imdecode`` differs from
    this by a grey level here and there (the tests measure by how much).
    Channels are encoded as separate grey images.

    Args:
        image: (H, W[, C]) grey levels in [0, 255].
        quality: 1..100.

    Returns:
        float32, same shape, whole grey levels in [0, 255].
    """
    values = _as_image(image)
    table = jpeg_quantization_table(quality).astype(np.float64)
    planes = values[..., None] if values.ndim == 2 else values
    height, width = planes.shape[:2]
    padded_height = -(-height // JPEG_BLOCK) * JPEG_BLOCK
    padded_width = -(-width // JPEG_BLOCK) * JPEG_BLOCK
    levels = np.clip(np.round(planes), 0, 255)
    levels = np.pad(levels, [(0, padded_height - height), (0, padded_width - width), (0, 0)], mode="edge")
    blocks = levels.reshape(padded_height // JPEG_BLOCK, JPEG_BLOCK, padded_width // JPEG_BLOCK, JPEG_BLOCK, -1)
    dct = dct_matrix()
    coefficients = np.einsum("ui,aibjc,vj->aubvc", dct, blocks - 128.0, dct)
    quantized = _round_half_away(coefficients / table[None, :, None, :, None]) * table[None, :, None, :, None]
    decoded = np.einsum("ui,aubvc,vj->aibjc", dct, quantized, dct) + 128.0
    decoded = np.clip(np.floor(decoded + (0.5 + JPEG_TIE_MARGIN)), 0, 255).reshape(padded_height, padded_width, -1)
    decoded = decoded[:height, :width]
    return decoded.astype(np.float32) if values.ndim == 3 else decoded[..., 0].astype(np.float32)


# ----------------------------------------------------------------------------- all together


def acquisition_image(image: np.ndarray, parameters: dict) -> np.ndarray:
    """The families of one image in :data:`FAMILY_ORDER`, each only where its parameters are given.

    Args:
        image: (H, W[, C]) grey levels in [0, 255].
        parameters: any of ``{"downsample": factor, "blur": sigma,
            "sharpen": (amount, sigma), "bias_field": (coefficients, strength),
            "contrast": factor, "gamma": gamma, "noise": (sigma, standard_normal),
            "jpeg": quality}``; a missing family is not applied.

    Returns:
        float32, same shape, in [0, 255].
    """
    unknown = sorted(set(parameters) - set(FAMILY_ORDER))
    if unknown:
        raise ValueError(f"unknown acquisition families {unknown}; known: {', '.join(FAMILY_ORDER)}")
    steps = {
        "downsample": lambda values, factor: downsample_upsample(values, factor),
        "blur": lambda values, sigma: gaussian_blur(values, sigma),
        "sharpen": lambda values, given: unsharp_mask(values, *given),
        "bias_field": lambda values, given: apply_bias_field(values, *given),
        "contrast": lambda values, factor: adjust_contrast(values, factor),
        "gamma": lambda values, gamma: adjust_gamma(values, gamma),
        "noise": lambda values, given: add_noise(values, *given),
        "jpeg": lambda values, quality: jpeg_reencode(values, quality),
    }
    values = _output(_as_image(image))
    for family in FAMILY_ORDER:
        if family in parameters:
            values = steps[family](values, parameters[family])
    return values
