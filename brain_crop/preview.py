"""A montage of images with their crop boxes drawn, to eyeball the crop step."""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from brain_crop.functional import FLAG_OK, CropBox

#: RGB box colours: green when the crop was found normally, orange otherwise.
COLOUR_OK = (0, 200, 0)
COLOUR_FLAGGED = (255, 150, 0)
GAP = 2
TITLE_BAND = 16


def crop_preview_tile(image: np.ndarray, box: CropBox, title: str, tile: int = 192) -> np.ndarray:
    """One (tile, tile, 3) uint8 RGB tile: the letterboxed image, its box, a title.

    Args:
        image: (H, W) or (H, W, 3) RGB uint8 image the box refers to.
        box: its crop box, drawn green for ``"ok"`` and orange (with the flag
            written at the bottom) for any other flag.
        title: short text written at the top; cut to fit the tile.
        tile: tile side in pixels.
    """
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an (H, W) or (H, W, 3) uint8 image, got {image.shape} {image.dtype}"
        )
    height, width = image.shape[:2]
    scale = tile / max(height, width)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_width, new_height), interpolation=interpolation)
    canvas = np.zeros((tile, tile, 3), np.uint8)
    top, left = (tile - new_height) // 2, (tile - new_width) // 2
    canvas[top:top + new_height, left:left + new_width] = resized

    colour = COLOUR_OK if box.flag == FLAG_OK else COLOUR_FLAGGED
    corner0 = (left + int(box.x0 * scale), top + int(box.y0 * scale))
    corner1 = (left + max(int(box.x1 * scale) - 1, 0), top + max(int(box.y1 * scale) - 1, 0))
    cv2.rectangle(canvas, corner0, corner1, colour, 1)

    font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, 0.38
    max_chars = max(1, tile // 7)
    canvas[:TITLE_BAND] //= 3
    cv2.putText(canvas, title[:max_chars], (3, TITLE_BAND - 4), font, font_scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    if box.flag != FLAG_OK:
        cv2.putText(canvas, box.flag, (3, tile - 5), font, font_scale, colour, 1, cv2.LINE_AA)
    return canvas


def crop_preview_montage(
    images: Sequence[np.ndarray],
    boxes: Sequence[CropBox],
    titles: Sequence[str],
    *,
    tile: int = 192,
    columns: int = 6,
) -> np.ndarray:
    """Lay out one :func:`crop_preview_tile` per image on a grid.

    Args:
        images: (H, W) or (H, W, 3) RGB uint8 images, any sizes.
        boxes: one :class:`CropBox` per image.
        titles: one short title per image.
        tile: tile side in pixels (>= 32).
        columns: tiles per row (>= 1); fewer when there are fewer images.

    Returns:
        (rows * (tile + 2) - 2, cols * (tile + 2) - 2, 3) uint8 RGB montage,
        tiles separated by 2-pixel dark grey gaps. Raises ValueError when no
        images are given or the three sequences differ in length.
    """
    if not len(images) == len(boxes) == len(titles):
        raise ValueError(
            f"images, boxes and titles differ in length: {len(images)}, {len(boxes)}, {len(titles)}"
        )
    if len(images) == 0:
        raise ValueError("no images to lay out")
    if tile < 32:
        raise ValueError(f"tile must be >= 32 pixels, got {tile}")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    step = tile + GAP
    montage = np.full((rows * step - GAP, columns * step - GAP, 3), 40, np.uint8)
    for index, (image, box, title) in enumerate(zip(images, boxes, titles)):
        row, column = divmod(index, columns)
        montage[row * step:row * step + tile, column * step:column * step + tile] = (
            crop_preview_tile(image, box, title, tile)
        )
    return montage
