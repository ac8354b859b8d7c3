"""A float Keras mini-Xception rebuilt from an int8 CNN bundle, so any bundle (the shipped default
too) can be fine-tuned: only the bundle is shipped, never its float weights.

The converter folded each BatchNormalization into the convolution before it (and the input's
rescaling into the first one), so every TFLite convolution holds `kernel * gamma / sigma` and the
bias `beta - mean * gamma / sigma`. The rebuilt model keeps mini-Xception's layers: each convolution
takes the folded, dequantized kernel, and its BatchNormalization becomes the identity plus that bias
(gamma 1, mean 0, variance 1 - epsilon), which fine-tuning is then free to move again.
"""

from __future__ import annotations

import re

import numpy as np

from ferlite.bundle import Bundle
from ferlite.errors import ModelError

# The Keras layer each TFLite weight tensor belongs to, found in the tensor's name (the converter keeps
# the layer names: "mini_xception_w1.5_48_1/b0_sep1_1/separable_conv2d;...").
LAYER = re.compile(r"/(stem\d|b\d_sep\d|b\d_short|classes)_")


def _constants(model: bytes) -> list[tuple[str, str, np.ndarray, np.ndarray | None]]:
    """(op, Keras layer, float kernel, float bias) for each convolution of the TFLite model, in order."""
    from ferlite.runtime import load_interpreter

    interpreter, _ = load_interpreter(model)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}

    def value(index: int) -> np.ndarray:
        d = details[index]
        q = d["quantization_parameters"]
        data = interpreter.get_tensor(index).astype(np.float64)
        if len(q["scales"]) == 0:
            return data
        axis = q["quantized_dimension"]
        shape = [1] * data.ndim
        shape[axis] = -1
        return (data - q["zero_points"].reshape(shape)) * q["scales"].reshape(shape)

    found = []
    for op in interpreter._get_ops_details():  # the only way LiteRT lists a graph's operators
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        kernel, bias = op["inputs"][1], op["inputs"][2] if len(op["inputs"]) > 2 else -1
        match = LAYER.search(details[kernel]["name"]) or (bias >= 0 and LAYER.search(details[bias]["name"]))
        layer = match.group(1) if match else "stem0" if not found else None
        if layer is None:
            raise ModelError(f"operator {op['index']} ({op['op_name']}) matches no mini-Xception layer")
        found.append((op["op_name"], layer, value(kernel), value(bias) if bias >= 0 else None))
    return found


def keras_from_bundle(bundle: Bundle):
    """The bundle's CNN as a float Keras mini-Xception of the same width, ready to fine-tune."""
    from ferlite.training.models import mini_xception

    manifest = bundle.manifest
    where = str(bundle.path)
    if manifest.kind != "cnn":
        raise ModelError(f"{where}: only CNN bundles can be fine-tuned (this one is {manifest.kind})")
    convs = _constants(bundle.model)
    stem = [c for c in convs if c[1] == "stem0"]
    if len(stem) != 1:
        raise ModelError(f"{where}: not a mini-Xception bundle (no single first convolution)")
    filters = stem[0][2].shape[0]
    width = filters / 8
    size = manifest.input.shape[1]
    model = mini_xception(len(manifest.labels), size, width)
    if model.get_layer("stem0_conv").filters != filters:
        raise ModelError(f"{where}: its first convolution has {filters} filters, which no mini-Xception width gives")
    try:
        _load(model, convs)
    except (ValueError, KeyError) as exc:
        raise ModelError(f"{where}: its weights do not fit a mini-Xception of width {width:g} ({exc})") from None
    return model


def _identity_bn(model, name: str, bias: np.ndarray) -> None:
    bn = model.get_layer(name)
    eps = bn.epsilon
    bn.set_weights([np.ones_like(bias), bias, np.zeros_like(bias), np.full_like(bias, 1 - eps)])


def _load(model, convs: list[tuple[str, str, np.ndarray, np.ndarray | None]]) -> None:
    """Set every convolution and its BatchNormalization from the folded TFLite constants."""
    depthwise: dict[str, np.ndarray] = {}
    for op, layer, kernel, bias in convs:
        if op == "DEPTHWISE_CONV_2D":  # [1, h, w, channels] -> Keras [h, w, channels, 1]
            depthwise[layer] = kernel[0][..., None]
            continue
        hwio = kernel.transpose(1, 2, 3, 0)  # TFLite [out, h, w, in] -> Keras [h, w, in, out]
        if layer == "stem0":  # the input's x / 127.5 - 1 was folded in: take it out again
            hwio = hwio * 127.5
            bias = bias + hwio.sum(axis=(0, 1, 2))
        if layer.startswith("stem"):
            model.get_layer(f"{layer}_conv").set_weights([hwio])
            _identity_bn(model, f"{layer}_bn", bias)
        elif "_sep" in layer:
            model.get_layer(layer).set_weights([depthwise.pop(layer), hwio])
            block, which = layer.split("_sep")
            _identity_bn(model, f"{block}_bn{which}", bias)
        elif layer.endswith("_short"):
            model.get_layer(layer).set_weights([hwio])
            _identity_bn(model, f"{layer}_bn", bias)
        else:
            model.get_layer("classes").set_weights([hwio, bias])
