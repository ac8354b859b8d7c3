"""YuNet (libfacedetection), a 76 k-parameter CNN run by OpenCV's own `cv2.FaceDetectorYN`: small and
turned faces, five landmarks per face, and the model file ships in this package (Apache-2.0,
LICENSE-yunet beside it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferlite.device.detectors.base import downscale, rescaled
from ferlite.errors import ModelError
from ferlite.inputs import Face

MODEL = Path(__file__).with_name("yunet_n_640_640.onnx")
MIN_SCORE = 0.7  # under it, YuNet fired on a hand, a head from behind and a clock in the group photos (0.62-0.65)
NMS = 0.3
NETS = 8  # input sizes kept ready


class YuNetDetector:
    name = __name__.rpartition(".")[2]  # the registry's key: this module's name

    def __init__(self, width: int, min_face: int, model: Path = MODEL) -> None:
        self.model, self.width, self.min_face = model, width, min_face
        self._nets: dict[tuple[int, int], object] = {}
        self._net((320, 320))

    def _net(self, size: tuple[int, int]):
        """One network per input size: resizing a network reallocates it, which costs more than the
        search itself when frames and the mosaic of tracked faces (detect_near) alternate."""
        import cv2

        if size not in self._nets:
            if len(self._nets) >= NETS:
                self._nets.pop(next(iter(self._nets)))
            try:
                self._nets[size] = cv2.FaceDetectorYN.create(str(self.model), "", size, MIN_SCORE, NMS, 5000)
            except cv2.error as exc:
                raise ModelError(f"{self.model}: YuNet cannot be loaded "
                                 f"({str(exc).strip().splitlines()[-1]})") from None
        return self._nets[size]

    def detect(self, image: np.ndarray) -> list[Face]:
        import cv2

        bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[..., :3]
        small, scale = downscale(np.ascontiguousarray(bgr), self.width)
        _, rows = self._net((small.shape[1], small.shape[0])).detect(small)
        faces = []
        for row in () if rows is None else rows:
            face = rescaled(Face(tuple(float(v) for v in row[:4]), row[4:14].reshape(5, 2).copy(),
                                 float(row[14])), scale)
            if face.box[2] >= self.min_face:
                faces.append(face)
        return faces


def create(width: int, min_face: int, threads: int | None) -> YuNetDetector:
    return YuNetDetector(width, min_face)
