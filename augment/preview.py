"""A labelled montage that shows what the augmentation does to real images."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from augment.config import AugmentConfig
from augment.functional import match_histograms_uint8, region_levels
from augment.tf_ops import augment_batch
from brain_crop.preview import write_png

LABEL_HEIGHT = 20
GAP = 2
MAX_MATCHED_ROWS = 4
#: Images smaller than this are enlarged (nearest neighbour, so every pixel stays visible) to this side.
MIN_TILE = 128
CAPTION_SCALE = 0.45
CAPTION_LINE = 18
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def tile_side(image_side: int) -> int:
    """Side in pixels an image of ``image_side`` px is shown at: at least :data:`MIN_TILE`."""
    return max(int(image_side), MIN_TILE)


def _labelled_tile(image: np.ndarray, label: str, side: int) -> np.ndarray:
    """(H, W) uint8 -> (LABEL_HEIGHT + side, side, 3) uint8: enlarged to ``side`` with the label on a dark bar."""
    if image.shape != (side, side):
        image = cv2.resize(image, (side, side), interpolation=cv2.INTER_NEAREST)
    tile = np.zeros((LABEL_HEIGHT + side, side, 3), dtype=np.uint8)
    tile[LABEL_HEIGHT:] = image[..., None]
    cv2.putText(tile, label, (3, LABEL_HEIGHT - 6), _FONT, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
    return tile


def _wrapped(text: str, width: int) -> list[str]:
    """``text`` broken at spaces into lines at most ``width`` px wide at the caption size."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(candidate, _FONT, CAPTION_SCALE, 1)[0][0] <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def caption_height(text: str, width: int) -> int:
    """Height in pixels of the caption band :func:`_caption` draws for ``text`` over ``width`` px."""
    return len(_wrapped(text, width - 8)) * CAPTION_LINE + 6


def _caption(text: str, width: int) -> np.ndarray:
    """(caption_height, width, 3) uint8 band with ``text`` in white, wrapped to the width."""
    lines = _wrapped(text, width - 8)
    band = np.full((caption_height(text, width), width, 3), 40, dtype=np.uint8)
    for index, line in enumerate(lines, start=1):
        cv2.putText(band, line, (4, index * CAPTION_LINE - 2), _FONT, CAPTION_SCALE, (255, 255, 255), 1, cv2.LINE_AA)
    return band


def _grid(rows: list[tuple[str, list[np.ndarray]]], tile_shape: tuple[int, int, int]) -> np.ndarray:
    """Each row's caption band over its equally sized tiles, GAP pixels apart, on a black canvas."""
    tile_height, tile_width, _ = tile_shape
    columns = max(len(tiles) for _, tiles in rows)
    width = columns * (tile_width + GAP) - GAP
    parts = []
    for caption, tiles in rows:
        strip = np.zeros((tile_height, width, 3), dtype=np.uint8)
        for column_index, tile in enumerate(tiles):
            left = column_index * (tile_width + GAP)
            strip[:, left:left + tile_width] = tile
        parts += [_caption(caption, width), strip, np.zeros((GAP, width, 3), np.uint8)]
    return np.concatenate(parts[:-1])


def _augmentation_text(config: AugmentConfig) -> str:
    flips = [name for name, on in (("left-right", config.horizontal_flip), ("up-down", config.vertical_flip)) if on]
    return (f"rotation up to {config.rotation_degrees:g} deg, shifts {100 * config.width_shift:g} % / "
            f"{100 * config.height_shift:g} %, zoom +-{100 * config.zoom:g} %, shear up to "
            f"{config.shear_degrees:g} deg, {' and '.join(flips) + ' flips' if flips else 'no flips'} (one "
            f"resample), brightness x{config.brightness_low:g} to x{config.brightness_high:g}, histogram matching "
            f"with probability {config.histogram_match_probability:g}")


def _matching_region_text(region: str, source: np.ndarray, reference: np.ndarray) -> str:
    """Which pixels the matching of (H, W) uint8 ``source`` to ``reference`` counts and changes."""
    if region == "whole":
        return "region: whole image, background included"
    (source_lower, source_upper), (reference_lower, reference_upper) = (
        (int(lower[0]), int(upper[0])) for lower, upper in (region_levels(image[None, ..., None]) for image in
                                                            (source, reference)))
    return (f"region: foreground (the head: grey levels {source_lower + 1}-{source_upper} in the source, "
            f"{reference_lower + 1}-{reference_upper} in the reference), background kept")


#: Per acquisition family: (what it mimics, config key of its per-image value, tile label format).
_ACQUISITION_ROWS = {
    "downsample": ("coarser resolution: shrunk by the factor (area) and enlarged back (bilinear)",
                   "downsample_factor", "shrink x{:.2f}"),
    "blur": ("softer reconstruction: Gaussian blur of sigma px", "blur_sigma", "blur s={:.2f}"),
    "sharpen": ("sharper reconstruction: unsharp mask of the amount", "sharpen_amount", "sharpen {:.2f}"),
    "bias_field": ("coil shading: smooth field exp(strength * cubic), random coefficients",
                   "bias_field_strength", "bias {:.2f}"),
    "contrast": ("contrast around the foreground mean, black kept", "contrast", "contrast {:.2f}"),
    "gamma": ("intensity curve 255 (x / 255) ** gamma", "gamma", "gamma {:.2f}"),
    "noise": ("additive Gaussian noise of sigma grey levels", "noise_sigma", "noise s={:.1f}"),
    "jpeg": ("JPEG re-encoding at the quality", "jpeg_quality", "jpeg q={:.0f}"),
}


def acquisition_preview_rows(images: np.ndarray, reference_pool: np.ndarray | None, config: AugmentConfig,
                             seed: int, side: int, every_family: bool = False) -> list[tuple[str, list[np.ndarray]]]:
    """Captioned rows of the acquisition families on the originals, for the preview montage.

    One row per family switched on in ``config`` (every family when
    ``every_family``, the ones that are off shown at their configured
    range): the family alone on the first original, repeated once per
    original with the value spread evenly over the family's range from
    left to right (the high end for a single image), through the training ops of :mod:`augment.acquisition_tf`.
    When any family is on, one more row shows the training path of variant
    1: :func:`augment_batch` with seed ``[seed, 1]`` then ``acquisition_batch``
    seeded as the training pipeline seeds it.

    Args:
        images: (N, H, W) uint8 originals.
        reference_pool: (R, H, W, 1) uint8 histogram-matching references, or None.
        config: augmentation settings (validated).
        seed: integer seed (noise field and bias-field coefficients).
        side: tile side in pixels (>= MIN_TILE).
        every_family: show every family, not only those switched on.

    Returns:
        ``[(caption, tiles), ...]``, tiles of ``_labelled_tile``'s shape.
    """
    from augment import acquisition_tf

    families = [family for family in _ACQUISITION_ROWS
                if every_family or getattr(config, f"{family}_probability") > 0]
    count = len(images)
    # One original across the family's range, so that the row shows the strength and nothing else.
    batch = np.repeat(images[:1, ..., None], count, axis=0).astype(np.float32)
    row_seed = tf.constant([seed, 0], tf.int64)
    rows = []
    for family in families:
        mimics, key, label = _ACQUISITION_ROWS[family]
        low, high = getattr(config, f"{key}_low"), getattr(config, f"{key}_high")
        values = np.linspace(low, high, count) if count > 1 else np.array([high], dtype=np.float64)
        operations = {
            "downsample": lambda: acquisition_tf.downsample_upsample_tf(batch, values),
            "blur": lambda: acquisition_tf.gaussian_blur_tf(batch, values, float(high)),
            "sharpen": lambda: acquisition_tf.unsharp_mask_tf(batch, values, config.sharpen_sigma),
            "bias_field": lambda: acquisition_tf.apply_bias_field_tf(
                batch, tf.random.stateless_uniform([count, 9], row_seed, -1.0, 1.0), values),
            "contrast": lambda: acquisition_tf.adjust_contrast_tf(batch, values),
            "gamma": lambda: acquisition_tf.adjust_gamma_tf(batch, values),
            "noise": lambda: acquisition_tf.add_noise_tf(batch, values, tf.random.stateless_normal(batch.shape,
                                                                                                   row_seed)),
            "jpeg": lambda: acquisition_tf.jpeg_reencode_tf(batch, np.rint(values).astype(np.int32)),
        }
        changed = np.rint(operations[family]().numpy()[..., 0]).astype(np.uint8)
        probability = getattr(config, f"{family}_probability")
        state = f"probability {probability:g}" if probability > 0 else "off in this configuration"
        caption = (f"Acquisition, {family} alone ({state}): {mimics}; original 0 at {key}_low {low:g} to "
                   f"{key}_high {high:g}, left to right")
        rows.append((caption, [_labelled_tile(image, label.format(value), side)
                               for image, value in zip(changed, values)]))
    if config.has_acquisition:
        step_seed = tf.constant([seed, 1], tf.int64)
        augmented = augment_batch(images[..., None], reference_pool, config, step_seed)
        augmented = acquisition_tf.acquisition_batch(augmented, config, acquisition_tf.acquisition_seed(step_seed))
        augmented = np.rint(augmented.numpy()[..., 0]).astype(np.uint8)
        rows.append((f"Training path of variant 1: augment_batch, then acquisition_batch with "
                     f"{', '.join(config.acquisition_families)} (each with its probability)",
                     [_labelled_tile(image, f"train 1.{index}", side) for index, image in enumerate(augmented)]))
    return rows


def augment_preview_montage(
    images: np.ndarray,
    reference_pool: np.ndarray | None,
    config: AugmentConfig,
    seed: int,
    variants: int = 5,
    every_acquisition_family: bool = False,
) -> np.ndarray:
    """Captioned montage of originals, augmented variants and histogram-matching examples.

    Row 1 holds the originals; the next ``variants`` rows hold augmented
    versions (the TensorFlow training path, :func:`augment_batch` with seed
    ``[seed, variant]``). When the pool is not empty, up to 4 more rows show
    ``source | reference | matched`` (full matching, blend 1, on the
    config's ``histogram_match_region``, named in the row's caption with the
    foreground grey levels) for the first images and randomly drawn
    references. Every row has a caption band above
    it saying what it shows; every image is shown at ``tile_side(H)`` px (at
    least :data:`MIN_TILE`, enlarged by nearest neighbour) under its label.

    Args:
        images: (N, H, W) uint8 square images (H == W), N >= 1.
        reference_pool: (R, H, W) uint8 images of other sites, or None.
        config: augmentation settings.
        seed: integer seed; the same seed gives the same montage.
        variants: number of augmented rows, >= 0.
        every_acquisition_family: the acquisition rows
            (:func:`acquisition_preview_rows`, after the augmented variants)
            show every family, not only those switched on.

    Returns:
        (sum over rows of (caption + 20 + S) + 2 * (rows - 1), columns * (S + 2) - 2, 3)
        uint8 RGB image, S = ``tile_side(H)``, ``columns = max(N, 3)`` when
        matching rows are shown, else N.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, H, W) uint8 array, got {images.dtype} {images.shape}")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be square, got {images.shape[1]}x{images.shape[2]}")
    if variants < 0:
        raise ValueError(f"variants must be at least 0, got {variants}")
    pool = None if reference_pool is None else np.asarray(reference_pool)
    if pool is not None and (pool.dtype != np.uint8 or pool.ndim != 3):
        raise ValueError(f"reference_pool must be an (R, H, W) uint8 array, got {pool.dtype} {pool.shape}")
    if pool is not None and pool.shape[1:] != images.shape[1:]:
        raise ValueError(f"reference_pool images {pool.shape[1:]} must have the size of the images {images.shape[1:]}")
    if pool is not None and len(pool) == 0:
        pool = None
    config.validate()
    side = tile_side(images.shape[1])
    shown = "" if side == images.shape[1] else f", shown enlarged to {side} px"

    rows = [(f"Originals: {len(images)} images ({images.shape[1]} px crops{shown})",
             [_labelled_tile(image, f"original {index}", side) for index, image in enumerate(images)])]
    pool_tensor = None if pool is None else pool[..., None]
    for variant in range(1, variants + 1):
        augmented = augment_batch(images[..., None], pool_tensor, config, tf.constant([seed, variant], tf.int64))
        augmented = np.rint(augmented.numpy()[..., 0]).astype(np.uint8)
        caption = f"Augmented, variant {variant} of {variants} (seed [{seed}, {variant}])"
        if variant == 1:
            caption += ": " + _augmentation_text(config)
        rows.append((caption, [_labelled_tile(image, f"augmented {variant}.{index}", side)
                               for index, image in enumerate(augmented)]))
    rows += acquisition_preview_rows(images, pool_tensor, config, seed, side, every_acquisition_family)

    if pool is not None:
        rng = np.random.default_rng(seed)
        for index in range(min(len(images), MAX_MATCHED_ROWS)):
            reference_index = int(rng.integers(len(pool)))
            reference = pool[reference_index]
            region = config.histogram_match_region
            matched = match_histograms_uint8(images[index], reference, region=region)
            rows.append((f"Histogram matching of original {index}: source | reference {reference_index} of the "
                         f"{len(pool)}-image pool (other sites) | source matched to it (blend 1); "
                         f"{_matching_region_text(region, images[index], reference)}", [
                _labelled_tile(images[index], f"source {index}", side),
                _labelled_tile(reference, f"reference {reference_index}", side),
                _labelled_tile(matched, f"matched ({region})", side),
            ]))
    return _grid(rows, rows[0][1][0].shape)


def write_augment_preview(path: str | Path, images: np.ndarray, reference_pool: np.ndarray | None,
                          config: AugmentConfig, *, count: int, seed: int) -> None:
    """Write the :func:`augment_preview_montage` (every acquisition family shown) of ``count`` of ``images``.

    The ``count`` images (all when there are fewer) are drawn without replacement with ``seed`` and kept in
    their order; ``reference_pool`` and ``seed`` go to the montage. The PNG goes to ``path`` (folder made).
    """
    rng = np.random.default_rng(seed)
    chosen = images[np.sort(rng.choice(len(images), min(count, len(images)), replace=False))]
    write_png(path, augment_preview_montage(chosen, reference_pool, config, seed=seed, every_acquisition_family=True))
