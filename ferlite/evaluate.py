"""`ferlite eval`: a bundle (int8, device runtime) or a .keras model (float) on a labelled dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferlite.datasets import load_dataset
from ferlite.metrics import Metrics, compute_metrics
from ferlite.preprocess import PreprocessSpec


def predict_dataset(predictor, inputs: np.ndarray, chunk: int = 256, description: str = "evaluating") -> np.ndarray:
    """Probabilities for many inputs in chunks, with a progress bar on a terminal."""
    from rich.progress import track

    starts = range(0, len(inputs), chunk)
    parts = [predictor.predict(inputs[s: s + chunk]) for s in track(starts, description=description, transient=True)]
    return np.concatenate(parts) if parts else np.zeros((0, len(predictor.labels)), np.float32)


class KerasPredictor:
    """The float Keras model behind the same `predict(faces)` interface as the int8 Predictor."""

    def __init__(self, path: Path, tta_flip: bool = False) -> None:
        from ferlite.convert.converter import load_keras, model_labels

        self.model = load_keras(path)
        if len(self.model.input_shape) != 4:
            from ferlite.errors import ModelError

            raise ModelError(f"{path}: a landmark model; evaluate its bundle (ferlite convert), or read the "
                             "cross-validated figures in its report.md")
        self.labels = model_labels(path, self.model.output_shape[-1])
        self.size = int(self.model.input_shape[1])
        self.tta_flip = tta_flip
        self.runtime = "keras (float)"

    def predict(self, faces: np.ndarray) -> np.ndarray:
        from ferlite.convert.converter import keras_probs

        return keras_probs(self.model, faces, self.tta_flip)


def evaluate(model: Path, data: str, threads: int | None = None, tta_flip: bool | None = None) -> tuple[Metrics, dict]:
    """Metrics of a bundle or .keras model on `data` (relabelled to the model's labels), and run details."""
    if model.suffix == ".keras":
        predictor = KerasPredictor(model, bool(tta_flip))
        dataset = load_dataset(data, PreprocessSpec(size=predictor.size)).relabel(tuple(predictor.labels))
        inputs = dataset.images
    else:
        from ferlite.bundle import read_bundle
        from ferlite.inputs import dataset_inputs
        from ferlite.runtime import Predictor

        bundle = read_bundle(model)
        predictor = Predictor(bundle, threads=threads, tta_flip=tta_flip)
        dataset = load_dataset(data).relabel(tuple(predictor.labels))
        inputs = dataset_inputs(bundle.manifest, dataset.images)
    probs = predict_dataset(predictor, inputs)
    details = {"model": str(model), "data": data, "runtime": predictor.runtime, "tta_flip": predictor.tta_flip,
               "labels": list(predictor.labels)}
    return compute_metrics(dataset.labels, probs, tuple(predictor.labels)), details
