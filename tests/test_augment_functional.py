"""NumPy reference augmentation: config checks, histogram matching, affine geometry."""
from __future__ import annotations

import dataclasses

import albumentations
import numpy as np
import pytest
from skimage.exposure import match_histograms

from augment.albumentations_transform import HistogramMatchToPool
from augment.config import AugmentConfig
from augment.functional import (
    affine_matrices,
    apply_affine_numpy,
    batched_matching_tables,
    match_histograms_batch,
    match_histograms_uint8,
    matching_table,
)


def random_image(rng: np.random.Generator, shape: tuple[int, ...], low: int = 0, high: int = 256) -> np.ndarray:
    return rng.integers(low, high, shape).astype(np.uint8)


# ----------------------------------------------------------------------------- config


def test_default_config_is_the_recipe_and_valid():
    config = AugmentConfig()
    config.validate()
    assert config.histogram_match_probability == 0.3
    assert (config.rotation_degrees, config.width_shift, config.height_shift) == (30.0, 0.1, 0.1)
    assert (config.zoom, config.shear_degrees) == (0.3, 15.0)
    assert (config.brightness_low, config.brightness_high) == (0.7, 1.3)
    assert config.horizontal_flip and config.vertical_flip
    assert config.to_dict()["fill_value"] == 0.0


def test_disabled_config_is_identity():
    config = AugmentConfig.disabled()
    config.validate()
    assert not config.has_geometry
    assert not config.has_histogram_matching
    assert config.brightness_low == config.brightness_high == 1.0


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("histogram_match_probability", 1.5, "histogram_match_probability"),
        ("histogram_match_probability", -0.1, "histogram_match_probability"),
        ("histogram_match_blend", 2.0, "histogram_match_blend"),
        ("rotation_degrees", -1.0, "rotation_degrees"),
        ("width_shift", -0.1, "width_shift"),
        ("height_shift", 1.5, "height_shift"),
        ("zoom", 1.0, "zoom"),
        ("shear_degrees", 90.0, "shear_degrees"),
        ("brightness_low", -0.5, "brightness_low"),
        ("brightness_low", 1.5, "must not exceed"),
        ("fill_value", 300.0, "fill_value"),
        ("rotation_degrees", float("nan"), "finite"),
        ("horizontal_flip", "yes", "horizontal_flip"),
    ],
)
def test_config_validate_rejects_out_of_range(field, value, message):
    config = dataclasses.replace(AugmentConfig(), **{field: value})
    with pytest.raises(ValueError, match=message):
        config.validate()


# ----------------------------------------------------------------------------- histogram matching


def test_match_histograms_worked_example():
    # Source levels 0..3 have quantiles .25 .5 .75 1; the reference has levels 0 and 100 at quantiles .5 and 1.
    image = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    reference = np.array([[0, 100]], dtype=np.uint8)
    expected = np.array([[0, 0], [50, 100]], dtype=np.uint8)
    np.testing.assert_array_equal(match_histograms_uint8(image, reference), expected)
    np.testing.assert_array_equal(matching_table(np.bincount(image.ravel(), minlength=256),
                                                 np.bincount(reference.ravel(), minlength=256))[:4],
                                  [0.0, 0.0, 50.0, 100.0])


@pytest.mark.parametrize("shape", [(7, 9), (32, 32), (61, 40)])
@pytest.mark.parametrize("levels", [2, 17, 256])
def test_match_histograms_uint8_equals_rounded_skimage_grey(shape, levels):
    rng = np.random.default_rng(levels * 1000 + shape[0])
    image = random_image(rng, shape, 0, levels)
    reference = random_image(rng, (shape[1], shape[0] + 3), 40, 200) // 3
    expected = np.rint(match_histograms(image, reference))
    np.testing.assert_array_equal(match_histograms_uint8(image, reference), expected)


@pytest.mark.parametrize("shape", [(8, 8, 3), (30, 20, 3), (16, 16, 2)])
def test_match_histograms_uint8_per_channel_like_skimage(shape):
    rng = np.random.default_rng(shape[0])
    image = random_image(rng, shape)
    reference = random_image(rng, (11, 13, shape[2]), 30, 220)
    ours = match_histograms_uint8(image, reference)
    # skimage truncates the multi-channel result into uint8: within one grey level.
    skimage_uint8 = match_histograms(image, reference, channel_axis=-1)
    assert np.abs(ours.astype(int) - skimage_uint8.astype(int)).max() <= 1
    for channel in range(shape[2]):
        expected = np.rint(match_histograms(image[..., channel], reference[..., channel]))
        np.testing.assert_array_equal(ours[..., channel], expected)


def test_match_to_constant_reference_gives_constant_image():
    rng = np.random.default_rng(0)
    image = random_image(rng, (10, 10))
    reference = np.full((5, 5), 77, dtype=np.uint8)
    np.testing.assert_array_equal(match_histograms_uint8(image, reference), np.full((10, 10), 77))


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_match_histograms_batch_equals_per_image(channels):
    rng = np.random.default_rng(5)
    extra = () if channels is None else (channels,)
    images = random_image(rng, (6, 20, 24) + extra)
    references = random_image(rng, (6, 15, 10) + extra, 0, 120)
    references[0] = 200  # a constant reference
    images[1] = 3  # a constant image
    batch = match_histograms_batch(images, references)
    assert batch.shape == images.shape and batch.dtype == np.uint8
    for index in range(6):
        np.testing.assert_array_equal(batch[index], match_histograms_uint8(images[index], references[index]))


def test_batched_tables_equal_np_interp_on_sparse_histograms():
    rng = np.random.default_rng(9)
    source = rng.integers(0, 5, (40, 256)) * (rng.random((40, 256)) < 0.1)
    reference = rng.integers(0, 5, (40, 256)) * (rng.random((40, 256)) < 0.05)
    source[:, 0] += 1
    reference[:, 255] += 1
    tables = batched_matching_tables(source, reference)
    for row in range(40):
        np.testing.assert_array_equal(tables[row], matching_table(source[row], reference[row]))


@pytest.mark.parametrize(
    "image, reference, message",
    [
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8), "uint8"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.uint8), "both"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 1), np.uint8), "channel"),
        (np.zeros((0, 4), np.uint8), np.zeros((4, 4), np.uint8), "empty"),
    ],
)
def test_match_histograms_uint8_rejects_bad_input(image, reference, message):
    with pytest.raises(ValueError, match=message):
        match_histograms_uint8(image, reference)


# ----------------------------------------------------------------------------- geometry


def test_identity_matrix():
    matrices = affine_matrices(0, 0, 0, 1, 0, False, False, height=20, width=30)
    np.testing.assert_array_equal(matrices, np.eye(3)[None])


@pytest.mark.parametrize("flip_h, flip_v", [(True, False), (False, True), (True, True)])
def test_numpy_flips_are_exact(flip_h, flip_v):
    image = np.random.default_rng(1).integers(0, 256, (1, 9, 12)).astype(np.float64)
    matrices = affine_matrices(0, 0, 0, 1, 0, flip_h, flip_v, height=9, width=12)
    expected = image[:, :: -1 if flip_v else 1, :: -1 if flip_h else 1]
    np.testing.assert_array_equal(apply_affine_numpy(image, matrices), expected)


def test_rotation_by_90_degrees_is_counter_clockwise_rot90():
    image = np.random.default_rng(2).integers(0, 256, (1, 15, 15)).astype(np.float64)
    matrices = affine_matrices(90, 0, 0, 1, 0, False, False, height=15, width=15)
    np.testing.assert_allclose(apply_affine_numpy(image, matrices)[0], np.rot90(image[0]), atol=1e-9)


def test_integer_shift_moves_content_and_fills():
    image = np.arange(1, 41, dtype=np.float64).reshape(1, 5, 8)
    matrices = affine_matrices(0, 0.25, 0.2, 1, 0, False, False, height=5, width=8)  # 2 px right, 1 px down
    output = apply_affine_numpy(image, matrices, fill_value=-7)[0]
    np.testing.assert_array_equal(output[1:, 2:], image[0, :-1, :-2])
    assert np.all(output[0] == -7) and np.all(output[:, :2] == -7)


def centred_square(size: int, side: int) -> np.ndarray:
    image = np.zeros((1, size, size))
    start = (size - side) // 2
    image[0, start : start + side, start : start + side] = 255.0
    return image


@pytest.mark.parametrize("zoom, factor", [(2.0, 4.0), (0.5, 0.25)])
def test_zoom_scales_area_by_square(zoom, factor):
    image = centred_square(64, 20)
    matrices = affine_matrices(0, 0, 0, zoom, 0, False, False, height=64, width=64)
    output = apply_affine_numpy(image, matrices)
    area_ratio = output.sum() / image.sum()
    assert area_ratio == pytest.approx(factor, rel=0.03)


@pytest.mark.parametrize("rotation", [10.0, 30.0, -45.0])
def test_rotation_keeps_disk_area(rotation):
    rows, columns = np.mgrid[0:64, 0:64]
    disk = (((rows - 31.5) ** 2 + (columns - 31.5) ** 2) < 18**2)[None] * 255.0
    matrices = affine_matrices(rotation, 0, 0, 1, 0, False, False, height=64, width=64)
    assert apply_affine_numpy(disk, matrices).sum() / disk.sum() == pytest.approx(1.0, abs=0.02)


def test_shear_keeps_area():
    image = centred_square(64, 20)
    matrices = affine_matrices(0, 0, 0, 1, 15, False, False, height=64, width=64)
    assert apply_affine_numpy(image, matrices).sum() / image.sum() == pytest.approx(1.0, abs=0.02)


def test_affine_matrices_reject_bad_zoom():
    with pytest.raises(ValueError, match="zoom"):
        affine_matrices(0, 0, 0, 0.0, 0, False, False, height=4, width=4)


# ----------------------------------------------------------------------------- albumentations


@pytest.mark.parametrize("shape", [(24, 20), (24, 20, 1)])
def test_histogram_match_to_pool_equals_numpy(shape):
    rng = np.random.default_rng(3)
    image = random_image(rng, shape)
    reference = random_image(rng, (16, 16), 50, 120)
    transform = HistogramMatchToPool([reference], blend=1.0, p=1.0)
    output = albumentations.Compose([transform], seed=0)(image=image)["image"]
    expected = match_histograms_uint8(image.reshape(24, 20), reference)
    np.testing.assert_array_equal(output.reshape(24, 20), expected)


def test_histogram_match_to_pool_blend_and_probability():
    rng = np.random.default_rng(4)
    image = random_image(rng, (12, 12))
    reference = random_image(rng, (12, 12), 100, 110)
    matched = match_histograms_uint8(image, reference).astype(float)
    half = albumentations.Compose([HistogramMatchToPool([reference], blend=0.5, p=1.0)], seed=0)(image=image)
    np.testing.assert_array_equal(half["image"], np.rint(0.5 * image + 0.5 * matched))
    never = albumentations.Compose([HistogramMatchToPool([reference], p=0.0)], seed=0)(image=image)
    np.testing.assert_array_equal(never["image"], image)


def test_histogram_match_to_pool_picks_pool_images():
    rng = np.random.default_rng(6)
    image = random_image(rng, (10, 10))
    pool = [np.full((4, 4), level, dtype=np.uint8) for level in (10, 20, 30)]
    compose = albumentations.Compose([HistogramMatchToPool(pool, p=1.0)], seed=1)
    seen = {int(compose(image=image)["image"][0, 0]) for _ in range(30)}
    assert seen == {10, 20, 30}


@pytest.mark.parametrize(
    "pool, blend, message",
    [([], 1.0, "empty"), ([np.zeros((4, 4), np.float32)], 1.0, "uint8"), ([np.zeros((4, 4), np.uint8)], 1.5, "blend")],
)
def test_histogram_match_to_pool_rejects_bad_arguments(pool, blend, message):
    with pytest.raises(ValueError, match=message):
        HistogramMatchToPool(pool, blend=blend)
