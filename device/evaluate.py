"""`ferlite eval --detector`: photos rather than face crops, each face found, framed and scored as
the device does it, so a bundle is judged on what it will meet."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ferlite.datasets import Dataset
from ferlite.device.detectors import make_detector
from ferlite.device.faces import FaceStep
from ferlite.errors import DatasetError
from ferlite.evaluate import Truth, model_name, score
from ferlite.metrics import Metrics
from ferlite.preprocess import PreprocessSpec


def detected_faces(step: FaceStep, dataset: Dataset) -> tuple[Dataset, np.ndarray]:
    """The dataset's images that hold a face, and the inputs of the largest face in each."""
    from ferlite.console import progress

    found, inputs = [], []
    name = step.detector.name
    for i, image in enumerate(progress(dataset.images, f"detecting ({name})")):
        if faces := step.find(image):
            found.append(i)
            inputs.append(step.inputs(image, [max(faces, key=lambda f: f.box[2] * f.box[3])])[0])
    if not found:
        raise DatasetError(f"{dataset.source}: the {name} detector finds no face in any image")
    return dataset.subset(np.array(found)), np.stack(inputs)


def evaluate_photos(path: Path, data: str, detector: str, detect_width: int, min_face: int,
                    threads: int | None = None, tta_flip: bool | None = None, truth: Truth = Truth(),
                    align: bool | None = None, calibrated: bool = True,
                    ensemble: Sequence[Path] = ()) -> tuple[Metrics, dict]:
    """The bundle on `data`'s images as photos: `detector` finds the largest face in each, the bundle's
    recipe frames it (`align` overrides its alignment); images without a face are counted, not scored.
    `ensemble`: bundles whose probabilities are averaged with its own."""
    from ferlite.bundle import read_bundle
    from ferlite.runtime import predictor as make_predictor

    bundles = [read_bundle(p) for p in (path, *ensemble)]
    if align is not None:
        for bundle in bundles:
            bundle.manifest.preprocess = {**bundle.manifest.preprocess, "align": align}
    predictor = make_predictor(bundles, threads=threads, tta_flip=tta_flip, calibrated=calibrated)
    dataset = truth.faces(data, tuple(predictor.labels))
    step = FaceStep(make_detector(detector, detect_width, min_face, threads), predictor)
    faces, inputs = detected_faces(step, dataset)
    metrics, details = score(predictor, faces, inputs, model=model_name(path, ensemble), data=data, truth=truth)
    aligned = PreprocessSpec.from_dict(bundles[0].manifest.preprocess).align
    return metrics, {**details, "detector": detector, "aligned": aligned, "images": len(dataset),
                     "no_face": len(dataset) - len(faces)}
