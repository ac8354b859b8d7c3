"""The face step: image -> faces (boxes, landmarks) -> model inputs -> probabilities.

`ferlite run`, `predict`, `eval --detector` and `bench` all go through it, so a face is found,
framed and scored the same way everywhere; the pipeline only decides where to look (the whole
frame, or near the faces it tracks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ferlite.config import RunConfig
from ferlite.device.detectors.base import Detector
from ferlite.inputs import Face, face_inputs
from ferlite.preprocess import to_gray
from ferlite.runtime import Ensemble, Predictor


@dataclass
class FaceStep:
    detector: Detector
    predictor: Predictor | Ensemble

    def find(self, image: np.ndarray) -> list[Face]:
        """Every face in a BGR or grayscale image."""
        return self.detector.detect(image)

    def inputs(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """The model inputs of `faces`, framed by the recipe of the detector that found them."""
        return face_inputs(self.predictor.bundle.manifest, to_gray(image), faces, self.detector.name)

    def score(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """Probabilities (N, K) for `faces`, all in one interpreter call."""
        return self.predictor.predict(self.inputs(image, faces))

    def __call__(self, image: np.ndarray) -> tuple[list[Face], np.ndarray]:
        """The image's faces and their probabilities."""
        faces = self.find(image)
        return faces, self.score(image, faces)


def face_step(cfg: RunConfig, predictor: Predictor | None = None) -> FaceStep:
    """The face step `cfg` asks for: its bundle's predictor (unless one is given) and the detector it names,
    else the one the bundle was framed for."""
    from ferlite.bundle import read_bundle
    from ferlite.bundles import bundle_path
    from ferlite.device.detectors import chosen_detector, make_detector

    predictor = predictor or Predictor(read_bundle(bundle_path(cfg.bundle)), cfg.threads)
    detector = make_detector(chosen_detector(predictor.bundle.manifest.options, cfg.detector), cfg.detect_width,
                             cfg.min_face, cfg.threads)
    return FaceStep(detector, predictor)
