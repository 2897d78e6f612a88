"""Training throughput with the real input pipeline vs constant in-memory tensors, in one run.

    python benchmarks/bench_train.py [--image-size 224] [--batch-size 32] [--steps 10]

Both measurements use the same model, optimizer and distributed train step
as ``train`` (``training/``; strategy chosen the same way: GPUs when
present). The pipeline run feeds cached-crop-like uint8 images through
``augment.pipeline.train_dataset`` (histogram matching, affine, brightness,
prefetch); the reference run feeds one constant batch. A ratio near 1 means
input never holds training back. Prints a table and writes
``benchmarks/results/train_throughput_<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--images", type=int, default=1000, help="size of the in-memory training set")
    parser.add_argument("--mixed-precision", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--jit-compile", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--output", default="")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from augment.pipeline import train_dataset
    from training.cluster import choose_precision, choose_strategy
    from training.config import TrainConfig
    from training.loop import build_model_and_optimizer
    from training.steps import make_train_chunk

    cluster = choose_strategy()
    precision = choose_precision(args.mixed_precision, args.jit_compile)
    precision.apply()
    mixed, xla = precision.mixed, precision.xla
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    config = TrainConfig.from_settings({"image_size": args.image_size, "batch_size": args.batch_size,
                                        "weights": "none", "steps_per_execution": args.steps_per_execution})
    model, optimizer = build_model_and_optimizer(config, cluster, mixed)
    train_chunk = make_train_chunk(cluster, model, optimizer, global_batch=args.batch_size,
                                   label_smoothing=config.trainer.label_smoothing, jit_compile=xla)

    rng = np.random.default_rng(0)
    size = args.image_size
    images = rng.integers(0, 256, (args.images, size, size), dtype=np.uint8)
    labels = rng.integers(0, 2, args.images)
    pool = rng.integers(0, 256, (200, size, size), dtype=np.uint8)
    per_replica = args.batch_size // cluster.replicas

    def pipeline_fn(context):
        return train_dataset(images, labels, per_replica_batch=per_replica, epoch=0, seed=0,
                             pipeline_id=context.input_pipeline_id, num_pipelines=context.num_input_pipelines,
                             augment=config.augment, reference_pool=pool).repeat()

    constant_images = tf.constant(rng.uniform(0, 255, (per_replica, size, size, 1)).astype(np.float32))
    constant_labels = tf.constant(rng.integers(0, 2, per_replica).astype(np.float32))

    def constant_fn(context):
        return tf.data.Dataset.from_tensors((constant_images, constant_labels)).repeat()

    def measure(dataset_fn) -> float:
        iterator = iter(cluster.strategy.distribute_datasets_from_function(dataset_fn))
        chunk = tf.constant(args.steps_per_execution)
        for _ in range(max(1, args.warmup // args.steps_per_execution)):
            train_chunk(iterator, chunk)[0].numpy()
        calls = max(1, args.steps // args.steps_per_execution)
        start = time.perf_counter()
        for _ in range(calls):
            losses = train_chunk(iterator, chunk)[0]
        losses.numpy()
        return calls * args.steps_per_execution * args.batch_size / (time.perf_counter() - start)

    constant = measure(constant_fn)
    pipeline = measure(pipeline_fn)
    devices = max(1, cluster.replicas)
    rows = [{"input": "constant in-memory tensors", "images_per_second": constant},
            {"input": "crop cache + tf.data + in-graph augmentation", "images_per_second": pipeline}]
    for row in rows:
        row["images_per_second_per_device"] = row["images_per_second"] / devices
    ratio = pipeline / constant
    print(f"{'input':<46} {'img/s':>9} {'img/s/device':>13}")
    for row in rows:
        print(f"{row['input']:<46} {row['images_per_second']:>9.1f} {row['images_per_second_per_device']:>13.1f}")
    print(f"ratio pipeline / constant: {ratio:.3f}  ({cluster.name}, {cluster.replicas} replica(s), "
          f"mixed precision {mixed}, XLA {xla})")
    device = "gpu" if on_gpu else "cpu"
    gpu_names = [tf.config.experimental.get_device_details(d).get("device_name", "GPU")
                 for d in tf.config.list_physical_devices("GPU")]
    result = {"benchmark": "train_throughput", "device": device, "gpus": gpu_names, "cpu_count": os.cpu_count(),
              "strategy": cluster.name, "replicas": cluster.replicas, "image_size": size,
              "global_batch": args.batch_size, "steps": args.steps, "steps_per_execution": args.steps_per_execution,
              "mixed_precision": mixed, "xla": xla, "tensorflow": tf.__version__, "keras": keras.__version__,
              "machine": platform.platform(), "rows": rows, "ratio_pipeline_over_constant": ratio,
              "goals": {"ratio": 0.9, "gpu_images_per_second_h100": 2500}, "date": time.strftime("%Y-%m-%d")}
    output = Path(args.output or REPO / "benchmarks" / "results" / f"train_throughput_{device}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
