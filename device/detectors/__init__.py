"""Face detectors as plugins: one module per detector, each with a `create(width, min_face, threads)`,
and this registry, the only list of their names (CLI help, config checks and errors read it).

Every detector returns `Face`s: a box and, when the detector finds them, five landmarks (eyes,
nose tip, mouth corners) that the preprocessing aligns the face on. `width` is the frame width a
detector searches at (frames are shrunk to it, never enlarged), `min_face` the smallest face
reported, in frame pixels; both mean the same for every detector.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ferlite.errors import ConfigError

if TYPE_CHECKING:
    from ferlite.device.detectors.base import Detector

DETECTORS: dict[str, str] = {
    "yunet": "YuNet CNN through OpenCV (shipped model; small and turned faces, five landmarks)",
    "haar": "OpenCV's Haar cascade (no model file; frontal faces only)",
    "dlib": "dlib's HOG detector (needs dlib; what landmark-SVM bundles were trained with)",
}
DEFAULT = "yunet"

HELP = f"Face detector: {', '.join(DETECTORS)} (default: the bundle's, else {DEFAULT})."


def check_detector(name: str) -> str:
    """`name` if the registry knows it, else a ConfigError listing the known ones."""
    if name not in DETECTORS:
        raise ConfigError(f"unknown detector {name!r} (choose {', '.join(DETECTORS)})")
    return name


def chosen_detector(options: dict, requested: str | None) -> str:
    """The detector asked for, else the one the bundle was trained with (a landmark model's boxes come
    from it; its manifest options say which), else the default."""
    return check_detector(requested or options.get("detector") or DEFAULT)


def make_detector(name: str, width: int, min_face: int, threads: int | None = None) -> Detector:
    """The detector called `name`, searching frames at `width` pixels for faces of `min_face` pixels and up."""
    module = importlib.import_module(f"{__name__}.{check_detector(name)}")
    return module.create(width, min_face, threads)
