"""A float Keras mini-Xception rebuilt from an int8 CNN bundle, so any bundle (the shipped default
too) can be fine-tuned: only the bundle is shipped, never its float weights.

The converter folded each BatchNormalization into the convolution before it (and the input's
rescaling into the first one), so every TFLite convolution holds `kernel * gamma / sigma` and the
bias `beta - mean * gamma / sigma`. The rebuilt model keeps mini-Xception's layers: each convolution
takes the folded, dequantized kernel, and its BatchNormalization becomes the identity plus that bias
(gamma 1, mean 0, variance 1 - epsilon), which fine-tuning is then free to move again.
"""

from __future__ import annotations

import numpy as np

from ferlite.bundle import Bundle
from ferlite.errors import ModelError


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
    depthwise_out: dict[int, str] = {}  # output tensor of each depthwise op -> its separable layer
    for op in interpreter._get_ops_details():  # the only way LiteRT lists a graph's operators
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        kernel, bias = op["inputs"][1], op["inputs"][2] if len(op["inputs"]) > 2 else -1
        layer = _layer(op, details[kernel]["shape"], depthwise_out, [f[1] for f in found])
        if op["op_name"] == "DEPTHWISE_CONV_2D":
            depthwise_out[op["outputs"][0]] = layer
        found.append((op["op_name"], layer, value(kernel), value(bias) if bias >= 0 else None))
    return found


def _layer(op: dict, kernel_shape, depthwise_out: dict[int, str], before: list[str]) -> str:
    """The mini-Xception layer of a convolution, from the graph's structure alone (bundles carry no tensor
    names; `before`: the layers of the convolutions before it): a depthwise op starts the next separable
    layer (b0_sep1, b0_sep2, b1_sep1, ...) and the 1x1 convolution that reads it completes it; 3x3
    convolutions before the first depthwise op are the stem, the one after is `classes`; any other 1x1
    convolution is the next block's shortcut. Data dependence keeps that order in every graph the
    converter writes."""
    seps = len(depthwise_out)
    if op["op_name"] == "DEPTHWISE_CONV_2D":
        return f"b{seps // 2}_sep{seps % 2 + 1}"
    if op["inputs"][0] in depthwise_out:
        return depthwise_out[op["inputs"][0]]
    if tuple(kernel_shape[1:3]) == (1, 1):
        return f"b{sum(name.endswith('_short') for name in before)}_short"
    if seps:
        return "classes"
    if len(before) < 2:
        return f"stem{len(before)}"
    raise ModelError(f"operator {op['index']} ({op['op_name']}) matches no mini-Xception layer")


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
