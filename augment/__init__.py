"""Training-time augmentation: histogram matching to other sites plus geometry.

* :mod:`augment.config` - :class:`AugmentConfig`, the settings.
* :mod:`augment.functional` - NumPy reference implementations (oracles).
* :mod:`augment.tf_ops` - the in-graph TensorFlow version used for training
  (:func:`augment.tf_ops.augment_batch`); imports TensorFlow.
* :mod:`augment.albumentations_transform` - ``HistogramMatchToPool``.
* :mod:`augment.preview` - a labelled montage for visual checks; imports TensorFlow.

Only the light modules are imported here, so ``import augment`` does not
load TensorFlow.
"""
from augment.config import AugmentConfig
from augment.functional import (
    affine_matrices,
    apply_affine_numpy,
    match_histograms_batch,
    match_histograms_uint8,
)

__all__ = [
    "AugmentConfig",
    "affine_matrices",
    "apply_affine_numpy",
    "match_histograms_batch",
    "match_histograms_uint8",
]
