"""A labelled montage that shows what the augmentation does to real images."""
from __future__ import annotations

import cv2
import numpy as np
import tensorflow as tf

from augment.config import AugmentConfig
from augment.functional import match_histograms_uint8
from augment.tf_ops import augment_batch

LABEL_HEIGHT = 16
GAP = 2
MAX_MATCHED_ROWS = 4


def _labelled_tile(image: np.ndarray, label: str) -> np.ndarray:
    """(H, W) uint8 -> (LABEL_HEIGHT + H, W, 3) uint8 with the label on a dark bar."""
    height, width = image.shape
    tile = np.zeros((LABEL_HEIGHT + height, width, 3), dtype=np.uint8)
    tile[LABEL_HEIGHT:] = image[..., None]
    cv2.putText(tile, label, (2, LABEL_HEIGHT - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1, cv2.LINE_AA)
    return tile


def _grid(rows: list[list[np.ndarray]], tile_shape: tuple[int, int, int]) -> np.ndarray:
    """Place equally sized tiles row by row on a black canvas, GAP pixels apart."""
    tile_height, tile_width, _ = tile_shape
    columns = max(len(row) for row in rows)
    canvas = np.zeros(
        (len(rows) * (tile_height + GAP) - GAP, columns * (tile_width + GAP) - GAP, 3), dtype=np.uint8
    )
    for row_index, row in enumerate(rows):
        for column_index, tile in enumerate(row):
            top = row_index * (tile_height + GAP)
            left = column_index * (tile_width + GAP)
            canvas[top : top + tile_height, left : left + tile_width] = tile
    return canvas


def augment_preview_montage(
    images: np.ndarray,
    reference_pool: np.ndarray | None,
    config: AugmentConfig,
    seed: int,
    variants: int = 5,
) -> np.ndarray:
    """Montage of originals, augmented variants and histogram-matching examples.

    Row 1 holds the originals; the next ``variants`` rows hold augmented
    versions (the TensorFlow training path, :func:`augment_batch` with seed
    ``[seed, variant]``). When the pool is not empty, up to 4 more rows show
    ``source | reference | matched`` (full matching, blend 1) for the first
    images and randomly drawn references.

    Args:
        images: (N, H, W) uint8, N >= 1.
        reference_pool: (R, H, W) uint8 images of other sites, or None.
        config: augmentation settings.
        seed: integer seed; the same seed gives the same montage.
        variants: number of augmented rows, >= 0.

    Returns:
        (rows * (16 + H + 2) - 2, columns * (W + 2) - 2, 3) uint8 RGB image
        with ``columns = max(N, 3)`` when matching rows are shown, else N.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, H, W) uint8 array, got {images.dtype} {images.shape}")
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

    rows = [[_labelled_tile(image, f"original {index}") for index, image in enumerate(images)]]
    pool_tensor = None if pool is None else pool[..., None]
    for variant in range(1, variants + 1):
        augmented = augment_batch(images[..., None], pool_tensor, config, tf.constant([seed, variant], tf.int64))
        augmented = np.rint(augmented.numpy()[..., 0]).astype(np.uint8)
        rows.append([_labelled_tile(image, f"augmented {variant}.{index}") for index, image in enumerate(augmented)])

    if pool is not None:
        rng = np.random.default_rng(seed)
        for index in range(min(len(images), MAX_MATCHED_ROWS)):
            reference_index = int(rng.integers(len(pool)))
            reference = pool[reference_index]
            matched = match_histograms_uint8(images[index], reference)
            rows.append([
                _labelled_tile(images[index], f"source {index}"),
                _labelled_tile(reference, f"reference {reference_index}"),
                _labelled_tile(matched, "matched"),
            ])
    return _grid(rows, rows[0][0].shape)
