"""The one preprocessing definition: face crop -> grayscale -> resize -> model input.

Training, conversion, evaluation and the device all call these functions, so a face is prepared
the same way everywhere. The spec is stored in every bundle's manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class Framing:
    """Where a detector's face sits in the model input, fitted once on the training faces.

    scale: input side / face size, the face size being sqrt(w * h) of the detector's box.
    dx, dy: input centre minus box centre, in face sizes.
    """

    scale: float
    dx: float = 0.0
    dy: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Framing:
        return cls(float(data["scale"]), float(data.get("dx", 0.0)), float(data.get("dy", 0.0)))


# How FER2013 frames its faces, per detector, from `python benchmarks/fit_framing.py --faces 3000`
# (medians over FER2013 training faces that detector finds; docs/benchmarks.md). Written into every
# CNN bundle's preprocessing at conversion, so the device frames a face as the model was trained.
FER2013_FRAMING = {"yunet": Framing(1.1351, -0.003, -0.0276), "haar": Framing(1.0378, 0.0, 0.0)}


@dataclass(frozen=True)
class PreprocessSpec:
    """How a face becomes a model input.

    size: square side of the model input, in pixels.
    margin: fraction of the detected box added on each side before cropping, for detectors that
        `framing` does not name (bundles made before framing was fitted): 0 is Haar's framing.
    framing: per detector name, how its faces are framed to match the training faces.
    align, align_min_tilt: where a detector gives eye landmarks, turn a face whose eyes tilt by
        `align_min_tilt` degrees or more so they are level. FER2013's own faces keep their small
        tilts, so levelling those too costs accuracy (docs/benchmarks.md).
    """

    size: int = 48
    margin: float = 0.0
    framing: dict[str, Framing] = field(default_factory=dict)
    align: bool = True
    align_min_tilt: float = 10.0

    def to_dict(self) -> dict:
        return {"size": self.size, "margin": self.margin, "align": self.align, "align_min_tilt": self.align_min_tilt,
                "framing": {name: f.to_dict() for name, f in self.framing.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        framing = {name: Framing.from_dict(f) for name, f in (data.get("framing") or {}).items()}
        return cls(size=int(data["size"]), margin=float(data["margin"]), framing=framing,
                   align=bool(data.get("align", True)), align_min_tilt=float(data.get("align_min_tilt", 10.0)))


def to_gray(image: np.ndarray) -> np.ndarray:
    """Grayscale uint8 view of a BGR, BGRA or already-gray image."""
    import cv2

    if image.ndim == 2:
        return image
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def resize(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a grayscale image to size x size (area filter when shrinking, as for photos)."""
    import cv2

    if gray.shape == (size, size):
        return gray
    shrink = gray.shape[0] > size or gray.shape[1] > size
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def crop_square(gray: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """The square of `side` pixels centred on (cx, cy), edges replicated where it leaves the frame, resized."""
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    return resize(cut(gray, x0, y0, x0 + max(1, int(round(side))), y0 + max(1, int(round(side)))), size)


def cut(gray: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """gray[y0:y1, x0:x1], its edges replicated where the rectangle leaves the image."""
    import cv2

    pad = max(0, -x0, -y0, x1 - gray.shape[1], y1 - gray.shape[0])
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return gray[y0 + pad:y1 + pad, x0 + pad:x1 + pad]


def eye_tilt(landmarks: np.ndarray) -> float:
    """Degrees the line from the face's right eye to its left eye (image left to right) turns clockwise."""
    (x0, y0), (x1, y1) = landmarks[0], landmarks[1]
    return float(np.degrees(np.arctan2(y1 - y0, x1 - x0)))


def warp_face(gray: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """`gray` warped by `matrix` into size x size, edges replicated; a face much larger than the input is
    first shrunk with the area filter, as `resize` does, so the warp does not alias."""
    import cv2

    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    if scale < 0.5:
        inverse = cv2.invertAffineTransform(matrix)
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) @ inverse[:, :2].T + inverse[:, 2]
        x0, y0 = (int(v) for v in np.floor(corners.min(0)) - 2)
        x1, y1 = (int(v) for v in np.ceil(corners.max(0)) + 2)
        roi = cut(gray, x0, y0, x1, y1)
        shrink = 2 * scale
        gray = cv2.resize(roi, (max(1, round(roi.shape[1] * shrink)), max(1, round(roi.shape[0] * shrink))),
                          interpolation=cv2.INTER_AREA)
        matrix = np.hstack([matrix[:, :2] / shrink, (matrix[:, :2] @ np.array([x0, y0]) + matrix[:, 2])[:, None]])
    return cv2.warpAffine(gray, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def crop_face(gray: np.ndarray, box: tuple[int, int, int, int], landmarks: np.ndarray | None,
              spec: PreprocessSpec, detector: str) -> np.ndarray:
    """One detected face as the model input: framed by the detector's recipe (a detector without one
    gets the box widened by spec.margin), turned upright when its eyes tilt beyond spec.align_min_tilt."""
    import cv2

    x, y, w, h = box
    framing = spec.framing.get(detector)
    if framing is None:
        cx, cy, side = x + w / 2.0, y + h / 2.0, max(w, h) * (1.0 + 2.0 * spec.margin)
    else:
        face = float(np.sqrt(max(w, 1) * max(h, 1)))
        cx, cy, side = x + w / 2.0 + framing.dx * face, y + h / 2.0 + framing.dy * face, framing.scale * face
    tilt = eye_tilt(landmarks) if spec.align and landmarks is not None else None
    if tilt is None or not np.isfinite(tilt) or abs(tilt) < spec.align_min_tilt:
        return crop_square(gray, cx, cy, side, spec.size)
    matrix = cv2.getRotationMatrix2D((cx, cy), tilt, spec.size / side)
    matrix[:, 2] += (spec.size / 2 - cx, spec.size / 2 - cy)
    return warp_face(gray, matrix, spec.size)


def fit_images(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Whole images that are already face crops (datasets) resized to the model input, uint8 (N, S, S)."""
    if images.shape[1:] == (spec.size, spec.size):
        return images
    return np.stack([resize(img, spec.size) for img in images]) if len(images) else images


def quantize(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """Model inputs in real units (raw pixels 0..255 for CNNs) -> the interpreter's input tensor.

    For an int8 tensor that is q = round(x / scale) + zero_point; float tensors take x as is.
    """
    x = x.astype(np.float32)
    if np.dtype(dtype) == np.float32 or scale == 0:
        return x
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)
