"""OpenCV's bundled Haar frontal-face cascade: no model file to ship, frontal faces only, no landmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferlite.device.detectors.base import downscale, drop_nested, rescaled
from ferlite.errors import ModelError
from ferlite.inputs import Face
from ferlite.preprocess import to_gray


class HaarDetector:
    name = __name__.rpartition(".")[2]  # the registry's key: this module's name

    def __init__(self, width: int, min_face: int, neighbors: int = 5) -> None:
        import cv2

        self._cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
        if self._cascade.empty():
            raise ModelError("OpenCV's haarcascade_frontalface_default.xml cannot be loaded")
        self.width, self.min_face, self.neighbors = width, min_face, neighbors

    def detect(self, image: np.ndarray) -> list[Face]:
        small, scale = downscale(to_gray(image), self.width)
        side = max(8, round(self.min_face * scale))
        found = self._cascade.detectMultiScale(small, scaleFactor=1.1, minNeighbors=self.neighbors,
                                               minSize=(side, side))
        return drop_nested([rescaled(Face(tuple(int(v) for v in b)), scale) for b in found])


def create(width: int, min_face: int, threads: int | None) -> HaarDetector:
    return HaarDetector(width, min_face)
