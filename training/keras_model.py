"""The float Keras model behind the same interface as the int8 bundle: loading, labels, predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ferlite.errors import ModelError
from ferlite.evaluate import Truth, score
from ferlite.metrics import Metrics
from ferlite.quiet import import_keras


def load_keras(path: str | Path):
    """A Keras model from `.keras`, or a ModelError with one line."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    keras = import_keras()
    from ferlite.quiet import native_quiet
    from ferlite.training.models import custom_objects

    try:
        with native_quiet():  # TensorFlow reports the missing GPU on first use
            return keras.models.load_model(path, compile=False, custom_objects=custom_objects())
    except Exception as exc:  # Keras raises many types for a bad file
        raise ModelError(f"{path}: not a loadable Keras model ({str(exc).splitlines()[0][:160]})") from None


def keras_probs(model, inputs: np.ndarray, tta_flip: bool = False) -> np.ndarray:
    """Float probabilities from the Keras model, for the same inputs the interpreter gets."""
    x = inputs.astype(np.float32)
    if x.ndim == 2:
        from ferlite.runtime import predict_features

        return predict_features(x, lambda ok: model.predict(ok, batch_size=256, verbose=0), model.output_shape[-1])
    if x.ndim == 3:
        x = x[..., None]
    probs = model.predict(x, batch_size=256, verbose=0)
    if tta_flip and x.ndim == 4:
        probs = (probs + model.predict(x[:, :, ::-1], batch_size=256, verbose=0)) / 2
    return probs


def model_labels(model_path: Path, outputs: int) -> tuple[str, ...]:
    """Label names from the training run beside the model (config.json), else the standard set of that size."""
    from ferlite.labels import LABEL_SETS

    config = model_path.parent / "config.json"
    if config.is_file():
        names = LABEL_SETS.get(json.loads(config.read_text()).get("labels", ""))
        if names and len(names) == outputs:
            return names
    by_size = [names for names in LABEL_SETS.values() if len(names) == outputs]
    if not by_size:
        raise ModelError(f"{model_path}: {outputs} outputs match no known label set; keep config.json beside it")
    return by_size[0]


class KerasPredictor:
    """The float Keras model behind the same `predict(faces)` interface as the int8 Predictor."""

    def __init__(self, path: Path, tta_flip: bool = False) -> None:
        self.model = load_keras(path)
        if len(self.model.input_shape) != 4:
            raise ModelError(f"{path}: a landmark model; evaluate its bundle (ferlite convert), or read the "
                             "cross-validated figures in its report.md")
        self.labels = model_labels(path, self.model.output_shape[-1])
        self.size = int(self.model.input_shape[1])
        self.tta_flip = tta_flip
        self.temperature = 1.0  # a float model is scored as it is; temperatures belong to bundles
        self.runtime = "keras (float)"

    def predict(self, faces: np.ndarray) -> np.ndarray:
        return keras_probs(self.model, faces, self.tta_flip)


def evaluate_keras(path: Path, data: str, tta_flip: bool = False, truth: Truth = Truth()) -> tuple[Metrics, dict]:
    """`ferlite eval MODEL.keras`: the float model scored exactly as `evaluate_bundle` scores a bundle."""
    from ferlite.preprocess import PreprocessSpec

    predictor = KerasPredictor(path, tta_flip)
    dataset = truth.faces(data, tuple(predictor.labels), PreprocessSpec(size=predictor.size))
    return score(predictor, dataset, dataset.images, model=str(path), data=data, truth=truth)
