"""Run by tests/test_mirrored.py in a fresh process: 1 replica vs MirroredStrategy on 2 logical CPUs.

Prints one JSON line: how many BatchNormalization layers synchronise (ResNet50 and the small
backbone), per-step losses and first-step probabilities of the project's model on the small backbone
over four steps, and the AUC of predictions gathered from 1 and 2 replicas.
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


config = TrainConfig.from_settings({"image_size": 32, "weights": "none", "dropout": 0, "dense_units": 16,
                                    "batch_size": GLOBAL_BATCH, "backbone": "small_cnn"})
resnet_config = config.replace(backbone="resnet50")
result = {}
for replicas in (1, 2):
    cluster = choose_strategy(cpu_replicas=replicas)
    keras.utils.set_random_seed(0)
    # ResNet50 is only built (which BatchNormalization layers synchronise); training it here would spend
    # minutes building its graph twice. The project's model on the small backbone is trained.
    resnet, _ = build_model_and_optimizer(resnet_config, cluster, mixed=False)
    resnet_synchronized = sum(getattr(layer, "synchronized", False) for layer in resnet._flatten_layers())
    keras.utils.set_random_seed(0)
    model, optimizer = build_model_and_optimizer(config, cluster, mixed=False)
    synchronized = sum(getattr(layer, "synchronized", False) for layer in model._flatten_layers())
    scores = predict_site(cluster, make_predict_step(cluster, model), images, GLOBAL_BATCH)
    chunk = make_train_chunk(cluster, model, optimizer, global_batch=GLOBAL_BATCH, label_smoothing=0.01)
    losses, probabilities, _ = chunk(batches(cluster), tf.constant(4))
    result[replicas] = {"strategy": cluster.name, "replicas": cluster.replicas,
                        "resnet_synchronized": int(resnet_synchronized), "synchronized": int(synchronized),
                        "auc": roc_auc(labels, scores), "scores": scores.tolist(),
                        "losses": losses.numpy().tolist(), "first_probabilities": probabilities.numpy()[:GLOBAL_BATCH].tolist()}
print(json.dumps(result))
