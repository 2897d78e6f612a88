"""Grad-CAM heat maps for a Keras 3 binary classifier, plus a picture montage.

Grad-CAM (Selvaraju et al., 2017): take the feature maps A_k (h, w) of a
late convolutional layer, weight each channel by the spatial mean of
d(output)/d(A_k), sum, keep the positive part and upsample to the image.
Here the output is the model's single sigmoid unit, the probability of
tumour, so the map shows evidence FOR tumour whatever the prediction was.

TensorFlow and Keras are imported inside :func:`grad_cam` only, so the
montage and example-selection helpers stay cheap to import.
"""
from __future__ import annotations

import cv2
import numpy as np

#: Order and meaning of the example kinds returned by select_gradcam_examples.
EXAMPLE_KINDS = ("tp", "fp", "tn", "fn")


def _node_tensors(layer, attribute: str):
    """The tensors one top-level layer consumes or produces in its parent graph.

    ``layer.output`` of a nested model is the tensor inside the nested graph,
    so the parent-graph tensors are read from the layer's inbound node.
    """
    nodes = getattr(layer, "_inbound_nodes", None)
    if not nodes:
        raise ValueError(
            f"layer {layer.name!r} is not connected in a functional graph; "
            "grad_cam needs a functional or Sequential Keras model"
        )
    if len(nodes) != 1:
        raise ValueError(f"layer {layer.name!r} is called {len(nodes)} times; cannot pick one")
    tensors = list(getattr(nodes[0], attribute))
    return tensors[0] if len(tensors) == 1 else tensors


def _single(tensors):
    return tensors[0] if isinstance(tensors, (list, tuple)) and len(tensors) == 1 else tensors


def _has_rank4_output(layer) -> bool:
    if layer.__class__.__name__ == "InputLayer":
        return False
    try:
        output = _node_tensors(layer, "output_tensors")
    except ValueError:
        return False
    return not isinstance(output, list) and len(output.shape) == 4


def find_last_conv_layer(model) -> str:
    """Name of the last top-level layer of ``model`` with a 4-D (B, h, w, c) output.

    For ``keras.Model(inputs, outputs)`` that calls a backbone such as
    ``keras.applications.ResNet50(include_top=False)`` as one layer, this is
    the backbone itself, whose output is its last convolutional block. For a
    flat model it is the last layer before global pooling or flattening.
    """
    for layer in reversed(model.layers):
        if _has_rank4_output(layer):
            return layer.name
    raise ValueError("model has no layer with a 4-D (batch, height, width, channels) output")


def _find_nested(model, layer_name: str):
    """``(top-level sub-model, layer)`` where ``layer_name`` lives inside it, else None."""
    for layer in model.layers:
        inner_layers = getattr(layer, "layers", None)
        if not inner_layers:
            continue
        try:
            layer.get_layer(layer_name)
            return layer
        except ValueError:
            if _find_nested(layer, layer_name) is not None:
                return layer
    return None


def _features_and_output(model, layer_name: str):
    """A callable ``images -> (features (B, h, w, c), output)`` for ``model``.

    A top-level layer gives one model mapping the inputs to both tensors. A
    layer inside a nested sub-model splits the graph into the part before
    the sub-model, the sub-model (recursively) and the part after it.
    """
    import keras

    inputs = _single(list(model.inputs))
    output = _single(list(model.outputs))
    top_level_names = [layer.name for layer in model.layers]
    if layer_name in top_level_names:
        features = _node_tensors(model.get_layer(layer_name), "output_tensors")
        return keras.Model(inputs, [features, output])
    sub_model = _find_nested(model, layer_name)
    if sub_model is None:
        raise ValueError(f"no layer named {layer_name!r} in the model or its sub-models")
    try:
        before = keras.Model(inputs, _node_tensors(sub_model, "input_tensors"))
        after = keras.Model(_node_tensors(sub_model, "output_tensors"), output)
    except ValueError as error:
        raise ValueError(
            f"cannot split the model around sub-model {sub_model.name!r}: {error}"
        ) from error
    inner = _features_and_output(sub_model, layer_name)

    def run(images, training=False):
        features, sub_output = inner(before(images, training=training), training=training)
        return features, after(sub_output, training=training)

    return run


def grad_cam(
    model,
    images: np.ndarray,
    *,
    layer_name: str | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Grad-CAM heat maps of the tumour probability.

    Args:
        model: Keras 3 functional (or Sequential) model with one input and a
            single sigmoid output of shape (B, 1).
        images: float32 (B, H, W, C), already scaled as the model expects.
        layer_name: layer whose 4-D output is explained; a top-level layer or
            a layer inside a nested sub-model (e.g. ``"conv5_block3_out"``
            inside ``"resnet50"``). None picks :func:`find_last_conv_layer`.
        batch_size: images per forward/backward pass.

    Returns:
        float32 (B, H, W) in [0, 1], each map divided by its own maximum. A
        map whose weighted sum is nowhere positive is all zeros.
    """
    import tensorflow as tf

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("grad_cam needs a model with one input and one output")
    output_shape = tuple(model.outputs[0].shape)
    if output_shape[-1] != 1 or len(output_shape) != 2:
        raise ValueError(f"grad_cam needs a single sigmoid output (B, 1), got {output_shape}")
    if layer_name is None:
        layer_name = find_last_conv_layer(model)
    features_and_output = _features_and_output(model, layer_name)
    count, height, width = images.shape[:3]
    heatmaps = np.zeros((count, height, width), dtype=np.float32)
    for start in range(0, count, batch_size):
        batch = tf.convert_to_tensor(images[start : start + batch_size])
        with tf.GradientTape() as tape:
            features, output = features_and_output(batch, training=False)
            features = tf.cast(features, tf.float32)
            score = tf.reduce_sum(tf.cast(output, tf.float32))
        gradients = tape.gradient(score, features)
        if gradients is None:
            raise ValueError(f"the output does not depend on layer {layer_name!r}")
        if len(features.shape) != 4:
            raise ValueError(f"layer {layer_name!r} output is not 4-D: {features.shape}")
        channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        maps = tf.nn.relu(tf.reduce_sum(channel_weights * features, axis=-1)).numpy()
        for offset, cam in enumerate(maps):
            peak = float(cam.max())
            if peak > 0.0:
                cam = cam / peak
            resized = cv2.resize(cam.astype(np.float32), (width, height),
                                 interpolation=cv2.INTER_LINEAR)
            heatmaps[start + offset] = np.clip(resized, 0.0, 1.0)
    return heatmaps


def overlay_heatmap(image_uint8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a JET-coloured heat map over a grey image.

    Args:
        image_uint8: uint8 (H, W) grey image.
        heatmap: float (H, W) in [0, 1].
        alpha: weight of the heat map colours, in [0, 1].

    Returns:
        uint8 (H, W, 3) RGB.
    """
    if image_uint8.ndim != 2 or image_uint8.shape != heatmap.shape:
        raise ValueError(
            "need a (H, W) image and a same-shape heat map, "
            f"got {image_uint8.shape} and {heatmap.shape}"
        )
    heat = np.clip(np.nan_to_num(heatmap), 0.0, 1.0)
    coloured = cv2.applyColorMap((heat * 255).round().astype(np.uint8), cv2.COLORMAP_JET)
    coloured = cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB)
    grey = cv2.cvtColor(np.ascontiguousarray(image_uint8), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(grey, 1.0 - alpha, coloured, alpha, 0.0)


def _title_strip(text: str, width: int, height: int) -> np.ndarray:
    strip = np.full((height, width, 3), 255, dtype=np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = height / 40.0
    shown, cut = text, 0
    while cut < len(text) and cv2.getTextSize(shown, font, scale, 1)[0][0] > width - 8:
        cut += 1
        shown = "..." + text[cut:]
    baseline_y = int(height * 0.7)
    cv2.putText(strip, shown, (4, baseline_y), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def gradcam_montage(
    images_uint8: np.ndarray,
    heatmaps: np.ndarray,
    titles: list[str],
    *,
    columns: int = 2,
    alpha: float = 0.4,
) -> np.ndarray:
    """A grid of (image | Grad-CAM overlay) pairs, each under its title.

    Args:
        images_uint8: uint8 (B, H, W) grey images.
        heatmaps: float (B, H, W) in [0, 1], e.g. from :func:`grad_cam`.
        titles: B strings, drawn above each pair (shortened to fit).
        columns: pairs per row.
        alpha: heat map weight in the overlay.

    Returns:
        uint8 (rows * (T + H), columns * 2 * W, 3) RGB, T = title height;
        unused cells are white.
    """
    images_uint8 = np.asarray(images_uint8)
    heatmaps = np.asarray(heatmaps)
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 3:
        raise ValueError(
            f"images must be uint8 (B, H, W), got {images_uint8.dtype} {images_uint8.shape}"
        )
    if heatmaps.shape != images_uint8.shape:
        raise ValueError(f"heatmaps must have shape {images_uint8.shape}, got {heatmaps.shape}")
    if len(titles) != images_uint8.shape[0]:
        raise ValueError(f"need {images_uint8.shape[0]} titles, got {len(titles)}")
    if images_uint8.shape[0] == 0:
        raise ValueError("no images to draw")
    count, height, width = images_uint8.shape
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    title_height = max(14, height // 10)
    cell_height, cell_width = title_height + height, 2 * width
    montage = np.full((rows * cell_height, columns * cell_width, 3), 255, dtype=np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        grey = cv2.cvtColor(np.ascontiguousarray(images_uint8[index]), cv2.COLOR_GRAY2RGB)
        overlay = overlay_heatmap(images_uint8[index], heatmaps[index], alpha)
        title = _title_strip(str(titles[index]), cell_width, title_height)
        cell = np.concatenate([title, np.concatenate([grey, overlay], axis=1)], axis=0)
        top, left = row * cell_height, column * cell_width
        montage[top : top + cell_height, left : left + cell_width] = cell
    return montage


def select_gradcam_examples(
    labels, scores, threshold: float, per_kind: int = 2, seed: int = 0
) -> dict[str, list[int]]:
    """Pick example indices of each outcome at ``threshold``, reproducibly.

    Args:
        labels: int (N,) in {0, 1}.
        scores: float (N,); positive means ``score >= threshold``.
        threshold: the validation-chosen threshold.
        per_kind: how many examples of each kind at most.
        seed: seed of the random choice within each kind.

    Returns:
        ``{"tp": [...], "fp": [...], "tn": [...], "fn": [...]}``, sorted index
        lists with ``min(per_kind, available)`` entries each.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(
            f"labels and scores must be same-length 1-D, got {labels.shape} and {scores.shape}"
        )
    if per_kind < 0:
        raise ValueError(f"per_kind must be >= 0, got {per_kind}")
    predicted = scores >= threshold
    positive = labels == 1
    masks = {
        "tp": predicted & positive,
        "fp": predicted & ~positive,
        "tn": ~predicted & ~positive,
        "fn": ~predicted & positive,
    }
    rng = np.random.default_rng(seed)
    chosen = {}
    for kind in EXAMPLE_KINDS:
        candidates = np.flatnonzero(masks[kind])
        take = min(per_kind, candidates.size)
        picked = rng.choice(candidates, size=take, replace=False) if take else candidates[:0]
        chosen[kind] = sorted(int(index) for index in picked)
    return chosen
