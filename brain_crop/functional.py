"""Find the head in a brain-MRI slice and crop to it.

The recipe starts from the classic "crop brain contour" one (Gaussian blur,
threshold at 45, a small erosion then dilation to drop specks, the largest
external contour, the box of its extreme points) with two changes, both
measured on the BR35H, NAV and MOS images:

* Threshold: the fixed 45 keeps only the brightest structures of dark scans
  and the box cuts the head. We threshold at ``min(threshold, otsu)`` where
  ``otsu`` is Otsu's threshold of the blurred image with its brightest 1 %
  clipped (so burnt-in text and bright specks cannot pull it up): on ordinary
  scans Otsu is above 45 and the classic value is used unchanged; on dark
  scans Otsu falls between the black background and the dim head. On the
  real images it lowers the threshold for 18 % of them (mostly dim MOS T1
  scans), which grows their boxes by 0.6 % of the image area on average.
* Largest piece: at the threshold, T2 and FLAIR slices fall apart into many
  pieces (dark white matter, a dark skull band between scalp and brain), and
  the erosion wipes out thin bright skull rims, so the largest contour alone
  often covers half a brain. Instead, every piece left after the
  erosion/dilation is grown by ``reach_fraction`` (4 %) of the image's longer
  side; pieces whose grown areas touch form one group; the group with the
  most pixels is the head; and the box spans every above-threshold pixel
  inside that grown group (thin rims included). Text labels, frame lines and
  rulers farther away stay outside the box.

On all 4,564 images this keeps on average 99.7 % of the foreground mass
(pixels above 45 after blur, weighted by intensity), never less than 92 %,
and less than 99 % on 6 % of the images (what is lost there is burnt-in text
and frame lines); it removes on average 24 % of the image area. The classic
recipe keeps 96.1 % on average, as little as 12 %, and less than 99 % on
40 % of the images (it removes 31 %, much of it head).

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


def find_brain_box(
    image: np.ndarray,
    *,
    threshold: int = 45,
    blur_size: int = 5,
    morphology_iterations: int = 2,
    reach_fraction: float = 0.04,
) -> CropBox:
    """Find the box around the head of an MRI slice (see the module docstring).

    Args:
        image: (H, W) or (H, W, 3) RGB uint8 image, values 0..255.
        threshold: fixed threshold of the classic recipe, 0..254; the one
            used is ``min(threshold, otsu)`` so dark scans are not cut.
        blur_size: odd Gaussian kernel side, 1 disables the blur.
        morphology_iterations: 3x3 erosions, then as many dilations, that
            remove specks, thin lines and text before the head is chosen.
        reach_fraction: how far, as a fraction of the image's longer side,
            pieces are grown before grouping; 0 keeps only the largest
            piece, as the classic recipe does.

    Returns:
        A :class:`CropBox` inside the image. Never raises for degenerate
        images: near-constant ones give the whole image flagged ``"blank"``,
        ones with nothing left after threshold and morphology give the whole
        image flagged ``"no_contour"``.
    """
    if not 0 <= threshold <= 254:
        raise ValueError(f"threshold must be in 0..254, got {threshold}")
    if morphology_iterations < 0:
        raise ValueError(f"morphology_iterations must be >= 0, got {morphology_iterations}")
    if not 0 <= reach_fraction <= 1:
        raise ValueError(f"reach_fraction must be in [0, 1], got {reach_fraction}")
    grey = to_grey(image)
    height, width = grey.shape
    blurred = blur(grey, blur_size)
    if int(blurred.max()) - int(blurred.min()) < MIN_CONTRAST:
        return CropBox(0, 0, width, height, FLAG_BLANK)

    level = effective_threshold(blurred, threshold)
    raw = (blurred > level).astype(np.uint8)
    cleaned = raw
    if morphology_iterations > 0:
        cleaned = cv2.erode(raw, None, iterations=morphology_iterations)
        cleaned = cv2.dilate(cleaned, None, iterations=morphology_iterations)
    if not cleaned.any():
        return CropBox(0, 0, width, height, FLAG_NO_CONTOUR)

    # Grow the cleaned pieces by `reach` pixels; pieces whose grown areas touch
    # form one group; the group with the most cleaned pixels is the head; the
    # box spans every thresholded pixel inside it, thin skull rims included.
    reach = round(reach_fraction * max(height, width))
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * reach + 1, 2 * reach + 1))
    grouped = cv2.dilate(cleaned, kernel) if reach > 0 else cleaned
    count, labels = cv2.connectedComponents(grouped, connectivity=8)
    sizes = np.bincount(labels[cleaned > 0], minlength=count)
    sizes[0] = 0
    head = ((labels == sizes.argmax()) & (raw > 0)).astype(np.uint8)
    x0, y0, box_width, box_height = cv2.boundingRect(head)
    x1, y1 = x0 + box_width, y0 + box_height
    touches = x0 == 0 or y0 == 0 or x1 == width or y1 == height
    return CropBox(x0, y0, x1, y1, FLAG_TOUCHES_BORDER if touches else FLAG_OK)


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
) -> tuple[np.ndarray, CropBox]:
    """Crop an MRI slice to the head and resize it to a square.

    Args:
        image: (H, W) or (H, W, 3) RGB uint8 image, values 0..255.
        size: output side in pixels.
        margin: extra border around the found box (see :func:`expand_box`).
        threshold: see :func:`find_brain_box`.
        keep_aspect: pad the crop with black to a square before resizing
            (default) instead of stretching it.

    Returns:
        ``(crop, box)``: crop is (size, size) uint8 greyscale, values 0..255;
        box is the (expanded) box that was cut out of the input. Blank and
        contour-less images are not rejected: the whole image is resized.
    """
    grey = to_grey(image)
    height, width = grey.shape
    box = find_brain_box(grey, threshold=threshold)
    box = expand_box(box, margin, height, width)
    crop = resize_square(grey[box.y0:box.y1, box.x0:box.x1], size, keep_aspect=keep_aspect)
    return crop, box


def foreground_mass_kept(
    image: np.ndarray, box: CropBox, threshold: int = 45, blur_size: int = 5
) -> float:
    """Fraction of the foreground mass of ``image`` that lies inside ``box``.

    Foreground = pixels above ``threshold`` after blur (:func:`foreground_mask`);
    mass = sum of their original intensities.

    Returns:
        A float in [0, 1]; 1.0 when the image has no foreground at all.
    """
    grey = to_grey(image)
    mass = np.where(foreground_mask(grey, threshold, blur_size), grey, 0).astype(np.float64)
    total = mass.sum()
    if total == 0:
        return 1.0
    return float(mass[box.y0:box.y1, box.x0:box.x1].sum() / total)


def area_fraction_removed(box: CropBox, height: int, width: int) -> float:
    """Fraction of a (height, width) image's area that lies outside ``box``, in [0, 1)."""
    return 1.0 - (box.width * box.height) / float(height * width)
