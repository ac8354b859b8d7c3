"""`ferlite eval`: a bundle (int8, on the device runtime) scored on a labelled dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ferlite.datasets import Dataset, load_dataset
from ferlite.metrics import Metrics, compute_metrics
from ferlite.preprocess import PreprocessSpec


def predict_dataset(predictor, inputs: np.ndarray, chunk: int = 256, description: str = "evaluating") -> np.ndarray:
    """Probabilities for many inputs in chunks, with a progress bar on a terminal."""
    from ferlite.console import progress

    starts = range(0, len(inputs), chunk)
    parts = [predictor.predict(inputs[s: s + chunk]) for s in progress(starts, description)]
    return np.concatenate(parts) if parts else np.zeros((0, len(predictor.labels)), np.float32)


@dataclass(frozen=True)
class Truth:
    """Which labels a model is scored against: the dataset's own, or FER+'s majority vote
    (`ferplus`, for FER2013 data; `ferplus_csv` defaults to fer2013new.csv beside the data)."""

    ferplus: bool = False
    ferplus_csv: str | None = None

    def faces(self, data: str, labels: tuple[str, ...], spec: PreprocessSpec | None = None) -> Dataset:
        """The labelled faces in the model's label set; classes the model lacks are dropped."""
        dataset = load_dataset(data, spec)
        if self.ferplus:
            dataset, _ = dataset.with_ferplus_labels(self.ferplus_csv)
        return dataset.relabel(labels)


def score(predictor, dataset: Dataset, inputs: np.ndarray, model: str, data: str,
          truth: Truth) -> tuple[Metrics, dict]:
    """Metrics of `predictor` on prepared inputs, and the details `ferlite eval` prints beside them."""
    probs = predict_dataset(predictor, inputs)
    details = {"model": model, "data": data, "truth": "FER+ majority" if truth.ferplus else "dataset labels",
               "runtime": predictor.runtime, "tta_flip": predictor.tta_flip,
               "temperature": predictor.temperature, "labels": list(predictor.labels)}
    return compute_metrics(dataset.labels, probs, tuple(predictor.labels)), details


def evaluate_bundle(path: Path, data: str, threads: int | None = None, tta_flip: bool | None = None,
                    truth: Truth = Truth(), calibrated: bool = True,
                    ensemble: Sequence[Path] = ()) -> tuple[Metrics, dict]:
    """`ferlite eval BUNDLE`: the int8 model on the device runtime, faces prepared as on the device
    (`calibrated` False: without the bundle's temperature; `ensemble`: bundles whose probabilities are
    averaged with its own). Photos rather than crops, through a face detector: ferlite.device.evaluate."""
    from ferlite.bundle import read_bundle
    from ferlite.inputs import dataset_inputs
    from ferlite.runtime import predictor as make_predictor

    bundles = [read_bundle(p) for p in (path, *ensemble)]
    predictor = make_predictor(bundles, threads=threads, tta_flip=tta_flip, calibrated=calibrated)
    dataset = truth.faces(data, tuple(predictor.labels))
    return score(predictor, dataset, dataset_inputs(bundles[0].manifest, dataset.images),
                 model=model_name(path, ensemble), data=data, truth=truth)


def model_name(path: Path, ensemble: Sequence[Path] = ()) -> str:
    """How `ferlite eval` names what it scored: the bundle, or the bundles of an ensemble joined by +."""
    return " + ".join(str(p) for p in (path, *ensemble))
