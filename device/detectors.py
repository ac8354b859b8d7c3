"""Face detectors: OpenCV Haar (default), dlib HOG, and BlazeFace through the bundle's TFLite runtime.

Each takes a grayscale or BGR frame and returns boxes (x, y, w, h) in that frame's pixels. Haar
and HOG work on a downscaled copy, since their cost grows with the pixel count and faces on a
fixed camera are rarely tiny.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ferlite.bundle import Manifest
from ferlite.errors import ModelError, RuntimeMissingError
from ferlite.inputs import Box
from ferlite.preprocess import to_gray


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Box]:
        """Faces in a BGR or grayscale frame, as (x, y, w, h) boxes in its pixels."""


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _covered(a: Box, b: Box) -> float:
    """Share of the smaller box lying inside the other one."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / max(1, min(a[2] * a[3], b[2] * b[3]))


def drop_nested(boxes: list[Box], overlap: float = 0.5) -> list[Box]:
    """Largest boxes first, dropping any box mostly inside a kept one.

    Haar often fires a second time on the lower half of a face (mouth and chin), which IoU alone
    does not catch because the boxes differ in size.
    """
    kept: list[Box] = []
    for box in sorted(boxes, key=lambda b: -b[2] * b[3]):
        if all(_covered(box, k) <= overlap for k in kept):
            kept.append(box)
    return kept


def _downscale(gray: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    import cv2

    scale = min(1.0, width / gray.shape[1])
    if scale == 1.0:
        return gray, 1.0
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA), scale


def _upscale(boxes, scale: float) -> list[Box]:
    return [tuple(int(round(v / scale)) for v in box) for box in boxes]


class HaarDetector:
    """OpenCV's bundled frontal-face cascade on a frame downscaled to `width` pixels."""

    name = "haar"

    def __init__(self, width: int = 320, min_face: int = 40, neighbors: int = 5) -> None:
        import cv2

        self._cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
        if self._cascade.empty():
            raise ModelError("OpenCV's haarcascade_frontalface_default.xml cannot be loaded")
        self.width, self.min_face, self.neighbors = width, min_face, neighbors

    def detect(self, image: np.ndarray) -> list[Box]:
        small, scale = _downscale(to_gray(image), self.width)
        side = max(8, round(self.min_face * scale))
        found = self._cascade.detectMultiScale(small, scaleFactor=1.1, minNeighbors=self.neighbors,
                                               minSize=(side, side))
        return drop_nested(_upscale([tuple(b) for b in found], scale))


class DlibDetector:
    """dlib's HOG detector. Its window is 80 px, so the frame is scaled to bring `min_face` to 80 px
    (never enlarged: upsampling costs too much on a Pi, so faces under 80 px are not found)."""

    name = "dlib"
    WINDOW = 80

    def __init__(self, min_face: int = 40) -> None:
        try:
            import dlib
        except ImportError:
            raise RuntimeMissingError("the dlib detector needs dlib: pip install dlib-bin") from None
        self._detector = dlib.get_frontal_face_detector()
        self.min_face = min_face

    def detect(self, image: np.ndarray) -> list[Box]:
        gray = to_gray(image)
        small, scale = _downscale(gray, round(gray.shape[1] * self.WINDOW / max(self.min_face, self.WINDOW)))
        rects = self._detector(np.ascontiguousarray(small), 0)
        boxes = [(r.left(), r.top(), r.width(), r.height()) for r in rects]
        return drop_nested(_upscale(boxes, scale))


# BlazeFace short-range (MediaPipe face_detection_short_range.tflite): SSD anchors on a 128x128
# input, strides 8, 16, 16, 16, one fixed-size anchor per stride entry at each cell centre.
BLAZEFACE_MODEL = "face_detection_short_range.tflite"
BLAZEFACE_SIZE = 128
BLAZEFACE_STRIDES = (8, 16, 16, 16)


def blazeface_anchors(size: int = BLAZEFACE_SIZE, strides: tuple[int, ...] = BLAZEFACE_STRIDES) -> np.ndarray:
    """Anchor centres (N, 2) as (x, y) in 0..1, in the order the model's outputs use.

    Consecutive layers with the same stride share one grid, each contributing 2 anchors per cell
    (aspect ratio 1 plus the interpolated scale), which gives 16*16*2 + 8*8*6 = 896.
    """
    anchors = []
    i = 0
    while i < len(strides):
        stride = strides[i]
        same = 0
        while i < len(strides) and strides[i] == stride:
            same += 1
            i += 1
        cells = -(-size // stride)
        ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        anchors.append(np.repeat(grid, 2 * same, axis=0))
    return np.concatenate(anchors).astype(np.float32)


def decode_blazeface(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray,
                     size: int = BLAZEFACE_SIZE, min_score: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (M, 4) as (x0, y0, x1, y1) in 0..1 of the model input, and their scores (M,).

    raw_boxes (N, >=4) holds the centre offset and size in input pixels relative to each anchor;
    raw_scores (N,) are logits.
    """
    scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.astype(np.float64), -100, 100)))
    keep = scores >= min_score
    raw, anc = raw_boxes[keep, :4].astype(np.float64) / size, anchors[keep]
    cx, cy = raw[:, 0] + anc[:, 0], raw[:, 1] + anc[:, 1]
    w, h = raw[:, 2], raw[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return boxes, scores[keep]


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = 0.3) -> list[int]:
    """Indices kept by greedy non-maximum suppression of (x0, y0, x1, y1) boxes, best first."""
    order = list(np.argsort(-scores))
    area = np.maximum(0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0, boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    while order:
        best = order.pop(0)
        kept.append(int(best))
        rest = np.array(order, dtype=np.int64)
        if not len(rest):
            break
        ix = np.maximum(0, np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]))
        iy = np.maximum(0, np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]))
        inter = ix * iy
        overlap = inter / np.maximum(area[best] + area[rest] - inter, 1e-12)
        order = [int(j) for j, o in zip(rest, overlap) if o <= threshold]
    return kept


def find_blazeface_model(path: str | None) -> Path:
    """The given model file, else the one inside an installed mediapipe package."""
    if path:
        if not Path(path).is_file():
            raise ModelError(f"{path}: no such BlazeFace model file")
        return Path(path)
    spec = importlib.util.find_spec("mediapipe")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            found = sorted(Path(root).rglob(BLAZEFACE_MODEL))
            if found:
                return found[0]
    raise ModelError(f"blazeface needs {BLAZEFACE_MODEL}: give --blazeface-model PATH or pip install mediapipe")


@dataclass
class _Letterbox:
    side: int
    left: int
    top: int


class BlazeFaceDetector:
    """MediaPipe's short-range BlazeFace run by the same TFLite runtime as the emotion model.

    The frame is padded to a square (as MediaPipe does, so faces keep their shape), resized to
    128x128 RGB in -1..1; anchors are decoded and overlapping boxes removed here.
    """

    name = "blazeface"

    def __init__(self, model: str | None = None, min_face: int = 40, min_score: float = 0.5,
                 threads: int | None = None) -> None:
        from ferlite.runtime import load_interpreter

        path = find_blazeface_model(model)
        self._interpreter, _ = load_interpreter(path.read_bytes(), threads)
        detail = self._interpreter.get_input_details()[0]
        self._input = detail["index"]
        self._dtype = np.dtype(detail["dtype"])
        self._scale, self._zero = detail["quantization"]
        outputs = {int(d["shape"][-1]): d for d in self._interpreter.get_output_details()}
        if 16 not in outputs or 1 not in outputs:
            raise ModelError(f"{path}: not a BlazeFace model (expected outputs (1, 896, 16) and (1, 896, 1))")
        self._boxes, self._scores = outputs[16], outputs[1]
        self.anchors = blazeface_anchors()
        if int(self._boxes["shape"][-2]) != len(self.anchors):
            raise ModelError(f"{path}: {self._boxes['shape'][-2]} anchors, the short-range model has 896")
        self.min_face, self.min_score = min_face, min_score

    def _tensor(self, rgb: np.ndarray) -> np.ndarray:
        x = rgb.astype(np.float32) / 127.5 - 1.0
        if self._dtype != np.float32 and self._scale:
            info = np.iinfo(self._dtype)
            x = np.clip(np.round(x / self._scale) + self._zero, info.min, info.max)
        return x.astype(self._dtype)[None]

    def _output(self, detail: dict) -> np.ndarray:
        out = self._interpreter.get_tensor(detail["index"])[0].astype(np.float32)
        scale, zero = detail["quantization"]
        return (out - zero) * scale if scale else out

    def detect(self, image: np.ndarray) -> list[Box]:
        import cv2

        bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[..., :3]
        h, w = bgr.shape[:2]
        box = _Letterbox(max(h, w), (max(h, w) - w) // 2, (max(h, w) - h) // 2)
        square = cv2.copyMakeBorder(bgr, box.top, box.side - h - box.top, box.left, box.side - w - box.left,
                                    cv2.BORDER_CONSTANT, value=(0, 0, 0))
        rgb = cv2.cvtColor(cv2.resize(square, (BLAZEFACE_SIZE, BLAZEFACE_SIZE), interpolation=cv2.INTER_AREA),
                           cv2.COLOR_BGR2RGB)
        self._interpreter.set_tensor(self._input, self._tensor(rgb))
        self._interpreter.invoke()
        boxes, scores = decode_blazeface(self._output(self._boxes), self._output(self._scores).reshape(-1),
                                         self.anchors, min_score=self.min_score)
        faces = []
        for i in nms(boxes, scores):
            x0, y0, x1, y1 = boxes[i] * box.side
            x0, y0 = max(0, x0 - box.left), max(0, y0 - box.top)
            x1, y1 = min(w, x1 - box.left), min(h, y1 - box.top)
            if min(x1 - x0, y1 - y0) >= self.min_face:
                faces.append((int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0))))
        return faces


def detect_near(detector: Detector, image: np.ndarray, boxes: list[Box], context: float = 1.5,
                side: int = 80) -> list[Box]:
    """Faces in a window around each of `boxes` (tracked faces), each window scaled down so its face
    is about `side / context` pixels: a few detector scales on a small image instead of a whole frame.

    Between full-frame detections this is what confirms that a tracked face is still there and where
    it moved, at a fraction of the cost; faces new to the frame wait for the next full detection.
    """
    import cv2

    height, width = image.shape[:2]
    found: list[Box] = []
    for x, y, w, h in boxes:
        half = context * max(w, h) / 2
        cx, cy = x + w / 2, y + h / 2
        x0, y0 = max(0, int(cx - half)), max(0, int(cy - half))
        x1, y1 = min(width, int(cx + half)), min(height, int(cy + half))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        scale = min(1.0, side / (2 * half))
        window = image[y0:y1, x0:x1]
        if scale < 1.0:
            window = cv2.resize(window, (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))),
                                interpolation=cv2.INTER_AREA)
        found += [(bx + x0, by + y0, bw, bh) for bx, by, bw, bh in _upscale(detector.detect(window), scale)]
    return drop_nested(found)


def chosen_detector(manifest: Manifest, requested: str | None) -> str:
    """The detector asked for, else the one the bundle was trained with (a landmark model's boxes
    come from it), else haar."""
    return requested or manifest.options.get("detector") or "haar"


def make_detector(name: str, *, width: int = 320, min_face: int = 40, blazeface_model: str | None = None,
                  threads: int | None = None) -> Detector:
    """The detector called `name` (haar, dlib or blazeface)."""
    if name == "haar":
        return HaarDetector(width, min_face)
    if name == "dlib":
        return DlibDetector(min_face)
    if name == "blazeface":
        return BlazeFaceDetector(blazeface_model, min_face, threads=threads)
    raise ModelError(f"unknown detector {name!r} (choose haar, dlib or blazeface)")
