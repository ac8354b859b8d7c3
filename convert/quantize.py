"""Full-integer int8 quantization of a Keras model, calibrated on real faces."""

from __future__ import annotations

import numpy as np

from ferlite.datasets import Dataset
from ferlite.errors import ModelError


def float_tflite(model) -> bytes:
    """A Keras model as a float TFLite model in memory, to time float against int8 on the same runtime."""
    import tensorflow as tf

    from ferlite.quiet import native_quiet

    with native_quiet():  # TensorFlow reports its missing GPUs on stderr
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def stratified_sample(labels: np.ndarray, total: int, seed: int = 0) -> np.ndarray:
    """Indices of about `total` items spread evenly over the classes (all of a class if it is small)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = max(1, total // len(classes))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(picks))


def calibration_split(data: Dataset, total: int, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(calibration faces, the rest): the rest is what verification uses when no --eval is given."""
    idx = stratified_sample(data.labels, total, seed)
    rest = np.ones(len(data), bool)
    rest[idx] = False
    return data.subset(idx), data.subset(rest)


def quantize_keras(model, calibration: np.ndarray, progress: bool = True, per_tensor: bool = False) -> bytes:
    """TFLite flatbuffer with int8 weights, activations, input and output (builtins int8 only).

    `calibration` holds model inputs in real units: uint8 faces (N, S, S) or feature vectors (N, F).
    `per_tensor` gives each weight tensor one scale instead of one per output channel: per-channel
    parameters cost 24 bytes per channel (a float32 scale and an int64 zero point for the weights and
    again for the bias), a quarter of a small CNN's file, which per-tensor frees for width; it can cost
    agreement with float, which the verification gate measures.
    """
    import tensorflow as tf
    from rich.console import Console
    from rich.progress import track

    from ferlite.quiet import native_quiet

    samples = calibration[..., None] if model.input_shape and len(model.input_shape) == 4 else calibration

    with native_quiet() as stderr:
        console = Console(file=stderr)

        def representative():
            for x in track(samples, description="calibrating", disable=not progress, transient=True, console=console):
                yield [x[None].astype(np.float32)]

        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        if per_tensor:
            if not hasattr(converter, "_experimental_disable_per_channel"):
                raise ModelError(f"TensorFlow {tf.__version__} has no per-tensor quantization switch; "
                                 "convert without --per-tensor")
            converter._experimental_disable_per_channel = True
        model_bytes = strip_names(converter.convert())
    if per_tensor and per_channel_tensors(model_bytes):
        raise ModelError(f"TensorFlow {tf.__version__} ignored per-tensor quantization; convert without --per-tensor")
    return model_bytes


def strip_names(model_bytes: bytes) -> bytes:
    """The model without tensor and subgraph names or signatures: 6 % of a small CNN's file (8,280 of
    141,464 bytes) that nothing reads, since the runtime finds its tensors by index and the manifest
    describes them."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    flatbuffer_utils.strip_strings(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def per_channel_tensors(model_bytes: bytes) -> int:
    """How many tensors of a TFLite model carry more than one quantization scale."""
    from ferlite.runtime import load_interpreter

    interpreter, _ = load_interpreter(model_bytes)
    return sum(len(t["quantization_parameters"]["scales"]) > 1 for t in interpreter.get_tensor_details())
