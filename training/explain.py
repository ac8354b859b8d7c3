"""`ferlite explain` with a float `.keras` model: what only the model's insides show, beside the occlusion
maps and gallery that ferlite.device.explain draws for any model.

Grad-CAM weighs the feature maps of a late layer by the gradient of a class score; the first layer's
kernels and their mean activation per class show which low-level patterns each class leans on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferlite.errors import ModelError

MIN_CAM_SIDE = 6  # mini-Xception's last block is 3 x 3 at 48 pixels: too coarse to point at an eye or a mouth


def cam_layer(model) -> str:
    """The last layer with feature maps at least MIN_CAM_SIDE cells across: Grad-CAM's usual last
    convolutional block is 3 x 3 on a 48-pixel face, one block earlier is 6 x 6."""
    spatial = [layer.name for layer in model.layers[1:]
               if len(layer.output.shape) == 4 and layer.output.shape[1] >= MIN_CAM_SIDE]
    if not spatial:
        raise ModelError(f"{model.name}: no layer with feature maps to weigh for Grad-CAM")
    return spatial[-1]


def grad_cam(model, faces: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Grad-CAM maps (N, C, S, S), 0..1, of each face (uint8 N x S x S) for its classes (N, C): the
    class's pre-softmax score differentiated by cam_layer's feature maps, which are weighed by the
    mean gradient, summed, kept where positive and resized to the face."""
    import cv2
    import keras
    import tensorflow as tf

    layer = model.get_layer(cam_layer(model))
    probe = keras.Model(model.inputs, [layer.output, model.layers[-1].input])

    @tf.function  # in graph mode: eager gradients through oneDNN's kernels (ferlite.quiet turns them on) crash
    def weighed(x, picked):
        with tf.GradientTape() as tape:
            features, scores = probe(x, training=False)
            score = tf.gather(scores, picked, axis=1, batch_dims=1)
        grads = tape.gradient(score, features)
        return features * tf.reduce_mean(grads, axis=(1, 2), keepdims=True)

    x = tf.convert_to_tensor(faces[..., None].astype(np.float32))
    size = faces.shape[1]
    maps = np.zeros((*classes.shape, size, size), np.float32)
    for j in range(classes.shape[1]):
        cams = np.maximum(weighed(x, tf.constant(classes[:, j], tf.int32)).numpy().sum(axis=-1), 0)
        for i, cam in enumerate(cams):
            maps[i, j] = cv2.resize(cam, (size, size), interpolation=cv2.INTER_LINEAR) / max(float(cam.max()), 1e-9)
    return maps


def grad_cam_maps(model, labels: tuple[str, ...]):
    """Grad-CAM as ferlite.device.explain's extra maps: per face, a titled map for each of its classes."""
    def extra(faces: np.ndarray, classes: np.ndarray) -> list[list[tuple[str, np.ndarray]]]:
        maps = grad_cam(model, faces, classes)
        return [[(f"Grad-CAM: {labels[c]}", m) for c, m in zip(row, face_maps)]
                for row, face_maps in zip(classes, maps)]

    return extra


def _first_layers(model) -> tuple[object, object]:
    try:
        return model.get_layer("stem0_conv"), model.get_layer("stem0_relu")
    except ValueError:
        raise ModelError(f"{model.name}: not a mini-Xception (no stem0_conv); first-layer figures need one") from None


def mean_activations(model, faces: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """(K, F): each first-layer filter's activation (after its ReLU), averaged over the faces of each class
    (0 for a class without faces)."""
    import keras

    conv, relu = _first_layers(model)
    probe = keras.Model(model.inputs, relu.output)
    totals = np.zeros((k, conv.filters))
    for s in range(0, len(faces), 256):
        act = np.asarray(probe(faces[s:s + 256, ..., None].astype(np.float32), training=False)).mean(axis=(1, 2))
        np.add.at(totals, y[s:s + 256], act)
    return totals / np.maximum(np.bincount(y, minlength=k), 1)[:, None]


def first_layer_png(model, faces: np.ndarray, y: np.ndarray, labels: tuple[str, ...], path: Path) -> Path:
    """The first convolution's 3 x 3 kernels above a class-by-filter map of their mean activation, as % off
    the filter's mean over the classes: which classes a filter fires for more (red) or less (blue); classes
    without faces in the data are left out."""
    from ferlite.plots import pyplot

    plt = pyplot()
    conv, _ = _first_layers(model)
    kernels = np.asarray(conv.kernel)[:, :, 0, :]
    present = np.bincount(y, minlength=len(labels)) > 0
    means = mean_activations(model, faces, y, len(labels))[present]
    labels = tuple(n for n, here in zip(labels, present) if here)
    filters = kernels.shape[-1]
    fig = plt.figure(figsize=(max(6.0, 0.55 * filters + 2), 2.2 + 0.35 * len(labels)), dpi=100)
    grid = fig.add_gridspec(2, filters, height_ratios=[1, 0.35 * len(labels) + 0.6])
    for f in range(filters):
        ax = fig.add_subplot(grid[0, f])
        limit = max(float(np.abs(kernels[..., f]).max()), 1e-9)
        ax.imshow(kernels[..., f], cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(str(f), fontsize=7)
    heat = fig.add_subplot(grid[1, :])
    relative = 100 * (means / np.maximum(means.mean(axis=0, keepdims=True), 1e-9) - 1)
    limit = max(float(np.abs(relative).max()), 1e-6)
    heat.imshow(relative, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    for (k, f), value in np.ndenumerate(relative):
        heat.text(f, k, f"{value:+.0f}", ha="center", va="center", fontsize=6)
    heat.set_yticks(range(len(labels)), labels, fontsize=8)
    heat.set_xticks(range(filters), [str(f) for f in range(filters)], fontsize=7)
    heat.set_xlabel("first-layer filter (kernels above): its mean activation on each class's faces, in % above "
                    "or below its mean over all classes", fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.98, top=0.9, bottom=0.12, hspace=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
