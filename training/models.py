"""Model definitions. CNN inputs are raw pixel values 0..255, so the int8 input is pixel - 128; the
landmark SVM takes raw feature vectors from ferlite.features."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def mini_xception(num_classes: int, size: int = 48, width: float = 1.0, dropout: float = 0.0):
    """mini-Xception (Arriaga et al. 2017) with a width multiplier.

    Conv-BN-ReLU stem, four residual blocks of depthwise-separable convolutions with 1x1 strided
    shortcuts, a class-count convolution, global average pooling and softmax.
    """
    import keras
    from keras import layers

    def ch(n: int) -> int:
        return max(4, int(round(n * width / 4)) * 4)

    inputs = keras.Input((size, size, 1), name="face")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    for i in range(2):
        x = layers.Conv2D(ch(8), 3, use_bias=False, name=f"stem{i}_conv")(x)
        x = layers.BatchNormalization(name=f"stem{i}_bn")(x)
        x = layers.ReLU(name=f"stem{i}_relu")(x)
    for b, filters in enumerate((16, 32, 64, 128)):
        shortcut = layers.Conv2D(ch(filters), 1, strides=2, padding="same", use_bias=False, name=f"b{b}_short")(x)
        shortcut = layers.BatchNormalization(name=f"b{b}_short_bn")(shortcut)
        x = layers.SeparableConv2D(ch(filters), 3, padding="same", use_bias=False, name=f"b{b}_sep1")(x)
        x = layers.BatchNormalization(name=f"b{b}_bn1")(x)
        x = layers.ReLU(name=f"b{b}_relu")(x)
        x = layers.SeparableConv2D(ch(filters), 3, padding="same", use_bias=False, name=f"b{b}_sep2")(x)
        x = layers.BatchNormalization(name=f"b{b}_bn2")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"b{b}_pool")(x)
        x = layers.Add(name=f"b{b}_add")([x, shortcut])
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Conv2D(num_classes, 3, padding="same", name="classes")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Softmax(name="probs")(x)
    return keras.Model(inputs, outputs, name=f"mini_xception_w{width:g}_{size}")


@lru_cache(maxsize=1)
def _cosine_layer():
    import keras

    @keras.saving.register_keras_serializable(package="ferlite")
    class Cosine(keras.layers.Layer):
        """cos(x), the random-Fourier-feature nonlinearity (TFLite: one float COS op)."""

        def call(self, inputs):
            return keras.ops.cos(inputs)

        def compute_output_shape(self, input_shape):
            return input_shape

    return Cosine


def custom_objects() -> dict:
    """ferlite's own layers, for loading its saved models."""
    return {"Cosine": _cosine_layer()}


def landmark_svm(features: int, num_classes: int, rff: int = 0, mean=None, std=None):
    """Landmark features -> [standardize] -> [Dense projection -> cos] -> Dense scores -> softmax.

    With `mean` and `std` the model takes raw features; `ferlite convert` lifts that standardize
    layer into the bundle's manifest, because int8 input quantization of raw features (one scale
    for all) would erase the low-variance ones. The weights are set after training
    (ferlite.training.svm), so nothing is computed outside the model.
    """
    import keras
    from keras import layers

    inputs = keras.Input((features,), name="features")
    x = inputs
    if mean is not None:
        x = layers.Normalization(mean=mean, variance=np.square(std), name="standardize")(x)
    if rff:
        x = layers.Dense(rff, name="rff_projection")(x)
        x = _cosine_layer()(name="rff_cos")(x)
    scores = layers.Dense(num_classes, name="svm")(x)
    outputs = layers.Softmax(name="probs")(scores)
    return keras.Model(inputs, outputs, name=f"landmark_svm_rff{rff}" if rff else "landmark_svm")
