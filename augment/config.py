"""Settings of the training-time augmentation.

The defaults are the project's recipe: with probability 0.3 match an image's
histogram to an image of another site (so the model sees other scanners'
intensity profiles), then a random rotation, shift, zoom, shear, brightness
change and horizontal / vertical flips.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """All augmentation parameters; every range is symmetric around identity.

    Attributes:
        histogram_match_probability: chance, per image, of matching its
            histogram to a random image of the reference pool; in [0, 1].
        histogram_match_blend: strength of the matching, in [0, 1]:
            ``output = (1 - blend) * image + blend * matched``.
        rotation_degrees: rotation angle drawn uniformly in
            ``[-rotation_degrees, rotation_degrees]``; in [0, 180].
        width_shift: horizontal shift drawn uniformly in
            ``[-width_shift, width_shift]``, as a fraction of the width; in [0, 1].
        height_shift: vertical shift, as a fraction of the height; in [0, 1].
        zoom: content scale factor drawn uniformly in ``[1 - zoom, 1 + zoom]``
            (above 1 enlarges the content); in [0, 1).
        shear_degrees: horizontal shear angle drawn uniformly in
            ``[-shear_degrees, shear_degrees]``; in [0, 90).
        brightness_low: smallest intensity factor; at least 0.
        brightness_high: largest intensity factor; at least ``brightness_low``.
        horizontal_flip: flip left-right with probability 0.5.
        vertical_flip: flip up-down with probability 0.5.
        fill_value: grey level of pixels that come from outside the image,
            in [0, 255].
    """

    histogram_match_probability: float = 0.3
    histogram_match_blend: float = 1.0
    rotation_degrees: float = 30.0
    width_shift: float = 0.1
    height_shift: float = 0.1
    zoom: float = 0.3
    shear_degrees: float = 15.0
    brightness_low: float = 0.7
    brightness_high: float = 1.3
    horizontal_flip: bool = True
    vertical_flip: bool = True
    fill_value: float = 0.0

    @classmethod
    def disabled(cls) -> "AugmentConfig":
        """A configuration under which augmentation returns its input unchanged."""
        return cls(
            histogram_match_probability=0.0,
            histogram_match_blend=0.0,
            rotation_degrees=0.0,
            width_shift=0.0,
            height_shift=0.0,
            zoom=0.0,
            shear_degrees=0.0,
            brightness_low=1.0,
            brightness_high=1.0,
            horizontal_flip=False,
            vertical_flip=False,
            fill_value=0.0,
        )

    @property
    def has_geometry(self) -> bool:
        """True when any rotation, shift, zoom, shear or flip can happen."""
        return bool(
            self.rotation_degrees
            or self.width_shift
            or self.height_shift
            or self.zoom
            or self.shear_degrees
            or self.horizontal_flip
            or self.vertical_flip
        )

    @property
    def has_histogram_matching(self) -> bool:
        """True when histogram matching can change an image."""
        return self.histogram_match_probability > 0 and self.histogram_match_blend > 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range setting."""
        for name in dataclasses.fields(self):
            value = getattr(self, name.name)
            if isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name.name} must be a finite number, got {value!r}")
        ranges = {
            "histogram_match_probability": (0.0, 1.0),
            "histogram_match_blend": (0.0, 1.0),
            "rotation_degrees": (0.0, 180.0),
            "width_shift": (0.0, 1.0),
            "height_shift": (0.0, 1.0),
            "fill_value": (0.0, 255.0),
        }
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")
        if not 0.0 <= self.zoom < 1.0:
            raise ValueError(
                f"zoom must be in [0, 1) so that the scale 1 - zoom stays positive, got {self.zoom!r}"
            )
        if not 0.0 <= self.shear_degrees < 90.0:
            raise ValueError(f"shear_degrees must be in [0, 90), got {self.shear_degrees!r}")
        if self.brightness_low < 0:
            raise ValueError(f"brightness_low must be at least 0, got {self.brightness_low!r}")
        if self.brightness_low > self.brightness_high:
            raise ValueError(
                f"brightness_low ({self.brightness_low!r}) must not exceed "
                f"brightness_high ({self.brightness_high!r})"
            )
        for name in ("horizontal_flip", "vertical_flip"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of all settings (for logging and JSON)."""
        return dataclasses.asdict(self)
