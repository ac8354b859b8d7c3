"""The one interpreter loader and the bundle predictor (ai-edge-litert, else tflite-runtime, else tf.lite).

The device path uses this module only; TensorFlow is the last resort and is imported only when
neither light runtime is installed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from ferlite.bundle import Bundle
from ferlite.calibration import apply_temperature
from ferlite.errors import BundleError, RuntimeMissingError
from ferlite.inputs import KINDS
from ferlite.preprocess import quantize

RUNTIMES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow.lite.python.interpreter"),  # tf.lite.Interpreter; "tensorflow.lite" lacks it
)


def _interpreter_class():
    for name, module in RUNTIMES:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            continue
        try:
            return name, importlib.import_module(module).Interpreter
        except ImportError:
            continue
    raise RuntimeMissingError("no TFLite runtime installed: pip install 'ferlite[device]' (ai-edge-litert)")


def load_interpreter(model: bytes, threads: int | None = None):
    """A TFLite interpreter for `model` from the best installed runtime; (interpreter, runtime name)."""
    from ferlite.quiet import native_quiet

    name, cls = _interpreter_class()
    try:
        with native_quiet():  # LiteRT announces its XNNPACK delegate on stderr
            interpreter = cls(model_content=model, num_threads=threads)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"model.tflite cannot be loaded by {name}: {str(exc).splitlines()[0]}") from None
    return interpreter, name


@dataclass
class _Tensor:
    index: int
    dtype: np.dtype
    scale: float
    zero_point: int


def _tensor(detail: dict) -> _Tensor:
    scale, zero_point = detail["quantization"]
    return _Tensor(detail["index"], np.dtype(detail["dtype"]), float(scale), int(zero_point))


class Predictor:
    """Probabilities for batches of preprocessed faces, as the bundle's manifest describes them.

    All faces of a frame go through the interpreter in one call; the input tensor is resized only
    when the batch size changes. With the manifest option `tta_flip`, each face is averaged with its
    mirror image; with `temperature` (fitted at conversion), probabilities are calibrated by it.
    """

    def __init__(self, bundle: Bundle, threads: int | None = None, tta_flip: bool | None = None,
                 calibrated: bool = True) -> None:
        self.bundle = bundle
        self.labels = tuple(bundle.manifest.labels)
        self.interpreter, self.runtime = load_interpreter(bundle.model, threads)
        self.input = _tensor(self.interpreter.get_input_details()[0])
        self.output = _tensor(self.interpreter.get_output_details()[0])
        outputs = self.interpreter.get_output_details()[0]["shape"][-1]
        if outputs != len(self.labels):
            raise BundleError(f"{bundle.path}: manifest names {len(self.labels)} labels, model outputs {outputs}")
        self.tta_flip = bool(bundle.manifest.options.get("tta_flip", False)) if tta_flip is None else tta_flip
        self.temperature = float(bundle.manifest.options.get("temperature", 1.0)) if calibrated else 1.0
        self._batch = int(self.interpreter.get_input_details()[0]["shape"][0])

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        if len(x) != self._batch:
            self.interpreter.resize_tensor_input(self.input.index, [len(x), *x.shape[1:]])
            self.interpreter.allocate_tensors()
            self._batch = len(x)
        self.interpreter.set_tensor(self.input.index, x)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output.index).astype(np.float32)
        if self.output.scale:
            out = (out - self.output.zero_point) * self.output.scale
        return out

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Probabilities (N, K): uint8 faces (N, S, S) from ferlite.preprocess for a `cnn` bundle,
        feature vectors (N, F) for a `landmark-svm` bundle (NaN rows, failed landmarks: uniform)."""
        if len(inputs) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        kind = KINDS[self.bundle.manifest.kind]
        if not kind.images and not np.isfinite(inputs).all():
            return predict_features(inputs, self.predict, len(self.labels))
        x = quantize(kind.tensor(inputs), self.input.dtype, self.input.scale, self.input.zero_point)
        if self.tta_flip and kind.images:
            out = self._invoke(np.concatenate([x, x[:, :, ::-1]]))
            out = (out[: len(x)] + out[len(x):]) / 2
        else:
            out = self._invoke(x)
        return apply_temperature(out / np.maximum(out.sum(axis=1, keepdims=True), 1e-9), self.temperature)


def predict_features(x: np.ndarray, predict, k: int) -> np.ndarray:
    """`predict` on the rows of x whose landmarks were found; rows of NaN (no usable landmarks) get
    uniform probabilities 1/K, so every face box still gets a result, and one the device labels uncertain."""
    ok = np.isfinite(x).all(axis=1)
    probs = np.full((len(x), k), 1.0 / k, np.float32)
    if ok.any():
        probs[ok] = predict(x[ok])
    return probs


class Ensemble:
    """Several bundles' mean probabilities behind the Predictor interface: the figure a student distilled
    from them (`ferlite train cnn --teacher`) is measured against. Every member has the first one's kind,
    labels and input size, and faces are prepared once, by the first one's recipe (its framing and
    alignment on photos)."""

    def __init__(self, members: list[Predictor]) -> None:
        first = members[0]
        for other in members[1:]:
            ours, theirs = first.bundle.manifest, other.bundle.manifest
            if (theirs.kind, tuple(theirs.labels), theirs.preprocess.get("size")) != (
                    ours.kind, tuple(ours.labels), ours.preprocess.get("size")):
                raise BundleError(f"{other.bundle.path}: an ensemble's bundles need the kind, labels and input "
                                  f"size of {first.bundle.path}")
        self.members = members
        self.bundle, self.labels, self.runtime = first.bundle, first.labels, first.runtime
        self.tta_flip, self.temperature = first.tta_flip, first.temperature

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """The members' mean probabilities (N, K) for inputs prepared as the first member's manifest says."""
        return np.mean([m.predict(inputs) for m in self.members], axis=0)


def predictor(bundles: list[Bundle], threads: int | None = None, tta_flip: bool | None = None,
              calibrated: bool = True) -> Predictor | Ensemble:
    """One bundle's Predictor, or the Ensemble of several."""
    members = [Predictor(b, threads=threads, tta_flip=tta_flip, calibrated=calibrated) for b in bundles]
    return members[0] if len(members) == 1 else Ensemble(members)
