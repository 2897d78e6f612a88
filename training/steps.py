"""Distributed train and predict steps: one code path for one CPU, many GPUs and many nodes.

A custom ``strategy.run`` step on a Keras 3 model, not ``model.fit``: Keras 3's
``fit`` fails under MultiWorkerMirroredStrategy ("unsupported type
PerReplica"), while this step trains under the default strategy,
MirroredStrategy and MultiWorkerMirroredStrategy alike.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from training.cluster import Cluster
from training.config import TEST_TIME_FLIPS


def make_train_chunk(cluster: Cluster, model, optimizer, *, global_batch: int, label_smoothing: float,
                     class_weights: Sequence[float] = (1.0, 1.0), jit_compile: bool = False) -> Callable:
    """``train_chunk(iterator, steps) -> (losses (steps,), probabilities (steps*B,), labels (steps*B,))``.

    Runs ``steps`` optimizer steps on the next per-replica batches of ``iterator``;
    every output is gathered from all replicas (float32). ``class_weights``
    multiplies the loss of no-tumour (index 0) and tumour (1) images; the loss
    is averaged over the global batch, so replicas add up to one step's loss.
    """
    import keras

    strategy = cluster.strategy
    weights = tf.constant(class_weights, tf.float32)

    def replica_train_step(images, labels):
        with tf.GradientTape() as tape:
            probabilities = tf.cast(model(images, training=True), tf.float32)
            per_example = keras.losses.binary_crossentropy(labels[:, None], probabilities,
                                                           label_smoothing=label_smoothing)
            per_example *= tf.gather(weights, tf.cast(labels, tf.int32))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss, probabilities[:, 0], labels

    replica_train_step = tf.function(replica_train_step, jit_compile=jit_compile)

    @tf.function
    def train_chunk(iterator, steps):
        losses = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
        probabilities = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
        labels = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
        for index in tf.range(steps):
            loss, probs, batch_labels = strategy.run(replica_train_step, args=next(iterator))
            losses = losses.write(index, strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None))
            probabilities = probabilities.write(index, strategy.gather(probs, axis=0))
            labels = labels.write(index, strategy.gather(batch_labels, axis=0))
        return losses.stack(), probabilities.concat(), labels.concat()

    return train_chunk


def make_agreement(cluster: Cluster) -> Callable[[bool], bool]:
    """``agree(flag) -> bool``: True on every worker when any worker's flag is True."""
    if cluster.workers <= 1:
        return bool
    strategy = cluster.strategy

    @tf.function
    def summed(flag):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(flag)), axis=None)

    return lambda flag: int(summed(tf.constant(int(flag))).numpy()) > 0


def make_predict_step(cluster: Cluster, model, test_time_augmentation: str = "none") -> Callable:
    """A tf.function: next batch of an eval iterator -> gathered (probabilities, labels, indices).

    ``model`` is one Keras model or a list of them (a seed ensemble: their
    probabilities are averaged). ``test_time_augmentation="flips"`` averages
    the probabilities of the image and its left-right, up-down and both-ways
    flips (the training augmentation flips both ways).
    """
    strategy = cluster.strategy
    flip_axes = TEST_TIME_FLIPS[test_time_augmentation]
    members = list(model) if isinstance(model, (list, tuple)) else [model]

    def replica_predict(images, labels, indices):
        views = [tf.reverse(images, axis=list(axes)) if axes else images for axes in flip_axes]
        probabilities = [tf.cast(member(view, training=False), tf.float32)[:, 0]
                         for member in members for view in views]
        return tf.add_n(probabilities) / len(probabilities), labels, indices

    @tf.function
    def predict_step(iterator):
        probs, labels, indices = strategy.run(replica_predict, args=next(iterator))
        return (strategy.gather(probs, axis=0), strategy.gather(labels, axis=0),
                strategy.gather(indices, axis=0))

    return predict_step


def predict_site(cluster: Cluster, predict_step, images: np.ndarray, batch_size: int) -> np.ndarray:
    """(N, S, S) uint8 images -> (N,) float32 probabilities, gathered from every replica in input order.

    ``batch_size`` is the global batch (a multiple of the replicas); the last
    batch is padded and the padding dropped. N = 0 gives an empty array.
    """
    from augment.pipeline import eval_dataset

    if len(images) == 0:
        return np.zeros(0, np.float32)
    per_replica = batch_size // cluster.replicas
    steps_holder = {}

    def dataset_fn(context):
        dataset, steps = eval_dataset(images, np.zeros(len(images)), per_replica_batch=per_replica,
                                      global_batch=batch_size, pipeline_id=context.input_pipeline_id,
                                      num_pipelines=context.num_input_pipelines)
        steps_holder["steps"] = steps
        return dataset

    iterator = iter(cluster.strategy.distribute_datasets_from_function(dataset_fn))
    scores = np.zeros(len(images), np.float32)
    for _ in range(steps_holder["steps"]):
        probs, _, indices = predict_step(iterator)
        indices = indices.numpy()
        keep = indices >= 0
        scores[indices[keep]] = probs.numpy()[keep]
    return scores
