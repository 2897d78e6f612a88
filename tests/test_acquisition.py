"""Acquisition randomisation: the in-graph ops against the NumPy oracles, OpenCV, PIL and themselves.

Tolerances: float ops agree with their float64 oracles to 2e-3 grey levels
(float32 rounding on values up to 255); JPEG is compared in whole grey
levels (see the JPEG tests for what is exact and what is measured).
"""
from __future__ import annotations

import dataclasses
import io

import cv2
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from augment import acquisition as oracle  # noqa: E402
from augment import acquisition_tf as ops  # noqa: E402
from augment.config import AugmentConfig  # noqa: E402

FLOAT_TOLERANCE = 2e-3
NOTHING = AugmentConfig.disabled()
SEED = tf.constant([7, 11], tf.int64)


def head_images(count: int = 4, height: int = 24, width: int = 28, seed: int = 0) -> np.ndarray:
    """(count, height, width, 1) float32: noisy bright ellipses of random contrast on a black background."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width]
    images = np.zeros((count, height, width, 1), np.float32)
    for index in range(count):
        inside = ((rows - height / 2) / (0.4 * height)) ** 2 + ((columns - width / 2) / (0.4 * width)) ** 2 < 1
        texture = rng.uniform(30, 230, (height, width))
        images[index, ..., 0] = np.where(inside, texture, 0.0)
    return images


def only(family: str, probability: float = 1.0, **changes) -> AugmentConfig:
    """Every augmentation off except one acquisition family."""
    return dataclasses.replace(NOTHING, **{f"{family}_probability": probability}, **changes)


def per_image(function, images: np.ndarray, *parameters) -> np.ndarray:
    """The oracle ``function(image, *parameters_of_that_image)`` over a batch."""
    return np.stack([function(image, *(parameter[index] for parameter in parameters))
                     for index, image in enumerate(images)])


# ----------------------------------------------------------------------------- ops against oracles

RNG = np.random.default_rng(5)
FLOAT_CASES = [
    # (name, tf op, oracle, parameters for 4 images)
    ("gamma", ops.adjust_gamma_tf, oracle.adjust_gamma, ([0.4, 1.0, 1.7, 3.0],)),
    ("contrast", ops.adjust_contrast_tf, oracle.adjust_contrast, ([0.0, 0.6, 1.0, 2.0],)),
    ("bias_field", ops.apply_bias_field_tf, oracle.apply_bias_field,
     (np.concatenate([np.zeros((1, 9)), RNG.uniform(-1, 1, (3, 9))]), [1.5, 0.0, 0.4, 2.0])),
    ("noise", ops.add_noise_tf, oracle.add_noise, ([0.0, 2.0, 8.0, 40.0], RNG.standard_normal((4, 24, 28, 1)))),
    ("blur", lambda images, sigma: ops.gaussian_blur_tf(images, sigma, 2.5), oracle.gaussian_blur,
     ([0.0, 0.3, 1.0, 2.5],)),
    ("sharpen", lambda images, amount: ops.unsharp_mask_tf(images, amount, 1.3),
     lambda image, amount: oracle.unsharp_mask(image, amount, 1.3), ([0.0, 0.4, 1.0, 3.0],)),
    ("downsample", ops.downsample_upsample_tf, oracle.downsample_upsample, ([1.0, 1.3, 2.0, 3.7],)),
]


@pytest.mark.parametrize("name, tf_op, numpy_op, parameters", FLOAT_CASES, ids=[case[0] for case in FLOAT_CASES])
def test_tf_op_equals_oracle(name, tf_op, numpy_op, parameters):
    images = head_images()
    tf_parameters = [np.asarray(parameter, np.float32) for parameter in parameters]
    output = tf_op(images, *tf_parameters).numpy()
    expected = per_image(numpy_op, images, *tf_parameters)
    assert output.dtype == np.float32 and output.shape == images.shape
    assert output.min() >= 0 and output.max() <= 255
    np.testing.assert_allclose(output, expected, atol=FLOAT_TOLERANCE, rtol=0)


@pytest.mark.parametrize("shape", [(3, 24, 32, 1), (2, 21, 27, 1), (2, 16, 16, 3)])
@pytest.mark.parametrize("quality", [1, 10, 50, 90, 100])
def test_tf_jpeg_equals_oracle(shape, quality):
    """float64 transforms: equal to the oracle; float32 (the default): at most one grey level, rarely."""
    images = np.random.default_rng(quality).integers(0, 256, shape).astype(np.float32)
    qualities = np.full(shape[0], quality, np.int32)
    expected = per_image(oracle.jpeg_reencode, images, qualities)
    exact = ops.jpeg_reencode_tf(images, qualities, dtype=tf.float64).numpy()
    np.testing.assert_array_equal(exact, expected)
    fast = ops.jpeg_reencode_tf(images, qualities).numpy()
    assert np.abs(fast - expected).max() <= 1
    assert np.mean(fast != expected) <= 1e-3
    np.testing.assert_array_equal(fast, np.round(fast))


def test_tf_jpeg_qualities_per_image():
    images = head_images(3, 32, 32)
    qualities = np.array([5, 60, 95], np.int32)
    output = ops.jpeg_reencode_tf(images, qualities, dtype=tf.float64).numpy()
    np.testing.assert_array_equal(output, per_image(oracle.jpeg_reencode, images, qualities))
    errors = np.abs(output - np.round(images)).mean(axis=(1, 2, 3))
    assert errors[0] > errors[1] > errors[2]


# ----------------------------------------------------------------------------- oracles against libraries


@pytest.mark.parametrize("sigma", [0.3, 0.8, 1.5, 2.6])
def test_blur_oracle_equals_opencv(sigma):
    image = head_images(1, 30, 34)[0, ..., 0]
    side = 2 * oracle.blur_radius(sigma) + 1
    expected = cv2.GaussianBlur(image, (side, side), sigma, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(oracle.gaussian_blur(image, sigma), expected, atol=FLOAT_TOLERANCE, rtol=0)


@pytest.mark.parametrize("factor", [1.0, 1.25, 2.0, 2.7, 5.5])
def test_downsample_oracle_equals_opencv(factor):
    image = head_images(1, 37, 41)[0, ..., 0]
    small = (oracle.reduced_size(41, factor), oracle.reduced_size(37, factor))
    expected = cv2.resize(cv2.resize(image, small, interpolation=cv2.INTER_AREA), (41, 37),
                          interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(oracle.downsample_upsample(image, factor), expected, atol=FLOAT_TOLERANCE, rtol=0)


def opencv_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
    return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE).astype(np.float32)


def pil_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())), np.float32)


def smooth_heads(count: int = 3, side: int = 64) -> np.ndarray:
    """(count, side, side) uint8 blurred heads: JPEG behaves on them as on scans, not as on white noise."""
    images = head_images(count, side, side, seed=3)[..., 0]
    return np.stack([np.clip(cv2.GaussianBlur(image, (7, 7), 1.5), 0, 255) for image in images]).astype(np.uint8)


@pytest.mark.parametrize("quality", [10, 30, 50, 75, 95])
def test_jpeg_oracle_close_to_libjpeg(quality):
    """The float DCT against libjpeg's integer DCT (OpenCV and PIL give the same bytes back).

    Measured on these phantoms: mean difference at most 0.14 grey levels,
    at most 3.6 % of pixels more than one level apart, while the encoding
    changes pixels by 0.4-4.8 levels on average (on 224 px brain crops:
    0.02-0.17 levels, at most 1.9 %).
    """
    images = smooth_heads()
    for image in images:
        reference = opencv_jpeg(image, quality)
        np.testing.assert_array_equal(pil_jpeg(image, quality), reference)
        ours = oracle.jpeg_reencode(image, quality)
        difference = np.abs(ours - reference)
        assert difference.mean() <= 0.2
        assert np.mean(difference > 1) <= 0.05
        assert difference.mean() * 3 < np.abs(reference - image).mean()


@pytest.mark.parametrize("quality", [20, 80])
def test_libjpeg_tf_equals_opencv(quality):
    images = smooth_heads(2, 40)
    output = ops.jpeg_reencode_libjpeg_tf(images[..., None], np.full(2, quality, np.int32)).numpy()[..., 0]
    np.testing.assert_array_equal(output, np.stack([opencv_jpeg(image, quality) for image in images]))


@pytest.mark.parametrize("quality, corner, last", [(1, 255, 255), (10, 80, 255), (50, 16, 99), (75, 8, 50),
                                                   (90, 3, 20), (100, 1, 1)])
def test_jpeg_tables_are_libjpeg(quality, corner, last):
    table = oracle.jpeg_quantization_table(quality)
    assert (table[0, 0], table[7, 7]) == (corner, last)
    np.testing.assert_array_equal(ops.jpeg_quantization_tables_tf([quality]).numpy()[0], table)


def test_dct_matrix_is_orthonormal():
    matrix = oracle.dct_matrix()
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(8), atol=1e-12)


# ----------------------------------------------------------------------------- neutral parameters, black


NEUTRAL = [
    # (name, tf op at the neutral parameter, oracle at it, exact in TF)
    ("gamma", lambda x: ops.adjust_gamma_tf(x, [1.0] * 4), lambda x: oracle.adjust_gamma(x, 1.0), False),
    ("contrast", lambda x: ops.adjust_contrast_tf(x, [1.0] * 4), lambda x: oracle.adjust_contrast(x, 1.0), True),
    ("bias_field", lambda x: ops.apply_bias_field_tf(x, RNG.uniform(-1, 1, (4, 9)), [0.0] * 4),
     lambda x: oracle.apply_bias_field(x, np.ones(9), 0.0), True),
    ("noise", lambda x: ops.add_noise_tf(x, [0.0] * 4, np.ones_like(x)),
     lambda x: oracle.add_noise(x, 0.0, np.ones_like(x)), True),
    ("blur", lambda x: ops.gaussian_blur_tf(x, [0.0] * 4, 2.0), lambda x: oracle.gaussian_blur(x, 0.0), True),
    ("sharpen", lambda x: ops.unsharp_mask_tf(x, [0.0] * 4, 1.0), lambda x: oracle.unsharp_mask(x, 0.0, 1.0), True),
    ("downsample", lambda x: ops.downsample_upsample_tf(x, [1.0] * 4),
     lambda x: oracle.downsample_upsample(x, 1.0), False),
]


@pytest.mark.parametrize("name, tf_op, numpy_op, exact", NEUTRAL, ids=[case[0] for case in NEUTRAL])
def test_neutral_parameter_is_identity(name, tf_op, numpy_op, exact):
    images = head_images()
    output = tf_op(images).numpy()
    if exact:
        np.testing.assert_array_equal(output, images)
    else:
        np.testing.assert_allclose(output, images, atol=FLOAT_TOLERANCE, rtol=0)
    np.testing.assert_allclose(numpy_op(images[0]), images[0], atol=1e-9, rtol=0)


KEEPS_BLACK = {
    "gamma": lambda x: ops.adjust_gamma_tf(x, [0.5, 2.0]),
    "contrast": lambda x: ops.adjust_contrast_tf(x, [0.3, 1.8]),
    "bias_field": lambda x: ops.apply_bias_field_tf(x, RNG.uniform(-1, 1, (2, 9)), [2.0, 1.0]),
    "blur": lambda x: ops.gaussian_blur_tf(x, [1.0, 2.0], 2.0),
    "sharpen": lambda x: ops.unsharp_mask_tf(x, [1.0, 3.0], 1.0),
    "downsample": lambda x: ops.downsample_upsample_tf(x, [2.0, 3.0]),
    "jpeg": lambda x: ops.jpeg_reencode_tf(x, [10, 77]),
}


@pytest.mark.parametrize("family", sorted(KEEPS_BLACK))
def test_black_stays_black(family):
    black = np.zeros((2, 24, 24, 1), np.float32)
    np.testing.assert_array_equal(KEEPS_BLACK[family](black).numpy(), black)


def test_contrast_keeps_the_background_of_a_head_black():
    images = head_images(2)
    output = ops.adjust_contrast_tf(images, [0.5, 1.5]).numpy()
    background = images == 0
    assert np.all(output[background] == 0)
    assert np.abs(output - images)[~background].mean() > 5


def test_noise_reaches_the_background_one_sided():
    images = np.zeros((1, 64, 64, 1), np.float32)
    noise = np.random.default_rng(0).standard_normal(images.shape).astype(np.float32)
    output = ops.add_noise_tf(images, [10.0], noise).numpy()
    assert output.min() == 0 and 0.4 < np.mean(output > 0) < 0.6
    # Mean of max(0, N(0, 10)): 10 / sqrt(2 pi) = 3.99.
    assert abs(output.mean() - 3.99) < 0.3


def test_bias_field_stays_within_its_strength():
    coefficients = np.random.default_rng(1).uniform(-1, 1, (5, 9))
    fields = ops.bias_field_tf(40, 50, coefficients, [0.4] * 5).numpy()
    assert fields.min() >= np.exp(-0.4) - 1e-6 and fields.max() <= np.exp(0.4) + 1e-6
    np.testing.assert_allclose(fields[2], oracle.bias_field(40, 50, coefficients[2], 0.4), rtol=1e-5)


def test_shifted_noise_is_the_cyclic_shift():
    field = np.random.default_rng(2).standard_normal((6, 7, 1)).astype(np.float32)
    offsets = np.array([[0, 0], [2, 5], [5, 6]], np.int32)
    shifted = ops.shifted_noise_tf(field, offsets).numpy()
    for index, (row, column) in enumerate(offsets):
        np.testing.assert_array_equal(shifted[index], np.roll(field, (-row, -column), axis=(0, 1)))


# ----------------------------------------------------------------------------- acquisition_batch

FAMILIES = oracle.FAMILY_ORDER
#: Ranges that keep every family away from its neutral value, so that p = 1 changes every image.
STRONG = dict(downsample_factor_low=2.0, blur_sigma_low=1.0, sharpen_amount_low=1.0, bias_field_strength_low=0.5,
              bias_field_strength_high=0.8,
              contrast_low=1.5, contrast_high=1.8, gamma_low=1.5, gamma_high=2.0, noise_sigma_low=5.0,
              jpeg_quality_high=30)
EVERYTHING = dataclasses.replace(NOTHING, **STRONG, **{f"{family}_probability": 0.5 for family in FAMILIES})


def test_all_off_returns_the_input_tensor():
    images = tf.constant(head_images())
    assert ops.acquisition_batch(images, AugmentConfig(), SEED) is images
    assert not AugmentConfig().has_acquisition and not NOTHING.has_acquisition


@pytest.mark.parametrize("family", FAMILIES)
def test_probability_one_changes_every_image_and_zero_none(family):
    images = head_images()
    changed = ops.acquisition_batch(images, only(family, 1.0, **STRONG), SEED).numpy()
    assert all(np.abs(changed[index] - images[index]).max() > 1 for index in range(len(images)))
    unchanged = ops.acquisition_batch(images, dataclasses.replace(EVERYTHING, **{f"{family}_probability": 0.0}),
                                      SEED).numpy()
    alone = ops.acquisition_batch(images, dataclasses.replace(EVERYTHING, **{f"{family}_probability": 1.0}),
                                  SEED).numpy()
    assert not np.array_equal(unchanged, alone)
    never = ops.acquisition_batch(images, only(family, 0.0, **STRONG), SEED).numpy()
    np.testing.assert_array_equal(never, images)


def test_same_seed_same_output_other_seed_other_output():
    images = head_images(6)
    first = ops.acquisition_batch(images, EVERYTHING, tf.constant([1, 2])).numpy()
    again = ops.acquisition_batch(images, EVERYTHING, tf.constant([1, 2])).numpy()
    other = ops.acquisition_batch(images, EVERYTHING, tf.constant([1, 3])).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.dtype == np.float32 and first.min() >= 0 and first.max() <= 255


def oracle_batch(images: np.ndarray, config: AugmentConfig, params: dict) -> np.ndarray:
    """:func:`augment.acquisition.acquisition_image` per image with the sampled parameters."""
    params = {key: np.asarray(value) for key, value in params.items()}
    noise = ops.shifted_noise_tf(params["noise_field"], params["noise_offset"]).numpy()
    values = {
        "downsample": lambda i: params["downsample_factor"][i],
        "blur": lambda i: params["blur_sigma"][i],
        "sharpen": lambda i: (params["sharpen_amount"][i], config.sharpen_sigma),
        "bias_field": lambda i: (params["bias_field_coefficients"][i], params["bias_field_strength"][i]),
        "contrast": lambda i: params["contrast_factor"][i],
        "gamma": lambda i: params["gamma"][i],
        "noise": lambda i: (params["noise_sigma"][i], noise[i]),
        "jpeg": lambda i: int(params["jpeg_quality"][i]),
    }
    return np.stack([oracle.acquisition_image(image, {family: values[family](index) for family in FAMILIES
                                                      if params[f"{family}_applied"][index]})
                     for index, image in enumerate(images)])


def test_batch_equals_the_oracles_in_order():
    """Every family at p = 0.6 on 8 images; JPEG makes whole levels, so a float hair can move one level."""
    images = head_images(8, 32, 32)
    config = dataclasses.replace(EVERYTHING, **{f"{family}_probability": 0.6 for family in FAMILIES})
    params = ops.sample_acquisition_params(SEED, 8, config, 32, 32, 1)
    assert all(0 < np.mean(params[f"{family}_applied"]) < 1 for family in ("gamma", "noise", "jpeg"))
    output = ops.acquisition_batch(images, config, SEED).numpy()
    expected = oracle_batch(images, config, params)
    difference = np.abs(output - expected)
    assert np.mean(difference > FLOAT_TOLERANCE) <= 0.002 and difference.max() <= 2


def test_batch_size_unknown_until_run_time():
    images = head_images(5)
    batched = tf.function(lambda batch: ops.acquisition_batch(batch, EVERYTHING, SEED),
                          input_signature=[tf.TensorSpec([None, 24, 28, 1], tf.float32)])
    np.testing.assert_array_equal(batched(images).numpy(), ops.acquisition_batch(images, EVERYTHING, SEED).numpy())
    assert batched(images[:2]).shape == (2, 24, 28, 1)


def test_uint8_input():
    images = head_images()
    output = ops.acquisition_batch(images.astype(np.uint8), EVERYTHING, SEED).numpy()
    np.testing.assert_array_equal(output, ops.acquisition_batch(images.astype(np.uint8).astype(np.float32),
                                                                EVERYTHING, SEED).numpy())


def test_families_draw_from_their_own_streams():
    with_gamma = ops.sample_acquisition_params(SEED, 16, only("noise", 0.5, gamma_probability=0.5), 8, 8)
    without = ops.sample_acquisition_params(SEED, 16, only("noise", 0.5), 8, 8)
    for key in ("noise_applied", "noise_sigma", "noise_field", "noise_offset"):
        np.testing.assert_array_equal(with_gamma[key].numpy(), without[key].numpy())


@pytest.mark.parametrize("family, key, low, high, neutral", [
    ("gamma", "gamma", 0.7, 1.5, 1.0),
    ("noise", "noise_sigma", 2.0, 8.0, 0.0),
    ("downsample", "downsample_factor", 1.5, 3.0, 1.0),
    ("jpeg", "jpeg_quality", 30, 90, None),
])
def test_sampler_probability_and_range(family, key, low, high, neutral):
    params = ops.sample_acquisition_params(SEED, 20_000, only(family, 0.3), 8, 8)
    applied = params[f"{family}_applied"].numpy()
    values = params[key].numpy()
    assert abs(applied.mean() - 0.3) < 0.015
    assert values[applied].min() >= low and values[applied].max() <= high
    if neutral is not None:
        assert np.all(values[~applied] == neutral)
    else:
        assert values.min() == low and values.max() == high


def test_pipeline_with_acquisition_off_is_augment_batch_bit_for_bit():
    from augment.pipeline import train_dataset
    from augment.tf_ops import augment_batch

    images = head_images(8, 16, 16).astype(np.uint8)[..., 0]
    labels = np.arange(8) % 2
    config = AugmentConfig()
    dataset = train_dataset(images, labels, per_replica_batch=4, epoch=2, seed=3, augment=config,
                            reference_pool=images[:3])
    order = np.random.default_rng([3, 2]).permutation(8)
    for batch_index, (batch, _) in enumerate(dataset):
        step_seed = tf.constant([3, 2 * 1_000_003 + batch_index], tf.int64)
        expected = augment_batch(images[order[4 * batch_index:4 * batch_index + 4], ..., None],
                                 tf.constant(images[:3, ..., None]), config, step_seed)
        np.testing.assert_array_equal(batch.numpy(), expected.numpy())
    with_acquisition = train_dataset(images, labels, per_replica_batch=4, epoch=2, seed=3,
                                     augment=dataclasses.replace(config, noise_probability=1.0),
                                     reference_pool=images[:3])
    first, _ = next(iter(with_acquisition))
    plain, _ = next(iter(dataset))
    assert not np.array_equal(first.numpy(), plain.numpy())


# ----------------------------------------------------------------------------- checks and settings


@pytest.mark.parametrize("changes, message", [
    ({"gamma_probability": 1.5}, "gamma_probability must be in [0, 1]"),
    ({"noise_probability": -0.1}, "noise_probability must be in [0, 1]"),
    ({"gamma_low": 0.0}, "gamma_low must be in (0, 5]"),
    ({"gamma_low": 2.0, "gamma_high": 1.0}, "gamma_low (2.0) must not exceed gamma_high (1.0)"),
    ({"contrast_high": 2.5}, "contrast_high must be in [0, 2]"),
    ({"downsample_factor_low": 0.5}, "downsample_factor_low must be in [1, 8]"),
    ({"blur_sigma_high": 9.0}, "blur_sigma_high must be in [0, 8]"),
    ({"sharpen_sigma": 0.0}, "sharpen_sigma must be in (0, 8]"),
    ({"sharpen_amount_low": -1.0}, "sharpen_amount_low must be in [0, 5]"),
    ({"bias_field_strength_high": 3.0}, "bias_field_strength_high must be in [0, 2]"),
    ({"noise_sigma_high": 51.0}, "noise_sigma_high must be in [0, 50]"),
    ({"jpeg_quality_low": 0}, "jpeg_quality_low must be in [1, 100]"),
    ({"jpeg_quality_high": 30.5}, "jpeg_quality_high must be a whole number"),
    ({"jpeg_quality_low": 95}, "jpeg_quality_low (95) must not exceed jpeg_quality_high (90)"),
    ({"noise_sigma_low": float("nan")}, "noise_sigma_low must be a finite number"),
])
def test_config_validation(changes, message):
    config = dataclasses.replace(AugmentConfig(), **changes)
    with pytest.raises(ValueError) as error:
        config.validate()
    assert message in str(error.value)
    with pytest.raises(ValueError):
        ops.acquisition_batch(head_images(1), config, SEED)


def test_settings_by_flat_key():
    from training.config import FLAT_KEYS, TrainConfig

    config = TrainConfig.from_settings({"augment.gamma_probability": "0.4", "augment.jpeg_quality_low": "20"})
    assert (config.augment.gamma_probability, config.augment.jpeg_quality_low) == (0.4, 20)
    assert config.augment.acquisition_families == ("gamma",)
    params = config.flat_params()
    assert params["augment.gamma_probability"] == "0.4" and params["augment.noise_sigma_high"] == "8.0"
    assert config.to_dict()["augment"]["jpeg_quality_low"] == 20
    for family in FAMILIES:
        assert FLAT_KEYS[f"augment.{family}_probability"][2] == 0.0
    with pytest.raises(ValueError, match="whole number"):
        TrainConfig.from_settings({"augment.jpeg_quality_low": "2.5"})


@pytest.mark.parametrize("call, message", [
    (lambda: oracle.adjust_gamma(np.zeros((4, 4)), 0.0), "gamma must be positive"),
    (lambda: oracle.adjust_contrast(np.zeros((4, 4)), 2.5), "contrast factor must be in [0, 2]"),
    (lambda: oracle.add_noise(np.zeros((4, 4)), 1.0, np.zeros((4, 5))), "standard_normal has shape"),
    (lambda: oracle.downsample_upsample(np.zeros((4, 4)), 0.5), "at least 1"),
    (lambda: oracle.jpeg_reencode(np.zeros((8, 8)), 0), "JPEG quality must be in [1, 100]"),
    (lambda: oracle.bias_field(4, 4, np.zeros(3), 1.0), "coefficients must have shape (9,)"),
    (lambda: oracle.gaussian_blur(np.zeros((4, 4)), 2.0), "kernel radius 6"),
    (lambda: oracle.adjust_gamma(np.zeros(4), 1.0), "(H, W) or (H, W, C)"),
    (lambda: ops.gaussian_blur_tf(np.zeros((1, 6, 6, 1)), [1.0], 2.0), "blur radius of 6 px"),
    (lambda: ops.acquisition_batch(np.zeros((4, 4, 1)), EVERYTHING, SEED), "(B, H, W, C)"),
    (lambda: ops.acquisition_batch(np.zeros((1, 4, 4, 1)), EVERYTHING, tf.constant([1, 2, 3])), "shape [2]"),
])
def test_bad_inputs_are_value_errors(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)


# ----------------------------------------------------------------------------- preview


def test_preview_rows_every_family_and_the_training_path():
    from augment.preview import MIN_TILE, acquisition_preview_rows, augment_preview_montage

    images = head_images(3, 32, 32).astype(np.uint8)[..., 0]
    config = only("gamma", 0.3)
    rows = acquisition_preview_rows(images, None, config, seed=0, side=MIN_TILE, every_family=True)
    assert len(rows) == len(FAMILIES) + 1
    assert [caption.split(",")[1].split()[0] for caption, _ in rows[:-1]] == list(FAMILIES)
    assert "probability 0.3" in rows[5][0] and "off in this configuration" in rows[0][0]
    assert rows[-1][0].startswith("Training path") and all(len(tiles) == 3 for _, tiles in rows)
    assert rows[0][1][0].shape[1] == MIN_TILE
    enabled_only = acquisition_preview_rows(images, None, config, seed=0, side=MIN_TILE)
    assert len(enabled_only) == 2 and enabled_only[0][0].startswith("Acquisition, gamma alone")
    plain = augment_preview_montage(images, None, NOTHING, seed=0, variants=1)
    shown = augment_preview_montage(images, None, NOTHING, seed=0, variants=1, every_acquisition_family=True)
    assert shown.shape[0] > plain.shape[0] + len(FAMILIES) * MIN_TILE
