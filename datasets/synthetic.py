"""Deterministic brain-like phantoms written to disk as site folders.

Each phantom is a dark background, a bright skull ring, a textured brain with
two dark ventricles and, for the tumour class, one or two bright blobs. A
:class:`SiteProfile` changes intensity (gamma, gain, offset), noise, blur and
framing per site, so that sites really differ in histogram the way scanners
do. Used by the tests and by ``train --demo``; no download needed.

Example::

    write_demo_sites("demo_data", images_per_class=80, size=96)
    # demo_data/synth_a/{yes,no}/*.png, demo_data/synth_b/..., demo_data/synth_c/...
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class SiteProfile:
    """How one synthetic scanner renders intensities.

    Attributes:
        gamma: exponent applied to intensities in [0, 1] (1 = linear).
        gain: multiplier after gamma.
        offset: added grey level (0..255 scale) inside the head.
        noise: standard deviation of Gaussian noise in grey levels.
        blur: Gaussian blur sigma in pixels (0 = none).
        border: fraction of the canvas left as black border on each side, max.
    """

    gamma: float = 1.0
    gain: float = 1.0
    offset: float = 0.0
    noise: float = 4.0
    blur: float = 0.0
    border: float = 0.15


#: Three demo sites; ``c`` (the test site of the demo) differs most.
PROFILES: dict[str, SiteProfile] = {
    "a": SiteProfile(gamma=1.0, gain=1.0, offset=0.0, noise=4.0, blur=0.0, border=0.12),
    "b": SiteProfile(gamma=0.75, gain=0.85, offset=12.0, noise=7.0, blur=0.6, border=0.2),
    "c": SiteProfile(gamma=1.6, gain=1.25, offset=-8.0, noise=10.0, blur=1.0, border=0.25),
}


def _ellipse_mask(shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float],
                  angle: float) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, (int(round(centre[0])), int(round(centre[1]))),
                (max(1, int(round(axes[0]))), max(1, int(round(axes[1])))), angle, 0, 360, 1, -1)
    return mask.astype(bool)


def make_phantom(rng: np.random.Generator, size: int, tumour: bool, profile: SiteProfile) -> np.ndarray:
    """One phantom slice.

    Args:
        rng: random generator (the only source of randomness).
        size: side of the square output in pixels (>= 32).
        tumour: draw one or two tumour blobs inside the brain.
        profile: the site's intensity profile.

    Returns:
        (size, size) uint8 greyscale image, background near 0.
    """
    if size < 32:
        raise ValueError(f"phantom size must be at least 32 px, got {size}")
    shape = (size, size)
    border = rng.uniform(0.02, profile.border) * size
    half = size / 2 - border
    centre = (size / 2 + rng.uniform(-0.3, 0.3) * border, size / 2 + rng.uniform(-0.3, 0.3) * border)
    axes = (half * rng.uniform(0.78, 0.9), half * rng.uniform(0.92, 1.0))
    angle = rng.uniform(-12, 12)
    skull_width = max(2.0, 0.06 * half)
    head = _ellipse_mask(shape, centre, axes, angle)
    brain = _ellipse_mask(shape, centre, (axes[0] - skull_width, axes[1] - skull_width), angle)

    texture = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), size / 24)
    texture /= texture.std() + 1e-6
    image = np.zeros(shape, np.float32)
    image[head] = 0.85  # skull ring = head minus brain
    image[brain] = 0.42 + 0.08 * texture[brain]
    for side in (-1, 1):  # ventricles
        ventricle_centre = (centre[0] + side * axes[0] * 0.18, centre[1] - axes[1] * 0.05)
        image[_ellipse_mask(shape, ventricle_centre, (axes[0] * 0.09, axes[1] * 0.25), angle + side * 15)] = 0.12
    if tumour:
        for _ in range(int(rng.integers(1, 3))):
            radius = half * rng.uniform(0.12, 0.22)
            r, theta = rng.uniform(0, 0.55), rng.uniform(0, 2 * np.pi)
            blob_centre = (centre[0] + r * axes[0] * np.cos(theta), centre[1] + r * axes[1] * np.sin(theta))
            blob = _ellipse_mask(shape, blob_centre, (radius, radius * rng.uniform(0.7, 1.0)), rng.uniform(0, 180))
            blob &= brain
            image[blob] = 0.78 + 0.05 * texture[blob]
            rim = cv2.dilate(blob.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2).astype(bool)
            image[rim & ~blob & brain] = 0.95
    image = np.clip(image, 0, 1) ** profile.gamma * profile.gain * 255.0
    image[head] += profile.offset
    if profile.blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), profile.blur)
    image[head] += rng.normal(0, profile.noise, int(head.sum()))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_synthetic_site(root: str | Path, profile: SiteProfile, *, images_per_class: int = 60,
                         size: int = 96, seed: int = 0) -> Path:
    """Write a ``yes/`` + ``no/`` site of PNG phantoms; the same arguments give the same files.

    Returns:
        The site folder.
    """
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for folder, tumour in (("yes", True), ("no", False)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for index in range(images_per_class):
            image = make_phantom(rng, size, tumour, profile)
            cv2.imwrite(str(root / folder / f"{folder}_{index:04d}.png"), image)
    return root


def write_demo_sites(root: str | Path, *, images_per_class: int = 80, size: int = 96,
                     seed: int = 0) -> dict[str, Path]:
    """Write the three demo sites ``synth_a`` (train), ``synth_b`` (val), ``synth_c`` (test).

    Existing complete site folders are reused. Returns ``{name: folder}``.
    """
    sites = {}
    for offset, key in enumerate(("a", "b", "c")):
        folder = Path(root) / f"synth_{key}"
        marker = folder / ".complete"
        settings = f"images_per_class={images_per_class} size={size} seed={seed}\n"
        if not marker.exists() or marker.read_text() != settings:
            shutil.rmtree(folder, ignore_errors=True)
            write_synthetic_site(folder, PROFILES[key], images_per_class=images_per_class, size=size,
                                 seed=seed + 1000 * offset)
            marker.write_text(settings)
        sites[f"synth_{key}"] = folder
    return sites
