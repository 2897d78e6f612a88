"""Histogram matching to a pool of other sites' images, as an albumentations transform.

For NumPy / albumentations pipelines (previews, quick experiments); training
uses the in-graph :func:`augment.tf_ops.augment_batch`, which gives the same
matching.
"""
from __future__ import annotations

from typing import Any, Sequence

import albumentations
import numpy as np

from augment.functional import match_histograms_uint8


class HistogramMatchToPool(albumentations.ImageOnlyTransform):
    """Match the image's histogram to a random image of an in-memory pool.

    ``output = round((1 - blend) * image + blend * matched)`` where
    ``matched = match_histograms_uint8(image, reference)`` and ``reference``
    is drawn uniformly from ``reference_pool`` on every call.

    Why not ``albumentations.HistogramMatching`` (albumentations 2.x)? It
    almost fits, but:

    * it truncates the matched values into uint8 instead of rounding, so it
      is up to one grey level below ``skimage.exposure.match_histograms``;
      this transform equals ``np.rint`` of skimage exactly, like the
      TensorFlow training path;
    * its references must be passed with every call under a metadata key
      (``reference_images`` / ``read_fn`` are deprecated), whereas the pool
      of other sites' images is fixed for a run, so here it is held by the
      transform and a plain ``Compose`` call works;
    * it resizes each reference to the image size first (not needed: only
      the histogram matters) and draws the blend from a range, where the
      project has one fixed ``histogram_match_blend``.

    Args:
        reference_pool: non-empty sequence (or (R, H, W[, C]) array) of uint8
            images, (H, W) or (H, W, C); sizes may differ from the inputs.
        blend: matching strength in [0, 1].
        p: probability of applying the transform.

    Targets: image. Image types: uint8, (H, W) or (H, W, C) with the pool's
    channel count.
    """

    def __init__(self, reference_pool: Sequence[np.ndarray] | np.ndarray, blend: float = 1.0, p: float = 0.3):
        super().__init__(p=p)
        if not 0.0 <= blend <= 1.0:
            raise ValueError(f"blend must be in [0, 1], got {blend!r}")
        pool = [np.asarray(image) for image in reference_pool]
        if not pool:
            raise ValueError("reference_pool is empty")
        for index, image in enumerate(pool):
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
                raise ValueError(
                    f"reference_pool[{index}] must be a non-empty (H, W) or (H, W, C) uint8 image, "
                    f"got {image.dtype} {image.shape}"
                )
        self.reference_pool = pool
        self.blend = float(blend)

    def get_params(self) -> dict[str, Any]:
        return {"reference_index": self.py_random.randrange(len(self.reference_pool))}

    def apply(self, img: np.ndarray, reference_index: int = 0, **params: Any) -> np.ndarray:
        if img.dtype != np.uint8:
            raise ValueError(f"HistogramMatchToPool needs uint8 images, got {img.dtype}")
        reference = self.reference_pool[reference_index]
        # albumentations may hand grey images over as (H, W, 1).
        if img.ndim == 3 and reference.ndim == 2:
            reference = reference[..., None]
        elif img.ndim == 2 and reference.ndim == 3 and reference.shape[2] == 1:
            reference = reference[..., 0]
        matched = match_histograms_uint8(img, reference)
        if self.blend == 1.0:
            return matched
        blended = (1.0 - self.blend) * img.astype(np.float64) + self.blend * matched
        return np.rint(blended).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("reference_pool", "blend")
