"""What every detector shares: the Protocol, the frame scaling that `--detect-width` and `--min-face`
mean for all of them, box geometry, and the cheap search near tracked faces."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ferlite.inputs import Box, Face


class Detector(Protocol):
    name: str
    width: int  # frames are shrunk to this width before the search
    min_face: int  # smallest face reported, in the pixels of the image given

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a BGR or grayscale frame, boxes and landmarks in its pixels, best first."""


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


def drop_nested(faces: list[Face], overlap: float = 0.5) -> list[Face]:
    """Largest faces first, dropping any face whose box lies mostly inside a kept one.

    Haar often fires a second time on the lower half of a face (mouth and chin), and windows around
    two close tracked faces find the same face twice; IoU alone misses both, the boxes differ in size.
    """
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: -f.box[2] * f.box[3]):
        if all(_covered(face.box, k.box) <= overlap for k in kept):
            kept.append(face)
    return kept


def downscale(image: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    """The frame shrunk to `width` pixels wide (never enlarged) and the factor applied."""
    import cv2

    scale = min(1.0, width / image.shape[1])
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def rescaled(face: Face, scale: float, dx: int = 0, dy: int = 0) -> Face:
    """A face found on an image scaled by `scale` and offset by (dx, dy), in the original's pixels."""
    box = tuple(int(round(v / scale)) for v in face.box)
    box = (box[0] + dx, box[1] + dy, box[2], box[3])
    points = None if face.landmarks is None else face.landmarks / scale + np.array([dx, dy], np.float32)
    return Face(box, points, face.score)


def detect_near(detector: Detector, image: np.ndarray, boxes: list[Box], context: float = 1.5,
                side: int = 56, gap: int = 8) -> list[Face]:
    """Faces in a window around each of `boxes` (tracked faces), all windows searched in one call.

    Each window (`context` times its face) is scaled down to at most `side` pixels, so its face is
    about side / context pixels (never under the detector's smallest face), and the windows are
    laid out as tiles of a squarish grey mosaic no wider than the detector's search width: one small
    image instead of a whole frame, and one call instead of one per face. Between full-frame detections
    this confirms that a tracked face is still there and where it moved; faces new to the frame
    wait for the next full detection.
    """
    import cv2

    height, width = image.shape[:2]
    side = max(side, int(np.ceil(detector.min_face * context * 1.5)))  # a box can be 1.5x as tall as wide
    tiles = []
    for x, y, w, h in boxes:
        half = context * max(w, h) / 2
        cx, cy = x + w / 2, y + h / 2
        x0, y0 = max(0, int(cx - half)), max(0, int(cy - half))
        x1, y1 = min(width, int(cx + half)), min(height, int(cy + half))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        scale = min(1.0, side / max(x1 - x0, y1 - y0))
        window = image[y0:y1, x0:x1]
        if scale < 1.0:
            window = cv2.resize(window, (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))),
                                interpolation=cv2.INTER_AREA)
        tiles.append((window, scale, x0, y0))
    if not tiles:
        return []
    cell = side + gap
    columns = max(1, min(int(np.ceil(np.sqrt(len(tiles)))), detector.width // cell))  # squarish: less padding
    rows = -(-len(tiles) // columns)
    mosaic = np.full((rows * cell + gap, columns * cell + gap, *image.shape[2:]), 127, np.uint8)
    for i, (window, *_) in enumerate(tiles):
        top, left = gap + (i // columns) * cell, gap + (i % columns) * cell
        mosaic[top:top + window.shape[0], left:left + window.shape[1]] = window
    found = []
    for face in detector.detect(mosaic):
        x, y, w, h = face.box
        col, row = int((x + w / 2 - gap) // cell), int((y + h / 2 - gap) // cell)
        i = row * columns + col
        if not (0 <= col < columns and i < len(tiles)):
            continue
        _, scale, x0, y0 = tiles[i]
        left, top = gap + col * cell, gap + row * cell
        moved = Face((x - left, y - top, w, h),
                     None if face.landmarks is None else face.landmarks - np.array([left, top], np.float32),
                     face.score)
        found.append(rescaled(moved, scale, x0, y0))
    return drop_nested(found)
