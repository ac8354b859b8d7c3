"""dlib's HOG face detector, the one the landmark-SVM bundles were trained with (boxes only; those
bundles fit dlib's 68 landmarks themselves)."""

from __future__ import annotations

import numpy as np

from ferlite.device.detectors.base import downscale, drop_nested, rescaled
from ferlite.errors import RuntimeMissingError
from ferlite.inputs import Face
from ferlite.preprocess import to_gray

WINDOW = 80  # dlib's HOG window: the smallest face it finds, in the pixels it searches


class DlibDetector:
    """The frame is scaled to `width` and further so that `min_face` becomes the 80 px window (never
    enlarged: upsampling costs too much on a Pi, so faces under 80 detected pixels are not found)."""

    name = __name__.rpartition(".")[2]  # the registry's key: this module's name

    def __init__(self, width: int, min_face: int) -> None:
        try:
            import dlib
        except ImportError:
            raise RuntimeMissingError("the dlib detector needs dlib: pip install dlib-bin") from None
        self._detector = dlib.get_frontal_face_detector()
        self.width, self.min_face = width, min_face

    def detect(self, image: np.ndarray) -> list[Face]:
        gray = to_gray(image)
        target = min(self.width, round(gray.shape[1] * WINDOW / max(self.min_face, WINDOW)))
        small, scale = downscale(gray, target)
        rects = self._detector(np.ascontiguousarray(small), 0)
        return drop_nested([rescaled(Face((r.left(), r.top(), r.width(), r.height())), scale) for r in rects])


def create(width: int, min_face: int, threads: int | None) -> DlibDetector:
    return DlibDetector(width, min_face)
