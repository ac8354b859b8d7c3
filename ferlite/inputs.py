"""Model inputs for a bundle's kind: face crops for `cnn`, landmark features for `landmark-svm`.

The device, `ferlite predict` and `ferlite eval` call these two functions, so each kind prepares
faces in exactly one way wherever it runs.
"""

from __future__ import annotations

import numpy as np

from ferlite.bundle import Manifest
from ferlite.preprocess import PreprocessSpec, crop_face, fit_images

Box = tuple[int, int, int, int]


def face_inputs(manifest: Manifest, gray: np.ndarray, boxes: list[Box]) -> np.ndarray:
    """Inputs for each detected face box (x, y, w, h) in a grayscale frame."""
    spec = PreprocessSpec.from_dict(manifest.preprocess)
    if manifest.kind == "cnn":
        if not boxes:
            return np.zeros((0, spec.size, spec.size), np.uint8)
        return np.stack([crop_face(gray, box, spec) for box in boxes])
    raise NotImplementedError(manifest.kind)


def dataset_inputs(manifest: Manifest, images: np.ndarray) -> np.ndarray:
    """Inputs for dataset images that are already face crops (evaluation, calibration)."""
    if manifest.kind == "cnn":
        return fit_images(images, PreprocessSpec.from_dict(manifest.preprocess))
    raise NotImplementedError(manifest.kind)
