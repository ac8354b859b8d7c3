"""The one preprocessing definition: face crop -> grayscale -> resize -> model input.

Training, conversion, evaluation and the device all call these functions, so a face is prepared
the same way everywhere. The spec is stored in every bundle's manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PreprocessSpec:
    """How a face becomes a model input.

    size: square side of the model input, in pixels.
    margin: fraction of the detected box added on each side before cropping. Boxes follow the
        framing of OpenCV's Haar frontal cascade, which on FER2013's own images covers nearly the
        whole frame, so 0 reproduces the framing the models were trained on.
    """

    size: int = 48
    margin: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        return cls(size=int(data["size"]), margin=float(data["margin"]))


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


def crop_face(gray: np.ndarray, box: tuple[int, int, int, int], spec: PreprocessSpec) -> np.ndarray:
    """Square crop around box (x, y, w, h) widened by spec.margin, edges replicated, resized."""
    import cv2

    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * spec.margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    x1, y1 = x0 + int(round(side)), y0 + int(round(side))
    pad = max(0, -x0, -y0, x1 - gray.shape[1], y1 - gray.shape[0])
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    return resize(gray[y0:y1, x0:x1], spec.size)


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
