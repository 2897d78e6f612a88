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

from augment.acquisition import FAMILY_ORDER as ACQUISITION_FAMILIES

#: Pixels histogram matching counts and changes: the head only (the default) or the whole image.
HISTOGRAM_MATCH_REGIONS = ("foreground", "whole")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """All augmentation parameters; every range is symmetric around identity.

    Attributes:
        histogram_match_probability: chance, per image, of matching its
            histogram to a random image of the reference pool; in [0, 1].
        histogram_match_blend: strength of the matching, in [0, 1]:
            ``output = (1 - blend) * image + blend * matched``.
        histogram_match_region: which pixels the matching counts and changes,
            one of :data:`HISTOGRAM_MATCH_REGIONS`: ``"foreground"`` (the
            head: pixels above each image's own background threshold,
            ``augment.functional.foreground_thresholds``, in the image and in
            its reference; the background keeps its grey levels) or
            ``"whole"`` (every pixel, background included: a crop with more
            black background than its reference gets a grey background).
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

    Acquisition randomisation (``augment.acquisition_tf.acquisition_batch``,
    after the steps above; each family is off at probability 0, the
    default, and applied per image with its probability, its value drawn
    uniformly in ``[*_low, *_high]``; order ``downsample``, ``blur``,
    ``sharpen``, ``bias_field``, ``contrast``, ``gamma``, ``noise``, ``jpeg``):
        downsample_probability: shrink both sides by a factor (area
            average) and enlarge back (bilinear): a coarser acquisition.
        downsample_factor_low, downsample_factor_high: factor range, in
            [1, 8] (2 halves the resolution).
        blur_probability: Gaussian blur (softer reconstruction filter).
        blur_sigma_low, blur_sigma_high: sigma range in pixels, in [0, 8].
        sharpen_probability: unsharp-mask sharpening (sharper filter).
        sharpen_amount_low, sharpen_amount_high: amount range, in [0, 5]
            (``x + amount * (x - blur(x))``).
        sharpen_sigma: blur of the mask in pixels, in (0, 8].
        bias_field_probability: smooth multiplicative coil shading
            ``exp(strength * p)``, ``p`` a random cubic polynomial with
            ``|p| <= 1``; black stays black.
        bias_field_strength_low, bias_field_strength_high: strength range,
            in [0, 2] (0.4: factors between 0.67 and 1.49).
        contrast_probability: contrast change around the foreground mean,
            fading to none at black (the background stays black).
        contrast_low, contrast_high: factor range, in [0, 2] (1: unchanged).
        gamma_probability: intensity curve ``255 * (x / 255) ** gamma``.
        gamma_low, gamma_high: gamma range, in (0, 5] (1: unchanged).
        noise_probability: additive Gaussian noise, everywhere (a black
            background gets one-sided noise after clipping).
        noise_sigma_low, noise_sigma_high: sigma range in grey levels, in [0, 50].
        jpeg_probability: JPEG encoding and decoding.
        jpeg_quality_low, jpeg_quality_high: whole qualities, in [1, 100].
    """

    histogram_match_probability: float = 0.3
    histogram_match_blend: float = 1.0
    histogram_match_region: str = "foreground"
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
    downsample_probability: float = 0.0
    downsample_factor_low: float = 1.5
    downsample_factor_high: float = 3.0
    blur_probability: float = 0.0
    blur_sigma_low: float = 0.5
    blur_sigma_high: float = 1.5
    sharpen_probability: float = 0.0
    sharpen_amount_low: float = 0.3
    sharpen_amount_high: float = 1.0
    sharpen_sigma: float = 1.0
    bias_field_probability: float = 0.0
    bias_field_strength_low: float = 0.1
    bias_field_strength_high: float = 0.4
    contrast_probability: float = 0.0
    contrast_low: float = 0.7
    contrast_high: float = 1.3
    gamma_probability: float = 0.0
    gamma_low: float = 0.7
    gamma_high: float = 1.5
    noise_probability: float = 0.0
    noise_sigma_low: float = 2.0
    noise_sigma_high: float = 8.0
    jpeg_probability: float = 0.0
    jpeg_quality_low: int = 30
    jpeg_quality_high: int = 90

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
            **{f"{family}_probability": 0.0 for family in ACQUISITION_FAMILIES},
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

    @property
    def acquisition_families(self) -> tuple[str, ...]:
        """The acquisition families with a probability above 0, in the order they are applied."""
        return tuple(family for family in ACQUISITION_FAMILIES if getattr(self, f"{family}_probability") > 0)

    @property
    def has_acquisition(self) -> bool:
        """True when any acquisition family can change an image."""
        return bool(self.acquisition_families)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range setting."""
        for name in dataclasses.fields(self):
            value = getattr(self, name.name)
            if isinstance(value, bool) or name.name == "histogram_match_region":
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name.name} must be a finite number, got {value!r}")
        if self.histogram_match_region not in HISTOGRAM_MATCH_REGIONS:
            raise ValueError(f"histogram_match_region must be one of {HISTOGRAM_MATCH_REGIONS}, "
                             f"got {self.histogram_match_region!r}")
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
        self._validate_acquisition()

    def _validate_acquisition(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range acquisition setting."""
        for family in ACQUISITION_FAMILIES:
            name = f"{family}_probability"
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("jpeg_quality_low", "jpeg_quality_high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
        # (low key, high key, smallest allowed, largest allowed, is the smallest excluded)
        ranges = (
            ("downsample_factor_low", "downsample_factor_high", 1.0, 8.0, False),
            ("blur_sigma_low", "blur_sigma_high", 0.0, 8.0, False),
            ("sharpen_amount_low", "sharpen_amount_high", 0.0, 5.0, False),
            ("bias_field_strength_low", "bias_field_strength_high", 0.0, 2.0, False),
            ("contrast_low", "contrast_high", 0.0, 2.0, False),
            ("gamma_low", "gamma_high", 0.0, 5.0, True),
            ("noise_sigma_low", "noise_sigma_high", 0.0, 50.0, False),
            ("jpeg_quality_low", "jpeg_quality_high", 1, 100, False),
        )
        for low_name, high_name, smallest, largest, open_below in ranges:
            low, high = getattr(self, low_name), getattr(self, high_name)
            bracket = "(" if open_below else "["
            for name, value in ((low_name, low), (high_name, high)):
                if not (smallest < value if open_below else smallest <= value) or value > largest:
                    raise ValueError(f"{name} must be in {bracket}{smallest:g}, {largest:g}], got {value!r}")
            if low > high:
                raise ValueError(f"{low_name} ({low!r}) must not exceed {high_name} ({high!r})")
        if not 0.0 < self.sharpen_sigma <= 8.0:
            raise ValueError(f"sharpen_sigma must be in (0, 8], got {self.sharpen_sigma!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of all settings (for logging and JSON)."""
        return dataclasses.asdict(self)
