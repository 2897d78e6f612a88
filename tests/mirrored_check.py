"""Run by tests/test_mirrored.py in a fresh process: 1 replica vs MirroredStrategy on 2 logical CPUs.

Prints one JSON line: per-step losses of both, for the real model (first step) and a small
BatchNorm network (a few steps), and the AUC of predictions gathered from 1 and 2 replicas.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.cluster import split_cpu  # noqa: E402

split_cpu(2)  # before TensorFlow starts its devices

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from augment.pipeline import train_dataset  # noqa: E402
from eval.metrics import roc_auc  # noqa: E402
from training.cluster import choose_strategy  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.loop import build_model_and_optimizer  # noqa: E402
from training.steps import make_predict_step, make_train_chunk, predict_site  # noqa: E402

GLOBAL_BATCH = 16
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (64, 32, 32), dtype=np.uint8)
labels = rng.integers(0, 2, 64)


def batches(cluster):
    return iter(cluster.strategy.distribute_datasets_from_function(lambda context: train_dataset(
        images, labels, per_replica_batch=GLOBAL_BATCH // cluster.replicas, epoch=0, seed=0, augment=None)))


def small_model(cluster):
    with cluster.strategy.scope():
        inputs = keras.Input((32, 32, 1))
        x = keras.layers.Rescaling(1 / 255)(inputs)
        x = keras.layers.Conv2D(8, 3, activation="relu")(x)
        x = keras.layers.BatchNormalization(synchronized=cluster.replicas > 1)(x)
        x = keras.layers.Conv2D(8, 3, activation="relu")(x)
        outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalMaxPooling2D()(x))
        model = keras.Model(inputs, outputs)
        optimizer = keras.optimizers.Adam(1e-3)
        optimizer.build(model.trainable_variables)
    return model, optimizer


config = TrainConfig.from_settings({"image_size": 32, "weights": "none", "dropout": 0, "dense_units": 16,
                                    "batch_size": GLOBAL_BATCH})
result = {}
for replicas in (1, 2):
    cluster = choose_strategy(cpu_replicas=replicas)
    keras.utils.set_random_seed(0)
    model, optimizer = build_model_and_optimizer(config, cluster, mixed=False)
    synchronized = sum(getattr(layer, "synchronized", False) for layer in model._flatten_layers())
    scores = predict_site(cluster, make_predict_step(cluster, model), images, GLOBAL_BATCH)
    chunk = make_train_chunk(cluster, model, optimizer, global_batch=GLOBAL_BATCH, label_smoothing=0.01)
    losses, probabilities, _ = chunk(batches(cluster), tf.constant(1))
    keras.utils.set_random_seed(0)
    small, small_optimizer = small_model(cluster)
    small_chunk = make_train_chunk(cluster, small, small_optimizer, global_batch=GLOBAL_BATCH, label_smoothing=0.0)
    small_losses = small_chunk(batches(cluster), tf.constant(4))[0]
    result[replicas] = {"strategy": cluster.name, "replicas": cluster.replicas, "synchronized": int(synchronized),
                        "auc": roc_auc(labels, scores), "scores": scores.tolist(),
                        "first_loss": float(losses.numpy()[0]), "first_probabilities": probabilities.numpy().tolist(),
                        "small_losses": small_losses.numpy().tolist()}
print(json.dumps(result))
