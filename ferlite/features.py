"""Landmark feature recipes: a face and its 68 landmarks -> a vector that depends on the expression,
not on where the face is in the frame, how large it is, or how it is tilted in the image plane.

Recipe 1, "geometry": move the origin to the centroid of all 68 landmarks, rotate the line between
the eye centres to horizontal and divide by the inter-ocular distance. Then for each of the 51 inner
landmarks (brows, nose, eyes, mouth: points 17-67; the jaw line says more about identity and head
pose than about expression): x, y, the distance r to the centroid, and the direction to it as
(x, y) / sqrt(r^2 + 0.1^2), a softened unit vector (cos and sin of the angle far from the
centroid, fading to 0 near it, where the angle is noise). 51 x 5 = 255 values, grouped by kind.

Recipe 2, "hog" (the default): the landmarks align the face instead of being the features. A
similarity transform puts the eye line horizontal, the eyes 0.45 x 48 px apart and their midpoint
at (23.5, 14.4) in a 48 x 48 crop (brows to mouth); a HOG descriptor of that crop (6 px cells, 2 x 2
cell blocks, 9 orientations) gives 1764 values. On unseen JAFFE subjects it is far more accurate
than geometry (see docs/model-card.md): the landmark geometry of 10 posers mostly encodes who they
are and fitting noise, while the texture of brows, eyes and mouth encodes the expression.

Any change to a recipe must add a new number: bundles record the recipe they were trained with.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

RECIPES = {"geometry": 1, "hog": 2}
DEFAULT_RECIPE = "hog"
POINTS = 68
USED = slice(17, 68)
GEOMETRY_SIZE = (USED.stop - USED.start) * 5
CROP, EYE_DISTANCE, EYE_HEIGHT, CELL = 48, 0.45, 0.30, 6
HOG_SIZE = ((CROP - 2 * CELL) // CELL + 1) ** 2 * 4 * 9
SOFT = 0.1
# Landmark i of a face is landmark MIRROR[i] of its mirror image (jaw, brows, nose, eyes, mouth reversed).
MIRROR = (list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + list(range(35, 30, -1))
          + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40] + list(range(54, 47, -1)) + list(range(59, 54, -1))
          + list(range(64, 59, -1)) + list(range(67, 64, -1)))
RIGHT_EYE = slice(36, 42)  # the subject's right eye: image left in a frontal face
LEFT_EYE = slice(42, 48)


def normalize(points: np.ndarray) -> np.ndarray:
    """(..., 68, 2) landmarks centred on their centroid, eye line horizontal, inter-ocular distance 1."""
    points = np.asarray(points, np.float64)
    centred = points - points.mean(axis=-2, keepdims=True)
    eyes = points[..., LEFT_EYE, :].mean(axis=-2) - points[..., RIGHT_EYE, :].mean(axis=-2)
    distance = np.linalg.norm(eyes, axis=-1)
    cos, sin = eyes[..., 0] / distance, eyes[..., 1] / distance
    rotation = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)  # rotates by -angle
    return np.einsum("...ij,...pj->...pi", rotation, centred) / distance[..., None, None]


def plausible(points: np.ndarray) -> np.ndarray:
    """False where a fit is degenerate: eyes (nearly) on top of each other or upside down, or the
    68 points spread implausibly wide for a face. Such faces get NaN features."""
    points = np.asarray(points, np.float64)
    finite = np.isfinite(points).all(axis=(-1, -2))
    with np.errstate(invalid="ignore", divide="ignore"):
        eyes = points[..., LEFT_EYE, :].mean(axis=-2) - points[..., RIGHT_EYE, :].mean(axis=-2)
        spread = np.ptp(points, axis=-2).max(axis=-1)
        ratio = spread / np.linalg.norm(eyes, axis=-1)
    return finite & (eyes[..., 0] > np.abs(eyes[..., 1])) & (ratio > 1.2) & (ratio < 5.0)


def geometry_features(points: np.ndarray) -> np.ndarray:
    """Feature vectors (N, 255) float32 for landmarks (N, 68, 2); rows of implausible fits are NaN."""
    points = np.asarray(points, np.float64).reshape(-1, POINTS, 2)
    ok = plausible(points)
    out = np.full((len(points), GEOMETRY_SIZE), np.nan, np.float32)
    if ok.any():
        q = normalize(points[ok])[:, USED]
        r = np.linalg.norm(q, axis=-1)
        direction = q / np.sqrt(r**2 + SOFT**2)[..., None]
        out[ok] = np.concatenate([q[..., 0], q[..., 1], r, direction[..., 0], direction[..., 1]], axis=-1)
    return out


def mirror_geometry(features: np.ndarray) -> np.ndarray:
    """Geometry features of the mirrored faces, computed from the features alone.

    Mirroring commutes with the normalization: in the normalized frame it negates x and swaps
    left and right landmarks, so x and the direction's x change sign and points are permuted.
    """
    n = USED.stop - USED.start
    order = [MIRROR[i] - USED.start for i in range(USED.start, USED.stop)]
    parts = np.asarray(features).reshape(len(features), 5, n)[:, :, order]
    parts = parts * np.array([-1, 1, 1, -1, 1], parts.dtype)[None, :, None]
    return parts.reshape(len(features), -1)


def aligned_face(gray: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The CROP x CROP grayscale face of recipe 2: eye line horizontal, eye distance and midpoint fixed.

    The eye midpoint sits on the crop's vertical centre line (x = 23.5 in pixel-centre coordinates),
    so flipping the crop is aligning the mirrored face.
    """
    import cv2

    points = np.asarray(points, np.float64)
    right, left = points[RIGHT_EYE].mean(axis=0), points[LEFT_EYE].mean(axis=0)
    dx, dy = left - right
    scale = EYE_DISTANCE * CROP / np.hypot(dx, dy)
    cos, sin = dx / np.hypot(dx, dy) * scale, dy / np.hypot(dx, dy) * scale
    m = np.array([[cos, sin, 0.0], [-sin, cos, 0.0]])
    m[:, 2] = np.array([(CROP - 1) / 2, EYE_HEIGHT * CROP]) - m[:, :2] @ ((left + right) / 2)
    return cv2.warpAffine(gray, m, (CROP, CROP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@lru_cache(maxsize=1)
def _hog():
    import cv2

    return cv2.HOGDescriptor((CROP, CROP), (2 * CELL, 2 * CELL), (CELL, CELL), (CELL, CELL), 9)


def hog_features(faces: list[np.ndarray], points: np.ndarray, mirror: bool = False) -> np.ndarray:
    """Recipe 2 vectors (N, HOG_SIZE) for grayscale images and their landmarks; NaN rows for implausible fits."""
    points = np.asarray(points, np.float64).reshape(-1, POINTS, 2)
    ok = plausible(points)
    out = np.full((len(points), HOG_SIZE), np.nan, np.float32)
    for i in np.flatnonzero(ok):
        crop = aligned_face(faces[i], points[i])
        out[i] = _hog().compute(np.ascontiguousarray(crop[:, ::-1]) if mirror else crop).ravel()
    return out


def recipe_features(recipe: int, faces: list[np.ndarray], points: np.ndarray, mirror: bool = False) -> np.ndarray:
    """Feature rows of `recipe` (a RECIPES value) for each face image and its landmarks (N, 68, 2).

    `mirror` gives the features of the mirrored faces instead (training augmentation: a mirrored
    expression is the same expression).
    """
    if recipe == RECIPES["geometry"]:
        features = geometry_features(points)
        return mirror_geometry(features) if mirror else features
    if recipe == RECIPES["hog"]:
        return hog_features(faces, points, mirror)
    raise ValueError(f"unknown landmark feature recipe {recipe}")


def recipe_size(recipe: int) -> int:
    """How many values a recipe's feature vector has."""
    return GEOMETRY_SIZE if recipe == RECIPES["geometry"] else HOG_SIZE


def standardize(features: np.ndarray, preprocess: dict) -> np.ndarray:
    """(x - mean) / std with the bundle's `preprocess["standardize"]` (lifted from the model at
    conversion so the int8 input holds standardized values); features as they are without it."""
    spec = preprocess.get("standardize")
    if not spec:
        return features
    return ((features - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)).astype(np.float32)
