"""The classifier: ResNet50 (no top) + GlobalMaxPooling -> Dense relu -> BatchNorm -> Dropout -> Dense sigmoid.

The project's custom layers are registered with Keras when this module is
imported, so ``keras.models.load_model("model.keras")`` works in any process
that has imported ``training.model`` (``custom_objects()`` returns them for
explicit use).
"""
from __future__ import annotations

import keras

from training.config import ModelConfig


@keras.saving.register_keras_serializable(package="brainmri")
class PerImageStandardization(keras.layers.Layer):
    """(B, H, W, C) -> the same shape, each image to zero mean and unit standard deviation (float32).

    A constant image maps to zeros (its deviation is 0; 1e-3 is added to it).
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, images):
        images = keras.ops.cast(images, "float32")
        mean = keras.ops.mean(images, axis=(1, 2, 3), keepdims=True)
        deviation = keras.ops.std(images, axis=(1, 2, 3), keepdims=True)
        return (images - mean) / (deviation + 1e-3)


def custom_objects() -> dict:
    """The project's Keras layers by name (for ``keras.models.load_model``)."""
    return {"PerImageStandardization": PerImageStandardization}


def build_model(config: ModelConfig, image_size: int, *, synchronized_batch_norm: bool = False) -> keras.Model:
    """The seed recipe's model (or its head on the small CNN, ``config.backbone``).

    Input: (S, S, 1) float32 grey levels in [0, 255]; repeated to RGB and centred
    as ResNet50's ImageNet weights expect (or standardised per image). Output:
    (1,) float32 tumour probability. ``synchronized_batch_norm``: every
    BatchNormalization layer uses the statistics of the global batch across
    replicas, so that training does not depend on how many devices share a batch.
    """
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = keras.layers.Concatenate(name="grey_to_rgb")([inputs, inputs, inputs])
    if config.input_normalization == "per_image":
        x = PerImageStandardization(name="per_image_standardization")(x)
    else:
        x = keras.layers.Normalization(mean=[103.939, 116.779, 123.68], variance=[1.0, 1.0, 1.0],
                                       name="imagenet_centre")(x)
    if config.backbone == "small_cnn":
        x = small_cnn_features(x)
    else:
        x = resnet50_backbone(config, image_size)(x)
    x = keras.layers.GlobalMaxPooling2D(name="global_max_pool")(x)
    x = keras.layers.Dense(config.dense_units, activation="relu", name="dense")(x)
    x = keras.layers.BatchNormalization(name="dense_bn")(x)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="tumour_probability")(x)
    model = keras.Model(inputs, outputs, name=f"brainmri_{config.backbone}")
    if synchronized_batch_norm:
        synchronize_batch_norm(model)
    return model


def resnet50_backbone(config: ModelConfig, image_size: int) -> keras.Model:
    """ResNet50 without top: (B, S, S, 3) centred RGB -> (B, S/32, S/32, 2048); weights and freezing per ``config``."""
    weights = config.weights
    backbone_weights = "imagenet" if weights == "imagenet" else None
    try:
        backbone = keras.applications.ResNet50(include_top=False, weights=backbone_weights,
                                               input_shape=(image_size, image_size, 3))
    except Exception as error:  # offline node without the Keras cache
        raise RuntimeError(
            "could not load ImageNet weights for ResNet50 (offline node?). Stage them in the Keras cache "
            "(~/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5) or pass "
            f"--weights PATH; cause: {error}") from error
    if weights not in ("imagenet", "none"):
        try:
            backbone.load_weights(weights)
        except Exception as error:
            raise ValueError(f"weights file {weights!r} cannot be loaded into ResNet50: {error}") from None
    if weights != "none" and config.freeze_until:
        names = [layer.name for layer in backbone.layers]
        if config.freeze_until not in names:
            raise ValueError(f"freeze_until layer {config.freeze_until!r} is not in ResNet50")
        for layer in backbone.layers[: names.index(config.freeze_until) + 1]:
            layer.trainable = False
    return backbone


def small_cnn_features(x):
    """Eight 3x3 convolutions in four blocks of two (16, 32, 64, 128 filters), each conv -> BatchNorm -> ReLU,
    2x2 max-pooling after each block: (B, S, S, C) float -> (B, S/16, S/16, 128). About 0.29 M weights,
    against 23.6 M in ResNet50; from scratch only.
    """
    for block, filters in enumerate((16, 32, 64, 128), start=1):
        for index in (1, 2):
            name = f"cnn_block{block}_conv{index}"
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
            x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
            x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"cnn_block{block}_pool")(x)
    return x


def synchronize_batch_norm(model: keras.Model) -> int:
    """Make every BatchNormalization layer of ``model`` use cross-replica statistics; returns how many."""
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count


def random_state_variables(model: keras.Model) -> list:
    """The state variables of every random-number generator in ``model`` (e.g. Dropout's).

    They decide the next dropout masks but are not among the variables a
    ``tf.train.Checkpoint`` of the model saves, so the checkpoint stores them explicitly.
    """
    states = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for generator in getattr(layer, "_seed_generators", []):
            states.append(generator.state)
    return states
