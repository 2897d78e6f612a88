"""Throughput of the in-graph augmentation against a naive per-image pipeline.

All run in the same process on the same images (224x224 single-channel
uint8; real brain-MRI images decoded and resized as a stand-in for the crop
cache when the shared data is present, synthetic otherwise), with the
default recipe plus every acquisition family at probability
``--acquisition-probability`` (0.3; 0 measures the recipe alone):

* ``tf.data + augment_batch + acquisition_batch``: batches of
  ``--batch-size`` through ``augment.tf_ops.augment_batch`` and
  ``augment.acquisition_tf.acquisition_batch`` inside ``Dataset.map`` with
  prefetch, TensorFlow limited to ``--threads`` CPU threads;
* ``naive per-image``: a Python loop per image: float
  ``skimage.exposure.match_histograms`` with probability p, a random affine
  via ``scipy.ndimage.affine_transform`` (bilinear) and a brightness multiply,
  then the acquisition families one image at a time (:func:`naive_acquisition`:
  OpenCV resize, blur and JPEG, NumPy noise, gamma, contrast and bias field);
* ``naive Keras ImageDataGenerator``: the original recipe, float skimage
  matching plus ``ImageDataGenerator.random_transform`` per image, then the
  same per-image acquisition.

The naive pipelines are timed on ``--naive-images`` images, single-threaded
as a Python loop runs. The whole comparison is run ``--repeats`` times and
the spread of the ratios reported (the machine may be shared). Then, unless
``--no-families``, each acquisition family alone at probability 1: in-graph
(``acquisition_batch`` only) against its naive per-image version, in
microseconds per image. Prints tables (method, images/s, ratio to the faster
naive pipeline, images per CPU-second of this process) and writes JSON.

Usage:
    python benchmarks/bench_augment.py --images 600 --batch-size 100 --size 224 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import cv2
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def data_root() -> pathlib.Path | None:
    """The shared data folder: ``$BRAINMRI_DATA`` or ``../shared/data``; None if absent."""
    candidate = os.environ.get("BRAINMRI_DATA")
    path = pathlib.Path(candidate) if candidate else REPO_ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


def image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def evenly_spaced(items: list, count: int) -> list:
    if count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).astype(int)]


def load_grey(paths: list[pathlib.Path], size: int) -> np.ndarray:
    """Decode as grey and resize to (size, size); unreadable files are skipped."""
    images = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            continue
        images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(images).astype(np.uint8)


def synthetic_images(count: int, size: int, seed: int) -> np.ndarray:
    """Noisy bright disks of random size and contrast on a dark background."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:size, 0:size]
    images = np.empty((count, size, size), dtype=np.uint8)
    for index in range(count):
        radius = rng.uniform(0.25, 0.45) * size
        inside = (rows - size / 2) ** 2 + (columns - size / 2) ** 2 < radius**2
        image = rng.normal(20, 8, (size, size)) + inside * rng.uniform(60, 160)
        images[index] = np.clip(image, 0, 255).astype(np.uint8)
    return images


def load_images(count: int, pool_count: int, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Training images (one site) and a reference pool (other sites)."""
    root = data_root()
    if root is not None and (root / "br35h").is_dir():
        training = evenly_spaced(image_files(root / "br35h"), count)
        others = [p for site in ("nav", "mos") if (root / site).is_dir() for p in image_files(root / site)]
        if training and others:
            return load_grey(training, size), load_grey(evenly_spaced(others, pool_count), size), "real"
    return synthetic_images(count, size, 0), synthetic_images(pool_count, size, 1), "synthetic"


def naive_augment(images: np.ndarray, pool: np.ndarray, config, seed: int) -> list[np.ndarray]:
    """Per-image augmentation in Python, the way ImageDataGenerator works."""
    from scipy import ndimage
    from skimage.exposure import match_histograms

    rng = np.random.default_rng(seed)
    outputs = []
    height, width = images.shape[1:3]
    for image in images:
        image = image.astype(np.float64)
        if rng.random() < config.histogram_match_probability:
            reference = pool[rng.integers(len(pool))].astype(np.float64)
            matched = match_histograms(image, reference)
            image = (1 - config.histogram_match_blend) * image + config.histogram_match_blend * matched
        angle = np.deg2rad(rng.uniform(-config.rotation_degrees, config.rotation_degrees))
        shear = np.deg2rad(rng.uniform(-config.shear_degrees, config.shear_degrees))
        zoom = rng.uniform(1 - config.zoom, 1 + config.zoom)
        shift = np.array([rng.uniform(-config.height_shift, config.height_shift) * height,
                          rng.uniform(-config.width_shift, config.width_shift) * width])
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        shearing = np.array([[1.0, 0.0], [np.tan(shear), 1.0]])
        matrix = rotation @ shearing / zoom
        if config.vertical_flip and rng.random() < 0.5:
            matrix = matrix @ np.diag([-1.0, 1.0])
        if config.horizontal_flip and rng.random() < 0.5:
            matrix = matrix @ np.diag([1.0, -1.0])
        centre = np.array([(height - 1) / 2, (width - 1) / 2])
        offset = centre - matrix @ (centre + shift)
        image = ndimage.affine_transform(image, matrix, offset, order=1, mode="constant", cval=config.fill_value)
        image = image * rng.uniform(config.brightness_low, config.brightness_high)
        image = np.clip(image, 0, 255).astype(np.float32)
        if config.has_acquisition:
            image = naive_acquisition(image, config, rng)
        outputs.append(image)
    return outputs


def keras_generator_augment(images: np.ndarray, pool: np.ndarray, config, seed: int) -> list[np.ndarray]:
    """The seed recipe itself: Keras' ImageDataGenerator.random_transform plus float skimage matching."""
    from skimage.exposure import match_histograms
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(
        rotation_range=config.rotation_degrees,
        width_shift_range=config.width_shift,
        height_shift_range=config.height_shift,
        zoom_range=config.zoom,
        shear_range=config.shear_degrees,
        brightness_range=(config.brightness_low, config.brightness_high),
        horizontal_flip=config.horizontal_flip,
        vertical_flip=config.vertical_flip,
        fill_mode="constant",
        cval=config.fill_value,
    )
    rng = np.random.default_rng(seed)
    outputs = []
    for image in images:
        image = image[..., None].astype(np.float32)
        if rng.random() < config.histogram_match_probability:
            reference = pool[rng.integers(len(pool))][..., None].astype(np.float32)
            image = match_histograms(image, reference, channel_axis=-1)
        image = generator.random_transform(image, seed=int(rng.integers(2**31)))
        if config.has_acquisition:
            image = naive_acquisition(image[..., 0], config, rng)[..., None]
        outputs.append(image)
    return outputs


def naive_acquisition(image: np.ndarray, config, rng: np.random.Generator) -> np.ndarray:
    """The acquisition families on one float image, the way a per-image pipeline does them.

    Same families, order, probabilities and ranges as
    ``augment.acquisition_tf.acquisition_batch``; OpenCV where it has the
    operation (resize, Gaussian blur, JPEG), the NumPy oracles of
    ``augment.acquisition`` otherwise, fresh NumPy noise for every image.
    """
    from augment import acquisition

    def drawn(family: str) -> bool:
        return rng.random() < getattr(config, f"{family}_probability")

    image = np.clip(image, 0, 255).astype(np.float32)
    height, width = image.shape
    if drawn("downsample"):
        factor = rng.uniform(config.downsample_factor_low, config.downsample_factor_high)
        small = (acquisition.reduced_size(width, factor), acquisition.reduced_size(height, factor))
        image = cv2.resize(cv2.resize(image, small, interpolation=cv2.INTER_AREA), (width, height),
                           interpolation=cv2.INTER_LINEAR)
    if drawn("blur"):
        sigma = rng.uniform(config.blur_sigma_low, config.blur_sigma_high)
        side = 2 * acquisition.blur_radius(sigma) + 1
        image = cv2.GaussianBlur(image, (side, side), sigma, borderType=cv2.BORDER_REFLECT_101)
    if drawn("sharpen"):
        amount = rng.uniform(config.sharpen_amount_low, config.sharpen_amount_high)
        side = 2 * acquisition.blur_radius(config.sharpen_sigma) + 1
        blurred = cv2.GaussianBlur(image, (side, side), config.sharpen_sigma, borderType=cv2.BORDER_REFLECT_101)
        image = np.clip(image + amount * (image - blurred), 0, 255)
    if drawn("bias_field"):
        strength = rng.uniform(config.bias_field_strength_low, config.bias_field_strength_high)
        coefficients = rng.uniform(-1, 1, len(acquisition.BIAS_FIELD_TERMS))
        image = acquisition.apply_bias_field(image, coefficients, strength)
    if drawn("contrast"):
        image = acquisition.adjust_contrast(image, rng.uniform(config.contrast_low, config.contrast_high))
    if drawn("gamma"):
        image = acquisition.adjust_gamma(image, rng.uniform(config.gamma_low, config.gamma_high))
    if drawn("noise"):
        sigma = rng.uniform(config.noise_sigma_low, config.noise_sigma_high)
        image = np.clip(image + sigma * rng.standard_normal(image.shape, dtype=np.float32), 0, 255)
    if drawn("jpeg"):
        quality = int(rng.integers(config.jpeg_quality_low, config.jpeg_quality_high + 1))
        levels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        encoded = cv2.imencode(".jpg", levels, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
        image = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
    return np.asarray(image, np.float32)


def measure(step, count: int, images_per_step: int) -> dict:
    """Run ``step`` ``count`` times; images per wall second and per CPU second of this process."""
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(count):
        step()
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    return {"images_per_second": count * images_per_step / wall,
            "images_per_cpu_second": count * images_per_step / max(cpu, 1e-9)}


def time_naive(augment, images: np.ndarray, pool: np.ndarray, config) -> dict:
    augment(images[:5], pool, config, seed=1)  # imports and first calls
    return measure(lambda: augment(images, pool, config, seed=2), 1, len(images))


def time_tf_pipeline(images: np.ndarray, pool: np.ndarray, config, resampler: str, batch_size: int,
                     parallel_calls: int, warmup_batches: int, timed_batches: int,
                     recipe: bool = True) -> dict:
    """Images per second of ``Dataset.map`` over whole batches: the recipe (unless ``recipe=False``)
    then the acquisition families, seeded as ``augment.pipeline.train_dataset`` seeds them."""
    import tensorflow as tf

    from augment.acquisition_tf import acquisition_batch, acquisition_seed
    from augment.tf_ops import augment_batch

    pool_tensor = tf.constant(pool[..., None])
    run_seed = tf.constant(1234, tf.int64)

    def augment(batch_index, batch):
        step_seed = tf.stack([run_seed, batch_index])
        if recipe:
            batch = augment_batch(batch, pool_tensor, config, step_seed, resampler=resampler)
        return acquisition_batch(batch, config, acquisition_seed(step_seed))

    dataset = (
        tf.data.Dataset.from_tensor_slices(images[..., None])
        .repeat()
        .batch(batch_size)
        .enumerate()
        .map(augment, num_parallel_calls=parallel_calls, deterministic=True)
        .prefetch(2)
    )
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    return measure(lambda: next(iterator), timed_batches, batch_size)


def time_families(images: np.ndarray, config, args) -> list[dict]:
    """Each acquisition family alone at probability 1: in-graph and naive microseconds per image."""
    import dataclasses

    from augment.acquisition import FAMILY_ORDER
    from augment.config import AugmentConfig

    rows = []
    naive_images = images[: min(args.naive_images, 100)].astype(np.float32)
    for family in FAMILY_ORDER:
        alone = dataclasses.replace(AugmentConfig.disabled(), **{
            name: getattr(config, name) for name in config.to_dict() if name.startswith(family + "_")})
        alone = dataclasses.replace(alone, **{f"{family}_probability": 1.0})
        rates = time_tf_pipeline(images, images[:1], alone, "xla", args.batch_size, args.parallel_calls,
                                 max(2, args.warmup_batches // 2), args.family_batches, recipe=False)
        rng = np.random.default_rng(3)
        naive_acquisition(naive_images[0], alone, rng)
        start = time.perf_counter()
        for image in naive_images:
            naive_acquisition(image, alone, rng)
        naive_us = (time.perf_counter() - start) / len(naive_images) * 1e6
        in_graph_us = 1e6 / rates["images_per_second"]
        rows.append({"family": family,
                     "in_graph_us_per_image": round(in_graph_us, 1),
                     "in_graph_cpu_us_per_image": round(1e6 / rates["images_per_cpu_second"], 1),
                     "naive_us_per_image": round(naive_us, 1),
                     "naive_over_in_graph": round(naive_us / in_graph_us, 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600, help="training images to load")
    parser.add_argument("--pool", type=int, default=200, help="reference images from other sites")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--size", type=int, default=224, help="side of the square images")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow CPU threads")
    parser.add_argument("--parallel-calls", type=int, default=2, help="num_parallel_calls of Dataset.map")
    parser.add_argument("--timed-batches", type=int, default=40)
    parser.add_argument("--warmup-batches", type=int, default=6)
    parser.add_argument("--naive-images", type=int, default=200)
    parser.add_argument("--acquisition-probability", type=float, default=0.3,
                        help="probability of every acquisition family (0: the recipe alone)")
    parser.add_argument("--repeats", type=int, default=3, help="times the whole comparison is run")
    parser.add_argument("--no-families", action="store_true", help="skip the per-family table")
    parser.add_argument("--family-batches", type=int, default=8, help="timed batches per family, in-graph")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "augment.json"))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from augment.acquisition import FAMILY_ORDER
    from augment.config import AugmentConfig

    config = AugmentConfig(**{f"{family}_probability": args.acquisition_probability for family in FAMILY_ORDER})
    config.validate()
    load_before = os.getloadavg()[0]
    images, pool, source = load_images(args.images, args.pool, args.size)
    print(f"{len(images)} training images, {len(pool)} reference images ({source}), {args.size}x{args.size} uint8; "
          f"acquisition families {', '.join(config.acquisition_families) or 'off'} at probability "
          f"{args.acquisition_probability:g}")

    tf_methods = [f"tf.data + augment_batch{' + acquisition_batch' if config.has_acquisition else ''} ({resampler})"
                  for resampler in ("xla", "projective")]
    repeats = []
    for repeat in range(args.repeats):
        measured = []
        for method, resampler in zip(tf_methods, ("xla", "projective")):
            rates = time_tf_pipeline(images, pool, config, resampler, args.batch_size, args.parallel_calls,
                                     args.warmup_batches, args.timed_batches)
            measured.append((method, rates))
        naive_rates = [time_naive(naive_augment, images[: args.naive_images], pool, config)]
        measured.append(("naive per-image (scipy + skimage float)", naive_rates[0]))
        try:
            naive_rates.append(time_naive(keras_generator_augment, images[: args.naive_images], pool, config))
            measured.append(("naive Keras ImageDataGenerator + skimage", naive_rates[1]))
        except ImportError as error:
            print(f"Keras ImageDataGenerator not available ({error}); skipped")
        # Ratios are against the faster naive pipeline.
        naive_rate = max(rates["images_per_second"] for rates in naive_rates)
        naive_cpu_rate = max(rates["images_per_cpu_second"] for rates in naive_rates)

        print(f"\nrepeat {repeat + 1} of {args.repeats} (load average {os.getloadavg()[0]:.2f})")
        print(f"{'method':<62} {'images/s':>10} {'ratio':>8} {'images/cpu-s':>13} {'cpu ratio':>10}")
        for method, rates in measured:
            rate, cpu_rate = rates["images_per_second"], rates["images_per_cpu_second"]
            print(f"{method:<62} {rate:>10.1f} {rate / naive_rate:>7.1f}x "
                  f"{cpu_rate:>13.1f} {cpu_rate / naive_cpu_rate:>9.1f}x")
        repeats.append([
            {
                "method": method,
                "images_per_second": round(rates["images_per_second"], 1),
                "images_per_cpu_second": round(rates["images_per_cpu_second"], 1),
                "ratio_to_naive": round(rates["images_per_second"] / naive_rate, 2),
                "cpu_second_ratio_to_naive": round(rates["images_per_cpu_second"] / naive_cpu_rate, 2),
            }
            for method, rates in measured
        ])

    spread = {}
    for method in tf_methods:
        for key in ("ratio_to_naive", "cpu_second_ratio_to_naive", "images_per_second"):
            values = [row[key] for rows in repeats for row in rows if row["method"] == method]
            spread.setdefault(method, {})[key] = {"mean": round(float(np.mean(values)), 2),
                                                  "min": round(float(np.min(values)), 2),
                                                  "max": round(float(np.max(values)), 2)}
    print(f"\nover {args.repeats} repeats: ratio to the faster naive pipeline, mean (min to max)")
    for method, numbers in spread.items():
        wall, cpu = numbers["ratio_to_naive"], numbers["cpu_second_ratio_to_naive"]
        print(f"{method:<62} wall {wall['mean']:.1f}x ({wall['min']:.1f} to {wall['max']:.1f}), "
              f"cpu {cpu['mean']:.1f}x ({cpu['min']:.1f} to {cpu['max']:.1f})")

    families = [] if args.no_families else time_families(images, config, args)
    if families:
        print(f"\neach family alone at probability 1 ({args.size} px, batches of {args.batch_size}): "
              "microseconds per image")
        print(f"{'family':<12} {'in-graph wall':>14} {'in-graph cpu':>13} {'naive':>8} {'naive / in-graph wall':>22}")
        for row in families:
            print(f"{row['family']:<12} {row['in_graph_us_per_image']:>14.1f} "
                  f"{row['in_graph_cpu_us_per_image']:>13.1f} {row['naive_us_per_image']:>8.1f} "
                  f"{row['naive_over_in_graph']:>21.2f}x")

    best_rate = spread[tf_methods[0]]["images_per_second"]["mean"]
    best_ratio = spread[tf_methods[0]]["ratio_to_naive"]
    result = {
        "benchmark": "augment",
        "settings": {
            "images": int(len(images)),
            "reference_pool": int(len(pool)),
            "image_source": source,
            "size": args.size,
            "batch_size": args.batch_size,
            "tensorflow_threads": args.threads,
            "map_parallel_calls": args.parallel_calls,
            "timed_batches": args.timed_batches,
            "warmup_batches": args.warmup_batches,
            "naive_images": int(min(args.naive_images, len(images))),
            "acquisition_probability": args.acquisition_probability,
            "repeats": args.repeats,
            "config": config.to_dict(),
        },
        "machine": {
            "cpu_cores": os.cpu_count(),
            "load_average_1min_before_and_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "platform": platform.platform(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
        },
        "results": repeats[-1],
        "repeats": repeats,
        "spread_over_repeats": spread,
        "families_alone": families,
        "naive_reference": "the faster naive pipeline",
        "goals": {
            "images_per_second_at_least": 1500,
            "ratio_to_naive_at_least": 20,
            "met": bool(best_rate >= 1500 and best_ratio["mean"] >= 20),
            "met_in_every_repeat": bool(best_ratio["min"] >= 20),
        },
    }
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
