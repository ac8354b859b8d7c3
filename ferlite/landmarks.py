"""dlib's 68-point shape predictor: one face box in a grayscale image -> 68 (x, y) landmarks.

Training, conversion, evaluation and the device all fit landmarks here, so a face is measured the
same way everywhere. The model file comes from an installed `face-recognition-models` package
(found without importing it: its __init__ imports pkg_resources, gone from new setuptools),
from `FERLITE_LANDMARKS`, or from an explicit path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ferlite.errors import ModelError, RuntimeMissingError
from ferlite.features import DEFAULT_RECIPE, RECIPES

MODEL_FILE = "shape_predictor_68_face_landmarks.dat"
ENV = "FERLITE_LANDMARKS"
INSTALL = "pip install 'ferlite[landmarks]' (face-recognition-models)"

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class LandmarkSpec:
    """How faces become landmarks; stored in a landmark-svm bundle's manifest as `preprocess`.

    min_side: a face box (or a pre-cropped dataset image) smaller than this many pixels is upscaled
        to it before fitting: dlib's predictor was trained on faces of about 80-250 px.
    dataset_box: for pre-cropped dataset images, the box is dlib's HOG face detector's largest
        face in the (upscaled) image, else the whole image.
    features: the feature recipe (a ferlite.features.RECIPES number).
    detector: the face detector whose boxes the model was trained on (preferred on the device).
    """

    landmark_model: str = MODEL_FILE
    landmark_sha256: str = ""
    features: int = RECIPES[DEFAULT_RECIPE]
    min_side: int = 160
    dataset_box: str = "dlib-hog, else whole image"
    detector: str = "dlib"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LandmarkSpec:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def find_landmark_model(path: str | Path | None = None) -> Path:
    """The given file, else $FERLITE_LANDMARKS, else the one inside an installed face-recognition-models."""
    path = path or os.environ.get(ENV)
    if path:
        if not Path(path).is_file():
            raise ModelError(f"{path}: no such landmark model file (expected dlib's {MODEL_FILE}; or {INSTALL} "
                             "and leave the path out)")
        return Path(path)
    spec = importlib.util.find_spec("face_recognition_models")
    for root in (spec.submodule_search_locations or []) if spec else []:
        found = Path(root) / "models" / MODEL_FILE
        if found.is_file():
            return found
    raise ModelError(f"dlib's {MODEL_FILE} not found: {INSTALL}, or give --landmarks PATH (or set {ENV})")


@lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per process (the landmark model is ~100 MB)."""
    st = path.stat()
    return _sha256(str(path), st.st_size, st.st_mtime)


def _upscale(gray: np.ndarray, factor: float) -> np.ndarray:
    import cv2

    if factor == 1:
        return gray
    return cv2.resize(gray, (round(gray.shape[1] * factor), round(gray.shape[0] * factor)),
                      interpolation=cv2.INTER_CUBIC)


class Landmarker:
    """Fits the 68 points inside face boxes; small faces are upscaled to `spec.min_side` first."""

    def __init__(self, spec: LandmarkSpec, path: str | Path | None = None) -> None:
        try:
            import dlib
        except ImportError:
            raise RuntimeMissingError("landmarks need dlib: pip install 'ferlite[landmarks]' (dlib-bin)") \
                from None
        self.path = find_landmark_model(path)
        self.sha256 = file_sha256(self.path)
        if spec.landmark_sha256 and spec.landmark_sha256 != self.sha256:
            raise ModelError(f"{self.path}: sha256 {self.sha256[:12]}… differs from the {spec.landmark_model} the "
                             f"model was trained with ({spec.landmark_sha256[:12]}…)")
        self.spec = spec
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(self.path))
        self._detector = None

    def fit(self, gray: np.ndarray, box: Box) -> np.ndarray:
        """68 x 2 float32 landmarks (frame pixels) inside box (x, y, w, h); NaN when the box is empty."""
        x, y, w, h = (int(v) for v in box)
        if w <= 1 or h <= 1 or x >= gray.shape[1] or y >= gray.shape[0] or x + w <= 0 or y + h <= 0:
            return np.full((68, 2), np.nan, np.float32)
        factor = max(1.0, self.spec.min_side / max(w, h))
        if factor == 1.0:
            return self._shape(gray, (x, y, w, h))
        # Upscale only the neighbourhood of the box, not the whole frame.
        pad = max(w, h) // 2
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(gray.shape[1], x + w + pad), min(gray.shape[0], y + h + pad)
        crop = _upscale(gray[y0:y1, x0:x1], factor)
        inner = (round((x - x0) * factor), round((y - y0) * factor), round(w * factor), round(h * factor))
        return self._shape(crop, inner) / factor + np.array([x0, y0], np.float32)

    def fit_image(self, gray: np.ndarray) -> np.ndarray:
        """Landmarks of a pre-cropped face image (datasets): upscaled to min_side, box per `dataset_box`."""
        factor = max(1, math.ceil(self.spec.min_side / min(gray.shape)))
        big = _upscale(gray, factor)
        if self._detector is None:
            self._detector = self._dlib.get_frontal_face_detector()
        rects = list(self._detector(np.ascontiguousarray(big), 0))
        if rects:
            r = max(rects, key=lambda r: r.area())
            box = (r.left(), r.top(), r.width(), r.height())
        else:
            box = (0, 0, big.shape[1], big.shape[0])
        return self._shape(big, box) / factor

    def _shape(self, gray: np.ndarray, box: Box) -> np.ndarray:
        x, y, w, h = box
        rect = self._dlib.rectangle(x, y, x + w - 1, y + h - 1)
        shape = self._predictor(np.ascontiguousarray(gray), rect)
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


_CACHE: dict[tuple[LandmarkSpec, str | None], Landmarker] = {}


def landmarker(spec: LandmarkSpec, path: str | Path | None = None) -> Landmarker:
    """One Landmarker per spec and path per process: loading the predictor takes about a second."""
    key = (spec, str(path) if path else os.environ.get(ENV))
    if key not in _CACHE:
        _CACHE[key] = Landmarker(spec, path)
    return _CACHE[key]
