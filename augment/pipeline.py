"""tf.data input pipelines from cached crops, with the in-graph augmentation.

Training data is sharded by input pipeline (one per worker) at the index
level, batched by the per-replica batch size and augmented batch-wise in the
graph: :func:`augment.tf_ops.augment_batch` (histogram matching,
brightness, one affine resample), then the acquisition families that are
switched on (:func:`augment.acquisition_tf.acquisition_batch`, seeded by
:func:`augment.acquisition_tf.acquisition_seed` of the same batch seed; with
every family off the batches are bit for bit those of ``augment_batch``
alone). Each epoch's order and augmentation are a pure function of
``(seed, epoch, pipeline)``, so a resumed run sees exactly the batches the
interrupted run would have seen.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from augment.acquisition_tf import acquisition_batch, acquisition_seed
from augment.config import AugmentConfig
from augment.tf_ops import augment_batch


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    return options


def train_dataset(images: np.ndarray, labels: np.ndarray, *, per_replica_batch: int, epoch: int, seed: int,
                  pipeline_id: int = 0, num_pipelines: int = 1, augment: AugmentConfig | None = None,
                  reference_pool: np.ndarray | None = None) -> tf.data.Dataset:
    """One epoch of augmented training batches for one input pipeline.

    Args:
        images: (N, S, S) uint8 crops.
        labels: (N,) int labels in {0, 1}.
        per_replica_batch: batch size of each yielded batch.
        epoch: epoch index (changes the shuffle and augmentation).
        seed: run seed.
        pipeline_id, num_pipelines: this worker's shard of the data.
        augment: augmentation settings (None = no augmentation).
        reference_pool: (R, S, S) uint8 histogram-matching references.

    Returns:
        Dataset of ``(images float32 (B, S, S, 1) in [0, 255], labels float32 (B,))``,
        full batches only.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(images))[pipeline_id::num_pipelines]
    image_tensor = tf.constant(images[..., None])
    label_tensor = tf.constant(labels.astype(np.float32))
    pool = None
    if augment is not None and reference_pool is not None and len(reference_pool):
        pool = tf.constant(reference_pool[..., None])

    def gather(indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.gather(image_tensor, indices), tf.gather(label_tensor, indices)

    def transform(batch_index: tf.Tensor, batch: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        batch_images, batch_labels = batch
        if augment is None:
            return tf.cast(batch_images, tf.float32), batch_labels
        step_seed = tf.stack([tf.constant(seed, tf.int64),
                              tf.constant(epoch * 1_000_003 + pipeline_id * 10_007, tf.int64) + batch_index])
        augmented = augment_batch(batch_images, pool, augment, step_seed)
        if augment.has_acquisition:
            augmented = acquisition_batch(augmented, augment, acquisition_seed(step_seed))
        return augmented, batch_labels

    dataset = (tf.data.Dataset.from_tensor_slices(order)
               .batch(per_replica_batch, drop_remainder=True)
               .map(gather)
               .enumerate()
               .map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .prefetch(tf.data.AUTOTUNE))
    return dataset.with_options(_options())


def eval_dataset(images: np.ndarray, labels: np.ndarray, *, per_replica_batch: int, global_batch: int,
                 pipeline_id: int = 0, num_pipelines: int = 1) -> tuple[tf.data.Dataset, int]:
    """Every image once, padded so that every replica runs the same number of steps.

    Padding rows have index -1 and must be dropped after gathering.

    Returns:
        ``(dataset, steps)``; the dataset yields ``(images float32 (B, S, S, 1),
        labels float32 (B,), indices int64 (B,))``.
    """
    count = len(images)
    padded = -(-count // global_batch) * global_batch
    indices = np.full(padded, -1, np.int64)
    indices[:count] = np.arange(count)
    shard = indices[pipeline_id::num_pipelines]
    image_tensor = tf.constant(images[..., None])
    label_tensor = tf.constant(labels.astype(np.float32))

    def gather(batch_indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        safe = tf.maximum(batch_indices, 0)
        return (tf.cast(tf.gather(image_tensor, safe), tf.float32), tf.gather(label_tensor, safe), batch_indices)

    dataset = (tf.data.Dataset.from_tensor_slices(shard)
               .batch(per_replica_batch, drop_remainder=True)
               .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .prefetch(tf.data.AUTOTUNE))
    return dataset.with_options(_options()), padded // global_batch
