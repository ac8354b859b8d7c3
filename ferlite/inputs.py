"""Model inputs for a bundle's kind: face crops for `cnn`, landmark features for `landmark-svm`.

`KINDS` is the one registry of model kinds: how each turns detected faces and dataset crops into
inputs, and inputs into the interpreter's tensor. The device, `ferlite predict`, `eval` and
`convert` go through it, so each kind prepares faces in exactly one way wherever it runs. A face
whose landmarks cannot be fitted gets a row of NaN features; the Predictor answers it with uniform
probabilities (ferlite.runtime.predict_features), so every box keeps its result and nothing crashes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ferlite.preprocess import PreprocessSpec, crop_face, fit_images

if TYPE_CHECKING:
    from ferlite.bundle import Manifest

Box = tuple[int, int, int, int]


@dataclass
class Face:
    """One face a detector found: its box (x, y, w, h), and where the detector gives them five
    landmarks (5, 2) in the same pixels: right eye, left eye, nose tip, right and left mouth corner
    (the person's right, on the image's left)."""

    box: Box
    landmarks: np.ndarray | None = None
    score: float = 1.0


def _landmarker(preprocess: dict, path: str | None = None):
    from ferlite.errors import BundleError
    from ferlite.features import RECIPES
    from ferlite.landmarks import LandmarkSpec, landmarker

    spec = LandmarkSpec.from_dict(preprocess)
    if spec.features not in RECIPES.values():
        raise BundleError(f"the model uses landmark feature recipe {spec.features}; this ferlite knows "
                          f"{', '.join(f'{v} ({k})' for k, v in RECIPES.items())} (install the matching ferlite)")
    return landmarker(spec, path)


def landmark_inputs(preprocess: dict, faces: list[np.ndarray], points: list[np.ndarray],
                    mirror: bool = False) -> np.ndarray:
    """Standardized feature rows for face images and their fitted landmarks (NaN rows where a fit failed);
    `mirror`: of the mirrored faces (training augmentation)."""
    from ferlite.features import POINTS, recipe_features, standardize
    from ferlite.landmarks import LandmarkSpec

    stacked = np.stack(points) if points else np.zeros((0, POINTS, 2))
    features = recipe_features(LandmarkSpec.from_dict(preprocess).features, faces, stacked, mirror)
    return standardize(features, preprocess)


def dataset_landmarks(preprocess: dict, images: np.ndarray, landmarks: str | None = None) -> list[np.ndarray]:
    """Landmarks of pre-cropped dataset faces; `landmarks` overrides the landmark model path."""
    from ferlite.console import progress

    fitter = _landmarker(preprocess, landmarks)
    return [fitter.fit_image(img) for img in progress(images, "landmarks")]


def _cnn_faces(preprocess: dict, gray: np.ndarray, faces: list[Face], detector: str) -> np.ndarray:
    spec = PreprocessSpec.from_dict(preprocess)
    if not faces:
        return np.zeros((0, spec.size, spec.size), np.uint8)
    return np.stack([crop_face(gray, f.box, f.landmarks, spec, detector) for f in faces])


def _landmark_faces(preprocess: dict, gray: np.ndarray, faces: list[Face], detector: str) -> np.ndarray:
    fitter = _landmarker(preprocess)
    return landmark_inputs(preprocess, [gray] * len(faces), [fitter.fit(gray, f.box) for f in faces])


def _cnn_crops(preprocess: dict, images: np.ndarray, landmarks: str | None) -> np.ndarray:
    return fit_images(images, PreprocessSpec.from_dict(preprocess))


def _landmark_crops(preprocess: dict, images: np.ndarray, landmarks: str | None) -> np.ndarray:
    return landmark_inputs(preprocess, list(images), dataset_landmarks(preprocess, images, landmarks))


@dataclass(frozen=True)
class Kind:
    """What a model kind needs: its inputs from detected faces and from dataset crops, and whether they
    are images (a channel axis added for the interpreter; flip averaging applies) or feature rows."""

    faces: Callable[[dict, np.ndarray, list[Face], str], np.ndarray]
    crops: Callable[[dict, np.ndarray, str | None], np.ndarray]
    images: bool

    def tensor(self, inputs: np.ndarray) -> np.ndarray:
        return inputs[..., None] if self.images else inputs


KINDS = {
    "cnn": Kind(_cnn_faces, _cnn_crops, images=True),
    "landmark-svm": Kind(_landmark_faces, _landmark_crops, images=False),
}


def face_inputs(manifest: Manifest, gray: np.ndarray, faces: list[Face], detector: str) -> np.ndarray:
    """Inputs for each face found by `detector` in a grayscale frame, framed by that detector's recipe."""
    return KINDS[manifest.kind].faces(manifest.preprocess, gray, faces, detector)


def dataset_inputs(manifest: Manifest, images: np.ndarray) -> np.ndarray:
    """Inputs for dataset images that are already face crops (evaluation, calibration)."""
    return images_inputs(manifest.kind, manifest.preprocess, images)


def images_inputs(kind: str, preprocess: dict, images: np.ndarray, landmarks: str | None = None) -> np.ndarray:
    """dataset_inputs before a manifest exists (conversion); `landmarks` overrides the landmark model path."""
    return KINDS[kind].crops(preprocess, images, landmarks)
