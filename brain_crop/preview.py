"""A montage of images with their crop boxes drawn, to eyeball the crop step."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from brain_crop.functional import FLAG_BLANK, FLAG_NO_CONTOUR, FLAG_OK, FLAG_TOUCHES_BORDER, CropBox, find_brain_box

#: RGB box colours: green when the crop was found normally, orange otherwise.
COLOUR_OK = (0, 200, 0)
COLOUR_FLAGGED = (255, 150, 0)
GAP = 2
TITLE_BAND = 16
BACKGROUND = 40
FONT = cv2.FONT_HERSHEY_SIMPLEX
LEGEND_FONT_SCALE = 0.42
LEGEND_LINE = 17
LEGEND_MARGIN = 6

#: What the box colours and the flag labels of :func:`crop_preview_tile` mean, one legend line each:
#: ``(RGB swatch colour or None, text)``.
LEGEND_LINES = (
    (COLOUR_OK, "green box: the crop box, found normally (flag ok)"),
    (COLOUR_FLAGGED, "orange box, with its flag written at the bottom of the tile:"),
    (None, f"  {FLAG_TOUCHES_BORDER}: the head reaches the image edge, part of it may lie outside the image"
           " (the box is still the head's box)"),
    (None, f"  {FLAG_BLANK}: near-constant image; the box is the whole image"),
    (None, f"  {FLAG_NO_CONTOUR}: nothing left after threshold and clean-up; the box is the whole image"),
)


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

    font, font_scale = FONT, 0.38
    max_chars = max(1, tile // 7)
    canvas[:TITLE_BAND] //= 3
    cv2.putText(canvas, title[:max_chars], (3, TITLE_BAND - 4), font, font_scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    if box.flag != FLAG_OK:
        cv2.putText(canvas, box.flag, (3, tile - 5), font, font_scale, colour, 1, cv2.LINE_AA)
    return canvas


def crop_preview_legend(
    lines: Sequence[tuple[tuple[int, int, int] | None, str]] = LEGEND_LINES, width: int = 0
) -> np.ndarray:
    """A (H, W, 3) uint8 RGB caption band: one line per ``(swatch colour, text)``.

    A line with a colour starts with a small box outline of that colour (as
    the boxes are drawn on the tiles); ``None`` gives an indented text line.

    Args:
        lines: the legend lines; by default what :func:`crop_preview_tile`'s
            colours and flag labels mean.
        width: minimum width in pixels; the band is widened to fit its
            longest line.

    Returns:
        RGB band, ``LEGEND_MARGIN`` pixels of dark grey around the lines,
        ``LEGEND_LINE`` pixels per line.
    """
    if len(lines) == 0:
        raise ValueError("a legend needs at least one line")
    swatch = LEGEND_LINE - 6
    text_left = LEGEND_MARGIN + swatch + 6
    needed = max(cv2.getTextSize(text, FONT, LEGEND_FONT_SCALE, 1)[0][0] for _, text in lines)
    width = max(width, text_left + needed + LEGEND_MARGIN)
    band = np.full((2 * LEGEND_MARGIN + LEGEND_LINE * len(lines), width, 3), BACKGROUND, np.uint8)
    for index, (colour, text) in enumerate(lines):
        top = LEGEND_MARGIN + index * LEGEND_LINE
        if colour is not None:
            cv2.rectangle(band, (LEGEND_MARGIN, top + 3), (LEGEND_MARGIN + swatch, top + 3 + swatch - 2),
                          tuple(int(value) for value in colour), 2)
        cv2.putText(band, text, (text_left, top + LEGEND_LINE - 4), FONT, LEGEND_FONT_SCALE,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return band


def stack_with_legend(montage: np.ndarray, legend: np.ndarray) -> np.ndarray:
    """``montage`` above ``legend`` (both (H, W, 3) uint8), the narrower one padded with dark grey."""
    width = max(montage.shape[1], legend.shape[1])
    parts = []
    for part in (montage, legend):
        padded = np.full((part.shape[0], width, 3), BACKGROUND, np.uint8)
        padded[:, :part.shape[1]] = part
        parts.append(padded)
    gap = np.full((GAP, width, 3), BACKGROUND, np.uint8)
    return np.concatenate([parts[0], gap, parts[1]], axis=0)


def crop_preview_montage(
    images: Sequence[np.ndarray],
    boxes: Sequence[CropBox],
    titles: Sequence[str],
    *,
    tile: int = 192,
    columns: int = 6,
    legend: bool = True,
) -> np.ndarray:
    """Lay out one :func:`crop_preview_tile` per image on a grid, with a legend below.

    Args:
        images: (H, W) or (H, W, 3) RGB uint8 images, any sizes.
        boxes: one :class:`CropBox` per image.
        titles: one short title per image.
        tile: tile side in pixels (>= 32).
        columns: tiles per row (>= 1); fewer when there are fewer images.
        legend: add the :func:`crop_preview_legend` band under the grid,
            saying what the box colours and flag labels mean.

    Returns:
        uint8 RGB montage: the grid is (rows * (tile + 2) - 2, cols * (tile + 2) - 2, 3),
        tiles separated by 2-pixel dark grey gaps; with ``legend`` a 2-pixel
        gap and the legend band follow, and the image is as wide as the wider
        of the two. Raises ValueError when no images are given or the three
        sequences differ in length.
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
    montage = np.full((rows * step - GAP, columns * step - GAP, 3), BACKGROUND, np.uint8)
    for index, (image, box, title) in enumerate(zip(images, boxes, titles)):
        row, column = divmod(index, columns)
        montage[row * step:row * step + tile, column * step:column * step + tile] = (
            crop_preview_tile(image, box, title, tile)
        )
    return stack_with_legend(montage, crop_preview_legend()) if legend else montage


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write the (H, W, 3) RGB uint8 image ``rgb`` as a PNG at ``path``, making its folder if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_crop_preview(path: str | Path, images: Sequence[np.ndarray], titles: Sequence[str]) -> None:
    """Write the :func:`crop_preview_montage` of ``images``, each with its :func:`find_brain_box` box, to ``path``.

    Raises ValueError when no images are given.
    """
    write_png(path, crop_preview_montage(images, [find_brain_box(image) for image in images], titles))
