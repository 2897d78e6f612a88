"""In-graph TensorFlow augmentation against the NumPy / skimage oracles."""
from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
import pytest
from skimage.exposure import match_histograms

tf = pytest.importorskip("tensorflow")

from augment.config import AugmentConfig  # noqa: E402
from augment.functional import (  # noqa: E402
    affine_matrices,
    apply_affine_numpy,
    batched_matching_tables,
    border_histograms,
    foreground_levels,
    foreground_mask,
    match_histograms_batch,
)
from augment.preview import augment_preview_montage  # noqa: E402
from augment.tf_ops import (  # noqa: E402
    RESAMPLERS,
    _border_histograms,
    affine_transform_matrices,
    apply_affine_tf,
    augment_batch,
    foreground_levels_tf,
    match_histograms_tf,
    matching_tables_tf,
    sample_affine_params,
)
from test_augment_functional import FOREGROUND_CASES, MASKED_PAIRS, phantom  # noqa: E402

SEED = tf.constant([11, 3], tf.int64)
NOTHING = AugmentConfig.disabled()


def random_batch(seed: int, shape=(6, 32, 32, 1), low: int = 0, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, shape).astype(np.uint8)


def geometry_only(**changes) -> AugmentConfig:
    return dataclasses.replace(NOTHING, **changes)


def transforms_for(batch: int, size: int, rotation=0.0, shift_x=0.0, shift_y=0.0, zoom=1.0, shear=0.0,
                   flip_h=False, flip_v=False) -> tf.Tensor:
    def column(value, dtype):
        return tf.fill([batch], tf.constant(value, dtype))

    return affine_transform_matrices(
        column(rotation, tf.float32), column(shift_x, tf.float32), column(shift_y, tf.float32),
        column(zoom, tf.float32), column(shear, tf.float32), column(flip_h, tf.bool), column(flip_v, tf.bool),
        size, size,
    )


def data_root() -> pathlib.Path:
    candidate = os.environ.get("BRAINMRI_DATA")
    if candidate:
        return pathlib.Path(candidate)
    return pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ----------------------------------------------------------------------------- histogram matching


@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 37, 23), (1, 64, 80)])
@pytest.mark.parametrize("levels", [4, 256])
def test_tf_matching_equals_skimage_grey(shape, levels):
    rng = np.random.default_rng(levels + shape[1])
    images = rng.integers(0, levels, shape).astype(np.uint8)
    references = rng.integers(20, 180, (shape[0], 19, 29)).astype(np.uint8)
    output = match_histograms_tf(images[..., None], references[..., None], region="whole").numpy()[..., 0]
    assert output.dtype == np.float32 and output.shape == shape
    for index in range(shape[0]):
        expected = match_histograms(images[index], references[index])
        assert np.abs(output[index] - expected).max() <= 1e-3
    np.testing.assert_array_equal(np.round(output), match_histograms_batch(images, references, region="whole"))


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (3, 25, 31, 3)])
def test_tf_matching_equals_skimage_rgb(shape):
    rng = np.random.default_rng(shape[1])
    images = rng.integers(0, 256, shape).astype(np.uint8)
    references = rng.integers(0, 90, (shape[0], 12, 14, 3)).astype(np.uint8)
    output = match_histograms_tf(images, references, region="whole").numpy()
    for index in range(shape[0]):
        expected = match_histograms(images[index], references[index], channel_axis=-1)
        assert np.abs(output[index] - expected).max() <= 1.0
    np.testing.assert_array_equal(np.round(output), match_histograms_batch(images, references, region="whole"))
    foreground = match_histograms_tf(images, references).numpy()
    np.testing.assert_array_equal(np.round(foreground), match_histograms_batch(images, references))


def test_tf_matching_accepts_float_images_in_grey_levels():
    images = random_batch(1, (2, 12, 12, 1))
    references = random_batch(2, (2, 12, 12, 1), 10, 60)
    from_uint8 = match_histograms_tf(images, references)
    from_float = match_histograms_tf(images.astype(np.float32), references.astype(np.float32))
    np.testing.assert_array_equal(from_uint8.numpy(), from_float.numpy())


def test_tf_tables_equal_numpy_tables_on_sparse_histograms():
    rng = np.random.default_rng(8)
    source = rng.integers(0, 9, (30, 256)) * (rng.random((30, 256)) < 0.08)
    reference = rng.integers(0, 9, (30, 256)) * (rng.random((30, 256)) < 0.03)
    source[:, 7] += 2
    reference[:, 200] += 1
    expected = batched_matching_tables(source, reference)
    np.testing.assert_array_equal(matching_tables_tf(source, reference).numpy(), expected)


@pytest.mark.parametrize("case, image, expected", FOREGROUND_CASES, ids=[case[0] for case in FOREGROUND_CASES])
def test_tf_foreground_levels_equal_the_numpy_table(case, image, expected):
    levels = tf.constant(image[None, ..., None], tf.int32)
    np.testing.assert_array_equal(_border_histograms(levels).numpy(), border_histograms(image[None, ..., None]))
    lower, upper = foreground_levels_tf(border_histograms(image[None, ..., None]))
    assert (int(lower[0]), int(upper[0])) == expected


def test_tf_foreground_levels_equal_numpy_on_random_histograms():
    rng = np.random.default_rng(12)
    counts = rng.integers(0, 40, (300, 256)) * (rng.random((300, 256)) < rng.random((300, 1)) * 0.2)
    counts[:100, 20:23] += rng.integers(0, 400, (100, 3))  # grey backgrounds
    counts[100:200, 250:] += rng.integers(0, 400, (100, 6))  # bright bars
    lower, upper = foreground_levels(counts)
    lower_tf, upper_tf = foreground_levels_tf(counts)
    np.testing.assert_array_equal(lower_tf.numpy(), lower)
    np.testing.assert_array_equal(upper_tf.numpy(), upper)
    assert (lower > 10).sum() > 50 and (upper < 255).sum() > 50  # both rules were exercised


@pytest.mark.parametrize("case, source, reference", MASKED_PAIRS, ids=[pair[0] for pair in MASKED_PAIRS])
def test_tf_foreground_matching_equals_skimage_on_the_masked_pixels(case, source, reference):
    output = match_histograms_tf(source[None, ..., None], reference[None, ..., None]).numpy()[0, ..., 0]
    source_mask, reference_mask = foreground_mask(source), foreground_mask(reference)
    expected = match_histograms(source[source_mask], reference[reference_mask])
    assert np.abs(output[source_mask] - expected).max() <= 1e-3
    np.testing.assert_array_equal(output[~source_mask], source[~source_mask])  # the background is untouched
    np.testing.assert_array_equal(np.round(output), match_histograms_batch(source[None], reference[None])[0])


def test_tf_foreground_matching_of_a_batch_with_empty_foregrounds():
    images = np.stack([phantom(70, 32), np.zeros((32, 32), np.uint8), phantom(71, 32, background=(30, 31)),
                       phantom(72, 32)])[..., None]
    references = np.stack([phantom(73, 24, head=(90, 250)), phantom(74, 24), phantom(75, 24, bar=(255, 256)),
                           np.full((24, 24), 40, np.uint8)])[..., None]
    output = np.round(match_histograms_tf(images, references).numpy())
    np.testing.assert_array_equal(output, match_histograms_batch(images, references))
    np.testing.assert_array_equal(output[1], images[1])  # no foreground in the image
    np.testing.assert_array_equal(output[3], images[3])  # no foreground in the (flat grey) reference
    assert not np.array_equal(output[0], images[0])


@pytest.mark.realdata
@pytest.mark.parametrize("colour", [False, True])
def test_tf_matching_equals_skimage_on_real_images(colour):
    cv2 = pytest.importorskip("cv2")
    root = data_root()
    sources = sorted((root / "br35h" / "yes").glob("*.jpg"))[:3] if root.is_dir() else []
    references = sorted((root / "nav" / "no").glob("*.jpg"))[:3] if root.is_dir() else []
    if len(sources) < 3 or len(references) < 3:
        pytest.skip("shared brain-MRI data not found (set BRAINMRI_DATA)")
    flag = cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE
    for source_path, reference_path in zip(sources, references):
        source = cv2.imread(str(source_path), flag)
        reference = cv2.imread(str(reference_path), flag)
        source = source if colour else source[..., None]
        reference = reference if colour else reference[..., None]
        output = match_histograms_tf(source[None], reference[None], region="whole").numpy()[0]
        expected = match_histograms(source, reference, channel_axis=-1)
        assert output.shape == source.shape
        assert np.abs(output - expected).max() <= 1.0
        foreground = match_histograms_tf(source[None], reference[None]).numpy()[0]
        for channel in range(source.shape[2]):
            source_mask = foreground_mask(source[..., channel])
            reference_mask = foreground_mask(reference[..., channel])
            expected = match_histograms(source[..., channel][source_mask], reference[..., channel][reference_mask])
            assert np.abs(foreground[..., channel][source_mask] - expected).max() <= 1e-3
            np.testing.assert_array_equal(foreground[..., channel][~source_mask], source[..., channel][~source_mask])


# ----------------------------------------------------------------------------- geometry


def test_tf_transforms_equal_numpy_matrices():
    rng = np.random.default_rng(2)
    params = {
        "rotation": rng.uniform(-30, 30, 8), "shift_x": rng.uniform(-0.1, 0.1, 8),
        "shift_y": rng.uniform(-0.1, 0.1, 8), "zoom": rng.uniform(0.7, 1.3, 8),
        "shear": rng.uniform(-15, 15, 8), "flip_h": rng.random(8) < 0.5, "flip_v": rng.random(8) < 0.5,
    }
    expected = affine_matrices(**params, height=40, width=56).reshape(8, 9)[:, :8]
    output = affine_transform_matrices(**params, height=40, width=56).numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_tf_resample_equals_numpy_resampler(resampler):
    rng = np.random.default_rng(4)
    images = random_batch(4, (5, 30, 30, 1))
    params = {
        "rotation": rng.uniform(-30, 30, 5), "shift_x": rng.uniform(-0.1, 0.1, 5),
        "shift_y": rng.uniform(-0.1, 0.1, 5), "zoom": rng.uniform(0.7, 1.3, 5),
        "shear": rng.uniform(-15, 15, 5), "flip_h": rng.random(5) < 0.5, "flip_v": rng.random(5) < 0.5,
    }
    matrices = affine_matrices(**params, height=30, width=30)
    transforms = affine_transform_matrices(**params, height=30, width=30)
    output = apply_affine_tf(images, transforms, fill_value=40.0, resampler=resampler).numpy()
    expected = apply_affine_numpy(images, matrices, fill_value=40.0)
    assert np.abs(output - expected).max() < 0.05


@pytest.mark.parametrize("resampler", RESAMPLERS)
@pytest.mark.parametrize("zoom, factor", [(2.0, 4.0), (0.5, 0.25)])
def test_tf_zoom_scales_square_area(resampler, zoom, factor):
    square = np.zeros((1, 64, 64, 1), np.uint8)
    square[:, 22:42, 22:42] = 255
    output = apply_affine_tf(square, transforms_for(1, 64, zoom=zoom), resampler=resampler).numpy()
    assert output.sum() / square.sum(dtype=np.float64) == pytest.approx(factor, rel=0.03)


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_rotation_keeps_disk_area(resampler):
    rows, columns = np.mgrid[0:64, 0:64]
    disk = ((((rows - 31.5) ** 2 + (columns - 31.5) ** 2) < 18**2) * 255).astype(np.uint8)
    disks = np.repeat(disk[None, ..., None], 8, axis=0)
    config = geometry_only(rotation_degrees=30.0)
    output = augment_batch(disks, None, config, SEED, resampler=resampler).numpy()
    params = sample_affine_params(SEED, 8, config)
    assert np.abs(params["rotation"].numpy()).max() > 5.0
    area_ratios = output.sum(axis=(1, 2, 3)) / disk.sum(dtype=np.float64)
    np.testing.assert_allclose(area_ratios, 1.0, atol=0.02)


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_flips_are_exact(resampler):
    images = random_batch(5, (16, 20, 24, 1))
    config = geometry_only(horizontal_flip=True, vertical_flip=True)
    output = augment_batch(images, None, config, SEED, resampler=resampler).numpy()
    flipped_h = flipped_v = 0
    for index in range(16):
        image = images[index].astype(np.float32)
        candidates = {
            (h, v): np.flip(np.flip(image, 1) if h else image, 0) if v else (np.flip(image, 1) if h else image)
            for h in (False, True) for v in (False, True)
        }
        matches = [key for key, candidate in candidates.items() if np.array_equal(output[index], candidate)]
        assert len(matches) == 1
        flipped_h += matches[0][0]
        flipped_v += matches[0][1]
    assert 0 < flipped_h < 16 and 0 < flipped_v < 16


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_flip_transform_equals_tf_reverse(resampler):
    images = random_batch(6, (2, 16, 16, 1))
    output = apply_affine_tf(images, transforms_for(2, 16, flip_h=True), resampler=resampler)
    np.testing.assert_array_equal(output.numpy(), tf.reverse(tf.cast(images, tf.float32), axis=[2]).numpy())


# ----------------------------------------------------------------------------- augment_batch


@pytest.mark.parametrize("resampler", RESAMPLERS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_disabled_config_returns_input_exactly(resampler, dtype):
    images = random_batch(7).astype(dtype)
    output = augment_batch(images, random_batch(8), NOTHING, SEED, resampler=resampler)
    np.testing.assert_array_equal(output.numpy(), images.astype(np.float32))


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_identity_geometry_parameters_are_exact(resampler):
    images = random_batch(9)
    output = apply_affine_tf(images, transforms_for(6, 32), resampler=resampler)
    np.testing.assert_array_equal(output.numpy(), images.astype(np.float32))


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_default_config_output_dtype_shape_range(resampler):
    images = random_batch(10, (5, 40, 36, 1))
    output = augment_batch(images, random_batch(11, (3, 40, 36, 1)), AugmentConfig(), SEED, resampler=resampler)
    assert output.dtype == tf.float32 and output.shape == (5, 40, 36, 1)
    values = output.numpy()
    assert values.min() >= 0.0 and values.max() <= 255.0
    assert not np.array_equal(values, images.astype(np.float32))


def test_resamplers_agree_on_the_full_recipe():
    images = random_batch(12, (8, 32, 32, 1))
    pool = random_batch(13, (4, 32, 32, 1), 0, 100)
    xla = augment_batch(images, pool, AugmentConfig(), SEED, resampler="xla").numpy()
    projective = augment_batch(images, pool, AugmentConfig(), SEED, resampler="projective").numpy()
    assert np.abs(xla - projective).max() < 0.01


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_same_seed_same_output_different_seed_different(resampler):
    images = random_batch(14)
    pool = random_batch(15, (3, 32, 32, 1), 0, 80)
    first = augment_batch(images, pool, AugmentConfig(), tf.constant([1, 2]), resampler=resampler).numpy()
    again = augment_batch(images, pool, AugmentConfig(), tf.constant([1, 2]), resampler=resampler).numpy()
    other = augment_batch(images, pool, AugmentConfig(), tf.constant([1, 3]), resampler=resampler).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("resampler", RESAMPLERS)
@pytest.mark.parametrize("region", ["foreground", "whole"])
@pytest.mark.parametrize("blend", [1.0, 0.5])
def test_probability_one_matches_every_image(resampler, region, blend):
    images = random_batch(16)
    images[:3, ..., 0] = [phantom(seed, 32, background=(0, 1 + 30 * seed)) for seed in range(3)]
    reference = random_batch(17, (1, 20, 20, 1), 60, 90)
    config = geometry_only(histogram_match_probability=1.0, histogram_match_blend=blend, histogram_match_region=region)
    output = augment_batch(images, reference, config, SEED, resampler=resampler).numpy()
    matched = match_histograms_tf(images, np.repeat(reference, 6, axis=0), region=region).numpy()
    expected = np.round(images + blend * (matched - images))
    np.testing.assert_array_equal(output, expected)
    if blend == 1.0:
        references = np.repeat(reference, 6, axis=0)
        np.testing.assert_array_equal(output[..., 0],
                                      match_histograms_batch(images[..., 0], references[..., 0], region=region))


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_foreground_matching_keeps_the_background_and_whole_matching_does_not(resampler):
    images = np.stack([phantom(seed, 32, radius=0.3) for seed in range(4)])[..., None]
    pool = np.stack([phantom(10 + seed, 32, radius=0.5, head=(60, 200)) for seed in range(3)])[..., None]
    background = np.stack([~foreground_mask(image[..., 0]) for image in images])[..., None]
    outputs = {}
    for region in ("foreground", "whole"):
        config = geometry_only(histogram_match_probability=1.0, histogram_match_blend=1.0,
                               histogram_match_region=region)
        outputs[region] = augment_batch(images, pool, config, SEED, resampler=resampler).numpy()
    np.testing.assert_array_equal(outputs["foreground"][background], images[background])
    assert not np.array_equal(outputs["foreground"][~background], images[~background])
    assert (outputs["whole"][background] >= 60).mean() > 0.7  # the old grey background square


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_reference_without_foreground_leaves_the_image_unchanged(resampler):
    images = np.stack([phantom(seed, 32) for seed in range(5)])[..., None]
    pool = np.zeros((1, 32, 32, 1), np.uint8)
    config = geometry_only(histogram_match_probability=1.0, histogram_match_blend=1.0)
    np.testing.assert_array_equal(augment_batch(images, pool, config, SEED, resampler=resampler).numpy(), images)


@pytest.mark.parametrize("resampler", RESAMPLERS)
@pytest.mark.parametrize("case", ["no pool", "empty pool", "empty pool in graph", "probability 0"])
def test_no_matching_without_pool_or_probability(resampler, case):
    images = random_batch(18)
    config = geometry_only(
        histogram_match_probability=0.0 if case == "probability 0" else 1.0, histogram_match_blend=1.0
    )
    pool = {
        "no pool": None,
        "empty pool": np.zeros((0, 32, 32, 1), np.uint8),
        "empty pool in graph": np.zeros((0, 32, 32, 1), np.uint8),
        "probability 0": random_batch(19, (2, 32, 32, 1), 0, 10),
    }[case]
    if case == "empty pool in graph":
        # The pool size is only known when the graph runs.
        augment = tf.function(
            lambda batch, references: augment_batch(batch, references, config, SEED, resampler=resampler),
            input_signature=[tf.TensorSpec([None, 32, 32, 1], tf.uint8), tf.TensorSpec([None, 32, 32, 1], tf.uint8)],
        )
        output = augment(images, pool)
    else:
        output = augment_batch(images, pool, config, SEED, resampler=resampler)
    np.testing.assert_array_equal(output.numpy(), images.astype(np.float32))


@pytest.mark.parametrize("region", ["foreground", "whole"])
def test_matching_probability_is_respected(region):
    images = random_batch(20, (400, 8, 8, 1), 100, 200)
    pool = np.full((1, 8, 8, 1), 120, np.uint8)  # matching makes an image a flat 120 (all of it foreground)
    config = geometry_only(histogram_match_probability=0.3, histogram_match_blend=1.0, histogram_match_region=region)
    output = augment_batch(images, pool, config, SEED).numpy()
    matched_fraction = np.mean(np.all(output == 120, axis=(1, 2, 3)))
    assert 0.22 < matched_fraction < 0.38


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_brightness_scales_image_but_not_fill(resampler):
    images = np.full((12, 24, 24, 1), 255, np.uint8)
    config = geometry_only(zoom=0.6, brightness_low=0.5, brightness_high=0.5, fill_value=100.0)
    output = augment_batch(images, None, config, SEED, resampler=resampler).numpy()
    assert output.min() >= 100.0 - 1e-4 and output.max() <= 127.5 + 1e-4
    assert np.any(np.abs(output - 100.0) < 1e-4) and np.any(np.abs(output - 127.5) < 1e-4)


@pytest.mark.parametrize("region", ["foreground", "whole"])
def test_constant_pool_is_precomputed_inside_graphs_with_the_same_result(region):
    images = random_batch(21, (6, 24, 24, 1))
    images[:3, ..., 0] = [phantom(seed, 24, background=(20, 22)) for seed in range(3)]
    pool = random_batch(22, (5, 24, 24, 1), 0, 120)
    pool[:3, ..., 0] = [phantom(seed, 24, bar=(250, 256)) for seed in range(3, 6)]
    config = AugmentConfig(histogram_match_probability=0.7, histogram_match_region=region)
    captured = tf.function(lambda batch: augment_batch(batch, pool, config, SEED))
    as_argument = tf.function(lambda batch, references: augment_batch(batch, references, config, SEED))
    eager = augment_batch(images, pool, config, SEED)
    np.testing.assert_array_equal(captured(images).numpy(), eager.numpy())
    np.testing.assert_array_equal(as_argument(images, pool).numpy(), eager.numpy())


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_works_in_tf_data_map_with_smaller_last_batch(resampler):
    images = random_batch(23, (25, 24, 24, 1))
    pool = random_batch(24, (4, 24, 24, 1), 0, 90)
    config = AugmentConfig()
    dataset = (
        tf.data.Dataset.from_tensor_slices(images)
        .batch(10)
        .enumerate()
        .map(lambda index, batch: augment_batch(batch, pool, config, tf.stack([tf.constant(5, tf.int64), index]),
                                                resampler=resampler))
        .prefetch(1)
    )
    batches = [batch.numpy() for batch in dataset]
    assert [len(batch) for batch in batches] == [10, 10, 5]
    for index, batch in enumerate(batches):
        direct = augment_batch(images[index * 10 : index * 10 + 10], pool, config,
                               tf.constant([5, index], tf.int64), resampler=resampler)
        # Graph and eager execution may round the transforms' last float bit differently.
        np.testing.assert_allclose(batch, direct.numpy(), atol=1e-3)


def test_works_in_tf_function_with_dynamic_batch():
    augment = tf.function(
        lambda batch, seed: augment_batch(batch, None, AugmentConfig(), seed),
        input_signature=[tf.TensorSpec([None, 24, 24, 1], tf.uint8), tf.TensorSpec([2], tf.int32)],
    )
    for size in (7, 3):
        output = augment(random_batch(size, (size, 24, 24, 1)), tf.constant([1, size]))
        assert output.shape == (size, 24, 24, 1)


ONE_IMAGE = np.zeros((1, 4, 4, 1), np.uint8)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: augment_batch(ONE_IMAGE[0], None, AugmentConfig(), SEED), "B, H, W, C"),
        (lambda: augment_batch(ONE_IMAGE, None, AugmentConfig(), tf.constant([1, 2, 3])), "seed"),
        (lambda: augment_batch(ONE_IMAGE, None, AugmentConfig(), SEED, resampler="cubic"), "resampler"),
        (lambda: augment_batch(ONE_IMAGE, np.zeros((2, 4, 4, 3), np.uint8), AugmentConfig(), SEED), "channel"),
        (lambda: augment_batch(ONE_IMAGE, None, AugmentConfig(zoom=2.0), SEED), "zoom"),
    ],
)
def test_augment_batch_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- preview


def test_preview_montage_layout_and_determinism():
    from augment.preview import caption_height

    images = random_batch(25, (4, 32, 32, 1))[..., 0]
    pool = random_batch(26, (3, 32, 32, 1), 0, 60)[..., 0]
    montage = augment_preview_montage(images, pool, AugmentConfig(), seed=3, variants=2)
    rows = 1 + 2 + 4  # originals, variants, source | reference | matched rows
    width = 4 * (128 + 2) - 2  # 32 px crops are shown at 128 px
    assert montage.dtype == np.uint8 and montage.shape[1:] == (width, 3)
    assert montage.shape[0] >= rows * (18 + 6 + 20 + 128 + 2) - 2  # each row: caption band, label bar, tile
    np.testing.assert_array_equal(montage, augment_preview_montage(images, pool, AugmentConfig(), seed=3, variants=2))
    # The first tile below its caption and label bar is the first original, each pixel a 4 x 4 block.
    top = caption_height("Originals: 4 images (32 px crops, shown enlarged to 128 px)", width) + 20
    np.testing.assert_array_equal(montage[top:top + 128, :128, 0], np.repeat(np.repeat(images[0], 4, 0), 4, 1))
    assert (montage[:top - 20, :width // 2] > 200).any()  # the caption is written


def test_preview_without_pool_and_bad_input():
    images = random_batch(27, (2, 20, 20, 1))[..., 0]
    montage = augment_preview_montage(images, None, AugmentConfig(), seed=0, variants=1)
    assert montage.shape[1:] == (2 * (128 + 2) - 2, 3) and montage.shape[0] >= 2 * (18 + 6 + 20 + 128 + 2) - 2
    large = random_batch(28, (1, 160, 160, 1))[..., 0]
    assert augment_preview_montage(large, None, AugmentConfig(), seed=0, variants=0).shape[1] == 160  # not shrunk
    with pytest.raises(ValueError, match="images"):
        augment_preview_montage(images.astype(np.float32), None, AugmentConfig(), seed=0)


def test_preview_matching_rows_name_the_region():
    from augment.preview import _matching_region_text

    source, reference = phantom(80, 32, background=(30, 31)), phantom(81, 32, bar=(255, 256))
    assert _matching_region_text("foreground", source, reference) == (
        "region: foreground (the head: grey levels 32-255 in the source, 11-254 in the reference), background kept")
    assert _matching_region_text("whole", source, reference) == "region: whole image, background included"
    images = np.stack([phantom(82, 32, radius=0.25)] * 2)
    pool = np.stack([phantom(83, 32, radius=0.5)])
    foreground = augment_preview_montage(images, pool, AugmentConfig(), seed=1, variants=0)
    whole = augment_preview_montage(images, pool, AugmentConfig(histogram_match_region="whole"), seed=1, variants=0)
    # The same tiles; the foreground rows' captions are longer (they name the grey levels).
    assert foreground.shape[1] == whole.shape[1] == 3 * (128 + 2) - 2 and foreground.shape[0] > whole.shape[0]


# ----------------------------------------------------------------------------- reference pool of a run


def test_matching_pool_leaves_out_flagged_crops():
    from types import SimpleNamespace

    from datasets.cache import matching_pool, pool_left_out_text

    images = np.arange(6, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    sites = {"nav": SimpleNamespace(images=images[:4], flags=["ok", "touches_border", "ok", "blank"]),
             "mos": SimpleNamespace(images=images[4:], flags=["no_contour", "ok"])}
    pool, left_out = matching_pool(sites)
    assert pool.dtype == np.uint8 and pool[:, 0, 0].tolist() == [0, 2, 5]
    assert left_out == {"blank": 1, "no_contour": 1, "touches_border": 1}
    assert pool_left_out_text(left_out) == "; 3 left out for their crop flag: 1 blank, 1 no_contour, 1 touches_border"
    assert pool_left_out_text({}) == ""
    assert matching_pool({}) == (None, {})
    flagged, _ = matching_pool({"nav": SimpleNamespace(images=images[:2], flags=["blank", "blank"])})
    assert flagged.shape == (0, 4, 4)
