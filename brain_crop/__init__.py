"""Pure numpy/OpenCV functions that crop brain-MRI slices to the head."""
from brain_crop.functional import (
    FLAG_BLANK,
    FLAG_NO_CONTOUR,
    FLAG_OK,
    FLAG_TOUCHES_BORDER,
    FLAGS,
    CropBox,
    area_fraction_removed,
    crop_brain,
    effective_threshold,
    expand_box,
    find_brain_box,
    foreground_mask,
    foreground_mass_kept,
    resize_square,
    to_grey,
)
from brain_crop.preview import crop_preview_montage, crop_preview_tile

__all__ = [
    "FLAG_BLANK",
    "FLAG_NO_CONTOUR",
    "FLAG_OK",
    "FLAG_TOUCHES_BORDER",
    "FLAGS",
    "CropBox",
    "area_fraction_removed",
    "crop_brain",
    "crop_preview_montage",
    "crop_preview_tile",
    "effective_threshold",
    "expand_box",
    "find_brain_box",
    "foreground_mask",
    "foreground_mass_kept",
    "resize_square",
    "to_grey",
]
