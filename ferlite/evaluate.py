"""`ferlite eval`: a bundle (int8, on the device runtime) scored on a labelled dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ferlite.datasets import Dataset, load_dataset
from ferlite.errors import DatasetError
from ferlite.metrics import Metrics, compute_metrics
from ferlite.preprocess import PreprocessSpec

if TYPE_CHECKING:
    from ferlite.bundle import Manifest
    from ferlite.device.detectors import Detector


def predict_dataset(predictor, inputs: np.ndarray, chunk: int = 256, description: str = "evaluating") -> np.ndarray:
    """Probabilities for many inputs in chunks, with a progress bar on a terminal."""
    from rich.progress import track

    starts = range(0, len(inputs), chunk)
    parts = [predictor.predict(inputs[s: s + chunk]) for s in track(starts, description=description, transient=True)]
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
               "temperature": getattr(predictor, "temperature", 1.0), "labels": list(predictor.labels)}
    return compute_metrics(dataset.labels, probs, tuple(predictor.labels)), details


def detected_faces(manifest: Manifest, dataset: Dataset, detector: Detector) -> tuple[Dataset, np.ndarray]:
    """The dataset's images that hold a face, and the inputs of the largest face in each, found and
    cropped as the device does it (for photos rather than crops)."""
    from rich.progress import track

    from ferlite.inputs import face_inputs

    found, inputs = [], []
    for i, image in enumerate(track(dataset.images, description=f"detecting ({detector.name})", transient=True)):
        faces = detector.detect(image)
        if faces:
            found.append(i)
            largest = max(faces, key=lambda f: f.box[2] * f.box[3])
            inputs.append(face_inputs(manifest, image, [largest], detector.name)[0])
    if not found:
        raise DatasetError(f"{dataset.source}: the {detector.name} detector finds no face in any image")
    return dataset.subset(np.array(found)), np.stack(inputs)


def evaluate_bundle(path: Path, data: str, threads: int | None = None, tta_flip: bool | None = None,
                    truth: Truth = Truth(), detector: str | None = None, detect_width: int = 640,
                    min_face: int = 24, align: bool | None = None,
                    calibrated: bool = True) -> tuple[Metrics, dict]:
    """`ferlite eval BUNDLE`: the int8 model on the device runtime, faces prepared as on the device;
    with `detector`, each image is a photo in which that detector finds the face first (`align`
    overrides the bundle's alignment on landmarks; `calibrated` False: without its temperature)."""
    from ferlite.bundle import read_bundle
    from ferlite.inputs import dataset_inputs
    from ferlite.runtime import Predictor

    bundle = read_bundle(path)
    if align is not None:
        bundle.manifest.preprocess = {**bundle.manifest.preprocess, "align": align}
    predictor = Predictor(bundle, threads=threads, tta_flip=tta_flip, calibrated=calibrated)
    dataset = truth.faces(data, tuple(predictor.labels))
    if detector is None:
        return score(predictor, dataset, dataset_inputs(bundle.manifest, dataset.images), model=str(path),
                     data=data, truth=truth)
    from ferlite.device.detectors import make_detector

    faces, inputs = detected_faces(bundle.manifest, dataset, make_detector(detector, detect_width, min_face, threads))
    metrics, details = score(predictor, faces, inputs, model=str(path), data=data, truth=truth)
    aligned = PreprocessSpec.from_dict(bundle.manifest.preprocess).align
    return metrics, {**details, "detector": detector, "aligned": aligned, "images": len(dataset),
                     "no_face": len(dataset) - len(faces)}
